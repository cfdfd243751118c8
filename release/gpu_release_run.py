"""One lent-GPU session that trains the default models: q3 from scratch, then (in parallel) q2 and q1
fine-tuned from it and adapters of both types on it, plus a cross-device coding check.

It calls the product's own training loop (adapdate_codec.train.train) and writes what comes back
into $OUT, sized for the device tool (at most 8 files of 16 MB): q3 in float16 split in two parts, q2
and q1 as int8 deltas against the float16 q3 (their error is below float16's own rounding; the
script measures it), the adapters in float32, and one log.

    python release/gpu_release_run.py --data .gpu/train --phase1 270 --phase2 150
    python release/gpu_release_run.py --unpack DIR --out runs/   # here, after the run

Training data travels as near-lossless JPEGs (quality 92, 4:4:4) of ../shared/data/train already
downscaled as the product does (`--no-downscale-lossy`), made by `--pack-data SRC DEST`.
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from release.continue_run import from_int8_delta, import_compressai, int8_delta  # noqa: E402

PART_BYTES = 15 * 2**20
FINETUNES = {"q2": 2, "q1": 1}
ADAPTER_TYPES = ("resblock", "all")


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- packing ----------------------------------------------------------------------------------------
def pack_data(src: Path, dest: Path, quality: int = 92) -> None:
    """Training photos as the product loads them (JPEG sources downscaled x2; huge ones to <= 3.2 MP),
    saved as near-lossless JPEG 4:4:4 so that they travel in a few tens of MB."""
    from PIL import Image

    from adapdate_codec.data import LOSSY_SUFFIXES, find_images

    dest.mkdir(parents=True, exist_ok=True)
    total = 0
    for p in find_images(src):
        with Image.open(p) as im:
            im = im.convert("RGB")
            if p.suffix.lower() in LOSSY_SUFFIXES:
                im = im.reduce(2)
                while im.width * im.height > 3.2e6:
                    im = im.resize((im.width * 7 // 10, im.height * 7 // 10), Image.LANCZOS)
            out = dest / f"{p.parent.name}__{p.stem}.jpg"
            im.save(out, quality=quality, subsampling=0)
            total += out.stat().st_size
    print(f"{dest}: {total / 1e6:.1f} MB")


def _slim(state: dict, model: dict) -> dict:
    return {"format": state["format"], "config": state["config"], "step": state["step"],
            "elapsed_s": state["elapsed_s"], "model": model}


def half_state(sd: dict) -> dict:
    """float16 except the tensors the bundle keeps in float32."""
    from adapdate_codec.bundle import kept_in_float32, strip_table_buffers

    return {k: (v.half() if v.is_floating_point() and not kept_in_float32(k) else v)
            for k, v in strip_table_buffers(sd).items()}


def _save_parts(obj: dict, out: Path, stem: str) -> list[Path]:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    data = buf.getvalue()
    paths = []
    for i in range(0, len(data), PART_BYTES):
        p = out / f"{stem}.part{i // PART_BYTES}"
        p.write_bytes(data[i : i + PART_BYTES])
        paths.append(p)
    return paths


def _load_parts(folder: Path, stem: str) -> dict:
    import torch

    parts = sorted(folder.glob(f"{stem}.part*"), key=lambda p: int(p.suffix[5:]))
    if not parts:
        raise FileNotFoundError(f"no {stem}.part* in {folder}")
    return torch.load(io.BytesIO(b"".join(p.read_bytes() for p in parts)), map_location="cpu", weights_only=True)


# -- the run -----------------------------------------------------------------------------------------
def publish_base(work: Path, q3: dict) -> dict:
    """The float16-rounded q3 (what ships) as the phase-2 jobs' start; written atomically, since they
    poll for it."""
    import torch

    from adapdate_codec.bundle import round_half

    # on the CPU: the int8 deltas of phase 2 are taken against it there (a CUDA base broke the first run)
    base = round_half({k: (v.float() if v.is_floating_point() else v).cpu() for k, v in q3.items()})
    torch.save(base, work / "q3-base.tmp")
    os.replace(work / "q3-base.tmp", work / "q3-base.pt")
    return base


def collect_logs(work: Path, out: Path, jobs: list[str]) -> None:
    """The jobs' logs (their last 20 kB) in one file: the device tool returns at most 8 files."""
    with open(out / "log.txt", "w") as f:
        for j in jobs:
            p = work / f"{j}.log"
            if p.exists():
                f.write(f"==== {j}\n{p.read_text()[-20000:]}\n")


