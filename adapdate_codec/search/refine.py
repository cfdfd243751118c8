"""The search for one image: plain latents, refined latents window by window, and the cheaper of the two.

"Cheaper" is measured as the decoder will see it: bits from the real rANS coder (the sections that go into
the file) and distortion from the real synthesis (uint8 pixels), at the same λ the search used. So a higher
effort never makes a file worse at that λ, and a file is always one the plain decoder reads.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass

import numpy as np
import torch

from adapdate_codec import codec, tiling
from adapdate_codec.bundle import ModelBundle
from adapdate_codec.errors import InputError
from adapdate_codec.inference import thread_limit
from adapdate_codec.search import sga
from adapdate_codec.search.levels import Level, level
from adapdate_codec.search.tiles import windows


@dataclass
class SearchResult:
    latents: codec.Latents
    sections: list[bytes]  # the coded latents (z, y) of the chosen set: what the file holds
    effort: int
    steps: int
    seconds: float  # the search and the comparison (not the plain encoder's own work)
    chosen: str  # "refined" or "plain" (level 0: "plain")
    lmbda: float
    plain_cost: float | None = None  # bits per pixel + λ·255²·MSE, real coder and decoder
    refined_cost: float | None = None


def rd_cost(sections: list[bytes], pixels: np.ndarray, decoded: np.ndarray, lmbda: float) -> float:
    h, w = pixels.shape[:2]
    mse = float(np.mean((decoded.astype(np.float64) - pixels.astype(np.float64)) ** 2)) / 255.0**2
    return 8 * sum(map(len, sections)) / (h * w) + lmbda * 255**2 * mse


def _window_seed(seed: int, i: int) -> int:
    return zlib.crc32(f"{seed}:{i}".encode())


def refine_windows(pixels: np.ndarray, y0: torch.Tensor, z0: torch.Tensor, model: ModelBundle, lev: Level,
                   lmbda: float, device: str, padding: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer (y, z) (1, M, H, W) and (1, N, H/4, W/4): each window refined in turn, starting from the
    latents as they stand (its refined neighbours' included), its core kept."""
    snet = sga.search_net(codec._network(model, device), device)
    h, w = pixels.shape[:2]
    x_all = tiling.PaddedImage(torch.from_numpy(np.ascontiguousarray(pixels)), padding)
    y, z = y0.clone(), z0.clone()
    y_int, z_int = torch.round(y0), torch.round(z0)
    for i, win in enumerate(windows(y.shape[-2], y.shape[-1])):
        (r0, r1), (c0, c1) = win.rows, win.cols
        x = x_all.read((16 * r0, 16 * r1), (16 * c0, 16 * c1)).to(device=device, dtype=torch.float32).div_(255)
        crop = (min(16 * r1, h) - 16 * r0, min(16 * c1, w) - 16 * c0)
        yw, zw = sga.refine(snet, x, y[..., r0:r1, c0:c1], z[..., win.z(win.rows), win.z(win.cols)], lmbda, lev,
                            crop, _window_seed(seed, i))
        ry, cy = win.inner(win.core_rows, win.rows), win.inner(win.core_cols, win.cols)
        rz, cz = win.inner(win.core_rows, win.rows, 4), win.inner(win.core_cols, win.cols, 4)
        core_y = (slice(None), slice(None), slice(*win.core_rows), slice(*win.core_cols))
        core_z = (slice(None), slice(None), win.z(win.core_rows), win.z(win.core_cols))
        y[core_y] = y_int[core_y] = yw[..., ry, cy]
        z[core_z] = z_int[core_z] = zw[..., rz, cz]
    return y_int, z_int


