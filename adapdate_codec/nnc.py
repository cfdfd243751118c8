"""NNCodec (MPEG-7 NNR) coding of named float32 tensors, with its quirks kept in here.

What the rest of adapdate may rely on:

* ``compress`` / ``decompress`` map ``{name: float32 array}`` to bytes and back; names, shapes and
  dtype (float32) survive the round trip. Values are quantized: tensors of 2 or more dimensions
  ("weights" to NNCodec) with step ``step_size(qp)`` (dependent quantization: errors up to about
  2 steps); 1-d tensors (biases) with NNCodec's fixed ``nonweight_qp=-75`` (step ~2e-6, nearly lossless).
* Every failure is an ``UpdateError`` with one line. NNCodec reports bad input with ``SystemExit``
  and damaged streams with assertions, IndexError or RuntimeError from its C++ CABAC decoder.
* Decoding runs in a forked child process with CPU-time and memory limits: NNCodec's C++ decoder is not
  safe on hostile streams (the fuzz harness found a division by zero, SIGFPE, and endless loops). The
  child sends back raw float32 arrays (never a pickle: a child subverted by such a stream must not run
  code in the parent); a crash, a time-out or a failure there is one UpdateError here.
* Nothing is written to disk (NNCodec writes ``./bitstream.nnc`` unless told otherwise) and
  nothing printed to stdout.

Safety: decoding a stream given as a ``bytearray`` runs NNCodec's bit-syntax parser and its
deepCABAC extension only; pickle/np.load appear in NNCodec only on paths we never take
(``internal_states_path``, ``decompress_model``'s model files). A ``bytes`` argument would be taken
for a *file path*, which is why we always pass a ``bytearray``.
"""

from __future__ import annotations

import contextlib
import io
import os
import select
import signal
import struct
import time

import numpy as np

from adapdate_codec.errors import UpdateError
from adapdate_codec.procfs import kib_field

DEFAULT_QP = -38
QP_DENSITY = 2  # NNCodec's default: 2**QP_DENSITY qp steps per doubling of the step size
QP_RANGE = (-100, 20)  # qp beyond this gives absurd step sizes for adapter weights


def step_size(qp: int, qp_density: int = QP_DENSITY) -> float:
    """NNCodec's quantization step for weights at `qp` (nnc_core.common.get_stepsize_from_qp)."""
    k = 1 << qp_density
    mul = k + (qp & (k - 1))
    return float(mul * 2.0 ** ((qp >> qp_density) - qp_density))


def first_line(e: BaseException) -> str:
    lines = [s.strip() for s in str(e).strip().splitlines() if s.strip()]
    return lines[-1] if lines else type(e).__name__  # deepCABAC puts the useful line last


def _prepare(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    if not tensors:
        raise UpdateError("no tensors to code")
    out = {}
    for name, a in tensors.items():
        if not isinstance(name, str) or not name:
            raise UpdateError(f"tensor names must be non-empty strings, not {name!r}")
        a = np.asarray(a)
        if a.dtype.kind != "f":
            raise UpdateError(f"tensor {name} is {a.dtype}; only floating-point tensors are coded")
        a = np.ascontiguousarray(a, dtype=np.float32)
        if not np.isfinite(a).all():
            raise UpdateError(f"tensor {name} holds NaN or infinite values")
        # NNCodec fails on 0-d arrays; the caller restores exact shapes from its own manifest
        out[name] = a.reshape(1) if a.ndim == 0 else a
    return out


def compress(tensors: dict[str, np.ndarray], qp: int = DEFAULT_QP) -> bytes:
    """Code `tensors` with NNCodec at quantization parameter `qp` (lower = finer, larger)."""
    if not isinstance(qp, int) or not QP_RANGE[0] <= qp <= QP_RANGE[1]:
        raise UpdateError(f"qp must be an integer from {QP_RANGE[0]} to {QP_RANGE[1]}, not {qp!r}")
    prepared = _prepare(tensors)
    from nncodec import nnc

    try:
        with contextlib.redirect_stdout(io.StringIO()):  # NNCodec prints INFO lines
            stream = nnc.compress(prepared, bitstream_path=None, qp=qp, return_bitstream=True)
    except (SystemExit, Exception) as e:  # SystemExit: how NNCodec reports bad input
        raise UpdateError(f"NNCodec cannot code the tensors: {first_line(e)}") from None
    if not isinstance(stream, (bytes, bytearray)) or not stream:
        raise UpdateError("NNCodec returned no bitstream")
    return bytes(stream)


DECODE_CPU_SECONDS = 5.0  # the decoding child's CPU-time limit: this, plus
DECODE_CPU_SECONDS_PER_MB = 30.0  # this per MB of payload (the shipped 465 kB update takes 3.4 s here)
DECODE_EXTRA_MEMORY = 2 << 30  # the child's data may grow this much (tensors are at most 2**26 values)
DECODE_WALL_SECONDS = 600.0  # only for a child that stops without using CPU: on a busy machine a decode
# within its CPU-time limit can take many times longer by the clock
_U32, _U64 = struct.Struct("<I"), struct.Struct("<Q")


def decompress(data: bytes) -> dict[str, np.ndarray]:
    """Decode an NNCodec stream into ``{name: float32 array}``; damage → UpdateError."""
    if not data:
        raise UpdateError("the NNCodec payload is empty")
    if not hasattr(os, "fork"):  # pragma: no cover - adapdate runs on Linux and macOS
        return _decompress_here(data)
    return _decompress_in_child(data)


def decode_cpu_limit(n_bytes: int) -> float:
    return DECODE_CPU_SECONDS + DECODE_CPU_SECONDS_PER_MB * n_bytes / 1e6


def _decompress_in_child(data: bytes) -> dict[str, np.ndarray]:
    import resource

    from nncodec import nnc  # noqa: F401 - imported here, once: not in the child, on its CPU-time budget

    cpu = decode_cpu_limit(len(data))
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: decode, write the result, never return
        code = 0
        try:
            os.close(read_end)
            import faulthandler

            faulthandler.disable()  # a crash here is the parent's to report, in one line
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 1)  # NNCodec's C++ prints, and what a crash would print
            os.dup2(null, 2)
            resource.setrlimit(resource.RLIMIT_CPU, (int(cpu) + 1, int(cpu) + 2))
            data_limit = _data_bytes() + DECODE_EXTRA_MEMORY
            _, hard = resource.getrlimit(resource.RLIMIT_DATA)
            if hard == resource.RLIM_INFINITY or data_limit < hard:
                resource.setrlimit(resource.RLIMIT_DATA, (data_limit, hard))
            try:
                message = b"T" + _pack(_decompress_here(data))
            except UpdateError as e:
                message = b"E" + str(e).encode()
            except MemoryError:
                message = b"E" + b"the NNCodec payload is damaged (decoding it needs too much memory)"
            with os.fdopen(write_end, "wb") as f:
                f.write(message)
        except BaseException:  # noqa: BLE001 - anything else: the parent reports a failed decoder
            code = 1
        finally:
            os._exit(code)
    os.close(write_end)
    message, timed_out = _read_all(read_end, deadline=time.monotonic() + max(DECODE_WALL_SECONDS, 20 * cpu))
    if timed_out:
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    if timed_out:
        raise UpdateError("the NNCodec payload is damaged (its decoder stopped responding)")
    if os.WIFSIGNALED(status) and os.WTERMSIG(status) in (signal.SIGXCPU, signal.SIGKILL):
        raise UpdateError(f"the NNCodec payload is damaged (decoding it ran over {cpu:.0f} s of CPU time)")
    if os.WIFSIGNALED(status):
        name = signal.Signals(os.WTERMSIG(status)).name
        raise UpdateError(f"the NNCodec payload is damaged (its decoder crashed: {name})")
    if message[:1] == b"E":
        raise UpdateError(message[1:].decode(errors="replace"))
    if message[:1] != b"T" or os.WEXITSTATUS(status) != 0:
        raise UpdateError("the NNCodec payload is damaged (its decoder failed)")
    return _unpack(message[1:])


