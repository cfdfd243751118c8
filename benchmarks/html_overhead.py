"""What `adapdate eval --html` adds to the time of the same `adapdate eval` without it.

    nice -n 10 .venv/bin/python benchmarks/html_overhead.py [--images ../shared/data/kodak] [--limit 4] \
        [--rounds 2] [--keep REPORT_DIR]

Runs the CLI as a user would, alternating without and with --html (so that a change in the machine's load
falls on both), and prints per run the wall seconds and the CPU seconds of the process and its children
(user + system), then the ratio of the sums. On a shared machine the CPU seconds are the steadier
figure. --keep writes the reports there (e.g. for the README's screenshot).
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KODAK = ROOT.parent / "shared" / "data" / "kodak"
CODECS = ["-c", "adapdate", "-c", "webp", "-c", "jpeg", "-c", "avif", "--anchor", "jpeg"]
QUALITY = ["adapdate=1,2,3,4,5", "webp=5,20,40,60,80", "jpeg=10,25,40,60,80", "avif=20,35,50,65,80"]


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run(args: list[str]) -> tuple[float, float]:
    """(wall, CPU) seconds of one CLI run, which must succeed."""
    cpu, wall = children_cpu(), time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "adapdate_codec", *args], capture_output=True, text=True)
    wall, cpu = time.perf_counter() - wall, children_cpu() - cpu
    if r.returncode != 0:
        raise SystemExit(f"adapdate {' '.join(args)} failed ({r.returncode}): {r.stderr.strip()[-2000:]}")
    return wall, cpu


def unpack(qualities: list[int]) -> None:
    """Built-in models are unpacked on first use: do it before timing."""
    from adapdate_codec.store import ModelStore

    store = ModelStore()
    for q in qualities:
        store.get(None, q)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=Path, default=KODAK)
    ap.add_argument("--limit", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("-q", "--quality", action="append", help=f"eval's -q, replacing {' '.join(QUALITY)}")
    ap.add_argument("--keep", type=Path, help="write the reports here instead of a temporary folder (replaced)")
    a = ap.parse_args()
    quality = a.quality or QUALITY
    base = ["eval", str(a.images), "--limit", str(a.limit), *CODECS, *(x for q in quality for x in ("-q", q))]
    print(f"adapdate {' '.join(base)} [--html DIR]", flush=True)
    ours = next((q for q in quality if q.startswith("adapdate=")), "adapdate=")
    unpack([int(v) for v in ours.partition("=")[2].split(",") if v])
    totals = {"plain": [0.0, 0.0], "html": [0.0, 0.0]}
    with tempfile.TemporaryDirectory(prefix="html-overhead-") as tmp:
        report = a.keep or Path(tmp, "report")
        for i in range(a.rounds):
            for kind in ("plain", "html"):
                args = base if kind == "plain" else [*base, "--html", str(report), "-f"]
                wall, cpu = run(args)
                totals[kind][0] += wall
                totals[kind][1] += cpu
                size = sum(p.stat().st_size for p in report.rglob("*") if p.is_file()) if kind == "html" else 0
                print(f"round {i + 1} {kind:5s}: {wall:7.1f} s wall, {cpu:7.1f} s CPU"
                      + (f", report {size / 1e6:.1f} MB" if size else ""), flush=True)
        (pw, pc), (hw, hc) = totals["plain"], totals["html"]
        print(f"--html / plain: wall x{hw / pw:.3f} ({100 * (hw / pw - 1):+.1f} %), "
              f"CPU x{hc / pc:.3f} ({100 * (hc / pc - 1):+.1f} %)")
        if a.keep:
            print(f"report kept in {a.keep}")


if __name__ == "__main__":
    main()
