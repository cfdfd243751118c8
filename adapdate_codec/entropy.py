"""Entropy coding of the latents with CompressAI's rANS coder.

* z: one CDF per channel, from the entropy bottleneck's learned density at the integers.
* y: a Gaussian N(mean, scale) per latent. ``y_hat = round(y)`` is coded as the residual
  ``y_hat - round(mean)`` with a CDF chosen by (scale index, fractional part of the mean), so the
  table matches the model's own likelihood. Symbols are written in wavefront order: step
  ``t = 3*row + col`` holds every position whose causal 5x5 context is complete, so the decoder
  decodes a whole diagonal in one batched step (3H + W steps instead of H x W).

Tables are computed once (``build_tables``) when a model is installed, stored with it and covered by
its fingerprint; decoding never recomputes them.

Encoding uses CompressAI's rANS encoder; decoding uses rans.py, a bounds-checked decoder of the same
bitstream (CompressAI's decoder reads past the end of a damaged section).
"""

from __future__ import annotations

import functools
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import scipy.stats
import torch

from adapdate_codec import rans
from adapdate_codec.cai import BufferedRansEncoder, RansEncoder, pmf_to_quantized_cdf
from adapdate_codec.errors import ModelError
from adapdate_codec.fixedpoint import (FLOAT32_EXACT, FRAC, MEAN_OFFSET_BINS, FixedPointParams, HyperRows, RowWindow,
                                       param_rows)
from adapdate_codec.inference import thread_limit

PRECISION = 16
TAIL_MASS = 1e-9
# CompressAI's scale table for the Gaussian conditional (0.11 .. 256, 64 log-spaced levels)
SCALE_TABLE = [float(v) for v in np.exp(np.linspace(math.log(0.11), math.log(256), 64))]
ROWS_PER_CHUNK = 4  # latent rows in flight at the encoder, shared by its threads (~1.5k positions at 24 MP)
MAX_CHUNK_THREADS = 8  # encoder threads computing entropy parameters (their chunks share ROWS_PER_CHUNK)
SYMBOLS_PER_CALL = 1 << 18  # symbols per Python list handed to the rANS coder (~10 MB of Python ints)


# -- tables ---------------------------------------------------------------------------------------
def _quantized_cdf(pmf: np.ndarray) -> list[int]:
    tail = max(0.0, 1.0 - float(pmf.sum()))
    return pmf_to_quantized_cdf([float(p) for p in pmf] + [tail], PRECISION)


def _pack(cdfs: list[list[int]], offsets: list[int]) -> dict[str, torch.Tensor]:
    lengths = [len(c) for c in cdfs]
    return {
        "cdf": torch.tensor([v for c in cdfs for v in c], dtype=torch.int32),
        "lengths": torch.tensor(lengths, dtype=torch.int32),
        "offsets": torch.tensor(offsets, dtype=torch.int32),
    }


def offset_bins(scale: float) -> int:
    """Mean-offset bins for a scale: the fractional part of the mean matters only for narrow
    Gaussians, so wide ones share one table (keeps the tables small)."""
    return MEAN_OFFSET_BINS if scale < 2 else (4 if scale < 8 else 1)


