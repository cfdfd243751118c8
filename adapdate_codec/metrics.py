"""Distortion metrics on 8-bit RGB images, computed the way CompressAI's published curves are.

PSNR is over all three RGB channels at once (one MSE), peak 255. MS-SSIM is pytorch_msssim's, on RGB
scaled to [0, 1] with data_range 1; its five scales need a shorter side above 160 px, so smaller images
get NaN rather than an error.
"""

from __future__ import annotations

import math

import numpy as np

# pytorch_msssim asserts min(H, W) > (win_size - 1) * 2 ** 4 with its default 11-px window.
MS_SSIM_MIN_SIDE = 161


def _check_pair(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"image shapes differ: {a.shape} vs {b.shape}")
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"expected H x W x 3 RGB, got shape {a.shape}")


def mse(a: np.ndarray, b: np.ndarray) -> float:
    _check_pair(a, b)
    diff = a.astype(np.float64) - b.astype(np.float64)
    return float(np.mean(diff * diff))


def psnr_from_mse(m: float, peak: float = 255.0) -> float:
    """PSNR in dB; +inf for a lossless reconstruction."""
    if m == 0:
        return math.inf
    return 10.0 * math.log10(peak * peak / m)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """RGB PSNR of two 8-bit images (one MSE over all channels, as CompressAI's psnr-rgb)."""
    return psnr_from_mse(mse(a, b))


def ms_ssim_defined(shape: tuple[int, ...]) -> bool:
    return min(shape[0], shape[1]) >= MS_SSIM_MIN_SIDE


def ms_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """MS-SSIM in [0, 1] (pytorch_msssim, RGB in [0, 1]); NaN where the image is too small for 5 scales."""
    _check_pair(a, b)
    if not ms_ssim_defined(a.shape):
        return math.nan
    import torch  # lazily: the CLI must not import torch at start-up
    from pytorch_msssim import ms_ssim as _ms_ssim

    def to_tensor(x: np.ndarray) -> torch.Tensor:
        # astype copies: decoded arrays are often read-only views, which torch warns about
        return torch.from_numpy(x.astype(np.float32)).permute(2, 0, 1).unsqueeze(0) / 255.0

    with torch.no_grad():
        return float(_ms_ssim(to_tensor(a), to_tensor(b), data_range=1.0, size_average=True))


def ms_ssim_db(value: float) -> float:
    """MS-SSIM on a dB scale, -10 log10(1 - ms); +inf at 1, NaN stays NaN."""
    if math.isnan(value):
        return math.nan
    if value >= 1.0:
        return math.inf
    return -10.0 * math.log10(1.0 - value)


def bits_per_pixel(num_bytes: int, height: int, width: int) -> float:
    return 8.0 * num_bytes / (height * width)
