"""Training throughput: the previous training loop against the current one, in the same run.

    nice -n 10 .venv/bin/python benchmarks/train_throughput.py             # CPU: batch 4, 128² crops, fp32
    python3 benchmarks/train_throughput.py --device cuda                   # GPU: batch 16, 256² crops, bf16
    python3 benchmarks/train_throughput.py --device cuda --variants old,new,new+cl --jobs 1,6 --mps

Loops ("variants"):
  old              the loop before issue 13 (reproduced here): loss and finite checks read back every step
                   (and CompressAI's bottleneck reads its permutation back three times per forward), the
                   batch built in the training thread, per-tensor / for-each Adam, NCHW
  new              adapdate_codec.train.train as configured by default
  new+cl           ... with channels-last activations and weights (CUDA only)
  new+compile      ... with torch.compile;  new+cl+compile: both

Prints images/s per loop (CPU: the median of rounds run in turn, since a shared machine's load drifts;
CUDA: jobs training at once on the one GPU, all images over the wall time from a common start to the
last one's end), the ratio to "old", and then the loss after the same --loss-steps steps from the same
seed for old and new: the mean training loss of the last 50 steps and the loss on 16 fixed crops
(rounded latents). The new loop must not learn slower per step.

CPU figures at N=128 take about 2 s a step on a busy 2-core machine: the loss run uses --loss-N
(default 32 on CPU) and says so.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adapdate_codec import network  # noqa: E402
from adapdate_codec.data import CropDataset  # noqa: E402
from adapdate_codec.train import (StepStats, TrainConfig, build_network, learning_rate, rate_distortion,  # noqa: E402
                                  rd_loss, train)

VARIANTS = {"old": {}, "new": {}, "new+cl": {"channels_last": True}, "new+compile": {"compile": True},
            "new+cl+compile": {"channels_last": True, "compile": True}}


# -- the previous loop ------------------------------------------------------------------------------
@contextlib.contextmanager
def compressai_bottleneck():
    """The network's forward as it was: CompressAI's own bottleneck forward (same values)."""
    mine = network.bottleneck_likelihoods
    network.bottleneck_likelihoods = lambda eb, z, training: eb(z, training=training)[1]
    try:
        yield
    finally:
        network.bottleneck_likelihoods = mine


def previous_loop(cfg: TrainConfig, on_step) -> dict:
    """adapdate_codec.train.train's loop before issue 13, for one process (no DDP, no checkpoints)."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model, trainable, quantiles = build_network(cfg, None)
    model.to(cfg.device).train()
    optimizer = torch.optim.Adam(trainable, lr=cfg.lr)
    aux_optimizer = torch.optim.Adam(quantiles, lr=cfg.aux_lr)
    data = CropDataset(cfg.data, cfg.patch, cfg.downscale_lossy)
    device_type = torch.device(cfg.device).type
    if device_type == "cuda":
        torch.backends.cudnn.benchmark = True
    t0, step, window, shown = time.monotonic(), 0, [], None
    with compressai_bottleneck():
        while step < cfg.steps:
            lr = learning_rate(cfg, step, time.monotonic() - t0)
            for g in optimizer.param_groups:
                g["lr"] = lr
            x = data.batch(cfg.batch, rng).to(cfg.device)
            with torch.autocast(device_type, dtype=torch.bfloat16, enabled=cfg.bf16):
                terms = rate_distortion(model, x, cfg.lambda_)
            loss, t = terms[0], terms.detach()
            stats = StepStats(float(t[0]), float(t[1]), float(t[2]))  # three reads, as rd_loss made them
            optimizer.zero_grad(set_to_none=True)
            aux_optimizer.zero_grad(set_to_none=True)
            bad = not math.isfinite(stats.loss)
            if not bad:
                loss.backward()
                norm = torch.nn.utils.clip_grad_norm_(trainable, cfg.clip if cfg.clip > 0 else float("inf"))
                bad = not torch.isfinite(norm)
            if bad:
                continue
            optimizer.step()
            aux_loss = model.aux_loss()
            aux_loss.backward()
            aux_optimizer.step()
            step += 1
            window.append(stats)
            if step % cfg.log_every == 0:
                float(aux_loss.detach())  # the log line read it
                shown = StepStats(*(float(np.mean([getattr(s, k) for s in window])) for k in ("loss", "bpp", "mse")))
                window.clear()
            on_step(step, shown)
    return {"model": model.state_dict(), "step": step}