def base_config(args, **kw):
    from adapdate_codec.train import TrainConfig

    d = dict(data=args.data, out="", quality=3, N=args.N, steps=10**7, batch=args.batch, patch=args.patch,
             lr=args.lr, warmup=args.warmup, min_lr_ratio=0.02, device=args.device, bf16=args.bf16,
             log_every=args.log_every, val_every=10**9, checkpoint_every_s=60.0, downscale_lossy=False,
             seed=args.seed)
    d.update(kw)
    return TrainConfig(**d)


def child(args) -> None:
    """One phase-2 job: waits for the q3 base, then trains for --phase2 seconds."""
    import torch

    from adapdate_codec.adapters import AdapterConfig
    from adapdate_codec.train import train

    work = Path(args.work)
    base_file = work / "q3-base.pt"
    while not base_file.exists():
        time.sleep(1)
    time.sleep(1)
    base = torch.load(base_file, map_location="cpu", weights_only=True)
    job = args.child
    if args.adapter_init:  # continue earlier adapters
        base.update(torch.load(Path(args.adapter_init) / f"{job}.only.pt", weights_only=True)["model"])
    if job in FINETUNES:
        cfg = base_config(args, quality=FINETUNES[job], out=str(work / f"{job}.ckpt"), lr=args.ft_lr, warmup=50,
                          time_limit_s=args.phase2, seed=args.seed + FINETUNES[job])
    else:
        cfg = base_config(args, quality=3, out=str(work / f"{job}.ckpt"), lr=args.adapter_lr, warmup=50,
                          time_limit_s=args.phase2, seed=args.seed + 10,
                          adapters=AdapterConfig(job.split("-")[1]).to_dict(),
                          base={"name": "cheng2020-anchor", "quality": 3, "fingerprint": "0" * 64})
    state = train(cfg, init_state=base, log=_log)
    if args.adapter_init:
        ad = {k: v.float().cpu() for k, v in state["model"].items() if ".adapter." in k}
        _save_parts(_slim(state, ad), Path(os.environ.get("OUT") or args.out_dir), job)


