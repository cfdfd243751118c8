"""Padding to the network's stride, and tiled synthesis / analysis for large images.

Images are padded to a multiple of 64 by edge replication (or reflection): zeros would create an
edge that costs bits. Above TILE_THRESHOLD latent positions per side, g_a and g_s run tile by tile
with a halo wider than their receptive field, which bounds memory (a 24 MP photo stays well under
3 GB) at no visible cost; smaller images run in one pass.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

MULTIPLE = 64
STRIDE = 16  # pixels per latent position (y)
PADDING_MODES = ("replicate", "reflect")
TILE = 32  # latent positions per tile side
HALO = 8  # latent positions of context around each tile
TILE_THRESHOLD = 64  # tile only when the latent is larger than this on a side


def padded_size(h: int, w: int) -> tuple[int, int]:
    return -(-h // MULTIPLE) * MULTIPLE, -(-w // MULTIPLE) * MULTIPLE


def pad(x: torch.Tensor, mode: str = "replicate") -> torch.Tensor:
    """Pad (1, 3, H, W) on the bottom and right to a multiple of 64."""
    if mode not in PADDING_MODES:
        raise ValueError(f"padding must be one of {PADDING_MODES}")
    h, w = x.shape[-2:]
    H, W = padded_size(h, w)
    while (x.shape[-2], x.shape[-1]) != (H, W):
        # reflection needs a pad smaller than the side: grow in steps, and replicate 1-pixel sides
        dh, dw = H - x.shape[-2], W - x.shape[-1]
        m = mode
        if mode == "reflect":
            dh, dw = min(dh, x.shape[-2] - 1), min(dw, x.shape[-1] - 1)
            if dh == 0 and H != x.shape[-2] or dw == 0 and W != x.shape[-1]:
                m, dh, dw = "replicate", H - x.shape[-2], W - x.shape[-1]
        x = F.pad(x, (0, dw, 0, dh), mode=m)
    return x


def crop(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    return x[..., :h, :w]


def _spans(n: int) -> list[tuple[int, int]]:
    return [(s, min(n, s + TILE)) for s in range(0, n, TILE)]


def synthesize(g_s: Callable[[torch.Tensor], torch.Tensor], y_hat: torch.Tensor,
               post: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """g_s(y_hat) for (1, M, H, W), tiled with a halo when the latent is large. post: an elementwise
    map applied to each output tile (e.g. to uint8), so the full-size result is only ever post's type."""
    H, W = y_hat.shape[-2:]
    post = post or (lambda t: t)
    if max(H, W) <= TILE_THRESHOLD:
        return post(g_s(y_hat))
    out = None
    for r0, r1 in _spans(H):
        for c0, c1 in _spans(W):
            a0, a1, b0, b1 = max(0, r0 - HALO), min(H, r1 + HALO), max(0, c0 - HALO), min(W, c1 + HALO)
            t = post(g_s(y_hat[..., a0:a1, b0:b1])[
                ..., (r0 - a0) * STRIDE : (r1 - a0) * STRIDE, (c0 - b0) * STRIDE : (c1 - b0) * STRIDE])
            if out is None:
                out = t.new_empty(1, t.shape[1], H * STRIDE, W * STRIDE)
            out[..., r0 * STRIDE : r1 * STRIDE, c0 * STRIDE : c1 * STRIDE] = t
    return out


def analyze(g_a: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
            prepare: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """g_a(x) for (1, 3, 16H, 16W), tiled with a halo when the image is large. prepare: an elementwise
    map applied to each input tile (e.g. uint8 -> float), so x can stay in a compact type."""
    H, W = x.shape[-2] // STRIDE, x.shape[-1] // STRIDE
    prepare = prepare or (lambda t: t)
    if max(H, W) <= TILE_THRESHOLD:
        return g_a(prepare(x))
    out = None
    for r0, r1 in _spans(H):
        for c0, c1 in _spans(W):
            # keep tile origins on the 64-pixel grid so strided convs see the same phase
            a0, b0 = max(0, r0 - HALO) // 4 * 4, max(0, c0 - HALO) // 4 * 4
            a1, b1 = min(H, -(-(r1 + HALO) // 4) * 4), min(W, -(-(c1 + HALO) // 4) * 4)
            t = g_a(prepare(x[..., a0 * STRIDE : a1 * STRIDE, b0 * STRIDE : b1 * STRIDE]))
            if out is None:
                out = t.new_empty(1, t.shape[1], H, W)
            out[..., r0:r1, c0:c1] = t[..., r0 - a0 : r1 - a0, c0 - b0 : c1 - b0]
    return out