def run_loop(variant: str, cfg: TrainConfig, on_step) -> dict:
    if variant == "old":
        return previous_loop(cfg, on_step)
    return train(replace(cfg, **VARIANTS[variant]), log=lambda s: None,
                 progress=lambda step, total, stats, lr: on_step(step, stats))


# -- measuring -------------------------------------------------------------------------------------
def sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


class Window:
    """Times steps warm+1 .. warm+timed (the device drained at both ends); optionally waits for the
    other jobs first (files in sync_dir), so that parallel jobs are timed over the same interval."""

    def __init__(self, cfg: TrainConfig, warm: int, timed: int, sync_dir: Path | None = None, index: int = 0):
        self.cfg, self.warm, self.timed, self.sync_dir, self.index = cfg, warm, timed, sync_dir, index
        self.t0 = self.t1 = self.cpu0 = self.cpu1 = 0.0
        self.stats: StepStats | None = None

    def __call__(self, step: int, stats: StepStats | None) -> None:
        self.stats = stats
        if step == self.warm:
            sync(self.cfg.device)
            if self.sync_dir is not None:
                (self.sync_dir / f"ready.{self.index}").touch()
                while not (self.sync_dir / "go").exists():
                    time.sleep(0.01)
            self.t0, self.cpu0 = time.time(), time.process_time()
        elif step == self.warm + self.timed:
            sync(self.cfg.device)
            self.t1, self.cpu1 = time.time(), time.process_time()

    @property
    def images_per_s(self) -> float:
        return self.timed * self.cfg.batch / (self.t1 - self.t0)

    @property
    def cpu_s_per_image(self) -> float:
        """CPU time of all the process's threads per image: steadier than wall time on a shared machine."""
        return (self.cpu1 - self.cpu0) / (self.timed * self.cfg.batch)


def base_config(args, data: str, out: str) -> TrainConfig:
    return TrainConfig(data=data, out=out, N=args.N, batch=args.batch, patch=args.patch, device=args.device,
                       bf16=args.bf16, lr=args.lr, warmup=args.warmup, seed=args.seed, log_every=50,
                       val_every=10**9, checkpoint_every_s=1e9, downscale_lossy=False, steps=args.warm + args.timed)


def throughput_round(variant: str, cfg: TrainConfig, args) -> tuple[float, float]:
    w = Window(cfg, args.warm, args.timed)
    run_loop(variant, cfg, w)
    return w.images_per_s, w.cpu_s_per_image


def loss_run(variant: str, cfg: TrainConfig, held_out: torch.Tensor) -> dict:
    """Train cfg.steps steps; the training loss of the last log interval and the loss on held_out."""
    seen: dict = {}
    state = run_loop(variant, cfg, lambda step, stats: seen.update(stats=stats))
    model = network.build_model(cfg.arch, cfg.N)
    model.load_state_dict({k: v.float().cpu().contiguous() for k, v in state["model"].items()})
    with torch.no_grad():
        _, held = rd_loss(model.eval(), held_out, cfg.lambda_)
    return {"train_loss_last_50": seen["stats"].loss, "held_out_loss": held.loss, "held_out_bpp": held.bpp,
            "held_out_psnr": held.psnr}


def sync_check(cfg: TrainConfig) -> str:
    """CUDA: steps of the new loop under torch.cuda.set_sync_debug_mode("error"), between log intervals:
    any operation that waits for the GPU raises, naming itself."""
    cfg = replace(cfg, steps=12, log_every=10**9)

    def on_step(step: int, stats) -> None:
        torch.cuda.set_sync_debug_mode("error" if 2 <= step < cfg.steps else 0)

    try:
        run_loop("new", cfg, on_step)
    except RuntimeError as e:
        return f"a step waits for the GPU: {str(e).splitlines()[0]}"
    finally:
        torch.cuda.set_sync_debug_mode(0)
    return "no host synchronisation in steps 3-12"


