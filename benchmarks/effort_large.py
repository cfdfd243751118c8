"""--effort on a large photo: seconds per megapixel against a Kodak-size image, and peak memory.

    .venv/bin/python benchmarks/effort_large.py [--effort 1] [--sizes 0.4,3] [--threads 2] [--device cpu]

One process: for each size (photos from ../shared/data/val tiled up to the size, as benchmarks/scaling.py
makes them), the whole encode at the effort level (analysis, plain coding, the windowed search, the choice),
its s/MP and the ratio to the first size's s/MP (same run: machine load affects both alike), and the peak
RSS of the process during that size (VmHWM, reset before each).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--effort", type=int, default=1)
    ap.add_argument("--sizes", default="0.4,3")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quality", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    import torch

    from adapdate_codec.codec import encode_picture_search
    from adapdate_codec.imageio import Picture
    from adapdate_codec.store import ModelStore
    from scaling import SIZES, _peak_mib as peak_rss_mib, _reset_peak as peak_rss_reset, test_photo

    torch.set_num_threads(args.threads)
    bundle = ModelStore().get(quality=args.quality)
    first = None
    print(f"effort {args.effort}, q{args.quality}, {args.threads} threads, {args.device}")
    for size in (float(s) for s in args.sizes.split(",")):
        w, h = SIZES[size]
        px = test_photo(w, h)
        peak_rss_reset()
        t0 = time.perf_counter()
        data, res = encode_picture_search(Picture(px, "RGB"), bundle, effort=args.effort, device=args.device)
        dt = time.perf_counter() - t0
        spm = dt / (w * h / 1e6)
        first = first or spm
        print(f"{w}x{h}: {dt:.1f} s, {spm:.1f} s/MP (x{spm / first:.2f}), search {res.seconds:.1f} s, "
              f"kept {res.chosen}, {8 * len(data) / (w * h):.4f} bpp, peak RSS {peak_rss_mib():.0f} MiB", flush=True)


if __name__ == "__main__":
    main()
