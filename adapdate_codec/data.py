"""Training data: photos held in memory as uint8 arrays, served as random crops with flips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp"}
LOSSY_SUFFIXES = {".jpg", ".jpeg", ".webp"}


def find_images(root: str | Path) -> list[Path]:
    root = Path(root)
    if root.is_file():
        return [root]
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def load_training_image(path: Path, min_side: int, downscale_lossy: bool = True) -> np.ndarray:
    """RGB uint8 HxWx3. Lossy sources are downscaled x2 (area) first to remove coding artefacts,
    unless downscale_lossy is off (sources already prepared, e.g. near-lossless JPEGs)."""
    with Image.open(path) as im:
        im = im.convert("RGB")
        if downscale_lossy and path.suffix.lower() in LOSSY_SUFFIXES and min(im.size) // 2 >= min_side:
            im = im.reduce(2)
        return np.asarray(im).copy()


class CropDataset:
    """Random crops (with horizontal/vertical flips) from images kept in memory."""

    def __init__(self, root: str | Path, patch: int, downscale_lossy: bool = True):
        self.patch = patch
        self.paths = find_images(root)
        if not self.paths:
            raise FileNotFoundError(f"no images under {root}")
        self.images = [load_training_image(p, patch, downscale_lossy) for p in self.paths]
        self.images = [im for im in self.images if min(im.shape[:2]) >= patch]
        if not self.images:
            raise ValueError(f"no image under {root} is at least {patch}x{patch}")

    def batch(self, size: int, rng: np.random.Generator) -> torch.Tensor:
        crops = []
        p = self.patch
        for _ in range(size):
            im = self.images[rng.integers(len(self.images))]
            top = rng.integers(im.shape[0] - p + 1)
            left = rng.integers(im.shape[1] - p + 1)
            c = im[top : top + p, left : left + p]
            if rng.random() < 0.5:
                c = c[:, ::-1]
            if rng.random() < 0.5:
                c = c[::-1]
            crops.append(np.ascontiguousarray(c))
        # contiguous NCHW: channels-last inputs take a much slower (and, in torch 2.14 on AVX2, crashing) path
        x = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous()
        return x.float().div_(255.0)


def load_eval_images(root: str | Path, max_side: int | None = None) -> list[torch.Tensor]:
    """Whole images as 1x3xHxW float tensors, centre-cropped to multiples of 64 (and max_side)."""
    out = []
    for p in find_images(root):
        a = load_training_image(p, 64)
        h, w = a.shape[:2]
        if max_side:
            h, w = min(h, max_side), min(w, max_side)
        h, w = h // 64 * 64, w // 64 * 64
        top, left = (a.shape[0] - h) // 2, (a.shape[1] - w) // 2
        a = a[top : top + h, left : left + w]
        out.append(torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None].contiguous().float() / 255.0)
    return out
