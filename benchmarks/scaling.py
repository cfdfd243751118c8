"""Does coding time grow linearly with the number of pixels? Seconds per megapixel and peak RSS, by size.

    nice -n 10 .venv/bin/python benchmarks/scaling.py [--sizes 0.4,3,12,24] [--threads N] [--compressai-cap 60]

One process, one run per size: photos from ../shared/data/val, mirrored and tiled up to about 0.4, 3, 12
and 24 megapixels (natural statistics at every size), each encoded and decoded with the store's default
model, in this process, as the CLI does (heap reuse on). The table gives each size's s/MP and its ratio to
the smallest size's (measured in the same run, so machine load affects both alike), and the peak RSS of
this process during each step (VmHWM, reset before it on a trimmed heap: the process itself, torch and
the model included, as for the CLI).

CompressAI's own compress/decompress on the same weights runs after, at each size whose expected time (its
s/MP at the previous size) stays under --compressai-cap seconds: it is serial per latent in Python and holds
whole-image feature maps, so it is left out beyond.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from adapdate_codec import codec, inference
from adapdate_codec.imageio import Picture

VAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "val"
# width x height of each size (about 0.4, 3, 12, 24 MP; 3:2 like camera photos)
SIZES = {0.4: (768, 512), 3: (2112, 1408), 12: (4224, 2816), 24: (6000, 4000)}


def test_photo(width: int, height: int, folder: Path = VAL) -> np.ndarray:
    """The first val photos, side by side and mirrored at every repeat (no hard seams), cropped to size."""
    photos = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(folder.glob("*.png"))[:3]]
    h = min(p.shape[0] for p in photos)
    strip = np.concatenate([p[:h] for p in photos], axis=1)
    block = np.concatenate([strip, strip[:, ::-1]], axis=1)
    block = np.concatenate([block, block[::-1]], axis=0)
    reps = (-(-height // block.shape[0]), -(-width // block.shape[1]), 1)
    return np.ascontiguousarray(np.tile(block, reps)[:height, :width])


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:  # "5": reset VmHWM to the current RSS
        f.write("5")


def _peak_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def measure(step: Callable[[], object]) -> tuple[object, float, float]:
    """(result, seconds, peak RSS in MiB during the step: this process, from a trimmed heap)."""
    if inference._LIBC is not None:
        inference._LIBC.malloc_trim(0)
    _reset_peak()
    t = time.perf_counter()
    out = step()
    return out, time.perf_counter() - t, _peak_mib()


def compressai_model(bundle) -> torch.nn.Module:
    from compressai.models import Cheng2020Anchor

    net = Cheng2020Anchor(N=bundle.N)
    torch.nn.Module.load_state_dict(net, bundle.state_dict, strict=False)
    net.update(force=True)
    return net.eval()


@torch.no_grad()
def compressai_times(net: torch.nn.Module, px: np.ndarray) -> tuple[float, float]:
    x = torch.from_numpy(px).permute(2, 0, 1)[None].float().div(255)
    h, w = x.shape[-2:]
    x = torch.nn.functional.pad(x, (0, -w % 64, 0, -h % 64), mode="replicate")
    t = time.perf_counter()
    out = net.compress(x)
    enc = time.perf_counter() - t
    t = time.perf_counter()
    net.decompress(out["strings"], out["shape"])
    return enc, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="0.4,3,12,24", help="comma-separated, from " + ", ".join(map(str, SIZES)))
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's, the machine's cores)")
    ap.add_argument("--quality", type=int, default=3)
    ap.add_argument("--compressai-cap", type=float, default=60.0, help="seconds; 0 leaves CompressAI out")
    args = ap.parse_args()
    sizes = [float(s) if "." in s else int(s) for s in args.sizes.split(",")]
    if args.threads:
        torch.set_num_threads(args.threads)
    inference.REUSE_FREED_MEMORY = True  # as the CLI does
    from adapdate_codec.store import ModelStore

    bundle = ModelStore().get(quality=args.quality)
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    print(f"model {bundle.name} q{bundle.quality}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs, load average {' '.join(load)}", flush=True)
    codec.decode_picture(codec.encode_picture(Picture(test_photo(256, 256), "RGB"), bundle), lambda h: bundle)
    rows = []
    for size in sizes:
        w, h = SIZES[size]
        mp = w * h / 1e6
        pic = Picture(test_photo(w, h), "RGB")
        data, enc_s, enc_peak = measure(lambda: codec.encode_picture(pic, bundle))
        out, dec_s, dec_peak = measure(lambda: codec.decode_picture(data, lambda hdr: bundle))
        assert out.pixels.shape == pic.pixels.shape
        del out, pic
        rows.append({"size": size, "w": w, "h": h, "mp": mp, "enc": enc_s / mp, "dec": dec_s / mp,
                     "enc_peak": enc_peak, "dec_peak": dec_peak, "bpp": len(data) * 8 / (w * h), "cai": None})
        print(f"{w}x{h} ({mp:.1f} MP): encode {enc_s:.1f} s, decode {dec_s:.1f} s, peak RSS "
              f"{enc_peak:.0f} / {dec_peak:.0f} MiB, {rows[-1]['bpp']:.3f} bpp", flush=True)
    # CompressAI last: its whole-image feature maps would leave the heap large for the sizes after it
    ref = compressai_model(bundle) if args.compressai_cap > 0 else None
    ref_rate = None
    for row in rows if ref is not None else []:
        if ref_rate is not None and max(ref_rate) * row["mp"] > args.compressai_cap:
            break
        e, d = compressai_times(ref, test_photo(row["w"], row["h"]))
        ref_rate = row["cai"] = (e / row["mp"], d / row["mp"])
        print(f"CompressAI {row['w']}x{row['h']}: compress {e:.1f} s, decompress {d:.1f} s", flush=True)
    base = rows[0]
    print("\n| size | MP | encode s/MP | ratio | decode s/MP | ratio | peak RSS enc / dec (MiB) "
          "| CompressAI enc / dec s/MP |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        cai = f"{r['cai'][0]:.2f} / {r['cai'][1]:.2f}" if r["cai"] else f"skipped (> {args.compressai_cap:g} s)"
        print(f"| {r['w']}x{r['h']} | {r['mp']:.1f} | {r['enc']:.2f} | {r['enc'] / base['enc']:.2f} | "
              f"{r['dec']:.2f} | {r['dec'] / base['dec']:.2f} | {r['enc_peak']:.0f} / {r['dec_peak']:.0f} | {cai} |")
    with open("/proc/loadavg") as f:
        print(f"load average at the end: {' '.join(f.read().split()[:3])}")


if __name__ == "__main__":
    main()
