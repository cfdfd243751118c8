"""Fast CPU inference for the analysis and synthesis transforms (g_a, g_s).

Two measured wins on a 2-core AVX2 machine, each about x1.2 per transform (benchmarks/bench_coding.py
--old-path): private channels-last copies of the transforms, and, where the application allows it,
keeping freed memory in the heap while a transform runs. Neither touches the entropy path: latents
decode bit-exactly whatever runs here.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import os
import sys
import threading
import weakref
import torch

# Channels-last (NHWC) is oneDNN's fast layout for these convolutions on CPU (x1.2-1.3 per transform).
# It sums in another order than NCHW: g_s may differ by one level on a few pixels (the float synthesis
# is not bit-exact across platforms anyway); for g_a it may move a latent that lies within ~1e-5 of a
# rounding boundary (1 of 196k on kodim01), so encodes can differ from those of NCHW analysis.
# Set ANALYSIS_CHANNELS_LAST = False for NCHW analysis (the encodes of earlier versions, bit for bit).
SYNTHESIS_CHANNELS_LAST = True
ANALYSIS_CHANNELS_LAST = True

_fast_copies: "weakref.WeakKeyDictionary[torch.nn.Module, tuple]" = weakref.WeakKeyDictionary()
_fast_lock = threading.Lock()


def _stamp(module: torch.nn.Module) -> tuple:
    """Changes whenever a parameter or buffer is replaced or changed in place (optimizer steps, loading)."""
    return tuple((id(t), t.data_ptr(), t._version) for t in (*module.parameters(), *module.buffers()))


def inference_transform(module: torch.nn.Module, device: str, analysis: bool) -> tuple[torch.nn.Module, torch.memory_format]:
    """(module itself, or on the CPU a channels-last inference copy of it; the memory format its inputs
    should have). The copy is private: the module (shared with training through ModelBundle.network())
    keeps its layout, and the copy is rebuilt when the module's weights change."""
    channels_last = ANALYSIS_CHANNELS_LAST if analysis else SYNTHESIS_CHANNELS_LAST
    if not channels_last or module.training or torch.device(device).type != "cpu":
        return module, torch.contiguous_format
    stamp = _stamp(module)
    with _fast_lock:
        hit = _fast_copies.get(module)
        if hit is None or hit[0] != stamp:
            fast = copy.deepcopy(module).requires_grad_(False).to(memory_format=torch.channels_last)
            hit = _fast_copies[module] = (stamp, fast)
    return hit[1], torch.channels_last


# glibc hands every freed block above its mmap threshold (at most 32 MB: most feature maps of a Kodak
# image) back to the OS at once, and the next layer page-faults a new one in: ~20% of g_s on a VM.
# While a transform runs, keep blocks up to 32 MB (every feature map of a tile, see tiling.py) in the
# heap for reuse, in one arena (an arena per worker thread would each keep its own), and larger ones
# mmapped; malloc_trim gives the heap back after. Off by default in the library (a process-wide malloc
# setting is the application's to choose); the CLI, a short-lived process that does nothing else, turns it on.
REUSE_FREED_MEMORY = False
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -2, -3, -8
_REUSE = ((_M_MMAP_THRESHOLD, 32 << 20), (_M_TRIM_THRESHOLD, 256 << 20), (_M_TOP_PAD, 16 << 20), (_M_ARENA_MAX, 1))
_GLIBC_DEFAULTS = ((_M_MMAP_THRESHOLD, 128 * 1024), (_M_TRIM_THRESHOLD, 128 * 1024), (_M_TOP_PAD, 128 * 1024),
                   (_M_ARENA_MAX, 0))
_USER_MALLOC_ENV = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_",
                    "MALLOC_ARENA_MAX")
_malloc_lock = threading.Lock()
_malloc_depth = 0


def _load_glibc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version, libc.mallopt, libc.malloc_trim  # noqa: B018 (glibc only)
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _load_glibc()


@contextlib.contextmanager
def reuse_freed_memory():
    """No-op off glibc, or when the user tunes malloc (MALLOC_*_ / GLIBC_TUNABLES): we leave theirs alone."""
    global _malloc_depth
    user_tuned = any(k in os.environ for k in _USER_MALLOC_ENV) or "malloc" in os.environ.get("GLIBC_TUNABLES", "")
    if not REUSE_FREED_MEMORY or _LIBC is None or user_tuned:
        yield
        return
    with _malloc_lock:
        _malloc_depth += 1
        if _malloc_depth == 1:
            for param, value in _REUSE:
                _LIBC.mallopt(param, value)
    try:
        yield
    finally:
        with _malloc_lock:
            _malloc_depth -= 1
            if _malloc_depth == 0:
                for param, value in _GLIBC_DEFAULTS:
                    _LIBC.mallopt(param, value)
                _LIBC.malloc_trim(0)
