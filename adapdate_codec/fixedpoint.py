"""Platform-independent entropy parameters: h_s, the context model and entropy_parameters in integers.

Why: the scale index and rounded mean of every latent must be identical at the encoder and the
decoder, whatever the CPU, GPU, BLAS or thread count. Floats don't give that (summation order
changes the last bit). Here every weight is an integer ``W = round(w * 2**e_w)`` and every activation
an integer ``A`` standing for ``A / 2**FRAC``. Convolutions are evaluated as im2col + matmul in
float64 on integer values: as long as every partial sum stays below 2**53 the result is exact in any
summation order (checked against a bound per layer, see ``_check_range``). Rescaling is a
multiplication by a power of two plus floor, also exact.

The quantized parameters are derived once, when a model is installed or patched, stored with it and
covered by its fingerprint (see bundle.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

FRAC = 10  # fractional bits of activations (means are coded relative to 1/1024 steps)
WEIGHT_BITS = 14  # |W| < 2**14 per layer
LEAKY_NUM, LEAKY_SHIFT = 655, 16  # LeakyReLU slope 0.01 ~= 655 / 2**16
EXACT_LIMIT = 2.0**52
MEAN_OFFSET_BINS = 16  # fractional part of the mean, quantized for the CDF tables


class FixedPointRangeError(ArithmeticError):
    """A fixed-point sum could exceed the exactly representable range."""


@dataclass
class IntLayer:
    """One integer conv layer: out = (W * A + B) * 2**-(e_w) -> FRAC bits, optional LeakyReLU."""

    weight: torch.Tensor  # float64 holding integers, (C_out, C_in * k * k) in im2col order
    bias: torch.Tensor  # float64 integers at scale 2**(FRAC + e_w)
    e_w: int
    kernel: int
    leaky: bool
    weight_abs_sum: float  # max over output channels of sum |W|: bounds every partial sum


def quantize_conv(conv: nn.Conv2d, leaky: bool, mask: torch.Tensor | None = None) -> dict:
    """Integer weights of one conv, as a dict of tensors (stored in the model bundle)."""
    w = conv.weight.detach().double()
    if mask is not None:
        w = w * mask.double()
    peak = float(w.abs().max()) if w.numel() else 1.0
    e_w = WEIGHT_BITS - 1 - max(0, math.ceil(math.log2(max(peak, 2.0**-20))))
    e_w = max(0, min(e_w, 30))
    W = torch.round(w * 2.0**e_w).to(torch.int16)  # |W| < 2**14: int16 halves the stored size
    b = conv.bias.detach().double() if conv.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
    B = torch.round(b * 2.0 ** (FRAC + e_w)).to(torch.int64)
    return {"weight": W, "bias": B, "e_w": torch.tensor(e_w), "leaky": torch.tensor(int(leaky))}


def _layer(d: dict) -> IntLayer:
    W = d["weight"].double()
    k = W.shape[-1]
    Wm = W.reshape(W.shape[0], -1)
    return IntLayer(Wm, d["bias"].double(), int(d["e_w"]), k, bool(int(d["leaky"])), float(Wm.abs().sum(1).max()))


def _check_bound(peak: float, layer: IntLayer) -> None:
    """peak: max |input activation| the layer sees (over all positions it is applied to)."""
    bound = peak * layer.weight_abs_sum + float(layer.bias.abs().max())
    if bound >= EXACT_LIMIT:
        raise FixedPointRangeError(f"fixed-point accumulator bound {bound:.3g} exceeds 2^52")


def _check_range(A: torch.Tensor, layer: IntLayer) -> None:
    _check_bound(float(A.abs().max()), layer)


def _rescale_(acc: torch.Tensor, e_w: int) -> torch.Tensor:
    """From scale 2**(FRAC+e_w) back to FRAC bits, rounding half up (exact in float64), in place."""
    return acc.mul_(2.0**-e_w).add_(0.5).floor_()


def _leaky(A: torch.Tensor) -> torch.Tensor:
    neg = (A * (LEAKY_NUM * 2.0**-LEAKY_SHIFT)).add_(0.5).floor_()
    return torch.where(A < 0, neg, A)


def apply_rows(layer: IntLayer, cols: torch.Tensor) -> torch.Tensor:
    """Apply a layer to im2col rows (P, C_in*k*k) -> (P, C_out). In-place steps on the fresh product:
    the same operations as out of place, one buffer instead of three."""
    out = _rescale_((cols @ layer.weight.T).add_(layer.bias), layer.e_w)
    return _leaky(out) if layer.leaky else out


FLOAT32_EXACT = 2.0**24  # integers of smaller magnitude are exact in float32


def compact(t: torch.Tensor) -> torch.Tensor:
    """float64 integers as float32 when that is exact (half the memory), else unchanged."""
    return t.float() if t.dtype == torch.float64 and float(t.abs().max()) < FLOAT32_EXACT else t


def conv_rows(layer: IntLayer, A: torch.Tensor, r0: int, r1: int) -> torch.Tensor:
    """Rows r0:r1 of the 'same' convolution of A (C, H, W) with zero padding (A integers, float32 or 64)."""
    H, W = A.shape[-2:]
    if r1 <= r0:
        return A.new_empty(layer.weight.shape[0], 0, W, dtype=torch.float64)
    k, pad = layer.kernel, layer.kernel // 2
    a0, a1 = max(0, r0 - pad), min(H, r1 + pad)
    block = F.pad(A[None, :, a0:a1].double(), (pad, pad, pad - (r0 - a0), pad - (a1 - r1)))
    cols = F.unfold(block, k)[0].T  # (rows*W, C*k*k)
    return apply_rows(layer, cols).T.reshape(-1, r1 - r0, W)


def conv_full(layer: IntLayer, A: torch.Tensor, rows_per_chunk: int = 4, shuffle: int | None = None,
              as_float32: bool = False) -> torch.Tensor:
    """'same' convolution of A (C, H, W) with zero padding, then the pixel shuffle if given, in chunks of
    output rows (bounded memory: each chunk pads only its own rows and is written, shuffled, into one
    preallocated output). as_float32: a float32 output while that is exact (see compact)."""
    _check_range(A, layer)
    C, H, W = A.shape
    r = shuffle or 1
    out = A.new_empty(layer.weight.shape[0] // r**2, H * r, W * r,
                      dtype=torch.float32 if as_float32 else torch.float64)
    for r0 in range(0, H, rows_per_chunk):
        r1 = min(H, r0 + rows_per_chunk)
        chunk = conv_rows(layer, A, r0, r1)
        if out.dtype == torch.float32 and float(chunk.abs().max()) >= FLOAT32_EXACT:
            out = out.double()
        out[:, r0 * r : r1 * r] = F.pixel_shuffle(chunk[None], r)[0] if shuffle else chunk
    return out


class HyperRows:
    """The output of h_s (2M, H, W), made a few rows at a time. Every layer but the last has run on the
    whole z (small: a quarter of the latent's resolution); the last, at full latent resolution and the
    largest output, runs on the rows asked for. Range checks are those of one pass: the last layer's
    input is complete, so its check comes first, here."""

    def __init__(self, last: tuple[IntLayer, object], A: torch.Tensor) -> None:
        layer, shuffle = last
        if shuffle is not None:
            raise ValueError("h_s must end with a plain convolution")
        _check_range(A, layer)
        self.layer, self.input = layer, A
        self.shape = (layer.weight.shape[0], *A.shape[-2:])

    def rows(self, r0: int, r1: int) -> torch.Tensor:
        return conv_rows(self.layer, self.input, r0, r1)


class TensorRows:
    """A whole params tensor seen as HyperRows (for callers that have one)."""

    def __init__(self, params: torch.Tensor) -> None:
        self.params, self.shape = params, tuple(params.shape)

    def rows(self, r0: int, r1: int) -> torch.Tensor:
        return self.params[:, r0:r1]


def param_rows(params: "torch.Tensor | HyperRows | TensorRows") -> "HyperRows | TensorRows":
    return TensorRows(params) if isinstance(params, torch.Tensor) else params


class RowWindow:
    """Rows of HyperRows asked for in a window that only moves down (the decoder's wavefront spans about a
    third of the latent's width in rows): rows are made `chunk` at a time and dropped once behind the
    window, and kept as float32 where that is exact."""

    def __init__(self, source: "HyperRows | TensorRows", chunk: int = 16) -> None:
        self.source, self.chunk = source, chunk
        self.start, self.t = 0, source.rows(0, 0)

    def get(self, lo: int, hi: int) -> tuple[torch.Tensor, int]:
        """(t, start): t[:, i - start] is row i, for every i in lo:hi; lo and hi never decrease."""
        end = self.start + self.t.shape[1]
        if hi > end:
            new = compact(self.source.rows(end, min(self.source.shape[1], max(hi, end + self.chunk))))
            self.t = torch.cat((self.t[:, max(0, lo - self.start) :], new), 1)
            self.start = max(self.start, lo)
        return self.t, self.start


class FixedPointParams:
    """The integer entropy-parameter path of one model."""

    def __init__(self, fixed: dict[str, dict]):
        self.hs = [(_layer(fixed[k]), fixed[k].get("shuffle")) for k in _ordered(fixed, "h_s")]
        self.ctx = _layer(fixed["context_prediction"])
        self.ep = [_layer(fixed[k]) for k in _ordered(fixed, "entropy_parameters")]
        self.scale_thresholds = fixed["scale"]["thresholds"].to(torch.int64)
        ctx_mask = fixed["context_prediction"]["mask"].bool()  # (k, k) causal taps
        self.ctx_taps = ctx_mask.nonzero().tolist()  # (dy, dx) with dy, dx in [0, k)
        k = self.ctx.kernel
        C_in = self.ctx.weight.shape[1] // (k * k)
        # weights restricted to the causal taps, im2col order (C_in, taps)
        w = self.ctx.weight.reshape(-1, C_in, k, k)
        self.ctx_tap_weight = torch.stack([w[:, :, dy, dx] for dy, dx in self.ctx_taps], dim=2).reshape(w.shape[0], -1)

    # -- hyper-synthesis ---------------------------------------------------------------------------------
    def hyper(self, z_hat: torch.Tensor) -> torch.Tensor:
        """h_s on integer z_hat (C, h, w) -> params (2M, 4h, 4w) as FRAC-bit integers."""
        rows = self.hyper_rows(z_hat)
        return rows.rows(0, rows.shape[1])

    def hyper_rows(self, z_hat: torch.Tensor) -> "HyperRows":
        """h_s on integer z_hat, its last layer left to be computed a few rows at a time (HyperRows)."""
        A = z_hat.double() * 2.0**FRAC
        for n, (layer, shuffle) in enumerate(self.hs[:-1]):
            # the input of the last layer is kept for HyperRows: float32 where exact, as it is the largest
            A = conv_full(layer, A, shuffle=None if shuffle is None else int(shuffle), as_float32=n == len(self.hs) - 2)
        return HyperRows(self.hs[-1], A)

    # -- context + entropy parameters ------------------------------------------------------------
    def context_full(self, y_hat: torch.Tensor) -> torch.Tensor:
        """Masked conv over the whole integer y_hat (M, H, W) in one pass (reference for the chunked
        encoder path, see parameter_chunks)."""
        return conv_full(self.ctx, y_hat.double() * 2.0**FRAC)

    def entropy_parameters(self, feats: torch.Tensor, peaks: list[float] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """feats (P, 4M) -> (scale index (P, M) int64, mean as FRAC-bit integers (P, M) int64).

        peaks: None checks the range of every layer here; a list (one entry per layer) instead
        accumulates each layer's peak |input| for check_peaks, so that a caller feeding chunks gets
        exactly the outcome of one pass over all positions."""
        A = feats
        for n, layer in enumerate(self.ep):
            if peaks is None:
                _check_range(A, layer)
            else:
                peaks[n] = max(peaks[n], float(A.abs().max()))
            A = apply_rows(layer, A)
        M = A.shape[1] // 2
        scales, means = A[:, :M].to(torch.int64), A[:, M:].to(torch.int64)
        return scale_indexes(scales, self.scale_thresholds), means

    def check_peaks(self, peaks: list[float]) -> None:
        """Range check of entropy_parameters over all chunks (first failing layer, as one pass would)."""
        for peak, layer in zip(peaks, self.ep):
            _check_bound(peak, layer)

    def parameter_chunks(self, y_hat: torch.Tensor, params: "torch.Tensor | HyperRows",
                         rows_per_chunk: int = 8) -> Iterator[tuple[int, int, torch.Tensor, torch.Tensor]]:
        """Encoder: (r0, r1, scale index (P, M), mean (P, M)) for latent rows r0:r1 (positions in
        row-major order), every context known. Chunks bound memory to a few rows of features; the
        integers equal those of one pass over the whole latent (exact arithmetic, same range checks:
        the last ones raise after the last chunk, so consume the whole iterator)."""
        self.check_context_range(y_hat)
        peaks = [0.0] * len(self.ep)
        params = param_rows(params)
        for r0 in range(0, y_hat.shape[1], rows_per_chunk):
            r1 = min(y_hat.shape[1], r0 + rows_per_chunk)
            yield (r0, r1, *self.parameter_chunk(y_hat, params, r0, r1, peaks))
        self.check_peaks(peaks)

    def check_context_range(self, y_hat: torch.Tensor) -> None:
        """The context convolution's range check, on the whole latent (as conv_full did)."""
        _check_bound(float(y_hat.abs().max()) * 2.0**FRAC, self.ctx)

    def parameter_chunk(self, y_hat: torch.Tensor, params: "HyperRows | TensorRows", r0: int, r1: int,
                        peaks: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale index, mean) of latent rows r0:r1, every context known; each layer's peak |input| is
        accumulated into `peaks` (for check_peaks). Reads y_hat and params only: chunks may run at once."""
        M, H, W = y_hat.shape
        pad = self.ctx.kernel // 2
        a0 = max(0, r0 - pad)
        # rows r0-pad .. r1-1 of y, zero-padded like the decoder's y_pad (causal taps: nothing below)
        block = F.pad(y_hat[None, :, a0:r1].double() * 2.0**FRAC, (pad, pad, pad - (r0 - a0), 0))[0]
        ctx = self.context_block(block, r1 - r0, W)
        feats = torch.cat((params.rows(r0, r1).reshape(2 * M, -1).T, ctx), 1)
        del block, ctx
        return self.entropy_parameters(feats, peaks)

    def context_block(self, block: torch.Tensor, rows: int, W: int) -> torch.Tensor:
        """Context of every position of a block of rows: block (M, rows+pad, W+2pad) holds the FRAC-bit
        y above and left of them (zeros outside the latent). Returns (rows*W, 2M), row-major; the same
        taps and column order as context_rows."""
        M, taps = block.shape[0], len(self.ctx_taps)
        cols = block.new_empty(rows, W, M, taps)  # written in place: one buffer, no stacked + permuted copies
        for t, (dy, dx) in enumerate(self.ctx_taps):
            cols[..., t] = block[:, dy : dy + rows, dx : dx + W].permute(1, 2, 0)
        cols = cols.view(rows * W, M * taps)  # (P, M * taps)
        return _rescale_((cols @ self.ctx_tap_weight.T).add_(self.ctx.bias), self.ctx.e_w)

    def context_rows(self, y_pad: torch.Tensor, ii: torch.Tensor, jj: torch.Tensor) -> torch.Tensor:
        """Context at positions (ii, jj) of y_pad (M, H+pad, W+2pad) (FRAC-bit integers, float64 or float32),
        padded by k//2 on top, left and right. Returns (P, 2M)."""
        cols = torch.stack([y_pad[:, ii + dy, jj + dx] for dy, dx in self.ctx_taps], dim=2)  # (M, P, taps)
        cols = cols.permute(1, 0, 2).reshape(ii.numel(), -1)
        return _rescale_((cols.double() @ self.ctx_tap_weight.T).add_(self.ctx.bias), self.ctx.e_w)


def scale_indexes(scales: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """CompressAI's build_indexes in integers: the first table scale >= the predicted scale."""
    return torch.searchsorted(thresholds, scales.contiguous(), side="left").clamp_(max=thresholds.numel())


def _index(key: str) -> int:
    return int(key.split(".")[1])


def _ordered(fixed: dict, prefix: str) -> list[str]:
    """Keys of one Sequential's convs, in module order (keys are state-dict prefixes, e.g. h_s.2.0)."""
    return sorted((k for k in fixed if k.startswith(prefix + ".")), key=_index)


def fixed_convs(model: nn.Module) -> dict[str, tuple[nn.Conv2d, int | None]]:
    """State-dict prefix -> (conv, pixel-shuffle factor) for every conv of the integer path."""
    out: dict[str, tuple[nn.Conv2d, int | None]] = {}
    for i, m in model.h_s.named_children():
        if isinstance(m, nn.Conv2d):
            out[f"h_s.{i}"] = (m, None)
        elif isinstance(m, nn.Sequential):  # sub-pixel conv: conv then PixelShuffle
            out[f"h_s.{i}.0"] = (m[0], m[1].upscale_factor)
    out["context_prediction"] = (model.context_prediction, None)
    for i, m in model.entropy_parameters.named_children():
        if isinstance(m, nn.Conv2d):
            out[f"entropy_parameters.{i}"] = (m, None)
    return out


def is_fixed_point_key(key: str) -> bool:
    """State-dict entries that the bundle stores only in integer form."""
    return key.startswith(("h_s.", "entropy_parameters.")) or key in ("context_prediction.weight", "context_prediction.bias")


def dequantize(fixed: dict[str, dict]) -> dict[str, torch.Tensor]:
    """Float weights equal to the integer ones (what training and adapters start from)."""
    sd = {}
    for key, d in fixed.items():
        if "weight" not in d:
            continue
        e_w = int(d["e_w"])
        sd[f"{key}.weight"] = (d["weight"].double() * 2.0**-e_w).float()
        sd[f"{key}.bias"] = (d["bias"].double() * 2.0 ** -(FRAC + e_w)).float()
    return sd


def quantize_model(model: nn.Module, scale_table: list[float]) -> dict[str, dict]:
    """Derive the integer parameters of h_s, context_prediction and entropy_parameters."""
    fixed: dict[str, dict] = {}
    convs = fixed_convs(model)
    last_hs = [k for k in convs if k.startswith("h_s.")][-1]
    last_ep = [k for k in convs if k.startswith("entropy_parameters.")][-1]
    for key, (conv, shuffle) in convs.items():
        if key == "context_prediction":
            d = quantize_conv(conv, leaky=False, mask=conv.mask)
            d["mask"] = conv.mask[0, 0].to(torch.int32)
        else:
            d = quantize_conv(conv, leaky=key not in (last_hs, last_ep))
        if shuffle is not None:
            d["shuffle"] = torch.tensor(shuffle)
        fixed[key] = d
    # predicted scale S/2**FRAC <= s_k  <=>  S <= floor(s_k * 2**FRAC); the last entry catches the rest
    thresholds = torch.tensor([math.floor(s * 2**FRAC) for s in scale_table[:-1]], dtype=torch.int64)
    fixed["scale"] = {"thresholds": thresholds}
    return fixed