def search_latents(pixels: np.ndarray, model: ModelBundle, effort: int, *, lmbda: float | None = None,
                   device: str = "cpu", padding: str = "replicate", threads: int | None = None,
                   seed: int = 0) -> SearchResult:
    """The latents (and their coded sections) to write for `pixels` at an effort level. lmbda: the
    trade-off searched for (default the model's own; --target-bpp moves it between qualities)."""
    lev = level(effort)
    lmbda = model.lmbda if lmbda is None else float(lmbda)
    yf, zf = codec.analyze_float(pixels, model, device, padding, threads)
    plain = codec.Latents(torch.round(zf)[0].cpu().double(), torch.round(yf)[0].cpu())
    plain_sections = codec.encode_latents(plain, model)
    if lev is None:
        return SearchResult(plain, plain_sections, effort, 0, 0.0, "plain", lmbda)
    t0 = time.perf_counter()
    h, w = pixels.shape[:2]
    with thread_limit(codec._threads(threads)):
        y_int, z_int = refine_windows(pixels, yf, zf, model, lev, lmbda, device, padding, seed)
    del yf, zf
    refined = codec.Latents(z_int[0].cpu().double(), y_int[0].cpu())
    return choose(pixels, model, plain, plain_sections, refined, effort, lev.steps, lmbda, device, threads, t0)


def choose(pixels: np.ndarray, model: ModelBundle, plain: codec.Latents, plain_sections: list[bytes],
           refined: codec.Latents, effort: int, steps: int, lmbda: float, device: str, threads: int | None,
           t0: float) -> SearchResult:
    """The cheaper of the plain and the refined latents, by real bits and real decoded pixels."""
    h, w = pixels.shape[:2]
    try:
        refined_sections = codec.encode_latents(refined, model)
    except InputError:  # outside the fixed-point range after all: the plain latents are always codable
        return SearchResult(plain, plain_sections, effort, steps, time.perf_counter() - t0, "plain", lmbda)
    costs = [rd_cost(s, pixels, codec.synthesize(lat.y_hat.float(), model, h, w, device, threads), lmbda)
             for lat, s in ((plain, plain_sections), (refined, refined_sections))]
    best = 1 if costs[1] < costs[0] else 0
    lat, sections = ((plain, plain_sections), (refined, refined_sections))[best]
    return SearchResult(lat, sections, effort, steps, time.perf_counter() - t0, ("plain", "refined")[best],
                        lmbda, costs[0], costs[1])


def search_batch(images: list[np.ndarray], model: ModelBundle, effort: int, *, lmbda: float | None = None,
                 device: str = "cpu", seed: int = 0) -> list[SearchResult]:
    """search_latents for images of one size that fit one window each (e.g. Kodak), searched as one batch
    (a GPU's way to be busy; what each image gets does not depend on its batch but on the noise, seeded per
    batch). For benchmarks: the CLI codes one image at a time."""
    lev = level(effort)
    if lev is None:
        return [search_latents(im, model, 0, lmbda=lmbda, device=device) for im in images]
    lmbda = model.lmbda if lmbda is None else float(lmbda)
    h, w = images[0].shape[:2]
    if any(im.shape != images[0].shape for im in images):
        raise ValueError("search_batch takes images of one size")
    starts = [codec.analyze_float(im, model, device) for im in images]
    y0 = torch.cat([y for y, _ in starts])
    z0 = torch.cat([z for _, z in starts])
    if len(windows(y0.shape[-2], y0.shape[-1])) != 1:
        raise ValueError("search_batch takes images of at most one window (768 x 768 pixels)")
    plains = [codec.Latents(torch.round(z)[0].cpu().double(), torch.round(y)[0].cpu()) for y, z in starts]
    plain_sections = [codec.encode_latents(p, model) for p in plains]
    t0 = time.perf_counter()
    x = torch.stack([tiling.pad(torch.from_numpy(im).permute(2, 0, 1)[None].float(), "replicate")[0]
                     for im in images]).to(device).div_(255)
    snet = sga.search_net(codec._network(model, device), device)
    y_int, z_int = sga.refine(snet, x, y0, z0, lmbda, lev, (h, w), _window_seed(seed, 0))
    share = (time.perf_counter() - t0) / len(images)
    out = []
    for i, im in enumerate(images):
        refined = codec.Latents(z_int[i].cpu().double(), y_int[i].cpu())
        r = choose(im, model, plains[i], plain_sections[i], refined, effort, lev.steps, lmbda, device, None,
                   time.perf_counter())
        r.seconds += share
        out.append(r)
    return out