def cross_device_check(work: Path, N: int) -> None:
    """Encode on CPU and on CUDA; decode each on both: y_hat must be identical everywhere."""
    import numpy as np
    import torch

    from adapdate_codec import codec, container
    from adapdate_codec.bundle import ModelBundle, build_bundle
    from adapdate_codec.imageio import Picture

    devs = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    golden = ModelBundle.load(ROOT / "tests" / "data" / "golden-model.pt")
    _log(f"xdev: golden model loads here, fingerprint {golden.fingerprint[:16]}")
    data = (ROOT / "tests" / "data" / "golden.adpd").read_bytes()
    from PIL import Image

    expected = np.asarray(Image.open(ROOT / "tests" / "data" / "golden-decoded.png"))
    for dev in devs:
        out = codec.decode_picture(data, lambda h: golden, device=dev)
        _log(f"xdev: golden file decoded on {dev}: max pixel diff {np.abs(out.pixels.astype(int) - expected).max()}")
    sd = torch.load(work / "q3-base.pt", map_location="cpu", weights_only=True)
    t = time.monotonic()
    bundle = build_bundle("cheng2020-anchor", 3, "cheng2020-anchor", N, 0.0067, sd, card={}, half=True)
    _log(f"xdev: q3 bundle built in {time.monotonic() - t:.0f}s, fingerprint {bundle.fingerprint}")
    from adapdate_codec.data import find_images

    img = np.asarray(Image.open(find_images(work / "data")[0]).convert("RGB"))[:512, :768].copy()
    pic = Picture(img, "RGB")
    files = {dev: codec.encode_picture(pic, bundle, device=dev) for dev in devs}
    for enc, f in files.items():
        header, sections = container.unpack(f)
        lat = codec.decode_latents(sections, bundle, header.height, header.width)
        ref = codec.analyze(img, bundle, enc).y_hat
        outs = {dev: codec.decode_picture(f, lambda h: bundle, device=dev).pixels for dev in devs}
        diff = np.abs(outs["cpu"].astype(int) - outs[devs[-1]].astype(int)).max()
        psnr = 10 * np.log10(255**2 / np.mean((outs["cpu"].astype(float) - img) ** 2))
        _log(f"xdev: encoded on {enc}: {len(f)} B, decoded y_hat == encoder's y_hat: {torch.equal(lat.y_hat, ref)}; "
             f"pixels cpu vs cuda decode max diff {diff}; {psnr:.2f} dB")
    _log(f"xdev: cpu and {devs[-1]} encoders wrote identical files: {files['cpu'] == files[devs[-1]]}")


