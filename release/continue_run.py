"""Continue shipped models on a lent GPU in one device call; turn what comes back into checkpoints.

The successor of gpu_release_run.py. Three steps, the middle one on the GPU:

1. Here (a minute):
       .venv/bin/python release/continue_run.py pack --qualities 5,4 --trial 6:5 --seconds 420
   options: --lr 3e-4 (all jobs), --lr-for 5=1e-4 (one quality), --start 6=5 (start q6, which is not
   shipped, from the shipped q5's weights), --warmup 300, --entropy-first STEPS, --trial 6:5 (issue 13's
   point 4: four schedules of q5 -> q6 side by side, one seed), --data ../shared/data/train. At most 6
   jobs. It writes .gpu/ (ignored by git):
     plan.json   the jobs, their schedules, and the fingerprint of each job's start weights as
                 ModelStore().get(quality=q) gives them here;
     data/       the training photos as the product loads them (JPEG sources downscaled x2), at most
                 1.5 MP, as JPEG 4:4:4 at the highest quality <= 92 that fits what the payload leaves
                 (then 1.0 or 0.7 MP at JPEG 80);
     whl/        CompressAI 1.2.8 and pytorch-msssim wheels for the device's Python 3.12 (0.4 MiB);
   and prints the payload: the working tree (the code, and models/ with the shipped weights, which
   the device reads through the same model store) plus .gpu/, against the device tool's 64 MiB.
   Measured 2026-12-01 (`pack --qualities 5,4 --trial 6:5`): 58.7 MiB = tree 23.0 MiB (models/ with
   the compact q1-q5 21.7 MiB, code and the rest 1.3 MiB) + photos 35.3 MiB (118 photos, 1.5 MP,
   JPEG 90) + wheels 0.4 MiB. The photos shrink to fit a bigger tree: 17.7 MiB at 1.0 MP and JPEG 80,
   14.5 MiB at 0.7 MP; with the earlier float16 models (69.7 MiB) nothing fitted.

2. The device call (one command, --seconds + about 90 s):
       run(command="python3 release/continue_run.py device", carry=[".gpu"], timeout_s=600)
   There it installs the wheels into /tmp/site, reads each job's start weights through the tree's model
   store (refusing any whose fingerprint differs from the plan's), trains all jobs at once on the one
   GPU (adapdate_codec.train.train: bf16, batch 16, 256² crops, --seconds each, cosine to 2 % of the
   peak) and writes into $OUT at most 8 files: NAME.delta.xz per job (int8 per-output-channel deltas
   against its start weights, lzma: about 10-11 MB for N=128, coarser only if six would pass 63 MiB),
   results.json and log.txt. They come back under files_at (/work/.device/...).

3. Here, after the call:
       .venv/bin/python release/continue_run.py unpack FILES_AT --out runs/cont-DATE \
           [--val ../shared/data/val] [--release [NAMES]]
   rebuilds each job's training checkpoint (format 1, no optimizer state: what `adapdate model install`,
   `adapdate train base --init` and release_models.py take) against the same start weights here,
   prints each one's figures on --val (to choose among trial jobs), and with --release hands one
   checkpoint per quality to release/release_models.py, which builds, measures and writes models/.

A session with a lent GPU (15 device-minutes, the machine's start included): pack; the device call
(about 8.5 minutes); at once, on the still-warm machine, the GPU throughput figures (about 3 minutes):
    run(command="python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/whl/*.whl && "
                "PYTHONPATH=/tmp/site python3 benchmarks/train_throughput.py --device cuda --data .gpu/data "
                "--json $OUT/throughput.json", carry=[".gpu"], timeout_s=300)
then give_back, and unpack; `unpack --val ../shared/data/val` prints the figures that choose the trial's
best job, and `--release q6-b,q5,q4` ships one job per quality.

Default schedule (issue 13's H200 trial, q3 -> q6 in 1,400 steps: training loss 5.99 at peak lr 1e-4,
5.76 at 3e-4, 5.84 at 8e-4 which spiked early): peak lr 3e-4, a longer warm-up (300 steps, was 100),
cosine to 2 %. --entropy-first (the entropy model trains alone first) is untried on a GPU: --trial
measures it beside a longer warm-up and a higher peak.
"""

