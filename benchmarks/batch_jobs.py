"""Files per second of `adapdate encode|decode -j N` on a folder, against -j 1 in the same run.

    nice -n 10 .venv/bin/python benchmarks/batch_jobs.py [--images ../shared/data/kodak] [--jobs 1,2] [-q 3]

Each setting runs the CLI as a user would (one process, its workers, the store's built-in model: unpacked
once before timing), on every image of the folder, into a fresh folder. The wall time includes starting
the process and loading the model (per worker), as a user's batch does. The outputs of every -j must be
byte for byte those of -j 1 (encoded files, then decoded PNGs); the table gives files/s and the ratio to
the first setting's. Run it on a quiet machine: with -j 2 on 2 cores each worker gets one thread.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KODAK = ROOT.parent / "shared" / "data" / "kodak"


def adapdate(*args: str) -> float:
    """Seconds of one CLI run (which must succeed)."""
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "adapdate_codec", *args], capture_output=True, text=True)
    seconds = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"adapdate {' '.join(args)} failed ({r.returncode}): {r.stderr.strip()}")
    return seconds


def contents(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def load_average() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=Path, default=KODAK)
    ap.add_argument("--jobs", default="1,2", help="comma-separated -j settings; the first is the reference")
    ap.add_argument("-q", "--quality", default="3")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    settings = [int(j) for j in args.jobs.split(",")]
    images = sorted(p for p in args.images.iterdir() if p.suffix.lower() == ".png")
    if not images:
        raise SystemExit(f"no .png images in {args.images}")
    print(f"{len(images)} images from {args.images}, q{args.quality}, {os.cpu_count()} CPUs, "
          f"load average {load_average()}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="adapdate-jobs-") as tmp:
        work = Path(tmp)
        adapdate("encode", str(images[0]), "-o", str(work / "warm.adpd"), "-q", args.quality, "--quiet")  # unpack
        reference: tuple[dict[str, bytes], dict[str, bytes]] | None = None
        for j in settings:
            enc_dir, dec_dir = work / f"enc{j}", work / f"dec{j}"
            enc = adapdate("encode", *map(str, images), "-o", str(enc_dir), "-q", args.quality, "-j", str(j),
                           "--quiet")
            dec = adapdate("decode", *map(str, sorted(enc_dir.iterdir())), "-o", str(dec_dir), "-j", str(j),
                           "--quiet")
            outputs = (contents(enc_dir), contents(dec_dir))
            if reference is None:
                reference = outputs
            same = outputs == reference
            rows.append({"jobs": j, "encode_s": enc, "decode_s": dec, "identical": same})
            print(f"-j {j}: encode {enc:.1f} s ({len(images) / enc:.2f} files/s), decode {dec:.1f} s "
                  f"({len(images) / dec:.2f} files/s), outputs identical to -j {settings[0]}: {same}", flush=True)
    base = rows[0]
    print(f"\n| -j | encode files/s | ratio | decode files/s | ratio | identical |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['jobs']} | {len(images) / r['encode_s']:.2f} | {base['encode_s'] / r['encode_s']:.2f} | "
              f"{len(images) / r['decode_s']:.2f} | {base['decode_s'] / r['decode_s']:.2f} | {r['identical']} |")
    print(f"load average at the end: {load_average()}")
    if args.json:
        args.json.write_text(json.dumps({"images": len(images), "rows": rows}, indent=1))
    if not all(r["identical"] for r in rows):
        raise SystemExit("outputs differ between -j settings")


if __name__ == "__main__":
    main()