@functools.lru_cache(maxsize=2)
def gaussian_tables(scale_table: tuple[float, ...] = tuple(SCALE_TABLE)) -> dict:
    """CDF index = first[scale_index] + (offset_bin >> shift[scale_index]), offset_bin in [0, 16);
    the residual r has P = Phi((r+.5-d)/s) - Phi((r-.5-d)/s), d the bin's centre offset."""
    mult = -scipy.stats.norm.ppf(TAIL_MASS / 2)
    cdfs, offsets, first, shift = [], [], [], []
    for s in scale_table:
        center = int(math.ceil(s * mult))
        r = np.arange(-center, center + 1, dtype=np.float64)
        bins = offset_bins(s)
        first.append(len(cdfs))
        shift.append(int(math.log2(MEAN_OFFSET_BINS // bins)))
        for b in range(bins):
            d = (b + 0.5) / bins - 0.5
            pmf = scipy.stats.norm.cdf((r + 0.5 - d) / s) - scipy.stats.norm.cdf((r - 0.5 - d) / s)
            cdfs.append(_quantized_cdf(pmf))
            offsets.append(-center)
    packed = _pack(cdfs, offsets)
    packed["first"] = torch.tensor(first, dtype=torch.int64)
    packed["shift"] = torch.tensor(shift, dtype=torch.int64)
    return packed


@torch.no_grad()
def bottleneck_tables(entropy_bottleneck: torch.nn.Module) -> dict:
    """Per-channel CDFs of the integer z_hat over the bottleneck's [lower, upper] quantiles."""
    q = entropy_bottleneck.quantiles.detach().float()[:, 0, :]
    lo = torch.floor(q[:, 0]).long()
    hi = torch.ceil(q[:, 2]).long().clamp(min=lo)
    cdfs, offsets = [], []
    for c in range(q.shape[0]):
        samples = torch.arange(int(lo[c]), int(hi[c]) + 1, dtype=torch.float32)
        x = torch.zeros(q.shape[0], 1, samples.numel())
        x[c, 0] = samples
        lik = entropy_bottleneck._likelihood(x)[0][c, 0].double().numpy()
        cdfs.append(_quantized_cdf(lik))
        offsets.append(int(lo[c]))
    return _pack(cdfs, offsets)


def build_tables(model: torch.nn.Module, z_tables: dict | None = None, y_tables: dict | None = None) -> dict[str, dict]:
    """z_tables / y_tables: reuse stored tables instead of recomputing them (a patch keeps its base's)."""
    return {"z": z_tables if z_tables is not None else bottleneck_tables(model.entropy_bottleneck),
            "y": y_tables if y_tables is not None else gaussian_tables()}


@dataclass
class CdfSet:
    """Tables in the form CompressAI's coder takes (lists), built once per loaded model."""

    cdfs: list[list[int]]
    lengths: list[int]
    offsets: list[int]
    first: torch.Tensor | None = None  # y only: first table of each scale index
    shift: torch.Tensor | None = None  # y only: offset-bin shift of each scale index
    decoding: rans.Tables | None = None  # the same tables, checked, for the decoder

    @classmethod
    def from_packed(cls, t: dict) -> "CdfSet":
        """Tables as stored with a model, checked so that the coder can search them safely."""
        lengths = t["lengths"].tolist()
        flat = t["cdf"].tolist()
        offsets = t["offsets"].tolist()
        if len(offsets) != len(lengths) or sum(lengths) != len(flat) or min(lengths, default=2) < 2:
            raise ModelError("the model's entropy tables are inconsistent (lengths, offsets and CDFs)")
        cdfs, pos = [], 0
        for n in lengths:
            cdfs.append(flat[pos : pos + n])
            pos += n
        try:
            decoding = rans.Tables(cdfs, lengths, offsets)
        except ValueError as e:
            raise ModelError(f"the model's entropy tables are invalid: {e}") from None
        return cls(cdfs, lengths, offsets, t.get("first"), t.get("shift"), decoding)


# -- z --------------------------------------------------------------------------------------------
def encode_z(z_hat: torch.Tensor, tables: CdfSet) -> bytes:
    C = z_hat.shape[0]
    idx = np.repeat(np.arange(C, dtype=np.int32), z_hat[0].numel())
    return RansEncoder().encode_with_indexes(
        z_hat.reshape(-1).to(torch.int32).tolist(), idx.tolist(), tables.cdfs, tables.lengths, tables.offsets
    )


def z_min_bytes(shape: tuple[int, int, int], tables: CdfSet) -> int:
    """The fewest bytes a z section of this shape can take (channel c is coded with table c)."""
    C, h, w = shape
    return rans.min_stream_bytes(h * w * sum(tables.decoding.min_bits(c) for c in range(C)))


def decode_z(data: bytes, shape: tuple[int, int, int], tables: CdfSet) -> torch.Tensor:
    """Channel by channel (channel c uses table c); the section must end exactly after the last symbol."""
    C, h, w = shape
    if C > len(tables.decoding):
        raise ModelError(f"the model has {len(tables.cdfs)} z tables for {C} channels")
    if len(data) < z_min_bytes(shape, tables):
        raise rans.RansError(f"corrupted payload: {len(data)} bytes cannot hold {C}x{h}x{w} coded z latents "
                             f"(at least {z_min_bytes(shape, tables)} bytes)")
    dec = rans.RansDecoder(data)
    out = torch.empty(C, h * w, dtype=torch.float64)
    for c in range(C):
        out[c] = torch.tensor(dec.decode([c] * (h * w), tables.decoding), dtype=torch.float64)
    dec.finish()
    return out.reshape(C, h, w)


# -- y --------------------------------------------------------------------------------------------
def wavefront(H: int, W: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Positions per decoding step, t = 3i + j (every causal 5x5 neighbour has a smaller t)."""
    i, j = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    t = (3 * i + j).ravel()
    order = np.lexsort((i.ravel(), t))  # by step, then by row
    t_sorted = t[order]
    bounds = np.flatnonzero(np.diff(t_sorted)) + 1
    return [(i.ravel()[g], j.ravel()[g]) for g in np.split(order, bounds)]


def table_indexes(scale_idx: torch.Tensor, means: torch.Tensor, tables: CdfSet) -> tuple[torch.Tensor, torch.Tensor]:
    """(CDF index, rounded mean) from integer scale indexes and FRAC-bit integer means."""
    half = 1 << (FRAC - 1)
    mu = torch.div(means + half, 1 << FRAC, rounding_mode="floor")
    frac = means - mu * (1 << FRAC) + half  # in [0, 2**FRAC)
    bin_ = torch.div(frac * MEAN_OFFSET_BINS, 1 << FRAC, rounding_mode="floor")
    return tables.first[scale_idx] + torch.bitwise_right_shift(bin_, tables.shift[scale_idx]), mu


def _one_thread():
    """The entropy-parameter passes are many small or medium tensor ops, where extra threads mostly add
    synchronisation: with 2 threads on a busy 2-core machine, decode_y ran 10x and encode_y 5x slower
    than with 1. Results do not depend on the thread count (exact integer arithmetic). For the calling
    thread only (see inference.thread_limit)."""
    return thread_limit(1)


def encode_y(y_hat: torch.Tensor, params: "torch.Tensor | HyperRows", fp: FixedPointParams, tables: CdfSet,
             rows_per_chunk: int = ROWS_PER_CHUNK, symbols_per_call: int = SYMBOLS_PER_CALL,
             threads: int | None = None) -> bytes:
    """y_hat (M, H, W) integers; params (2M, H, W) from h_s (or made as needed: HyperRows). threads: how
    many chunks of entropy parameters are computed at once (default torch's thread count; any count gives
    the same bytes).

    Memory stays bounded for large images: entropy parameters are computed a few rows at a time
    (fp.parameter_chunk), only the residual and CDF index of each latent are kept (int32), and the
    coder is fed in wavefront order in slices (BufferedRansEncoder + flush writes the same stream as
    one RansEncoder call on the whole lists)."""
    M, H, W = y_hat.shape
    sym = torch.empty(H * W, M, dtype=torch.int32)  # position-major, row-major positions
    index = torch.empty(H * W, M, dtype=torch.int16 if len(tables.cdfs) <= 1 << 15 else torch.int32)
    fp.check_context_range(y_hat)
    hyper = param_rows(params)

    def chunks(r_start: int) -> list[float]:
        """Every `workers`-th chunk from r_start's, written into sym and index (disjoint rows)."""
        peaks = [0.0] * len(fp.ep)
        with _one_thread():
            for r0 in range(r_start, H, rows * workers):
                r1 = min(H, r0 + rows)
                idx, mu = table_indexes(*fp.parameter_chunk(y_hat, hyper, r0, r1, peaks), tables)
                sym[r0 * W : r1 * W] = y_hat[:, r0:r1].reshape(M, -1).T.to(torch.int64) - mu
                index[r0 * W : r1 * W] = idx
        return peaks

    # every value is known at the encoder: the chunks are independent, one thread per core takes its share
    # (the rows in flight stay rows_per_chunk in all: the same memory as one thread)
    workers = max(1, min(threads or torch.get_num_threads(), MAX_CHUNK_THREADS, -(-H // rows_per_chunk)))
    rows = max(1, rows_per_chunk // workers)
    if workers == 1:
        peaks = [chunks(0)]
    else:
        with ThreadPoolExecutor(workers) as pool:
            peaks = list(pool.map(chunks, range(0, rows * workers, rows)))
    fp.check_peaks([max(p) for p in zip(*peaks)])  # as one pass over every position would
    order = torch.from_numpy(np.concatenate([i * W + j for i, j in wavefront(H, W)]))
    step = max(1, symbols_per_call // M)  # positions per call
    enc = BufferedRansEncoder()
    for p0 in range(0, H * W, step):
        o = order[p0 : p0 + step]
        enc.encode_with_indexes(sym[o].reshape(-1).tolist(), index[o].reshape(-1).tolist(),
                                tables.cdfs, tables.lengths, tables.offsets)
    return enc.flush()


def decode_y(data: bytes, params: "torch.Tensor | HyperRows", fp: FixedPointParams, tables: CdfSet) -> torch.Tensor:
    """Wavefront decoding: one batched context + entropy-parameter evaluation per diagonal. params are made
    as the wavefront moves down (RowWindow), not held for the whole latent."""
    M2, H, W = params.shape
    window = RowWindow(param_rows(params))
    M = M2 // 2
    pad = 2
    # FRAC-bit integers: float32 while that is exact (|y| < 2**24: any image's), float64 from the first that is not
    y_pad = torch.zeros(M, H + pad, W + 2 * pad, dtype=torch.float32)
    dec = rans.RansDecoder(data)
    with _one_thread():
        for ii_np, jj_np in wavefront(H, W):
            ii, jj = torch.from_numpy(ii_np), torch.from_numpy(jj_np)
            ctx = fp.context_rows(y_pad, ii, jj)  # (P, 2M)
            rows, first = window.get(int(ii[0]), int(ii[-1]) + 1)  # ii ascends within a diagonal
            feats = torch.cat((rows[:, ii - first, jj].T.double(), ctx), 1)
            scale_idx, means = fp.entropy_parameters(feats)
            index, mu = table_indexes(scale_idx, means, tables)
            sym = dec.decode(index.reshape(-1).tolist(), tables.decoding)
            sym = torch.tensor(sym, dtype=torch.int64).reshape(-1, M)
            y = sym + mu
            if y_pad.dtype == torch.float32 and int(y.abs().max()) >= FLOAT32_EXACT:
                y_pad = y_pad.double()
            y_pad[:, ii + pad, jj + pad] = (y.double() * 2.0**FRAC).T.to(y_pad.dtype)
    dec.finish()
    # in place (exact: FRAC-bit integers / 2**FRAC): y_hat is a view of y_pad, not a second latent
    return y_pad.mul_(2.0**-FRAC).round_()[:, pad:, pad : pad + W]
