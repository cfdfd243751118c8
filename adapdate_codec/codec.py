"""Encode and decode one picture: image -> padding -> network -> entropy coding -> container.

The codec never touches paths (fileio.py does) and never guesses a model: a file names the exact
decoder (format 2) or whole model version (format 1, 0.1.0's files) that it needs, and `resolve` must
produce a model that has it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from adapdate_codec import container, entropy, limits, tiling
from adapdate_codec.inference import inference_transform, reuse_freed_memory
from adapdate_codec.bundle import ModelBundle
from adapdate_codec.container import Header
from adapdate_codec.errors import FormatError, InputError
from adapdate_codec.fixedpoint import FixedPointRangeError
from adapdate_codec.imageio import Picture

SECTIONS = container.CODEC_SECTIONS  # z_hat, then y_hat


@dataclass
class Latents:
    """What the decoder reconstructs from: integer z_hat (N, h, w) and y_hat (M, H, W) (floats holding
    integers: float64, or float32 for y_hat from analyze)."""

    z_hat: torch.Tensor
    y_hat: torch.Tensor


def _to_float(x: torch.Tensor, device: str) -> torch.Tensor:
    return x.to(device=device, dtype=torch.float32).div_(255.0)


def _quantize_pixels(x: torch.Tensor) -> torch.Tensor:
    """Float reconstruction (any shape) -> uint8 levels; elementwise, so tile by tile gives the same.
    NaN (from absurd latents in a damaged file) becomes 0: converting NaN to an integer is undefined."""
    return torch.nan_to_num_(x, nan=0.0).clamp_(0, 1).mul_(255).round_().to(torch.uint8)


def _to_pixels(x: torch.Tensor) -> np.ndarray:
    if x.dtype != torch.uint8:
        x = _quantize_pixels(x)
    return np.ascontiguousarray(x[0].permute(1, 2, 0).cpu().numpy())


def _network(model: ModelBundle, device: str) -> torch.nn.Module:
    net = model.network()
    if next(net.parameters()).device != torch.device(device):  # .to() walks every module: only when needed
        net.to(device)
    return net


def _threads(threads: int | None) -> int:
    return torch.get_num_threads() if threads is None else max(1, threads)


@torch.no_grad()
def analyze(pixels: np.ndarray, model: ModelBundle, device: str = "cpu", padding: str = "replicate",
            threads: int | None = None) -> Latents:
    y, z = analyze_float(pixels, model, device, padding, threads)
    # y_hat stays float32 (rounded float32 values are integers, exact): half the memory of float64
    return Latents(torch.round(z)[0].cpu().double(), torch.round_(y)[0].cpu())


@torch.no_grad()
def analyze_float(pixels: np.ndarray, model: ModelBundle, device: str = "cpu", padding: str = "replicate",
                  threads: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The analysis transforms' latents before rounding: y (1, M, H, W) and z = h_a(y) (1, N, H/4, W/4),
    on `device` (what the --effort search starts from)."""
    net = _network(model, device)
    # the pixels as they are (uint8, no padded copy), converted to float one region at a time; never written
    # to, but torch warns about a read-only array: copy only that
    pixels = np.ascontiguousarray(pixels)
    x = tiling.PaddedImage(torch.from_numpy(pixels if pixels.flags.writeable else pixels.copy()), padding)
    g_a, memory_format = inference_transform(net.g_a, device, analysis=True)
    with reuse_freed_memory():
        y = tiling.analyze(g_a, x, prepare=lambda t: _to_float(t, device), memory_format=memory_format,
                           threads=_threads(threads)).contiguous()
    del x
    return y, net.h_a(y)


@torch.no_grad()
def synthesize(y_hat: torch.Tensor, model: ModelBundle, height: int, width: int, device: str = "cpu",
               threads: int | None = None) -> np.ndarray:
    net = _network(model, device)
    # tiles are quantized to uint8 as they come: no full-size float image
    g_s, memory_format = inference_transform(net.g_s, device, analysis=False)
    with reuse_freed_memory():
        x_hat = tiling.synthesize(g_s, y_hat[None].to(device=device, dtype=torch.float32), post=_quantize_pixels,
                                  memory_format=memory_format, threads=_threads(threads), crop=(height, width))
    return _to_pixels(x_hat)  # already H x W x 3 in memory: no copy