def main_run(args) -> None:
    import torch

    out = Path(os.environ.get("OUT") or args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    (work / "data").exists() or os.symlink(os.path.abspath(args.data), work / "data")
    _log(import_compressai())
    _log(f"torch {torch.__version__}, cuda {torch.cuda.is_available()} "
         f"{torch.cuda.get_device_name() if torch.cuda.is_available() else ''}")
    me = [sys.executable, str(Path(__file__).resolve())]
    common = ["--data", args.data, "--work", str(work), "--device", args.device, "--N", str(args.N),
              "--batch", str(args.batch), "--patch", str(args.patch), "--phase2", str(args.phase2),
              "--ft-lr", str(args.ft_lr), "--adapter-lr", str(args.adapter_lr), "--log-every", str(args.log_every)]
    if args.bf16:
        common.append("--bf16")
    if args.adapter_init:
        return continue_adapters(args, me + common, work, out)
    # the phase-2 jobs start now: they load their data and CUDA while q3 trains, then wait for it
    jobs = [*FINETUNES, *(f"adapters-{t}" for t in ADAPTER_TYPES)]
    procs = {j: subprocess.Popen(me + ["--child", j] + common, stdout=open(work / f"{j}.log", "w"),
                                 stderr=subprocess.STDOUT) for j in jobs}

    from adapdate_codec.train import train

    cfg = base_config(args, quality=3, out=str(work / "q3.ckpt"), time_limit_s=args.phase1)
    state = train(cfg, log=_log)
    half = half_state(state["model"])
    _save_parts(_slim(state, half), out, "q3")
    base = publish_base(work, half)
    _log(f"q3 saved at step {state['step']}; phase 2 starts")
    xdev = subprocess.Popen(me + ["--xdev", "--work", str(work), "--N", str(args.N)],
                            stdout=open(work / "xdev.log", "w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + args.phase2 + 90
    for j, p in procs.items():
        try:
            p.wait(timeout=max(1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.terminate()  # train() checkpoints on SIGTERM
            p.wait(timeout=30)
        _log(f"{j}: exit {p.returncode}")
    for j in jobs:
        ckpt = work / f"{j}.ckpt"
        if not ckpt.exists():
            _log(f"{j}: no checkpoint")
            continue
        st = torch.load(ckpt, map_location="cpu", weights_only=True)
        if j in FINETUNES:
            packed = int8_delta(st["model"], base)
            back = from_int8_delta(packed, base)
            err = max(float((back[k].float() - st["model"][k].float()).abs().max()) for k in packed["int8"])
            half_err = max(float((st["model"][k].half().float() - st["model"][k].float()).abs().max())
                           for k in packed["int8"])
            _log(f"{j}: step {st['step']}, int8-delta max error {err:.2e} (float16 rounding: {half_err:.2e})")
            _save_parts(_slim(st, packed), out, j)
        else:
            ad = {k: v.float() for k, v in st["model"].items() if ".adapter." in k}
            _log(f"{j}: step {st['step']}, {sum(v.numel() for v in ad.values())} adapter parameters")
            _save_parts(_slim(st, ad), out, j)
    if xdev is not None:
        try:
            xdev.wait(timeout=60)
        except subprocess.TimeoutExpired:
            xdev.kill()
    collect_logs(work, out, [*jobs, "xdev"])
    _log("done")


def continue_adapters(args, cmd: list[str], work: Path, out: Path) -> None:
    """Second session: both adapter types continue from earlier weights on the shipped q3."""
    publish_base(work, _load_parts(Path(args.adapter_init), "q3")["model"])
    procs = {j: subprocess.Popen(cmd + ["--child", j, "--adapter-init", args.adapter_init],
                                 stdout=open(work / f"{j}.log", "w"), stderr=subprocess.STDOUT)
             for j in (f"adapters-{t}" for t in ADAPTER_TYPES)}
    for j, p in procs.items():
        p.wait()
        _log(f"{j}: exit {p.returncode}")
    collect_logs(work, out, list(procs))
    _log("done")


def unpack(folder: Path, dest: Path) -> None:
    """Rebuild training checkpoints (format 1, no optimizer state) from a run's $OUT files."""
    import torch

    from adapdate_codec.bundle import round_half
    from adapdate_codec.train import save_checkpoint

    dest.mkdir(parents=True, exist_ok=True)
    q3 = _load_parts(folder, "q3")
    q3["model"] = {k: v.float() if v.is_floating_point() else v for k, v in q3["model"].items()}
    save_checkpoint(dest / "q3.ckpt", q3)
    base = round_half(q3["model"])
    for j in FINETUNES:
        try:
            st = _load_parts(folder, j)
        except FileNotFoundError as e:
            print(e)
            continue
        st["model"] = from_int8_delta(st["model"], base)
        save_checkpoint(dest / f"{j}.ckpt", st)
    for t in ADAPTER_TYPES:
        try:
            st = _load_parts(folder, f"adapters-{t}")
        except FileNotFoundError as e:
            print(e)
            continue
        torch.save(st, dest / f"adapters-{t}.only.pt")  # base fingerprint filled in once the base is built
    print(f"unpacked into {dest}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data")
    ap.add_argument("--work", default="/tmp/adapdate-gpu")
    ap.add_argument("--out-dir", default="gpu-out")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--N", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--patch", type=int, default=256)
    ap.add_argument("--lr", type=float, default=4e-4)
    ap.add_argument("--ft-lr", type=float, default=1e-4)
    ap.add_argument("--adapter-lr", type=float, default=5e-4)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--log-every", type=int, default=100)
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--phase1", type=float, default=270)
    ap.add_argument("--phase2", type=float, default=150)
    ap.add_argument("--child")
    ap.add_argument("--adapter-init", help="Folder with q3.part* and adapters-*.only.pt: continue those adapters.")
    ap.add_argument("--xdev", action="store_true")
    ap.add_argument("--pack-data", nargs=2, metavar=("SRC", "DEST"))
    ap.add_argument("--unpack", nargs=2, metavar=("DIR", "DEST"))
    args = ap.parse_args()
    if args.pack_data:
        return pack_data(Path(args.pack_data[0]), Path(args.pack_data[1]))
    if args.unpack:
        return unpack(Path(args.unpack[0]), Path(args.unpack[1]))
    _log(import_compressai()) if (args.child or args.xdev) else None
    if args.child:
        return child(args)
    if args.xdev:
        return cross_device_check(Path(args.work), args.N)
    main_run(args)


if __name__ == "__main__":
    main()