from __future__ import annotations

import argparse
import io
import json
import lzma
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GPU_DIR = ROOT / ".gpu"
DEVICE_LIMIT = 64 * 2**20
FILE_LIMIT = 16 * 2**20
MAX_JOBS = 6  # + results.json + log.txt: the device tool returns 8 files
MAX_SECONDS = 420
MAX_INT8_PARAMS = 15 * 2**20  # an int8 delta file stays under 16 MiB before lzma
DELTA_LEVELS = (127, 63, 31)  # per-channel steps of the deltas: max |delta| / levels
WHEELS = ("compressai==1.2.8", "pytorch-msssim")
JPEG_QUALITIES = (92, 90, 87, 84, 80)
MEGAPIXELS = (1.5, 1.0, 0.7)  # photo size caps, tried in turn when the best JPEG quality does not fit
MIN_DATA = 8 * 2**20


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- the plan -----------------------------------------------------------------------------------------
@dataclass
class Job:
    name: str
    quality: int
    start_quality: int
    start_fingerprint: str
    N: int
    lr: float
    warmup: int
    entropy_first: int = 0
    seed: int = 0
    # issue 19: then train the encoder alone (g_a, h_a) for this long against the job's final decoder
    encoder_seconds: float = 0.0
    encoder_lr: float = 1e-4
    encoder_only: bool = False  # the whole job trains g_a/h_a alone; every other weight stays the start's


@dataclass
class Plan:
    seconds: float
    jobs: list[Job]
    model: str = "cheng2020-anchor"
    device: str = "cuda"
    batch: int = 16
    patch: int = 256
    bf16: bool = True
    min_lr_ratio: float = 0.02
    steps: int = 10**7  # the time ends a run; a cap for tests
    channels_last: bool = False
    compile: bool = False
    data_note: str = ""
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%d %H:%M"))

    def save(self, folder: Path) -> None:
        (folder / "plan.json").write_text(json.dumps(asdict(self), indent=1) + "\n")

    @classmethod
    def load(cls, folder: Path) -> "Plan":
        d = json.loads((folder / "plan.json").read_text())
        return cls(**{**d, "jobs": [Job(**j) for j in d["jobs"]]})

    def job(self, name: str) -> Job:
        return next(j for j in self.jobs if j.name == name)


def parse_pairs(items: list[str], what: str, cast) -> dict[int, object]:
    """['6=5e-4', 'q5=1e-4'] -> {6: 5e-4, 5: 1e-4}"""
    out = {}
    for item in items:
        q, sep, v = item.partition("=")
        if not sep or not q.lstrip("q").isdigit():
            raise SystemExit(f"{what}: {item!r} is not QUALITY=VALUE")
        out[int(q.lstrip("q"))] = cast(v.lstrip("q"))
    return out


def trial_jobs(target: int, start: int, lr: float) -> list[dict]:
    """Issue 13, point 4: the best schedule of the first trial against a longer warm-up, the entropy
    model trained first, and a higher peak with a long warm-up, all from the same start and seed."""
    return [dict(name=f"q{target}-a", lr=lr, warmup=100), dict(name=f"q{target}-b", lr=lr, warmup=400),
            dict(name=f"q{target}-c", lr=lr, warmup=400, entropy_first=300),
            dict(name=f"q{target}-d", lr=min(2 * lr, 8e-4), warmup=800)]


def start_bundle(model: str, quality: int):
    """The shipped (active) model of that quality, through the model store."""
    from adapdate_codec.store import ModelStore

    return ModelStore(builtin=ROOT / "models").get(model, quality)


