"""Training of base models and adapters: rate-distortion loss, resumable checkpoints, DDP.

A checkpoint holds only tensors and plain values, so it loads with ``weights_only=True``.
Launch under ``torchrun --nproc_per_node K`` to train data-parallel (gloo on CPU, NCCL on CUDA).
"""

from __future__ import annotations

import math
import os
import signal
import threading
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist

from adapdate_codec.adapters import AdapterConfig
from adapdate_codec.data import CropDataset, load_eval_images
from adapdate_codec.errors import TrainingError
from adapdate_codec.fileio import atomic_write_with
from adapdate_codec.network import LAMBDAS, Cheng2020, build_model

CHECKPOINT_FORMAT = 1


@dataclass
class TrainConfig:
    data: str
    out: str
    quality: int = 3
    lmbda: float | None = None  # None: CompressAI's λ for `quality`
    arch: str = "cheng2020-anchor"
    N: int = 128
    val: str | None = None
    steps: int = 10000
    time_limit_s: float | None = None
    batch: int = 8
    patch: int = 128
    lr: float = 4e-4
    warmup: int = 300
    schedule: str = "cosine"  # cosine | constant
    min_lr_ratio: float = 0.05
    aux_lr: float = 1e-3
    clip: float = 1.0
    device: str = "cpu"
    bf16: bool = False
    seed: int = 0
    log_every: int = 50
    val_every: int = 500
    checkpoint_every_s: float = 180.0
    val_max_side: int = 512
    downscale_lossy: bool = True  # JPEG/WebP sources are downscaled x2 before cropping
    # adapters mode: the base is frozen and only adapters (and optionally the entropy bottleneck) train
    adapters: dict | None = None
    train_entropy_bottleneck: bool = False
    base: dict | None = None  # adapters mode: {"name", "quality", "fingerprint"} of the frozen base

    @property
    def lambda_(self) -> float:
        return self.lmbda if self.lmbda is not None else LAMBDAS[self.quality]

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class StepStats:
    loss: float
    bpp: float
    mse: float

    @property
    def psnr(self) -> float:
        return 10 * math.log10(1.0 / max(self.mse, 1e-12))


def rd_loss(model: torch.nn.Module, x: torch.Tensor, lmbda: float) -> tuple[torch.Tensor, StepStats]:
    out = model(x)
    num_pixels = x.shape[0] * x.shape[2] * x.shape[3]
    bpp = (torch.log(out.y_likelihoods).sum() + torch.log(out.z_likelihoods).sum()) / (-math.log(2) * num_pixels)
    mse = torch.mean((out.x_hat.float() - x) ** 2)
    loss = lmbda * 255**2 * mse + bpp
    return loss, StepStats(float(loss.detach()), float(bpp.detach()), float(mse.detach()))


