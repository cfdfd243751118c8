"""Training data: photos held in memory as uint8 arrays, served as random crops with flips."""

from __future__ import annotations

import queue
import threading
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

    def crops(self, size: int, rng: np.random.Generator, out: np.ndarray | None = None) -> np.ndarray:
        """size random crops as uint8 NHWC (into out when given); the only user of rng."""
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
            crops.append(c)
        return np.stack(crops, out=out)

    def batch(self, size: int, rng: np.random.Generator) -> torch.Tensor:
        """size random crops as float NCHW in [0, 1]."""
        # contiguous NCHW: channels-last inputs take a much slower (and, in torch 2.14 on AVX2, crashing) path
        return to_model_input(torch.from_numpy(self.crops(size, rng)), channels_last=False)


def to_model_input(crops: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """uint8 NHWC crops -> float NCHW in [0, 1], laid out NCHW-contiguous or channels-last (NHWC memory,
    which the crops already are), on the crops' device."""
    x = crops.permute(0, 3, 1, 2)
    if not channels_last:
        x = x.contiguous()
    return x.float().div_(255.0)


def generator_state(rng: np.random.Generator) -> dict:
    """rng's state as plain ints and strings (a checkpoint loads with weights_only=True)."""
    s = rng.bit_generator.state
    return {"bit_generator": s["bit_generator"], "state": {k: int(v) for k, v in s["state"].items()},
            "has_uint32": int(s["has_uint32"]), "uinteger": int(s["uinteger"])}


class BatchPrefetcher:
    """Crops drawn ahead of the training loop by a worker thread (numpy copies release the GIL), into
    pinned memory when they go on to a GPU, so that the copy can run asynchronously.

    Each batch comes with the generator's state right after it was drawn: a checkpoint records the state
    of the last batch the loop took, not of those waiting, and a resumed run draws exactly what an
    uninterrupted one would have. depth=0 draws in the calling thread."""

    def __init__(self, data: CropDataset, size: int, rng: np.random.Generator, depth: int = 2, pin: bool = False):
        self._data, self._size, self._rng, self._pin = data, size, rng, pin
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread = None
        if depth > 0:
            self._thread = threading.Thread(target=self._work, name="adapdate-batches", daemon=True)
            self._thread.start()

    def _draw(self) -> tuple[torch.Tensor, dict]:
        p = self._data.patch
        buf = torch.empty((self._size, p, p, 3), dtype=torch.uint8, pin_memory=self._pin)
        self._data.crops(self._size, self._rng, out=buf.numpy())
        return buf, generator_state(self._rng)

    def _put(self, item: tuple) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _work(self) -> None:
        try:
            while not self._stop.is_set():
                self._put(self._draw())
        except BaseException as e:  # raised again in the training thread
            self._put((None, e))

    def next(self) -> tuple[torch.Tensor, dict]:
        """The next batch (uint8 NHWC) and the generator state after it."""
        if self._thread is None:
            return self._draw()
        crops, state = self._queue.get()
        if crops is None:
            raise state
        return crops, state

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


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
