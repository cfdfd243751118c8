"""NNCodec (MPEG-7 NNR) coding of named float32 tensors, with its quirks kept in here.

What the rest of adapdate may rely on:

* ``compress`` / ``decompress`` map ``{name: float32 array}`` to bytes and back; names, shapes and
  dtype (float32) survive the round trip. Values are quantized: tensors of 2 or more dimensions
  ("weights" to NNCodec) with step ``step_size(qp)`` (dependent quantization: errors up to about
  2 steps); 1-d tensors (biases) with NNCodec's fixed ``nonweight_qp=-75`` (step ~2e-6, nearly lossless).
* Every failure is an ``UpdateError`` with one line. NNCodec reports bad input with ``SystemExit``
  and damaged streams with assertions, IndexError or RuntimeError from its C++ CABAC decoder.
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

import numpy as np

from adapdate_codec.errors import UpdateError

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


def decompress(data: bytes) -> dict[str, np.ndarray]:
    """Decode an NNCodec stream into ``{name: float32 array}``; damage → UpdateError."""
    if not data:
        raise UpdateError("the NNCodec payload is empty")
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
