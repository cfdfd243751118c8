"""Padding to the network's stride, and the analysis and synthesis transforms run tile by tile.

Images are padded to a multiple of 64 by edge replication (or reflection): zeros would create an
edge that costs bits. g_a and g_s run on tiles of about TILE latents a side. A tile is not cut out with
a fixed halo: each module of the transform computes only the positions that the rest of the tile needs
(walking the receptive fields of the network's own layers back from the tile's output), so the costly
full-resolution layers overlap their neighbours by a few positions only, memory is bounded by the tile,
time is linear in pixels, and tiles can run in parallel; results equal one pass over the whole image (in
float32, to the last bits the conv kernels' blocking gives: see below).
"""

from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from adapdate_codec.cai import GDN
from adapdate_codec.inference import limit_this_thread, release_if_grown, thread_limit

MULTIPLE = 64
STRIDE = 16  # pixels per latent position (y)
PADDING_MODES = ("replicate", "reflect")
STRIP = 96  # latents: the widest column strip (memory: a strip's feature maps are this wide)
# latents^2: the output a band of a strip computes at a time (its rows: BAND_AREA / the strip's width). Its
# feature maps are the memory of a block; smaller bands recompute more rows of context, larger ones made
# glibc's heap grow faster than freed memory was reused (24 MP: bands of 8 rows had the heap trimmed 127
# times in an analysis, of 5 rows 8 times, and ran 10 % faster; see inference.HEAP_SLACK).
BAND_AREA = 480
MIN_BLOCK = 48  # latents: the narrowest block cut for parallel threads (narrower ones recompute too much)