def learning_rate(cfg: TrainConfig, step: int, elapsed_s: float = 0.0) -> float:
    """Linear warm-up, then cosine decay to the end of the step budget or of the time budget,
    whichever comes first (so a time-limited run still ends with a low learning rate)."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    if cfg.schedule == "constant":
        return cfg.lr
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    if cfg.time_limit_s:
        t = max(t, elapsed_s / cfg.time_limit_s)
    t = min(1.0, t)
    lo = cfg.lr * cfg.min_lr_ratio
    return lo + 0.5 * (cfg.lr - lo) * (1 + math.cos(math.pi * t))


def fit_quantiles(model: Cheng2020, steps: int = 2000) -> float:
    """Fit the entropy bottleneck's quantiles to its density (the auxiliary loss alone).

    During training they follow the density with a small learning rate and lag far behind in a
    short run; they only bound the z tables, so they are fitted when a checkpoint becomes a model
    (the checkpoint itself keeps the training state, for an exact resume). Returns the final
    auxiliary loss."""
    eb = model.entropy_bottleneck
    q = eb.quantiles
    was = q.requires_grad
    q.requires_grad_(True)
    opt = torch.optim.Adam([q], lr=0.5)  # quantiles can sit tens of units from where they belong
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=1e-3)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = model.aux_loss()
        loss.backward()
        opt.step()
        sched.step()
    q.requires_grad_(was)
    q.grad = None
    return float(model.aux_loss().detach())


def with_fitted_quantiles(state_dict: dict[str, torch.Tensor], arch: str, N: int,
                          adapters: AdapterConfig | None = None) -> tuple[dict[str, torch.Tensor], float]:
    """state_dict with the quantiles fitted (fit_quantiles); everything else unchanged."""
    model = build_model(arch, N, adapters)
    model.load_state_dict(state_dict, strict=False)
    aux = fit_quantiles(model)
    q = {k: v.detach().clone() for k, v in model.state_dict().items() if k.endswith(".quantiles")}
    return {**state_dict, **q}, aux


@torch.no_grad()
def evaluate(model: Cheng2020, images: list[torch.Tensor], device: str) -> StepStats:
    """Mean estimated bpp / MSE over whole images (rounded latents)."""
    model.eval()
    stats = []
    for x in images:
        _, s = rd_loss(model, x.to(device), 0.0)
        stats.append(s)
    model.train()
    return StepStats(0.0, float(np.mean([s.bpp for s in stats])), float(np.mean([s.mse for s in stats])))


def _distributed() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and os.environ.get("ADAPDATE_DDP_BACKEND") != "gloo" else "gloo"
        dist.init_process_group(backend)
    rank = dist.get_rank() if world > 1 else 0
    return rank, world


def save_checkpoint(path: str | Path, state: dict) -> None:
    atomic_write_with(Path(path), lambda f: torch.save(state, f))


def load_checkpoint(path: str | Path) -> dict:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not an adapdate training checkpoint")
    return ckpt


def _rng_state(rng: np.random.Generator) -> dict:
    s = rng.bit_generator.state
    return {"bit_generator": s["bit_generator"], "state": {k: int(v) for k, v in s["state"].items()},
            "has_uint32": int(s["has_uint32"]), "uinteger": int(s["uinteger"])}


class _StopRequest:
    """SIGTERM / SIGINT end the run after the current step, with a checkpoint (no lost work)."""

    def __init__(self) -> None:
        self.requested = False
        self._old = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.requested:  # a second signal: stop now
            raise KeyboardInterrupt
        self.requested = True

    def restore(self) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def train(
    cfg: TrainConfig,
    resume: str | None = None,
    init_state: dict[str, torch.Tensor] | None = None,
    log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True),
    progress: Callable[[int, int, StepStats, float], None] | None = None,
) -> dict:
    """Run (or continue) a training run; returns the final checkpoint dict.

    init_state: weights to start from (a base model for adapters, or q3 for fine-tuning q1/q2).
    """
    rank, world = _distributed()
    start_step, elapsed = 0, 0.0
    ckpt = load_checkpoint(resume) if resume else None
    if ckpt is not None:
        saved = TrainConfig.from_dict(ckpt["config"])
        # A resumed run keeps the model's identity; budgets and schedule may be changed by the caller.
        for name in ("arch", "N", "quality", "lmbda", "adapters", "base", "patch", "batch", "seed"):
            setattr(cfg, name, getattr(saved, name))
        start_step, elapsed = int(ckpt["step"]), float(ckpt["elapsed_s"])

    torch.manual_seed(cfg.seed + rank)
    rng = np.random.default_rng(cfg.seed + 1000 * rank)
    adapters = AdapterConfig.from_dict(cfg.adapters)
    model = build_model(cfg.arch, cfg.N)
    if init_state is not None:
        model.load_state_dict(init_state, strict=False)
    if adapters is not None:
        model.add_adapters(adapters)
        earlier = {k: v for k, v in (init_state or {}).items() if ".adapter." in k}
        if earlier:  # adapters may continue from earlier ones
            try:
                model.load_state_dict(earlier, strict=False)
            except RuntimeError as e:
                raise TrainingError(f"the initial adapters do not fit this adapter configuration "
                                    f"({str(e).splitlines()[-1].strip()})") from None
        for p in model.parameters():
            p.requires_grad_(False)
        trainable = model.adapter_parameters()
        if cfg.train_entropy_bottleneck:
            trainable += [p for n, p in model.entropy_bottleneck.named_parameters() if not n.endswith("quantiles")]
    else:
        trainable = [p for n, p in model.named_parameters() if not n.endswith(".quantiles")]
    for p in trainable:
        p.requires_grad_(True)
    quantiles = [p for n, p in model.named_parameters() if n.endswith(".quantiles")]
    for p in quantiles:
        p.requires_grad_(True)
    model.to(cfg.device).train()

    optimizer = torch.optim.Adam(trainable, lr=cfg.lr)
    aux_optimizer = torch.optim.Adam(quantiles, lr=cfg.aux_lr)
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        aux_optimizer.load_state_dict(ckpt["aux_optimizer"])
        torch.set_rng_state(ckpt["torch_rng"][rank % len(ckpt["torch_rng"])])
        rng.bit_generator.state = ckpt["numpy_rng"][rank % len(ckpt["numpy_rng"])]

    net: torch.nn.Module = model
    if world > 1:
        # the quantiles only see the auxiliary loss, outside DDP's forward: their gradients are
        # all-reduced by hand below
        torch.nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
            model, [n for n, _ in model.named_parameters() if n.endswith(".quantiles")])
        net = torch.nn.parallel.DistributedDataParallel(model)

    data = CropDataset(cfg.data, cfg.patch, cfg.downscale_lossy)
    val_images = load_eval_images(cfg.val, cfg.val_max_side) if cfg.val and rank == 0 else []
    if rank == 0:
        log(f"train: {len(data.images)} images, λ={cfg.lambda_}, step {start_step}/{cfg.steps}, "
            f"{sum(p.numel() for p in trainable)} trainable parameters, world={world}")

    def checkpoint(step: int) -> dict:
        torch_rng = [torch.get_rng_state()]
        numpy_rng = [_rng_state(rng)]
        if world > 1:
            gathered_t: list = [None] * world
            gathered_n: list = [None] * world
            dist.all_gather_object(gathered_t, torch_rng[0])
            dist.all_gather_object(gathered_n, numpy_rng[0])
            torch_rng, numpy_rng = gathered_t, gathered_n
        state = {
            "format": CHECKPOINT_FORMAT,
            "config": asdict(cfg),
            "step": step,
            "elapsed_s": elapsed + (time.monotonic() - t0),
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "aux_optimizer": aux_optimizer.state_dict(),
            "torch_rng": torch_rng,
            "numpy_rng": numpy_rng,
        }
        if rank == 0:
            save_checkpoint(cfg.out, state)
        return state

    t0 = time.monotonic()
    last_ckpt = t0
    step = start_step
    state: dict | None = None
    window: list[StepStats] = []
    device_type = torch.device(cfg.device).type
    if device_type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed crop size: let cuDNN pick the fastest kernels
    skipped = 0
    stop = _StopRequest()
    while step < cfg.steps and not stop.requested:
        run_s = elapsed + time.monotonic() - t0
        if cfg.time_limit_s is not None and run_s >= cfg.time_limit_s:
            break
        lr = learning_rate(cfg, step, run_s)
        for g in optimizer.param_groups:
            g["lr"] = lr
        x = data.batch(cfg.batch, rng).to(cfg.device)
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=cfg.bf16):
            loss, stats = rd_loss(net, x, cfg.lambda_)
        optimizer.zero_grad(set_to_none=True)
        aux_optimizer.zero_grad(set_to_none=True)
        # A non-finite loss (a rate term overflowing) or gradient (bf16 backward; the clipping factor
        # would spread it to every weight) skips the step. Under DDP every rank must take part in the
        # backward pass, so only the gradient check applies there (the norm is the same on every rank).
        bad = "loss" if not math.isfinite(stats.loss) and world == 1 else None
        if bad is None:
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(trainable, cfg.clip if cfg.clip > 0 else float("inf"))
            bad = None if torch.isfinite(norm) else "gradient"
        if bad is not None:
            skipped += 1
            if skipped > 100:
                raise TrainingError(f"{skipped} steps with a non-finite {bad} by step {step}: lower --lr")
            continue
        optimizer.step()
        aux_loss = model.aux_loss()
        aux_loss.backward()
        if world > 1:
            for p in quantiles:
                dist.all_reduce(p.grad)
                p.grad /= world
        aux_optimizer.step()
        step += 1
        window.append(stats)
        if progress is not None and rank == 0:
            progress(step, cfg.steps, stats, lr)
        if rank == 0 and step % cfg.log_every == 0:
            m = StepStats(*(float(np.mean([getattr(s, k) for s in window])) for k in ("loss", "bpp", "mse")))
            log(f"step {step} loss {m.loss:.4f} bpp {m.bpp:.4f} psnr {m.psnr:.2f} aux {float(aux_loss):.1f} "
                f"lr {lr:.2e} {elapsed + time.monotonic() - t0:.0f}s")
            window.clear()
        if val_images and step % cfg.val_every == 0:
            v = evaluate(model, val_images, cfg.device)
            log(f"val step {step} bpp {v.bpp:.4f} psnr {v.psnr:.2f}")
        if time.monotonic() - last_ckpt >= cfg.checkpoint_every_s:
            state = checkpoint(step)
            last_ckpt = time.monotonic()
    stop.restore()
    state = checkpoint(step)
    if rank == 0:
        log(f"saved {cfg.out} at step {step}" + (" (stopped by signal)" if stop.requested else ""))
    return state