def parallel_throughput(variant: str, jobs: int, args, data: str) -> dict:
    """jobs processes of one variant at once on the GPU, started together after their warm-up."""
    with tempfile.TemporaryDirectory(prefix="adapdate-tp-") as tmp:
        sync_dir = Path(tmp)
        env = dict(os.environ, OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 2) // jobs)))
        cmd = [sys.executable, __file__, *sys.argv[1:], "--worker", variant, "--sync-dir", tmp, "--data", data]
        procs = [subprocess.Popen(cmd + ["--index", str(i)], stdout=subprocess.PIPE, text=True, env=env)
                 for i in range(jobs)]
        while len(list(sync_dir.glob("ready.*"))) < jobs:
            if any(p.poll() is not None for p in procs):
                break
            time.sleep(0.05)
        (sync_dir / "go").touch()
        results = []
        for p in procs:
            out, _ = p.communicate()
            line = next((x for x in out.splitlines() if x.startswith("RESULT ")), None)
            if p.returncode != 0 or line is None:
                raise SystemExit(f"{variant} x{jobs}: a worker failed (exit {p.returncode})")
            results.append(json.loads(line[7:]))
    wall = max(r["t1"] for r in results) - min(r["t0"] for r in results)
    images = sum(r["images"] for r in results)
    return {"variant": variant, "jobs": jobs, "images_per_s": images / wall,
            "per_job": [round(r["images"] / (r["t1"] - r["t0"]), 1) for r in results]}


def worker(args) -> None:
    cfg = base_config(args, args.data, str(Path(args.sync_dir) / f"w{args.index}.ckpt"))
    cfg.seed += args.index
    w = Window(cfg, args.warm, args.timed, Path(args.sync_dir), args.index)
    run_loop(args.worker, cfg, w)
    print("RESULT " + json.dumps({"images": args.timed * cfg.batch, "t0": w.t0, "t1": w.t1}), flush=True)


@contextlib.contextmanager
def mps_daemon(enabled: bool):
    """NVIDIA's Multi-Process Service: kernels of several processes share the GPU at once."""
    if not enabled:
        yield False
        return
    r = subprocess.run(["nvidia-cuda-mps-control", "-d"], capture_output=True, text=True)
    print(f"MPS: {'started' if r.returncode == 0 else 'not started: ' + (r.stderr or r.stdout).strip()}", flush=True)
    try:
        yield r.returncode == 0
    finally:
        if r.returncode == 0:
            subprocess.run(["nvidia-cuda-mps-control"], input="quit\n", text=True)


def image_subset(src: str, count: int, dest: Path) -> str:
    """The count smallest photos of src, linked into dest (loading all of them would dominate a short run)."""
    from adapdate_codec.data import find_images

    for i, p in enumerate(sorted(find_images(src), key=lambda p: p.stat().st_size)[:count]):
        (dest / f"{i:03d}{p.suffix.lower()}").symlink_to(p.resolve())
    return str(dest)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "train"))
    ap.add_argument("--images", type=int, default=16, help="Photos to load from --data (the smallest files).")
    ap.add_argument("--variants", help="Loops to compare (default: old,new on CPU; old,new,new+cl on CUDA).")
    ap.add_argument("--jobs", help="CUDA: numbers of jobs training at once (default 1,6).")
    ap.add_argument("--mps", action="store_true", help="CUDA: run the parallel jobs under an MPS daemon.")
    ap.add_argument("--N", type=int, default=128)
    ap.add_argument("--batch", type=int)
    ap.add_argument("--patch", type=int)
    ap.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--warm", type=int, help="Untimed steps first (default 3 on CPU, 15 on CUDA).")
    ap.add_argument("--timed", type=int, help="Timed steps (default 10 on CPU, 60 on CUDA).")
    ap.add_argument("--rounds", type=int, default=3, help="CPU: rounds per loop, run in turn.")
    ap.add_argument("--loss-steps", type=int, default=300, help="0: no loss run.")
    ap.add_argument("--loss-N", type=int, help="N of the loss run (default 32 on CPU, --N on CUDA).")
    ap.add_argument("--json", help="Also write the figures here.")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--sync-dir", help=argparse.SUPPRESS)
    ap.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.cuda = torch.device(args.device).type == "cuda"
    args.batch = args.batch or (16 if args.cuda else 4)
    args.patch = args.patch or (256 if args.cuda else 128)
    args.bf16 = args.cuda if args.bf16 is None else args.bf16
    args.warm = args.warm or (15 if args.cuda else 3)
    args.timed = args.timed or (60 if args.cuda else 10)
    args.jobs = [int(j) for j in (args.jobs or ("1,6" if args.cuda else "1")).split(",")]
    args.variants = (args.variants or ("old,new,new+cl" if args.cuda else "old,new")).split(",")
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown loops {unknown}; known: {', '.join(VARIANTS)}")
    return args


