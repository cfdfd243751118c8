"""The README's Kodak RD plot from a release measurement (release_models.py's runs/release-eval-kodak.json):

    .venv/bin/python release/plot_release.py runs/release-eval-kodak.json docs/kodak-rd.png [--max-bpp 0.8]

Curves: the shipped models and Pillow's JPEG 4:2:0 (measured in the same run), the models shipped before
(their cards in git), and CompressAI's published BPG-444, JPEG and cheng2020-anchor.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "release"))

from release_models import previous_curve  # noqa: E402

from adapdate_codec.bdrate import load_reference  # noqa: E402
from adapdate_codec.evaluate import CodecResult, plot_rd  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("measured")
    ap.add_argument("out")
    ap.add_argument("--max-bpp", type=float)
    ap.add_argument("--shared", default=str(ROOT.parent / "shared"))
    ap.add_argument("--previous-rev", default="HEAD", help="git revision whose models/*.json are 'before'")
    args = ap.parse_args()
    doc = json.loads(Path(args.measured).read_text())
    labels = {"adapdate": "adapdate 0.1.0 (compact models)", "jpeg": "JPEG 4:2:0 (Pillow)"}
    results = []
    shipped = {int(json.loads(p.read_text())["quality"]) for p in (ROOT / "models").glob("cheng2020-anchor-q*.json")}
    for c in doc["codecs"]:
        r = c["results"]
        keep = [i for i, v in enumerate(c["settings"]["values"]) if c["name"] != "adapdate" or int(v) in shipped]
        pts = sorted((r["bpp"][i], r["psnr-rgb"][i]) for i in keep)
        results.append(CodecResult(labels.get(c["name"], c["name"]), "", "", bpp=[p[0] for p in pts],
                                   psnr=[p[1] for p in pts]))
    prev = previous_curve(args.previous_rev)
    if prev is not None:
        results.append(CodecResult("adapdate before 0.1.0 (unreleased)", "", "", bpp=list(prev.bpp),
                                   psnr=list(prev.psnr)))
    ref = Path(args.shared) / "reference" / "kodak"
    refs = [load_reference(ref / f, n) for n, f in (("BPG-444", "bpg_444_x265_ycbcr.json"), ("JPEG", "jpeg.json"),
                                                     ("cheng2020-anchor (CompressAI)",
                                                      "compressai-cheng2020-anchor_mse_cpu.json"))]
    Path(args.out).write_bytes(plot_rd(results, refs, "Kodak (24 images), PSNR-RGB", args.max_bpp))


if __name__ == "__main__":
    main()