def _data_bytes() -> int:
    """This process's data segment size (VmData): the base of the child's memory limit."""
    return kib_field("/proc/self/status", "VmData") or 0


def _read_all(fd: int, deadline: float) -> tuple[bytes, bool]:
    """Everything written to pipe `fd` until its writer closes it; (data, True) if the deadline passes."""
    chunks = []
    with os.fdopen(fd, "rb", buffering=0) as f:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([f], [], [], left)[0]:
                return b"".join(chunks), True
            chunk = f.read(1 << 20)
            if not chunk:
                return b"".join(chunks), False
            chunks.append(chunk)


def _pack(tensors: dict[str, np.ndarray]) -> bytes:
    parts = [_U32.pack(len(tensors))]
    for name, a in tensors.items():
        raw = name.encode()
        parts += [_U32.pack(len(raw)), raw, _U32.pack(a.ndim), *(_U64.pack(d) for d in a.shape),
                  a.astype("<f4", copy=False).tobytes()]
    return b"".join(parts)


def _unpack(message: bytes) -> dict[str, np.ndarray]:
    """The child's tensors, every length checked (the child decoded untrusted data: trust nothing)."""
    bad = UpdateError("the NNCodec payload is damaged (its decoder returned malformed data)")
    pos, out = 0, {}

    def take(n: int) -> bytes:
        nonlocal pos
        if n > len(message) - pos:
            raise bad
        pos += n
        return message[pos - n:pos]

    for _ in range(_U32.unpack(take(4))[0]):
        name = take(_U32.unpack(take(4))[0]).decode(errors="replace")
        ndim = _U32.unpack(take(4))[0]
        if ndim > 8:
            raise bad
        shape = tuple(_U64.unpack(take(8))[0] for _ in range(ndim))
        n = 1
        for d in shape:
            n *= d
        out[name] = np.frombuffer(take(4 * n), dtype="<f4").reshape(shape).astype(np.float32)
    if pos != len(message):
        raise bad
    return out


def _decompress_here(data: bytes) -> dict[str, np.ndarray]:
    from nncodec import nnc

    try:
        with contextlib.redirect_stdout(io.StringIO()):
            # a bytearray, never bytes: NNCodec would treat bytes as a path to open
            decoded = nnc.decompress(bytearray(data))
    except (SystemExit, Exception) as e:  # damaged streams raise all kinds of errors
        raise UpdateError(f"the NNCodec payload is damaged ({type(e).__name__}: {first_line(e)})") from None
    if not isinstance(decoded, dict):
        raise UpdateError("the NNCodec payload did not decode to named tensors")
    out = {}
    for name, a in decoded.items():
        if not isinstance(name, str) or not isinstance(a, np.ndarray) or a.dtype.kind != "f":
            raise UpdateError(f"the NNCodec payload holds an unexpected entry {name!r}")
        out[name] = np.ascontiguousarray(a, dtype=np.float32)
    return out
