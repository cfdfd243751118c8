"""Peak memory of encoding and decoding a 24-megapixel photo, and the RD cost of tiling.

    .venv/bin/python benchmarks/large_image.py [--width 6000 --height 4000] [--photo PATH]

Memory: peak RSS of the `adapdate encode` and of the `adapdate decode` child process, each its own
(ru_maxrss from wait4). Both use the store's default model; threads as the CLI defaults them.
Tiling cost: the same photo coded with tiled and with single-pass g_a / g_s, in this process.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def synthetic_photo(w: int, h: int, src: str | None) -> Image.Image:
    if src:  # a real photo, tiled up to the size (keeps natural statistics)
        base = np.asarray(Image.open(src).convert("RGB"))
        reps = (-(-h // base.shape[0]), -(-w // base.shape[1]), 1)
        return Image.fromarray(np.tile(base, reps)[:h, :w])
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([128 + 80 * np.sin(xx / (50 + 9 * c) + yy / (70 + 5 * c)) for c in range(3)], -1)
    return Image.fromarray(np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8))


def run_child(args: list[str]) -> tuple[float, float]:
    """Wall time and this child's own peak RSS in MiB (wait4: not the max over earlier children)."""
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "adapdate_codec", *args])
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - t
    if proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, proc.args)
    return seconds, usage.ru_maxrss / 1024


def psnr(a_path: str, b_path: str) -> float:
    """PSNR of two same-size RGB images, accumulated in row bands (a 24 MP image as int64 is 580 MB)."""
    a, b = (np.asarray(Image.open(p).convert("RGB")) for p in (a_path, b_path))
    se = sum(int(((a[r : r + 256].astype(np.int64) - b[r : r + 256]) ** 2).sum()) for r in range(0, a.shape[0], 256))
    return 10 * np.log10(255**2 * a.size / se)


def tiling_cost(photo: str) -> None:
    from adapdate_codec import codec, tiling
    from adapdate_codec.imageio import Picture
    from adapdate_codec.store import ModelStore

    bundle = ModelStore().get()
    px = np.asarray(Image.open(photo).convert("RGB"))
    results = {}
    for label, threshold in (("tiled", tiling.TILE_THRESHOLD), ("single pass", 10**9)):
        tiling.TILE_THRESHOLD = threshold
        data = codec.encode_picture(Picture(px, "RGB"), bundle)
        out = codec.decode_picture(data, lambda h: bundle).pixels
        mse = np.mean((out.astype(np.float64) - px) ** 2)
        results[label] = (len(data) * 8 / (px.shape[0] * px.shape[1]), 10 * np.log10(255**2 / mse))
        print(f"{label}: {results[label][0]:.4f} bpp, {results[label][1]:.3f} dB", flush=True)
    (b1, p1), (b0, p0) = results["tiled"], results["single pass"]
    print(f"tiling cost on {Path(photo).name} ({px.shape[1]}x{px.shape[0]}): rate {100 * (b1 / b0 - 1):+.3f} %, "
          f"PSNR {p1 - p0:+.4f} dB")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--width", type=int, default=6000)
    ap.add_argument("--height", type=int, default=4000)
    ap.add_argument("--photo", help="real photo to tile up to the size and to measure the tiling cost on")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        src, enc, dec = (os.path.join(tmp, n) for n in ("big.png", "big.adpd", "big-out.png"))
        synthetic_photo(args.width, args.height, args.photo).save(src)
        s, peak = run_child(["encode", src, "-o", enc])
        print(f"encode {args.width}x{args.height}: {s:.1f} s, peak RSS {peak:.0f} MiB, "
              f"{os.path.getsize(enc) * 8 / (args.width * args.height):.4f} bpp", flush=True)
        s, peak = run_child(["decode", enc, "-o", dec])
        print(f"decode: {s:.1f} s, peak RSS {peak:.0f} MiB, PSNR {psnr(src, dec):.3f} dB", flush=True)
    if args.photo:
        tiling_cost(args.photo)


if __name__ == "__main__":
    main()