def cuda_throughput(args, data: str, out: str, report: dict) -> None:
    report["sync_check"] = sync_check(base_config(args, data, out))
    print(f"  sync check: {report['sync_check']}", flush=True)
    with mps_daemon(args.mps) as mps:
        report["mps"] = mps
        for jobs in args.jobs:
            for v in args.variants:
                r = parallel_throughput(v, jobs, args, data)
                report["throughput"].append(r)
                print(f"  {v:15s} x{jobs}: {r['images_per_s']:8.1f} images/s  (per job {r['per_job']})", flush=True)


def cpu_throughput(args, data: str, out: str, report: dict) -> None:
    cfg = base_config(args, data, out)
    rounds: dict[str, list[tuple[float, float]]] = {v: [] for v in args.variants}
    for _ in range(args.rounds):  # in turn: a shared machine's load drifts
        for v in args.variants:
            rounds[v].append(throughput_round(v, cfg, args))
    for v in args.variants:
        speed, cpu = statistics.median(r[0] for r in rounds[v]), statistics.median(r[1] for r in rounds[v])
        report["throughput"].append({"variant": v, "jobs": 1, "images_per_s": speed, "cpu_s_per_image": cpu,
                                     "rounds_images_per_s": [round(r[0], 3) for r in rounds[v]]})
        print(f"  {v:15s} {speed:8.3f} images/s, {cpu:.2f} CPU-s per image (medians of "
              f"{[round(r[0], 3) for r in rounds[v]]} images/s)", flush=True)


def print_ratios(report: dict, variants: list[str]) -> None:
    best = {v: max(r["images_per_s"] for r in report["throughput"] if r["variant"] == v) for v in variants}
    if "old" not in best:
        return
    for v in variants:
        print(f"  {v:15s} best {best[v]:8.2f} images/s   x{best[v] / best['old']:.2f} of old", flush=True)
    report["ratio_best_to_old"] = {v: best[v] / best["old"] for v in variants}


def compare_losses(args, data: str, out: str, report: dict) -> None:
    loss_N = args.loss_N or (args.N if args.cuda else 32)
    cfg = replace(base_config(args, data, out), N=loss_N, steps=args.loss_steps)
    held_out = CropDataset(data, args.patch).batch(16, np.random.default_rng(12345))
    print(f"loss after {args.loss_steps} steps from seed {args.seed} (N={loss_N}"
          f"{', smaller than the timed N: CPU time' if loss_N != args.N else ''}):", flush=True)
    report["loss"] = {"steps": args.loss_steps, "N": loss_N}
    for v in ("old", "new"):
        r = loss_run(v, cfg, held_out)
        report["loss"][v] = r
        print(f"  {v:4s} training loss (last 50 steps) {r['train_loss_last_50']:.4f}   held-out loss "
              f"{r['held_out_loss']:.4f} ({r['held_out_bpp']:.3f} bpp, {r['held_out_psnr']:.2f} dB)", flush=True)


def main() -> None:
    args = parse_args()
    if args.worker:
        return worker(args)
    with tempfile.TemporaryDirectory(prefix="adapdate-tp-") as tmp:
        data = image_subset(args.data, args.images, Path(tmp))
        out = str(Path(tmp) / "run.ckpt")
        report: dict = {"device": args.device, "batch": args.batch, "patch": args.patch, "N": args.N,
                        "bf16": args.bf16, "torch": torch.__version__, "throughput": []}
        print(f"{args.device}: batch {args.batch}, {args.patch}² crops, N={args.N}, bf16={args.bf16}, "
              f"{args.warm} warm-up + {args.timed} timed steps", flush=True)
        (cuda_throughput if args.cuda else cpu_throughput)(args, data, out, report)
        print_ratios(report, args.variants)
        if args.loss_steps:
            compare_losses(args, data, out, report)
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
