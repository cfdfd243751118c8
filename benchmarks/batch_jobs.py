"""Files per second of `adapdate encode|decode -j N` on a folder, against -j 1 in the same run.

    nice -n 10 .venv/bin/python benchmarks/batch_jobs.py [--images ../shared/data/kodak] [--jobs 1,2] [-q 3]
    nice -n 10 .venv/bin/python benchmarks/batch_jobs.py --jobs 2 --ray     # also --ray on a 2-worker cluster

Each setting runs the CLI as a user would (one process, its workers, the store's built-in model: unpacked
once before timing), on every image of the folder, into a fresh folder. The wall time includes starting
the process and loading the model (per worker), as a user's batch does. The outputs of every -j must be
byte for byte those of -j 1 (encoded files, then decoded PNGs); the table gives files/s and the ratio to
the first setting's. Run it on a quiet machine: with -j 2 on 2 cores each worker gets one thread.

--ray: also `--ray ADDRESS` on a local Ray cluster of 2 CPUs (2 workers of one thread each, as -j 2 on
2 cores), started once before it is timed, as a cluster runs before a job is sent to it (the start is
printed apart); each run's workers start and load the model inside the timing, as -j's do.
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


def start_ray(cpus: int, temp: Path) -> tuple[str, float]:
    """A local cluster on 127.0.0.1 (token authentication, a token of this run's); its address and start time."""
    import logging
    import secrets

    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # read when Ray is imported
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(16))  # the CLI runs inherit it
    import ray

    t = time.perf_counter()
    ctx = ray.init(num_cpus=cpus, include_dashboard=False, object_store_memory=128 << 20, _temp_dir=str(temp),
                   logging_level=logging.ERROR, log_to_driver=False)
    return ctx.address_info["gcs_address"], time.perf_counter() - t


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
    ap.add_argument("--ray", action="store_true", help="also --ray on a local cluster of 2 CPUs")
    args = ap.parse_args()
    settings: list[int | str] = [int(j) for j in args.jobs.split(",")]
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
        if args.ray:
            settings.append("ray")  # last: the cluster's idle processes do not run beside -j's
        for j in settings:
            how = ["-j", str(j)]
            if j == "ray":
                (work / "ray").mkdir()
                address, started = start_ray(2, work / "ray")
                print(f"a local Ray cluster of 2 CPUs started in {started:.1f} s (not timed)", flush=True)
                how = ["--ray", address]
            enc_dir, dec_dir = work / f"enc{j}", work / f"dec{j}"
            enc = adapdate("encode", *map(str, images), "-o", str(enc_dir), "-q", args.quality, *how, "--quiet")
            dec = adapdate("decode", *map(str, sorted(enc_dir.iterdir())), "-o", str(dec_dir), *how, "--quiet")
            outputs = (contents(enc_dir), contents(dec_dir))
            if reference is None:
                reference = outputs
            same = outputs == reference
            rows.append({"jobs": j, "encode_s": enc, "decode_s": dec, "identical": same})
            print(f"{'--ray' if j == 'ray' else f'-j {j}'}: encode {enc:.1f} s ({len(images) / enc:.2f} files/s), decode "
                  f"{dec:.1f} s ({len(images) / dec:.2f} files/s), outputs identical to -j {settings[0]}: {same}",
                  flush=True)
        if args.ray:
            import ray

            ray.shutdown()  # before its temp folder goes
    base = rows[0]
    print(f"\n| -j | encode files/s | ratio | decode files/s | ratio | identical |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['jobs']} | {len(images) / r['encode_s']:.2f} | {base['encode_s'] / r['encode_s']:.2f} | "
              f"{len(images) / r['decode_s']:.2f} | {base['decode_s'] / r['decode_s']:.2f} | {r['identical']} |")
    two = next((r for r in rows if r["jobs"] == 2), None)
    if args.ray and two is not None:
        ray_row = rows[-1]
        print(f"--ray against -j 2: encode {two['encode_s'] / ray_row['encode_s']:.2f}x, "
              f"decode {two['decode_s'] / ray_row['decode_s']:.2f}x the files/s (goal: 0.85x or more)")
    print(f"load average at the end: {load_average()}")
    if args.json:
        args.json.write_text(json.dumps({"images": len(images), "rows": rows}, indent=1))
    if not all(r["identical"] for r in rows):
        raise SystemExit("outputs differ between -j settings")


if __name__ == "__main__":
    main()