def identity_bytes(model: ModelBundle, kind: str) -> bytes:
    """The fingerprint of `model` that a file's header of this kind names."""
    return model.decoder_fingerprint_bytes if kind == "decoder" else model.fingerprint_bytes


def encode_latents(lat: Latents, model: ModelBundle) -> list[bytes]:
    fp = model.fixed_point
    params = fp.hyper_rows(lat.z_hat)
    try:
        y_bytes = entropy.encode_y(lat.y_hat, params, fp, model.cdf_y)
    except FixedPointRangeError as e:
        raise InputError(f"this image drives the model outside its fixed-point range ({e})") from None
    return [entropy.encode_z(lat.z_hat, model.cdf_z), y_bytes]


def decode_latents(sections: list[bytes], model: ModelBundle, height: int, width: int) -> Latents:
    """Latents from the coded sections. Any damage is a FormatError: the rANS decoder refuses sections
    its encoder cannot have written (rans.py), and latents that drive the integer path out of its exact
    range are refused too (fixedpoint.FixedPointRangeError)."""
    H, W = tiling.padded_size(height, width)
    z_shape = (model.N, H // 64, W // 64)
    try:
        z_hat = entropy.decode_z(sections[0], z_shape, model.cdf_z)
        params = model.fixed_point.hyper_rows(z_hat)
        y_hat = entropy.decode_y(sections[1], params, model.fixed_point, model.cdf_y)
    except FixedPointRangeError:
        raise FormatError("corrupted payload: its latents are outside the model's fixed-point range") from None
    return Latents(z_hat, y_hat)


def file_header(pic: Picture, model: ModelBundle, padding: str = "replicate") -> Header:
    """The header of a file `model` writes for `pic`: it names the decoder (format 2), so every installation of
    that decoder reads the file, whichever encoder wrote it (any latent search included)."""
    h, w = pic.pixels.shape[:2]
    return Header(model_name=model.name, quality=model.quality, fingerprint=model.decoder_fingerprint_bytes,
                  width=w, height=h, mode=pic.mode, padding=padding, icc_profile=pic.icc_profile,
                  fingerprint_kind="decoder")


def encode_picture(pic: Picture, model: ModelBundle, *, device: str = "cpu", padding: str = "replicate",
                   effort: int = 0, lmbda: float | None = None, threads: int | None = None) -> bytes:
    """effort 1-9 searches for better latents (search/); the file is of the same kind at every level."""
    if effort or lmbda is not None:
        return encode_picture_search(pic, model, device=device, padding=padding, effort=effort, lmbda=lmbda,
                                     threads=threads)[0]
    lat = analyze(pic.pixels, model, device, padding, threads)
    return container.pack(file_header(pic, model, padding), encode_latents(lat, model))


def encode_picture_search(pic: Picture, model: ModelBundle, *, device: str = "cpu", padding: str = "replicate",
                          effort: int = 0, lmbda: float | None = None, threads: int | None = None):
    """(file bytes, search.SearchResult): the file, and what the search did (level, steps, time, choice)."""
    from adapdate_codec.search import search_latents

    res = search_latents(pic.pixels, model, effort, lmbda=lmbda, device=device, padding=padding, threads=threads)
    return container.pack(file_header(pic, model, padding), res.sections), res


def decode_picture(data: bytes, resolve: Callable[[Header], ModelBundle], *, device: str = "cpu",
                   max_pixels: int | None = None) -> Picture:
    """max_pixels: refuse files declaring more pixels (None: $ADAPDATE_MAX_PIXELS or the default, 0: none),
    checked on the header, before any work."""
    header, sections = container.unpack(data)
    limits.check_pixels(header.width, header.height, limits.max_pixels(max_pixels))
    if len(sections) != len(SECTIONS):
        raise FormatError(f"expected {len(SECTIONS)} sections, found {len(sections)}")
    model = resolve(header)
    if identity_bytes(model, header.fingerprint_kind) != header.fingerprint:
        raise FormatError(f"model {model.name} q{model.quality} is not the one this file was coded with")
    lat = decode_latents(sections, model, header.height, header.width)
    y_hat = lat.y_hat.float()  # what g_s takes (integers, exact); the float64 copy goes before synthesis
    del lat
    pixels = synthesize(y_hat, model, header.height, header.width, device)
    return Picture(pixels=pixels, mode=header.mode, icc_profile=header.icc_profile)