def build_plan(args) -> Plan:
    if args.seconds + args.encoder_seconds > MAX_SECONDS:
        raise SystemExit(f"--seconds {args.seconds:g}: at most {MAX_SECONDS} (the device runs one command for "
                         "600 s, and start-up, packing and a late stop take up to 180 s)")
    lrs = parse_pairs(args.lr_for, "--lr-for", float)
    starts = parse_pairs(args.start, "--start", int)
    specs: list[dict] = []
    if args.trial:
        target, _, start = args.trial.partition(":")
        for spec in trial_jobs(int(target), int(start or target), args.lr):
            # one seed for all variants: the same crops and noise, so only the schedule differs
            specs.append({**spec, "quality": int(target), "start_quality": int(start or target),
                          "seed": args.seed + 1000})
    for q in (int(x.lstrip("q")) for x in (args.qualities or "").split(",") if x):
        specs.append({"name": f"q{q}", "quality": q, "start_quality": starts.get(q, q), "lr": lrs.get(q, args.lr),
                      "warmup": args.warmup, "encoder_seconds": args.encoder_seconds, "encoder_lr": args.encoder_lr,
                      "encoder_only": args.encoder_only})
    if not specs:
        raise SystemExit("nothing to train: give --qualities and/or --trial")
    if len(specs) > MAX_JOBS:
        raise SystemExit(f"{len(specs)} jobs: at most {MAX_JOBS} (the device tool returns 8 files)")
    jobs = []
    for i, s in enumerate(specs):
        b = start_bundle(args.model, s["start_quality"])
        if b.adapters is not None:
            raise SystemExit(f"{args.model} q{s['start_quality']} carries adapters: roll it back to its base first")
        if b.parameter_count > MAX_INT8_PARAMS:
            raise SystemExit(f"q{s['start_quality']}: {b.parameter_count} parameters do not fit one 16 MiB result file")
        jobs.append(Job(start_fingerprint=b.fingerprint, N=b.N, **{
            "entropy_first": args.entropy_first, "warmup": args.warmup, "seed": args.seed + 100 + i, **s}))
    return Plan(seconds=args.seconds, jobs=jobs, model=args.model, device=args.device, batch=args.batch,
                patch=args.patch, bf16=args.bf16, steps=args.steps, channels_last=args.channels_last,
                compile=args.compile)


