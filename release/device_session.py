"""Everything one lent-GPU call does, in one command (issue 18's GPU figures beside continue_run's training).

Here, first:
    .venv/bin/python release/continue_run.py pack --qualities 1,2,3,4,5 --seconds 280 --encoder-seconds 90 \\
        --data-mib 24
    .venv/bin/python release/device_session.py stage-kodak        # .gpu/kodak: the 24 Kodak PNGs (15 MiB)
The device call:
    run(command="python3 release/device_session.py device", carry=[".gpu"], timeout_s=600)
There, in order:
1. the carried wheels installed (continue_run.install_wheels);
2. --effort latency with the GPU to itself: benchmarks/effort.py on 3 Kodak images, q3, levels 0,1,3,5,7,9,
   one image at a time as the CLI codes (after one untimed warm-up search) -> $OUT/effort.json["timing"];
3. continue_run.py device (the plan's training jobs, their encoder phases) in the background, and beside it
   the levels' step sizes tuned on 512² val crops (effort.py --tune, q2 and q4: mean real RD cost), then
   benchmarks/effort.py with those step sizes on all 24 Kodak images, q1-q5, every level, batched per image size, levels in order
   of interest, stopping in time -> $OUT/effort.json["kodak"] (written after every level and quality).
Kodak is evaluation only: nothing here tunes on it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GPU = ROOT / ".gpu"
KODAK = ROOT.parent / "shared" / "data" / "kodak"
LEVEL_ORDER = "0,9,2,5,1,3,7,4,6,8"  # the acceptance's levels first; a run cut short keeps what it finished


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def stage_kodak() -> None:
    """.gpu/kodak: the Kodak PNGs as they are; .gpu/val: 512 x 512 centre crops of the val photos."""
    from PIL import Image

    dest = GPU / "kodak"
    dest.mkdir(parents=True, exist_ok=True)
    for p in sorted(KODAK.glob("*.png")):
        shutil.copyfile(p, dest / p.name)
    val = GPU / "val"
    val.mkdir(parents=True, exist_ok=True)
    for p in sorted((KODAK.parent / "val").glob("*.png")):
        with Image.open(p) as im:
            w, h = im.size
            im.convert("RGB").crop(((w - 512) // 2, (h - 512) // 2, (w + 512) // 2, (h + 512) // 2)).save(val / p.name)
    print(f"{len(list(dest.glob('*.png')))} Kodak images in {dest}, {len(list(val.glob('*.png')))} val crops in {val}")


def effort_cmd(out: Path, key: str, *extra: str) -> list[str]:
    return [sys.executable, str(ROOT / "benchmarks" / "effort.py"), "--images", str(GPU / "kodak"), "--device", "cuda",
            "--shipped", "--json", str(out / "effort.json"), "--key", key, *extra]


def device() -> None:
    sys.path.insert(0, str(ROOT / "release"))
    sys.path.insert(0, str(ROOT))
    import continue_run

    out = Path(os.environ.get("OUT", "gpu-out"))
    out.mkdir(parents=True, exist_ok=True)
    continue_run.install_wheels(GPU)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    t0 = time.monotonic()
    # the benchmark's own model store: the training jobs unpack the built-in models into theirs meanwhile
    effort_env = dict(env, ADAPDATE_HOME="/tmp/adapdate-effort-home")
    log("effort timing (GPU alone)")
    try:
        subprocess.run(effort_cmd(out, "timing", "--limit", "3", "--qualities", "3", "--levels", "0,1,3,5,7,9",
                                  "--warmup", "--threads", "4"), env=effort_env, timeout=150, check=False)
    except subprocess.TimeoutExpired:
        log("timing run cut at 150 s")
    log(f"timing done in {time.monotonic() - t0:.0f} s; training and the Kodak run start")
    plan = continue_run.Plan.load(GPU)
    train_s = plan.seconds + max(j.encoder_seconds for j in plan.jobs)
    training = subprocess.Popen([sys.executable, str(ROOT / "release" / "continue_run.py"), "device"], env=env)
    t1 = time.monotonic()
    # step sizes tuned on val crops (never Kodak), then used for the Kodak run
    tuning = [sys.executable, str(ROOT / "benchmarks" / "effort.py"), "--images", str(GPU / "val"), "--crop", "512",
              "--device", "cuda", "--shipped", "--qualities", "2,4", "--levels", "1,2,3,5,7", "--tune", "0.25,0.5,1,2",
              "--max-seconds", "100", "--threads", "4", "--json", str(out / "effort.json"), "--key", "tuning"]
    spec = ""
    try:
        tuned = subprocess.run(tuning, env=effort_env, timeout=160, capture_output=True, text=True)
        print(tuned.stdout[-3000:], tuned.stderr[-2000:], flush=True)
        spec = next((ln.split(" ", 1)[1] for ln in tuned.stdout.splitlines() if ln.startswith("--lr-scale ")), "")
    except subprocess.TimeoutExpired:
        log("tuning cut at 160 s")
    log(f"tuning: --lr-scale {spec!r} after {time.monotonic() - t1:.0f} s")
    left = train_s - (time.monotonic() - t1) - 15
    kodak = subprocess.Popen(effort_cmd(out, "kodak", "--levels", LEVEL_ORDER, "--batch", "16", "--threads", "4",
                                        "--max-seconds", str(max(30, left)), *(["--lr-scale", spec] if spec else [])),
                             env=effort_env)
    try:
        kodak.wait(timeout=max(30, left) + 90)
    except subprocess.TimeoutExpired:
        kodak.terminate()
    log(f"Kodak run ended ({kodak.poll()})")
    training.wait()
    log(f"training ended ({training.returncode}); total {time.monotonic() - t0:.0f} s")
    print(sorted(p.name for p in out.iterdir()))


if __name__ == "__main__":
    {"stage-kodak": stage_kodak, "device": device}[sys.argv[1]]()
