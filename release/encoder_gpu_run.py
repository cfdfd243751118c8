"""Train new encoders (g_a, h_a; the decoders frozen) for shipped qualities on a lent GPU, in one device call.

Built on release/continue_run.py's payload (photos as JPEG, CompressAI wheels) and device helpers; each job
is `adapdate train encoder`'s training (adapdate_codec.train with TrainConfig.encoder = "whole") from the
shipped model of its quality, read through the tree's model store as here.

1. Here:    .venv/bin/python release/encoder_gpu_run.py pack --qualities 1,2,3,4,5 --seconds 360
2. Device:  run(command="python3 release/encoder_gpu_run.py device", carry=[".gpu"], timeout_s=600)
            writes into $OUT, per quality, qN-encoder.delta.xz: the trained g_a/h_a minus the start's, as
            float16 (an encoder's errors only move latents; the decoder is untouched), and log.txt.
3. Here:    .venv/bin/python release/encoder_gpu_run.py unpack FILES_AT --out runs/enc-gpu
            rebuilds a `train encoder` checkpoint per quality (the start's weights + the difference; its
            config names the built-in base), ready for release/release_encoder_update.py.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "release"))

import continue_run as cr  # noqa: E402

NAME = "cheng2020-anchor"


def _encoder_keys(sd: dict) -> list[str]:
    return sorted(k for k, v in sd.items() if k.startswith(("g_a.", "h_a.")) and v.is_floating_point())


def pack(args) -> None:
    from adapdate_codec.store import ModelStore

    gpu = Path(args.gpu_dir)
    gpu.mkdir(parents=True, exist_ok=True)
    cr.fetch_wheels(gpu / "whl")
    qualities = [int(q) for q in args.qualities.split(",")]
    store = ModelStore()
    plan = {"qualities": qualities, "seconds": args.seconds, "lr": args.lr, "warmup": args.warmup,
            "batch": args.batch, "patch": args.patch,
            "start": {q: store.get(NAME, q).fingerprint for q in qualities}}
    (gpu / "encoder-plan.json").write_text(json.dumps(plan, indent=1) + "\n")
    tree = sum(cr.tree_bytes(ROOT).values())
    budget = cr.DEVICE_LIMIT - tree - cr.folder_bytes(gpu / "whl") - 2**20
    chosen = cr.pack_photos(Path(args.data), gpu / "data", budget)
    total = tree + cr.folder_bytes(gpu)
    print(f"payload {cr.mib(total)} of {cr.mib(cr.DEVICE_LIMIT)}: tree {cr.mib(tree)}, {chosen}")
    if total > cr.DEVICE_LIMIT:
        raise SystemExit("too big for the device tool")


def child(args) -> None:
    """One quality: train its encoder from the shipped model, write the float16 difference."""
    import torch

    cr._log(cr.import_compressai())
    from adapdate_codec.store import ModelStore
    from adapdate_codec.train import TrainConfig, train

    gpu, work, out = Path(args.gpu_dir), Path(args.work), Path(args.out)
    plan = json.loads((gpu / "encoder-plan.json").read_text())
    q = int(args.child)
    start = ModelStore().get(NAME, q)
    if start.fingerprint != plan["start"][str(q)]:
        raise SystemExit(f"q{q} here is {start.fingerprint[:12]}, the plan's {plan['start'][str(q)][:12]}")
    base = {k: v.float() if v.is_floating_point() else v for k, v in start.state_dict.items()}
    cfg = TrainConfig(data=str(gpu / "data"), out=str(work / f"q{q}.ckpt"), quality=q, N=start.N, lmbda=start.lmbda,
                      steps=10**6, time_limit_s=plan["seconds"], batch=plan["batch"], patch=plan["patch"],
                      lr=plan["lr"], warmup=plan["warmup"], min_lr_ratio=0.02, device=args.device,
                      bf16=args.device == "cuda",
                      log_every=100, val_every=10**9, checkpoint_every_s=60.0, downscale_lossy=False,
                      encoder="whole", base={"name": start.name, "quality": q, "fingerprint": start.fingerprint})
    state = train(cfg, init_state=base, log=cr._log)
    delta = {k: (state["model"][k].detach().float().cpu() - base[k]).half() for k in _encoder_keys(base)}
    size = cr._save_xz({"start_fingerprint": start.fingerprint, "delta": delta}, out / f"q{q}-encoder.delta.xz")
    meta = {"quality": q, "step": state["step"], "skipped": state.get("skipped", 0),
            "elapsed_s": state["elapsed_s"], "config": state["config"], "file_bytes": size,
            "device_name": torch.cuda.get_device_name() if args.device == "cuda" else args.device}
    (work / f"q{q}.json").write_text(json.dumps(meta) + "\n")
    cr._log(f"q{q}: step {state['step']}, {size / 1e6:.1f} MB")


def device(args) -> None:
    gpu, work = Path(args.gpu_dir), Path(args.work)
    out = Path(args.out or os.environ.get("OUT") or "gpu-out")
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    cr.install_wheels(gpu)
    plan = json.loads((gpu / "encoder-plan.json").read_text())
    threads = max(1, (os.cpu_count() or 2) // len(plan["qualities"]))
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    cmd = [sys.executable, str(Path(__file__).resolve()), "child", "--gpu-dir", str(gpu), "--work", str(work),
           "--out", str(out), "--device", args.device]
    procs = {q: subprocess.Popen(cmd + ["--child", str(q)], stdout=open(work / f"q{q}.log", "w"),
                                 stderr=subprocess.STDOUT, env=env) for q in plan["qualities"]}
    deadline = time.monotonic() + plan["seconds"] + args.grace
    for q, p in procs.items():
        try:
            p.wait(timeout=max(1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.terminate()  # train() checkpoints on SIGTERM; the job then writes its file
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
    results = {"plan": plan, "jobs": {}}
    with open(out / "log.txt", "w") as log:
        for q in procs:
            meta = work / f"q{q}.json"
            if meta.exists():
                results["jobs"][q] = json.loads(meta.read_text())
            log.write(f"==== q{q} exit {procs[q].returncode}\n{(work / f'q{q}.log').read_text()[-20000:]}\n")
        log.write(json.dumps(results, indent=1) + "\n")


def unpack(args) -> None:
    import torch

    from adapdate_codec.store import ModelStore
    from adapdate_codec.train import TrainConfig, save_checkpoint

    src, out = Path(args.files_at), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    store = ModelStore()
    for path in sorted(src.rglob("q*-encoder.delta.xz")):
        packed = cr._load_xz(path)
        q = int(path.name[1:].split("-")[0])
        start = store.get(NAME, q)
        if start.fingerprint != packed["start_fingerprint"]:
            raise SystemExit(f"{path.name} was trained from {packed['start_fingerprint'][:12]}, "
                             f"q{q} here is {start.fingerprint[:12]}")
        sd = {k: v.clone() for k, v in start.state_dict.items()}
        for k, d in packed["delta"].items():
            sd[k] = sd[k].float() + d.float()
        cfg = TrainConfig(data="(lent GPU: .gpu/data)", out=str(out / f"q{q}-encoder.ckpt"), quality=q, N=start.N,
                          lmbda=start.lmbda, encoder="whole",
                          base={"name": start.name, "quality": q, "fingerprint": start.fingerprint})
        from dataclasses import asdict

        save_checkpoint(out / f"q{q}-encoder.ckpt", {"format": 1, "config": asdict(cfg), "step": 0,
                                                     "elapsed_s": 0.0, "model": sd})
        print(f"q{q}: {out / f'q{q}-encoder.ckpt'} ({len(packed['delta'])} encoder tensors)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack")
    p.add_argument("--qualities", default="1,2,3,4,5")
    p.add_argument("--seconds", type=float, default=360)
    p.add_argument("--lr", type=float, default=1.5e-4)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--patch", type=int, default=256)
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "train"))
    p.add_argument("--gpu-dir", default=str(ROOT / ".gpu"))
    for name in ("device", "child"):
        p = sub.add_parser(name)
        p.add_argument("--gpu-dir", default=str(ROOT / ".gpu"))
        p.add_argument("--work", default="/tmp/enc-work")
        p.add_argument("--out")
        p.add_argument("--grace", type=float, default=90)
        p.add_argument("--child")
        p.add_argument("--device", default="cuda", help="cpu: a dry run here")
    p = sub.add_parser("unpack")
    p.add_argument("files_at")
    p.add_argument("--out", required=True)
    args = ap.parse_args()
    {"pack": pack, "device": device, "child": child, "unpack": unpack}[args.cmd](args)


if __name__ == "__main__":
    main()
