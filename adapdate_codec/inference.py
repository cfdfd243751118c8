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
from typing import Iterator

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


def inference_transform(module: torch.nn.Module, device: str,
                        analysis: bool) -> tuple[torch.nn.Module, torch.memory_format]:
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
            for conv in fast.modules():  # keep the heap in check between layers, not only between bands
                if isinstance(conv, torch.nn.Conv2d):
                    conv.register_forward_hook(lambda *_: release_if_grown())
            hit = _fast_copies[module] = (stamp, fast)
    return hit[1], torch.channels_last


# --- threads of the calling thread only ---------------------------------------------------------------------
# torch.set_num_threads is process-wide (and MKL's count with it): a library that changed it for one image
# would change it for every other thread of the application, and two images coded at once would race.
# With torch's OpenMP build, each thread has its own OpenMP team size (omp_set_num_threads) and MKL its own
# per-thread count (mkl_set_num_threads_local): set those, for the calling thread, instead.


def _load_thread_controls():
    try:
        gomp = ctypes.CDLL("libgomp.so.1")  # torch's own, already loaded (found by its soname)
        gomp.omp_set_num_threads, gomp.omp_get_max_threads  # noqa: B018
        # MKL is linked into libtorch_cpu; this is its C entry point (the lower-case name takes a pointer)
        torch_cpu = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so"))
        mkl = torch_cpu.MKL_Set_Num_Threads_Local
    except (OSError, AttributeError):
        return None
    if "OpenMP" not in torch.__config__.parallel_info():
        return None
    mkl.argtypes, mkl.restype = [ctypes.c_int], ctypes.c_int
    gomp.omp_set_num_threads.argtypes, gomp.omp_get_max_threads.restype = [ctypes.c_int], ctypes.c_int
    return gomp, mkl


_THREAD_CONTROLS = _load_thread_controls()


def limit_this_thread(n: int) -> None:
    """From now on, torch ops called from this thread use n threads (for a worker thread of our own)."""
    torch.get_num_threads()  # torch sets a thread's team size on its first parallel op: have it happen first
    if _THREAD_CONTROLS is None:
        torch.set_num_threads(n)
        return
    gomp, mkl = _THREAD_CONTROLS
    gomp.omp_set_num_threads(n)
    mkl(n)


@contextlib.contextmanager
def thread_limit(n: int) -> Iterator[None]:
    """torch ops called from this thread use n threads while inside; other threads keep theirs."""
    before = torch.get_num_threads()
    if n == before:
        yield
        return
    if _THREAD_CONTROLS is None:  # not torch's OpenMP build: the process-wide setting is all there is
        torch.set_num_threads(n)
        try:
            yield
        finally:
            torch.set_num_threads(before)
        return
    gomp, mkl = _THREAD_CONTROLS
    gomp.omp_set_num_threads(n)
    mkl_before = mkl(n)
    try:
        yield
    finally:
        gomp.omp_set_num_threads(before)
        mkl(mkl_before)


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
# Freed memory kept in the heap is not free for the machine: with tiles made and freed by several threads,
# glibc's heap grew to 2-3x the memory in use (freed chunks between live ones stay resident). tiling.py
# calls release_if_grown after each band: once the process has grown HEAP_SLACK past its size when the
# transform began (trimmed first), malloc_trim hands the free pages back (not often: the page faults that
# follow are what keeping them saves), with reuse on or off.
HEAP_SLACK = 384 << 20  # 24 MP: ~200 MB in use by the tiles of 2 threads, trimmed ~25 times a transform
_malloc_lock = threading.Lock()
_malloc_depth = 0
_rss_limit: int | None = None


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


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def release_if_grown() -> None:
    """Hand free heap pages back to the OS if the process has grown too far while a transform runs."""
    limit = _rss_limit
    if limit is not None and _LIBC is not None and _rss() > limit:
        _LIBC.malloc_trim(0)


@contextlib.contextmanager
def reuse_freed_memory():
    """While a transform runs: glibc settings for reuse (when REUSE_FREED_MEMORY is set, on glibc, and the
    user does not tune malloc: MALLOC_*_ / GLIBC_TUNABLES), and the heap kept within HEAP_SLACK."""
    global _malloc_depth, _rss_limit
    user_tuned = any(k in os.environ for k in _USER_MALLOC_ENV) or "malloc" in os.environ.get("GLIBC_TUNABLES", "")
    tune = REUSE_FREED_MEMORY and _LIBC is not None and not user_tuned
    with _malloc_lock:
        _malloc_depth += 1
        if _malloc_depth == 1 and _LIBC is not None:
            _LIBC.malloc_trim(0)  # the limit counts from the memory in use, not from what earlier steps left
            _rss_limit = _rss() + HEAP_SLACK
            if tune:
                for param, value in _REUSE:
                    _LIBC.mallopt(param, value)
    try:
        yield
    finally:
        with _malloc_lock:
            _malloc_depth -= 1
            if _malloc_depth == 0:
                _rss_limit = None
                if tune:
                    for param, value in _GLIBC_DEFAULTS:
                        _LIBC.mallopt(param, value)
                    _LIBC.malloc_trim(0)