def padded_size(h: int, w: int) -> tuple[int, int]:
    return -(-h // MULTIPLE) * MULTIPLE, -(-w // MULTIPLE) * MULTIPLE


def pad_indexes(h: int, w: int, mode: str = "replicate") -> tuple[torch.Tensor, torch.Tensor]:
    """Source row and column of every row and column of the image padded on the bottom and right to a
    multiple of 64 (padding only repeats or mirrors pixels, separately along each axis)."""
    if mode not in PADDING_MODES:
        raise ValueError(f"padding must be one of {PADDING_MODES}")
    H, W = padded_size(h, w)
    rows, cols = (torch.arange(n, dtype=torch.float64)[None, None] for n in (h, w))  # F.pad pads the last dim
    while (rows.shape[-1], cols.shape[-1]) != (H, W):
        # reflection needs a pad smaller than the side: grow in steps, and replicate 1-pixel sides
        dh, dw = H - rows.shape[-1], W - cols.shape[-1]
        m = mode
        if mode == "reflect":
            dh, dw = min(dh, rows.shape[-1] - 1), min(dw, cols.shape[-1] - 1)
            if dh == 0 and H != rows.shape[-1] or dw == 0 and W != cols.shape[-1]:
                m, dh, dw = "replicate", H - rows.shape[-1], W - cols.shape[-1]
        rows, cols = F.pad(rows, (0, dh), mode=m), F.pad(cols, (0, dw), mode=m)
    return rows[0, 0].long(), cols[0, 0].long()


def pad(x: torch.Tensor, mode: str = "replicate") -> torch.Tensor:
    """Pad (1, C, H, W) on the bottom and right to a multiple of 64."""
    rows, cols = pad_indexes(x.shape[-2], x.shape[-1], mode)
    return x.index_select(-2, rows).index_select(-1, cols)


class PaddedImage:
    """An H x W x C image as the (1, C, H', W') tensor padded to a multiple of 64, read a region at a time
    (channels-last views of the pixels where a region lies inside the image): no padded copy."""

    def __init__(self, pixels: torch.Tensor, mode: str = "replicate") -> None:
        self.pixels = pixels
        self.rows, self.cols = pad_indexes(pixels.shape[0], pixels.shape[1], mode)
        self.shape = (1, pixels.shape[2], self.rows.numel(), self.cols.numel())

    def read(self, rows: tuple[int, int], cols: tuple[int, int]) -> torch.Tensor:
        t = self.pixels
        for axis, (idx, (lo, hi)) in enumerate(((self.rows, rows), (self.cols, cols))):
            src = idx[lo:hi]
            first = int(src[0])
            if first + hi - lo <= t.shape[axis] and torch.equal(src, torch.arange(first, first + hi - lo)):
                t = t.narrow(axis, first, hi - lo)
            else:
                t = t.index_select(axis, src)
        return t.permute(2, 0, 1)[None]


def crop(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    return x[..., :h, :w]


# --- receptive fields ---------------------------------------------------------------------------------
# Positions along one axis (rows: axis 0, columns: axis 1) of one module's input or output, global to the
# whole image at that module's resolution. Every conv computes an output position from its own window,
# whatever the extent of the tensor around it, so a tile that holds each module's whole window gets the
# numbers of one pass over the image: bit for bit in float64 (tests/test_tiling.py checks it on every module
# kind). In float32, oneDNN's brgemm kernels (torch 2.14, AVX2) block the sum by the tensor's width and by
# the thread count, so a tile's numbers may differ from one pass in the last bit or two (~1e-6); the encoder
# may then round a latent otherwise, which changes a file's bytes but never its decoding (the decoder is
# the standard; g_a is free).

Span = tuple[int, int]  # [start, stop)


class _Elementwise(nn.Module):
    """A function applied to every element (e.g. float -> uint8 pixels), as a pointwise module."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.fn(t)


_POINTWISE = (GDN, nn.LeakyReLU, nn.ReLU, nn.Identity, _Elementwise)


def _conv_geometry(m: nn.Conv2d, axis: int) -> tuple[int, int, int, int]:
    if isinstance(m.padding, str) or m.padding_mode != "zeros":
        raise TypeError(f"tiling needs integer zero padding, not {m.padding!r} ({m.padding_mode})")
    return m.kernel_size[axis], m.stride[axis], m.padding[axis], m.dilation[axis]


def _chain(m: nn.Module) -> list[nn.Module] | None:
    """The modules that m applies one after the other, or None for a layer."""
    if isinstance(m, nn.Sequential):
        return list(m)
    if hasattr(m, "branches"):
        return m.branches()[0]
    return None


def need(m: nn.Module | list[nn.Module], span: Span, axis: int) -> Span:
    """The input positions that m's outputs at `span` are computed from."""
    lo, hi = span
    if isinstance(m, list):
        for sub in reversed(m):
            lo, hi = need(sub, (lo, hi), axis)
        return lo, hi
    if isinstance(m, nn.Conv2d):
        k, s, p, d = _conv_geometry(m, axis)
        return lo * s - p, (hi - 1) * s - p + d * (k - 1) + 1
    if isinstance(m, nn.PixelShuffle):
        u = m.upscale_factor
        return lo // u, -(-hi // u)
    if isinstance(m, nn.Sequential):
        return need(list(m), span, axis)
    if hasattr(m, "branches"):  # outputs of several chains added up: the union of their windows
        spans = [need(chain, span, axis) for chain in m.branches()]
        return min(a for a, _ in spans), max(b for _, b in spans)
    if isinstance(m, _POINTWISE):
        return span
    raise TypeError(f"tiling does not know the receptive field of {type(m).__name__}")


def forward(m: nn.Module | list[nn.Module], start: int, n: int, axis: int) -> tuple[int, int]:
    """m's output (global start, extent) for an input of extent n from global `start`."""
    if isinstance(m, nn.Module):
        chain = _chain(m)
        if chain is None:
            if isinstance(m, nn.Conv2d):
                k, s, p, d = _conv_geometry(m, axis)
                if start % s:
                    raise ValueError(f"a stride-{s} conv input must start at a multiple of {s}, not {start}")
                return start // s, (n + 2 * p - d * (k - 1) - 1) // s + 1
            if isinstance(m, nn.PixelShuffle):
                return start * m.upscale_factor, n * m.upscale_factor
            return start, n
        m = chain
    for sub in m:
        start, n = forward(sub, start, n, axis)
    return start, n


def alignment(m: nn.Module, axis: int) -> int:
    """What a tile's input start must be a multiple of, so that m's strided convs keep the image's phase."""
    if isinstance(m, nn.Conv2d):
        return _conv_geometry(m, axis)[1]
    chain = _chain(m)
    return math.prod(alignment(sub, axis) for sub in chain) if chain else 1


def read_span(m: nn.Module, out: Span, size: int, axis: int) -> Span:
    """The input positions m reads to compute `out`: its window, clipped to the image (a module's own zero
    padding at the image's edge is the image's) and aligned to its strides."""
    lo, hi = need(m, out, axis)
    step = alignment(m, axis)
    return max(0, lo) // step * step, min(size, hi)


def level_sizes(modules: list[nn.Module], size: int, axis: int) -> list[int]:
    """Extent of each module's input, then of the output, for an input of extent `size`."""
    sizes = [size]
    for m in modules:
        sizes.append(forward(m, 0, sizes[-1], axis)[1])
    return sizes


@dataclass(frozen=True)
class AxisPlan:
    """One piece of the output along one axis: the span each module reads (its input), then the piece's
    output span, and where the next module's span starts in each module's output."""

    spans: tuple[Span, ...]
    offsets: tuple[int, ...]


def plan_axis(modules: list[nn.Module], size: int, out: Span, axis: int) -> AxisPlan:
    """Walk back from an output span: each module reads only what the rest needs."""
    sizes = level_sizes(modules, size, axis)
    spans: list[Span] = [out]
    for m, n in zip(reversed(modules), reversed(sizes[:-1])):
        spans.insert(0, read_span(m, spans[0], n, axis))
    offsets = []
    for m, (lo, hi), (nxt_lo, nxt_hi) in zip(modules, spans, spans[1:]):
        start, n = forward(m, lo, hi - lo, axis)
        assert start <= nxt_lo and nxt_hi <= start + n, "receptive field walk out of step with forward"
        offsets.append(nxt_lo - start)
    return AxisPlan(tuple(spans), tuple(offsets))


def _grid(n: int, parts: int, unit: int = 1) -> list[Span]:
    """n latents in `parts` balanced spans, in units of `unit` positions."""
    bounds = [round(i * n / parts) * unit for i in range(parts + 1)]
    return list(zip(bounds, bounds[1:]))


# --- blocks streamed in bands ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """How the output is cut: blocks (row regions x column strips, in latents), run by `workers` threads
    with `torch_threads` torch threads each."""

    regions: int
    strips: int
    workers: int
    torch_threads: int


def layout(H: int, W: int, threads: int) -> Layout:
    """Strips at most STRIP latents wide (memory). With several threads, a multiple of the worker count of
    blocks, as square as possible (each block recomputes the receptive field along its edges), none
    narrower than MIN_BLOCK unless memory asks for it; an image too small for that runs as one block
    with every thread working inside each layer."""
    min_strips = -(-W // STRIP)
    for workers in range(min(threads, max(1, H * W // MIN_BLOCK**2)), 1, -1):
        if threads % workers:
            continue
        best = None
        for n in range(workers * -(-min_strips // workers), workers * (-(-min_strips // workers) + 4), workers):
            for s in range(min_strips, min(n, W) + 1):
                r = n // s
                if n % s or r > H or (W / s < MIN_BLOCK and s > min_strips) or (H / r < MIN_BLOCK and r > 1):
                    continue
                cost = s / W + r / H  # halo per pixel: edges per area
                if best is None or cost < best[0]:
                    best = (cost, r, s)
        if best is not None:
            return Layout(best[1], best[2], workers, threads // workers)
    return Layout(1, min_strips, 1, threads)


class _Output:
    """The result, set up from the first piece to arrive (its channels and type): (1, C, H, W), channels-last
    in memory if asked (an image: H x W x C), pieces clipped to H x W (a crop costs no copy)."""

    def __init__(self, H: int, W: int, channels_last: bool = False) -> None:
        self.size, self.channels_last, self.tensor = (H, W), channels_last, None
        self._lock = threading.Lock()

    def put(self, rows: Span, cols: Span, piece: torch.Tensor) -> None:
        with self._lock:
            if self.tensor is None:
                C, (H, W) = piece.shape[1], self.size
                self.tensor = (piece.new_empty(1, H, W, C).permute(0, 3, 1, 2) if self.channels_last
                               else piece.new_empty(1, C, H, W))
        r1, c1 = min(rows[1], self.size[0]), min(cols[1], self.size[1])
        if rows[0] < r1 and cols[0] < c1:
            self.tensor[..., rows[0] : r1, cols[0] : c1] = piece[..., : r1 - rows[0], : c1 - cols[0]]


def stream_block(modules: list[nn.Module], x: "torch.Tensor | PaddedImage", rows: Span, cols: Span, band: int,
                 put: Callable[[Span, Span, torch.Tensor], None], prepare: Callable | None = None,
                 memory_format: torch.memory_format = torch.contiguous_format) -> None:
    """The output rows `rows` x columns `cols` of modules(x), in bands of `band` rows from the top. At every
    level, a band computes only rows that no band above computed: a level keeps, between bands, only the
    last rows that its next module reads again (its own row or two of context). So nothing is recomputed
    along the rows, and memory is a band's; along the columns the block reads its receptive field beside
    it."""
    size_r = level_sizes(modules, x.shape[-2], 0)
    cp = plan_axis(modules, x.shape[-1], cols, 1)
    read = x.read if isinstance(x, PaddedImage) else lambda r, c: x[..., r[0] : r[1], c[0] : c[1]]
    K = len(modules)
    kept: list[tuple[int, torch.Tensor] | None] = [None] * K  # levels 1..K-1: (first row, those rows)
    bufs: list[torch.Tensor | None] = [None] * K  # where kept rows live between bands (see _keep)
    for b0 in range(rows[0], rows[1], band):
        b1 = min(rows[1], b0 + band)
        rp = plan_axis(modules, x.shape[-2], (b0, b1), 0)
        out: tuple[int, torch.Tensor] | None = None
        for k, m in enumerate(modules):
            lo, hi = rp.spans[k + 1]  # the rows of m's output that this band needs
            have = kept[k + 1] if k + 1 < K else None
            start = lo
            if have is not None:
                end = have[0] + have[1].shape[-2]
                if end >= lo:
                    start = max(lo, end)
                else:  # a gap: nothing kept is of use
                    have = None
            if start < hi:
                a, b = read_span(m, (start, hi), size_r[k], 0)
                if k == 0:
                    t = read((a, b), cp.spans[0])
                    t = prepare(t) if prepare is not None else t
                else:
                    q0, qt = kept[k]
                    assert q0 <= a and b <= q0 + qt.shape[-2], "a row was dropped before its last use"
                    t = qt[..., a - q0 : b - q0, :]
                y = m(t.contiguous(memory_format=memory_format))
                s0, _ = forward(m, a, b - a, 0)
                dc, (n0, n1) = cp.offsets[k], cp.spans[k + 1]
                y = y[..., start - s0 : hi - s0, dc : dc + n1 - n0]
                out = (have[0], torch.cat((have[1], y), -2)) if have is not None else (start, y)
            else:
                out = have
            if k + 1 < K:
                kept[k + 1] = out
            release_if_grown()
        assert out is not None and out[0] == b0 and out[1].shape[-2] == b1 - b0
        put((b0, b1), cols, out[1])
        del out
        # keep at each level only the rows that the next band will read again
        for k in range(1, K):
            p0, t = kept[k]
            nxt = kept[k + 1][0] + kept[k + 1][1].shape[-2] if k + 1 < K else b1  # the next row made above
            first = min(read_span(modules[k], (nxt, nxt + 1), size_r[k], 0)[0], p0 + t.shape[-2])
            if first > p0:
                kept[k] = (first, _keep(t[..., first - p0 :, :], bufs, k, memory_format))


def _keep(rows: torch.Tensor, bufs: list[torch.Tensor | None], k: int,
          memory_format: torch.memory_format) -> torch.Tensor:
    """The rows a level keeps for the next band, copied into a buffer allocated once per block: a small
    allocation per band that outlived the band's large ones would pin the heap between them (glibc's heap
    grew to twice the memory in use)."""
    buf = bufs[k]
    fits = buf is not None and buf.shape[-2] >= rows.shape[-2] and buf.shape[:2] == rows.shape[:2]
    if not fits or buf.shape[-1] != rows.shape[-1]:
        buf = bufs[k] = torch.empty(rows.shape[:2] + (rows.shape[-2] + 4, rows.shape[-1]), dtype=rows.dtype,
                                    device=rows.device, memory_format=memory_format)
    if rows.untyped_storage().data_ptr() == buf.untyped_storage().data_ptr():
        rows = rows.clone()  # no new rows at this level this band: moving its own rows up
    tail = buf[..., : rows.shape[-2], :]
    tail.copy_(rows)
    return tail


def run_blocks(modules: nn.Sequential, x: "torch.Tensor | PaddedImage", out_size: tuple[int, int], unit: int, *,
               prepare: Callable | None = None, memory_format: torch.memory_format = torch.contiguous_format,
               threads: int = 1, crop: tuple[int, int] | None = None) -> torch.Tensor:
    """modules(x) for an output of out_size latents (unit output positions each; crop: keep only the first
    rows and columns, in an output that is channels-last in memory), block by block; blocks
    in a pool of threads when the layout has several workers (independent blocks parallelize better than
    the layers of one, and their results do not depend on who computes them)."""
    mods = list(modules)
    H, W = out_size
    lay = layout(H, W, threads)
    blocks = [(r, c) for r in _grid(H, lay.regions, unit) for c in _grid(W, lay.strips, unit)]
    out = _Output(*(crop or (H * unit, W * unit)), channels_last=crop is not None)

    def one(block: tuple[Span, Span]) -> None:
        band = max(1, round(BAND_AREA * unit / (block[1][1] - block[1][0])))  # rows of latents
        stream_block(mods, x, block[0], block[1], band * unit, out.put, prepare, memory_format)

    if lay.workers == 1:
        with thread_limit(threads):
            for block in blocks:
                one(block)
    else:
        with ThreadPoolExecutor(lay.workers, initializer=limit_this_thread, initargs=(lay.torch_threads,)) as pool:
            futures = [pool.submit(one, b) for b in blocks]
            try:
                for f in futures:
                    f.result()
            finally:
                for f in futures:
                    f.cancel()
    assert out.tensor is not None
    return out.tensor


def synthesize(g_s: nn.Sequential, y_hat: torch.Tensor, post: Callable[[torch.Tensor], torch.Tensor] | None = None,
               *, memory_format: torch.memory_format = torch.contiguous_format, threads: int = 1,
               crop: tuple[int, int] | None = None) -> torch.Tensor:
    """g_s(y_hat) for (1, M, H, W). post: an elementwise map applied to each output piece (e.g. to uint8),
    so the full-size result is only ever post's type. crop (h, w): only the top-left h x w pixels, in a
    (1, C, h, w) tensor that is h x w x C in memory (an image without a copy)."""
    mods = list(g_s)
    if post is not None:
        mods.append(_Elementwise(post))
    return run_blocks(mods, y_hat, y_hat.shape[-2:], STRIDE, memory_format=memory_format, threads=threads,
                      crop=crop)


def analyze(g_a: nn.Sequential, x: "torch.Tensor | PaddedImage",
            prepare: Callable[[torch.Tensor], torch.Tensor] | None = None, *,
            memory_format: torch.memory_format = torch.contiguous_format, threads: int = 1) -> torch.Tensor:
    """g_a(x) for x (1, 3, 16H, 16W), a tensor or a PaddedImage. prepare: an elementwise map applied to each
    input piece (e.g. uint8 -> float), so x can stay in a compact type."""
    size = (x.shape[-2] // STRIDE, x.shape[-1] // STRIDE)
    return run_blocks(g_a, x, size, 1, prepare=prepare, memory_format=memory_format, threads=threads)