# -- the payload ----------------------------------------------------------------------------------------
def tree_bytes(root: Path) -> dict[str, int]:
    """What the device tool sends of the checkout: tracked files and untracked ones git does not ignore."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                            capture_output=True, check=True).stdout.decode().split("\0")
    sizes = {"models": 0, "code and the rest": 0}
    for name in filter(None, listed):
        p = root / name
        if p.is_file():
            sizes["models" if name.startswith("models/") else "code and the rest"] += p.stat().st_size
    return sizes


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def prepared_photos(src: Path, megapixels: float) -> list:
    """The training photos as the product loads them (JPEG sources downscaled x2), at most megapixels."""
    from PIL import Image

    from adapdate_codec.data import find_images, load_training_image

    out = []
    for p in find_images(src):
        im = Image.fromarray(load_training_image(p, 256))
        while im.width * im.height > megapixels * 1e6:
            im = im.resize((im.width * 7 // 10, im.height * 7 // 10), Image.LANCZOS)
        out.append(im)
    return out


def jpeg_files(photos: list, quality: int) -> list[bytes]:
    blobs = []
    for im in photos:
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=quality, subsampling=0)
        blobs.append(buf.getvalue())
    return blobs


def pack_photos(src: Path, dest: Path, budget: int) -> str:
    """Photos as JPEG 4:4:4, the largest (then the best) that fit budget bytes; what was chosen, in words."""
    for megapixels in MEGAPIXELS:
        photos = prepared_photos(src, megapixels)
        for quality in JPEG_QUALITIES:
            blobs = jpeg_files(photos, quality)
            if sum(map(len, blobs)) <= budget:
                break
        else:
            continue
        break
    else:
        raise SystemExit(f"the photos take {sum(map(len, blobs)) / 2**20:.1f} MiB even at {megapixels} MP and "
                         f"JPEG {quality}; {budget / 2**20:.1f} MiB are left of the device's 64 MiB")
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob("*.jpg"):
        old.unlink()
    for i, b in enumerate(blobs):
        (dest / f"{i:03d}.jpg").write_bytes(b)
    return f"{len(blobs)} photos of at most {megapixels} MP as JPEG {quality} 4:4:4"


def fetch_wheels(dest: Path) -> None:
    if any(dest.glob("compressai-*.whl")) and any(dest.glob("pytorch_msssim-*.whl")):
        return
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.12", "--implementation", "cp", "--platform", "manylinux_2_34_x86_64",
                    "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_17_x86_64",
                    "--platform", "manylinux2014_x86_64", "-d", str(dest), *WHEELS], check=True)


def mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def pack(args) -> None:
    gpu = Path(args.gpu_dir)
    gpu.mkdir(parents=True, exist_ok=True)
    plan = build_plan(args)
    if not args.no_wheels:
        fetch_wheels(gpu / "whl")
    tree = tree_bytes(ROOT)
    wheels = folder_bytes(gpu / "whl") if (gpu / "whl").is_dir() else 0
    fixed = sum(tree.values()) + wheels
    if fixed + MIN_DATA > DEVICE_LIMIT and not args.no_size_check:
        raise SystemExit(f"the working tree takes {mib(sum(tree.values()))} (models/ {mib(tree['models'])}) of the "
                         f"device tool's {mib(DEVICE_LIMIT)}: too little is left for the photos; shrink models/")
    if args.data_mib:
        budget = args.data_mib * 2**20
    else:
        budget = 2**40 if args.no_size_check else DEVICE_LIMIT - fixed - 2**20
    chosen = pack_photos(Path(args.data), gpu / "data", budget)
    plan.data_note = f"{args.data}: JPEG sources downscaled x2, then {chosen}"
    plan.save(gpu)
    data = folder_bytes(gpu / "data")
    total = sum(tree.values()) + folder_bytes(gpu)
    print(f"payload {mib(total)} of {mib(DEVICE_LIMIT)}: tree {mib(sum(tree.values()))} (models "
          f"{mib(tree['models'])}, code and the rest {mib(tree['code and the rest'])}), photos {mib(data)} "
          f"({chosen}), wheels {mib(wheels)}")
    for j in plan.jobs:
        print(f"  {j.name}: q{j.quality} from q{j.start_quality} ({j.start_fingerprint[:12]}), lr {j.lr:g}, "
              f"warm-up {j.warmup}, entropy first {j.entropy_first}, {plan.seconds:g} s")
    if total > DEVICE_LIMIT and not args.no_size_check:
        raise SystemExit(f"too big for the device tool ({mib(DEVICE_LIMIT)})")
    if gpu.resolve().is_relative_to(ROOT):
        print(f'device call: run(command="python3 release/continue_run.py device", '
              f'carry=["{gpu.resolve().relative_to(ROOT)}"], timeout_s=600)')


# -- on the device --------------------------------------------------------------------------------------
def import_compressai() -> str:
    """compressai on a machine it was not built for: if its C++ coder does not load, training (which
    never calls it) goes on with stand-ins, and the log says so."""
    try:
        import compressai  # noqa: F401

        return "compressai imported"
    except ImportError as e:
        import types

        for name in ("compressai._CXX", "compressai.ans"):
            sys.modules[name] = types.ModuleType(name)
        import compressai  # noqa: F401,F811

        return f"compressai imported with stand-in C++ modules ({e})"


def install_wheels(gpu: Path) -> None:
    """The carried wheels into /tmp/site, for this process and its children (the device has no compressai)."""
    try:
        import compressai  # noqa: F401

        return
    except ImportError:
        pass
    wheels = sorted(str(p) for p in (gpu / "whl").glob("*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                    "--no-cache-dir", "--upgrade", "--target", "/tmp/site", *wheels], check=True)
    sys.path.insert(0, "/tmp/site")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, ["/tmp/site", os.environ.get("PYTHONPATH")]))


def int8_delta(sd: dict, base: dict, levels: int = 127) -> dict:
    """sd as base + per-output-channel int8 deltas; small tensors and those kept in float32 stay float32
    (the context mask among them: a checkpoint must hold every weight but CompressAI's coder tables)."""
    import torch

    from adapdate_codec.bundle import kept_in_float32
    from adapdate_codec.store import is_table_buffer

    out: dict = {"int8": {}, "scale": {}, "fp32": {}}
    for k, v in sd.items():
        if is_table_buffer(k):
            continue
        v = v.detach().cpu()
        if not v.is_floating_point() or v.numel() < 4096 or kept_in_float32(k) or k not in base:
            out["fp32"][k] = v.float() if v.is_floating_point() else v
            continue
        d = (v.float() - base[k].float()).reshape(v.shape[0], -1)
        scale = d.abs().amax(1).clamp_min(1e-12) / levels
        out["int8"][k] = torch.round(d / scale[:, None]).to(torch.int8).reshape(v.shape)
        out["scale"][k] = scale
    return out


def from_int8_delta(packed: dict, base: dict) -> dict:
    sd = dict(packed["fp32"])
    for k, q in packed["int8"].items():
        sd[k] = base[k].float() + (q.float().reshape(q.shape[0], -1) * packed["scale"][k][:, None]).reshape(q.shape)
    return sd


def _save_xz(obj, path: Path) -> int:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    path.write_bytes(lzma.compress(buf.getvalue(), preset=6))
    return path.stat().st_size


def _load_xz(path: Path):
    import torch

    return torch.load(io.BytesIO(lzma.decompress(path.read_bytes())), map_location="cpu", weights_only=True)


def job_config(plan: Plan, job: Job, gpu: Path, work: Path):
    from adapdate_codec.train import TrainConfig

    return TrainConfig(data=str(gpu / "data"), out=str(work / f"{job.name}.ckpt"), quality=job.quality, N=job.N,
                       steps=plan.steps, time_limit_s=plan.seconds, batch=plan.batch, patch=plan.patch, lr=job.lr,
                       warmup=job.warmup, min_lr_ratio=plan.min_lr_ratio, device=plan.device, bf16=plan.bf16,
                       seed=job.seed, log_every=100, val_every=10**9, checkpoint_every_s=60.0,
                       downscale_lossy=False, entropy_first=job.entropy_first, channels_last=plan.channels_last,
                       compile=plan.compile, encoder_only=job.encoder_only)


def child(args) -> None:
    """One job: its start weights from the model store, train() for the plan's seconds, the delta file."""
    import torch

    _log(import_compressai())
    from adapdate_codec.train import train

    gpu, work, out = Path(args.gpu_dir), Path(args.work), Path(args.out)
    plan = Plan.load(gpu)
    job = plan.job(args.child)
    start = start_bundle(plan.model, job.start_quality)
    if start.fingerprint != job.start_fingerprint:
        raise SystemExit(f"{job.name}: q{job.start_quality} here is {start.fingerprint[:12]}, the plan was made "
                         f"against {job.start_fingerprint[:12]}: pack again from this tree")
    base = {k: v.float() if v.is_floating_point() else v for k, v in start.state_dict.items()}
    state = train(job_config(plan, job, gpu, work), init_state=base, log=_log)
    trained = {k: v.detach().float().cpu() if v.is_floating_point() else v.cpu() for k, v in state["model"].items()}
    if job.encoder_only:  # the decoder exactly the start's (the bottleneck's quantiles moved with the aux loss)
        from adapdate_codec.train import ENCODER_PREFIXES

        trained = {k: v if k.startswith(ENCODER_PREFIXES) or k not in base else base[k] for k, v in trained.items()}
    extra, enc_meta = {}, {}
    if job.encoder_seconds > 0:
        extra["encoder"], enc_meta = encoder_phase(plan, job, gpu, work, trained)
    budget = min(FILE_LIMIT, (DEVICE_LIMIT - 2**20) // len(plan.jobs))  # every job's file comes back
    for levels in DELTA_LEVELS:  # coarser only if the file would not fit
        packed = int8_delta(trained, base, levels)
        size = _save_xz({"start_fingerprint": job.start_fingerprint, **packed, **extra}, out / f"{job.name}.delta.xz")
        if size <= budget:
            break
    back = from_int8_delta(packed, base)
    err = max((float((back[k] - trained[k]).abs().max()) for k in packed["int8"]), default=0.0)
    half = max((float((trained[k].half().float() - trained[k]).abs().max()) for k in packed["int8"]), default=0.0)
    meta = {"job": asdict(job), "step": state["step"], "skipped": state.get("skipped", 0),
            "elapsed_s": state["elapsed_s"], "config": state["config"], "delta_max_error": err,
            "delta_levels": levels, "float16_rounding": half, "file_bytes": size,
            "device_name": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu", **enc_meta}
    (work / f"{job.name}.json").write_text(json.dumps(meta) + "\n")
    _log(f"{job.name}: step {state['step']}, {size / 1e6:.1f} MB, ±{levels} int8 delta max error {err:.2e} "
         f"(float16 rounding {half:.2e})")


def encoder_phase(plan: Plan, job: Job, gpu: Path, work: Path, trained: dict) -> tuple[dict, dict]:
    """Issue 19: g_a and h_a trained alone against the job's final decoder (frozen) for encoder_seconds.
    Returns (the analysis side as an int8 delta against `trained`'s, figures for results.json)."""
    from dataclasses import replace

    from adapdate_codec.train import ENCODER_PREFIXES, TrainConfig, train

    cfg = replace(job_config(plan, job, gpu, work), out=str(work / f"{job.name}-enc.ckpt"),
                  time_limit_s=job.encoder_seconds, lr=job.encoder_lr, warmup=50, encoder_only=True,
                  seed=job.seed + 7)
    assert isinstance(cfg, TrainConfig)
    state = train(cfg, init_state=trained, log=_log)
    enc = {k: v.detach().float().cpu() for k, v in state["model"].items()
           if k.startswith(ENCODER_PREFIXES) and v.is_floating_point()}
    packed = int8_delta(enc, trained, 127)
    return packed, {"encoder_step": state["step"], "encoder_elapsed_s": state["elapsed_s"]}


def device(args) -> None:
    """All jobs of the plan at once; their files, results.json and log.txt into $OUT."""
    gpu = Path(args.gpu_dir)
    out = Path(args.out or os.environ.get("OUT") or "gpu-out")
    work = Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    install_wheels(gpu)
    plan = Plan.load(gpu)
    threads = max(1, (os.cpu_count() or 2) // len(plan.jobs))
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    cmd = [sys.executable, str(Path(__file__).resolve()), "child", "--gpu-dir", str(gpu), "--work", str(work),
           "--out", str(out)]
    _log(f"{len(plan.jobs)} jobs, {plan.seconds:g} s each, {threads} CPU threads each")
    procs = {j.name: subprocess.Popen(cmd + ["--child", j.name], stdout=open(work / f"{j.name}.log", "w"),
                                      stderr=subprocess.STDOUT, env=env) for j in plan.jobs}
    deadline = time.monotonic() + plan.seconds + max(j.encoder_seconds for j in plan.jobs) + args.grace
    for name, p in procs.items():
        try:
            p.wait(timeout=max(1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.terminate()  # train() checkpoints on SIGTERM; the job then writes its file
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
        _log(f"{name}: exit {p.returncode}")
    results = {"plan": asdict(plan), "jobs": {}}
    with open(out / "log.txt", "w") as log:
        for name in procs:
            meta = work / f"{name}.json"
            if meta.exists():
                results["jobs"][name] = json.loads(meta.read_text())
            text = (work / f"{name}.log").read_text()
            log.write(f"==== {name}\n{text[-30000:]}\n")
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    _log(f"done: {sorted(results['jobs'])} of {sorted(procs)}")


# -- back here -------------------------------------------------------------------------------------------
def unpack(args) -> None:
    """results.json and NAME.delta.xz -> NAME.ckpt (format 1), against the same start weights here."""
    from adapdate_codec.train import CHECKPOINT_FORMAT, save_checkpoint

    folder, dest = Path(args.folder), Path(args.out)
    results = json.loads((folder / "results.json").read_text())
    model = results["plan"]["model"]
    dest.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, meta in sorted(results["jobs"].items()):
        job = Job(**meta["job"])
        packed = _load_xz(folder / f"{name}.delta.xz")
        start = start_bundle(model, job.start_quality)
        if start.fingerprint != packed["start_fingerprint"]:
            raise SystemExit(f"{name} was trained from q{job.start_quality} {packed['start_fingerprint'][:12]}, "
                             f"but q{job.start_quality} here is {start.fingerprint[:12]}")
        base = {k: v.float() if v.is_floating_point() else v for k, v in start.state_dict.items()}
        config = dict(meta["config"], init_note=(
            f"continued from the shipped q{job.start_quality} ({job.start_fingerprint[:12]}) for "
            f"{meta['elapsed_s']:.0f} s on {meta['device_name']} (release/continue_run.py)"))
        path = dest / f"{name}.ckpt"
        weights = from_int8_delta(packed, base)
        save_checkpoint(path, {"format": CHECKPOINT_FORMAT, "config": config, "step": meta["step"],
                               "skipped": meta["skipped"], "elapsed_s": meta["elapsed_s"], "model": weights})
        if "encoder" in packed:  # issue 19: the same decoder, an encoder trained alone against it
            enc_path = dest / f"{name}-enc.ckpt"
            enc_config = dict(config, encoder_only=True, init_note=(
                f"{name}'s weights, then g_a/h_a alone for {meta.get('encoder_elapsed_s', 0):.0f} s "
                f"({meta.get('encoder_step')} steps) with the decoder frozen"))
            save_checkpoint(enc_path, {"format": CHECKPOINT_FORMAT, "config": enc_config,
                                       "step": meta.get("encoder_step", 0), "skipped": 0,
                                       "elapsed_s": meta.get("encoder_elapsed_s", 0.0),
                                       "model": {**weights, **from_int8_delta(packed["encoder"], weights)}})
            print(f"{name}: encoder-only checkpoint -> {enc_path}")
        written[name] = (job.quality, path)
        print(f"{name}: q{job.quality}, {meta['step']} steps from q{job.start_quality} -> {path} "
              f"(int8 delta max error {meta['delta_max_error']:.1e})")
        if args.val:
            print(f"  {name} on {args.val}: {held_out_figures(path, args.val)}", flush=True)
    if args.release is not None:
        release(results, written, args.release)


def held_out_figures(path: Path, folder: str) -> str:
    """The checkpoint's estimated rate, PSNR and RD loss on whole held-out images (rounded latents):
    the figure to choose between trial jobs of one quality (the same λ)."""
    from adapdate_codec.data import load_eval_images
    from adapdate_codec.network import LAMBDAS, build_model
    from adapdate_codec.train import evaluate, load_checkpoint

    ckpt = load_checkpoint(path)
    cfg = ckpt["config"]
    model = build_model(cfg["arch"], cfg["N"])
    model.load_state_dict(ckpt["model"])
    s = evaluate(model, load_eval_images(folder, 512), "cpu")
    lmbda = cfg["lmbda"] or LAMBDAS[cfg["quality"]]
    return f"{s.bpp:.4f} bpp, {s.psnr:.2f} dB, RD loss {lmbda * 255**2 * s.mse + s.bpp:.4f}"


def release(results: dict, written: dict, names: str) -> None:
    chosen = [n for n in (names.split(",") if names else sorted(written))]
    missing = [n for n in chosen if n not in written]
    qualities = [written[n][0] for n in chosen if n in written]
    if missing or len(set(qualities)) != len(qualities):
        raise SystemExit(f"--release: choose one job per quality among {sorted(written)}")
    plan = results["plan"]
    jobs = results["jobs"]
    hardware = (f"GPU: {jobs[chosen[0]]['device_name']} (lent), {len(jobs)} jobs sharing it, "
                f"bf16 autocast={plan['bf16']}, batch {plan['batch']}, {plan['patch']}² crops")
    cmd = [sys.executable, str(ROOT / "release" / "release_models.py"), *(str(written[n][1]) for n in chosen),
           "--hardware", hardware, "--data-note", plan["data_note"],
           "--note", f"continued on a lent GPU ({plan['created']}, release/continue_run.py)"]
    print("$ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="verb", required=True)
    p = sub.add_parser("pack", help="Here: write .gpu/ (plan, photos, wheels) and print the payload.")
    p.add_argument("--qualities", help="Qualities to continue, e.g. 6,5,4.")
    p.add_argument("--start", action="append", default=[], metavar="Q=FROM", help="Start quality Q from FROM's weights.")
    p.add_argument("--lr", type=float, default=3e-4, help="Peak learning rate of every job.")
    p.add_argument("--lr-for", action="append", default=[], metavar="Q=LR", help="Peak learning rate of one quality.")
    p.add_argument("--warmup", type=int, default=300)
    p.add_argument("--entropy-first", type=int, default=0, metavar="STEPS")
    p.add_argument("--trial", metavar="Q:FROM", help="Four schedules of FROM -> Q (issue 13, point 4).")
    p.add_argument("--seconds", type=float, default=420.0, help="Training time of each job.")
    p.add_argument("--encoder-seconds", type=float, default=0.0,
                   help="Then train each quality job's encoder alone (decoder frozen) this long (issue 19).")
    p.add_argument("--encoder-lr", type=float, default=1e-4)
    p.add_argument("--encoder-only", action="store_true",
                   help="Every quality job trains the encoder alone against the shipped decoder (issue 19).")
    p.add_argument("--model", default="cheng2020-anchor")
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "train"))
    p.add_argument("--data-mib", type=float, help="Photo budget (default: what the tree and wheels leave).")
    p.add_argument("--device", default="cuda")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--patch", type=int, default=256)
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--channels-last", action="store_true", help="Once benchmarks/train_throughput.py shows it helps.")
    p.add_argument("--compile", action="store_true", help="Likewise.")
    p.add_argument("--steps", type=int, default=10**7, help="Step cap (tests).")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gpu-dir", default=str(GPU_DIR))
    p.add_argument("--no-wheels", action="store_true", help="Do not fetch wheels (a device that has compressai).")
    p.add_argument("--no-size-check", action="store_true")
    d = sub.add_parser("device", help="On the GPU: train every job of the plan at once.")
    c = sub.add_parser("child", help=argparse.SUPPRESS)
    for q in (d, c):
        q.add_argument("--gpu-dir", default=str(GPU_DIR))
        q.add_argument("--work", default="/tmp/adapdate-continue")
        q.add_argument("--out", help="Default: $OUT.")
    # start-up and packing take ~40 s; SIGTERM then may take 60 s more: within the device's 600 s at 420 s
    d.add_argument("--grace", type=float, default=120.0, help="Seconds past the plan's for start-up and packing.")
    c.add_argument("--child", required=True)
    u = sub.add_parser("unpack", help="Here: the device's files -> training checkpoints [-> release_models.py].")
    u.add_argument("folder")
    u.add_argument("--out", required=True)
    u.add_argument("--val", help="Also print each checkpoint's figures on these held-out photos "
                                 "(e.g. ../shared/data/val; never Kodak).")
    u.add_argument("--release", nargs="?", const="", metavar="NAMES",
                   help="Then run release/release_models.py on these jobs (default: all).")
    args = ap.parse_args(argv)
    {"pack": pack, "device": device, "child": child, "unpack": unpack}[args.verb](args)


if __name__ == "__main__":
    main()
