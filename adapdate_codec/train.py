"""Training of base models, adapters and encoders: rate-distortion loss, resumable checkpoints, DDP.

Encoder mode (``TrainConfig.encoder``) trains the analysis side alone, g_a and h_a (or adapters inside g_a),
on an installed model whose decoder stays frozen, quantiles included: what comes out is a new encoder of
the same decoder (bundle.py), whose files every installation of that decoder reads.

A checkpoint holds only tensors and plain values, so it loads with ``weights_only=True``.
Launch under ``torchrun --nproc_per_node K`` to train data-parallel (gloo on CPU, NCCL on CUDA).

The loop never waits for the device inside a step: the loss terms are summed on the device and read
once per log interval, a step whose loss or gradient is not finite is skipped by fused Adam itself
(its ``found_inf`` input, as under a GradScaler), and a worker thread draws the next crops while the
device computes. A skipped step still counts as a step (its batch is used).
"""

from __future__ import annotations

import math
import os
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist

from adapdate_codec.adapters import AdapterConfig
from adapdate_codec.bundle import ENCODER_PREFIXES, is_encoder_key  # noqa: F401 - continue_run imports the first
from adapdate_codec.data import BatchPrefetcher, CropDataset, generator_state, load_eval_images, to_model_input
from adapdate_codec.errors import TrainingError
from adapdate_codec.fileio import atomic_write_with
from adapdate_codec.network import LAMBDAS, Cheng2020, build_model, mask_context_weights

CHECKPOINT_FORMAT = 1
MAX_SKIPPED_STEPS = 100
# the entropy model, as opposed to the transforms g_a / g_s (see TrainConfig.entropy_first)
TRANSFORMS = ("g_a.", "g_s.")


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
    base: dict | None = None  # adapters and encoder modes: {"name", "quality", "fingerprint"} of the frozen base
    # encoder mode: the decoder is frozen; "whole": g_a and h_a train (with the base's adapters, if any, as they
    # are in the model); "adapters": only `adapters` (side "encoder", in g_a) train
    encoder: str | None = None
    # the first steps train only the entropy model (hyperprior, context, bottleneck); g_a and g_s wait
    entropy_first: int = 0
    # the same as encoder="whole" (continue_run's name for it): only g_a and h_a train, the decoder and its
    # quantiles stay as they are
    encoder_only: bool = False
    # speed only: the results do not depend on these beyond float rounding
    prefetch: int = 2  # batches drawn ahead by a worker thread (0: in the training thread)
    channels_last: bool = False  # CUDA only; measure with benchmarks/train_throughput.py
    compile: bool = False  # torch.compile the network; measure likewise

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


def rate_distortion(model: torch.nn.Module, x: torch.Tensor, lmbda: float) -> torch.Tensor:
    """[loss, bpp, mse] as one tensor on x's device (the loss differentiable); nothing is read back."""
    out = model(x)
    num_pixels = x.shape[0] * x.shape[2] * x.shape[3]
    bpp = (torch.log(out.y_likelihoods).sum() + torch.log(out.z_likelihoods).sum()) / (-math.log(2) * num_pixels)
    mse = torch.mean((out.x_hat.float() - x) ** 2)
    loss = lmbda * 255**2 * mse + bpp
    return torch.stack([loss, bpp, mse])


def rd_loss(model: torch.nn.Module, x: torch.Tensor, lmbda: float) -> tuple[torch.Tensor, StepStats]:
    """The loss, and its terms read back as numbers."""
    terms = rate_distortion(model, x, lmbda)
    return terms[0], StepStats(*terms.detach().tolist())


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


# -- set-up ------------------------------------------------------------------------------------------
_owns_process_group = False  # set up by _distributed, so torn down by train (not a caller's own group)


def _distributed() -> tuple[int, int]:
    global _owns_process_group
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and os.environ.get("ADAPDATE_DDP_BACKEND") != "gloo" else "gloo"
        dist.init_process_group(backend)
        _owns_process_group = True
    rank = dist.get_rank() if world > 1 else 0
    return rank, world


def _device(cfg: TrainConfig, world: int) -> torch.device:
    """The device to train on, once the options are known to work there."""
    dev = torch.device(cfg.device)
    if dev.type not in ("cpu", "cuda"):
        raise TrainingError(f"--device {cfg.device}: training runs on cpu or cuda")
    if dev.type == "cuda" and dev.index is None:  # one GPU per process; set_device needs an index
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) if world > 1 else 0)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
        torch.backends.cudnn.benchmark = True  # fixed crop size: let cuDNN pick the fastest kernels
    # both lead torch 2.14's CPU convolutions into their channels-last kernels, which crash on AVX2
    if cfg.channels_last and dev.type != "cuda":
        raise TrainingError("--channels-last is for CUDA (torch 2.14's CPU backward crashes with it)")
    if cfg.compile and dev.type != "cuda":
        raise TrainingError("--compile is for CUDA (torch 2.14's CPU code for this network crashes)")
    if cfg.entropy_first and world > 1:
        raise TrainingError("--entropy-first is not available data-parallel (DDP needs a fixed set of parameters)")
    if cfg.entropy_first and (cfg.adapters or encoder_mode(cfg)):
        raise TrainingError("--entropy-first is for base models (adapters sit in g_a and g_s)")
    if encoder_mode(cfg) and cfg.train_entropy_bottleneck:
        raise TrainingError("an encoder is trained with the decoder frozen, the entropy bottleneck included")
    return dev


def save_checkpoint(path: str | Path, state: dict) -> None:
    atomic_write_with(Path(path), lambda f: torch.save(state, f))


def load_checkpoint(path: str | Path) -> dict:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not an adapdate training checkpoint")
    return ckpt


def _restore_identity(cfg: TrainConfig, ckpt: dict) -> None:
    """A resumed run keeps the model's identity; budgets and schedule may be changed by the caller."""
    saved = TrainConfig.from_dict(ckpt["config"])
    for name in ("arch", "N", "quality", "lmbda", "adapters", "base", "encoder", "encoder_only", "patch", "batch",
                 "seed"):
        setattr(cfg, name, getattr(saved, name))


def encoder_mode(cfg: TrainConfig) -> str | None:
    """None (not an encoder run), "whole" or "adapters"."""
    return cfg.encoder or ("whole" if cfg.encoder_only else None)


def build_network(cfg: TrainConfig, init_state: dict[str, torch.Tensor] | None
                  ) -> tuple[Cheng2020, list[torch.nn.Parameter], list[torch.nn.Parameter]]:
    """The network with init_state loaded; its trainable parameters and the bottleneck's quantiles
    (trained by the auxiliary loss only; none in encoder mode, where the decoder is frozen)."""
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
    mode = encoder_mode(cfg)
    if mode not in (None, "whole", "adapters"):
        raise TrainingError(f"unknown encoder mode {mode!r}")
    if mode == "adapters" and (adapters is None or adapters.side != "encoder"):
        raise TrainingError("an encoder's adapters sit in g_a only (side 'encoder')")
    if mode == "whole":  # the whole analysis side, adapters in g_a included
        trainable = [p for n, p in model.named_parameters() if is_encoder_key(n)]
    if mode:
        ids = {id(p) for p in trainable}
        for p in model.parameters():
            p.requires_grad_(id(p) in ids)
        return model, trainable, []  # the quantiles are the decoder's: frozen too
    for p in trainable:
        p.requires_grad_(True)
    quantiles = [p for n, p in model.named_parameters() if n.endswith(".quantiles")]
    for p in quantiles:
        p.requires_grad_(True)
    return model, trainable, quantiles


def make_optimizers(cfg: TrainConfig, trainable: list, quantiles: list
                    ) -> tuple[torch.optim.Adam, torch.optim.Adam | None]:
    """The main optimizer, and the quantiles' (None when they are frozen: encoder mode)."""
    # fused: one kernel for all tensors, and it can skip a step on the device (found_inf)
    return (torch.optim.Adam(trainable, lr=cfg.lr, fused=True),
            torch.optim.Adam(quantiles, lr=cfg.aux_lr, fused=True) if quantiles else None)


def _match_layout(optimizer: torch.optim.Optimizer) -> None:
    """Optimizer state in its parameter's memory layout (checkpoints store it contiguous): fused
    kernels walk parameter and state with the same strides."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            st = optimizer.state.get(p, {})
            for k, v in st.items():
                if isinstance(v, torch.Tensor) and v.shape == p.shape and v.stride() != p.stride():
                    st[k] = torch.empty_like(p).copy_(v)


def _contiguous(tree):
    """Tensors of a state dict (nested) as contiguous copies: a checkpoint does not depend on layout."""
    if isinstance(tree, torch.Tensor):
        return tree.contiguous()
    if isinstance(tree, dict):
        return {k: _contiguous(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_contiguous(v) for v in tree]
    return tree


def _set_entropy_first(model: Cheng2020, trainable: list, frozen: bool) -> None:
    """Freeze (or thaw) the trainable parameters of g_a and g_s: the entropy model trains alone."""
    ids = {id(p) for p in trainable}
    for n, p in model.named_parameters():
        if id(p) in ids and n.startswith(TRANSFORMS):
            p.requires_grad_(not frozen)


# -- one step ----------------------------------------------------------------------------------------
class TrainingStep:
    """One optimisation step that never waits for the device.

    A non-finite loss (a rate term overflowing) or gradient (bf16 backward; the clipping factor would
    spread it to every weight) sets found_inf, and both fused Adam steps then leave weights, moments and
    step counts as they were. The loss terms of the good steps are summed on the device; `read` fetches
    them (one synchronisation) at a log interval. Under DDP only the gradient check applies: its norm is
    the same on every rank, so all ranks skip together."""

    def __init__(self, cfg: TrainConfig, model: Cheng2020, net: torch.nn.Module, trainable: list,
                 quantiles: list, optimizer: torch.optim.Adam, aux_optimizer: torch.optim.Adam | None,
                 device: torch.device, world: int):
        self.cfg, self.model, self.net, self.world = cfg, model, net, world
        self.trainable, self.quantiles = trainable, quantiles
        self.optimizer, self.aux_optimizer = optimizer, aux_optimizer
        self.found_inf = torch.zeros((), device=device)
        # fused Adam reads these attributes, as GradScaler sets them
        optimizer.found_inf = self.found_inf
        if aux_optimizer is not None:
            aux_optimizer.found_inf = self.found_inf
        self._sums = torch.zeros(4, device=device)  # loss, bpp, mse summed over good steps; good steps
        self._skipped = torch.zeros((), device=device)
        self._aux = torch.zeros((), device=device)
        self._one = torch.ones(1, device=device)
        self.max_norm = cfg.clip if cfg.clip > 0 else float("inf")

    def __call__(self, x: torch.Tensor, lr: float) -> None:
        cfg = self.cfg
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        if cfg.compile:
            mask_context_weights(self.model)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
            terms = rate_distortion(self.net, x, cfg.lambda_)
        self.optimizer.zero_grad(set_to_none=True)
        if self.aux_optimizer is not None:
            self.aux_optimizer.zero_grad(set_to_none=True)
        terms[0].backward()
        norm = torch.nn.utils.clip_grad_norm_(self.trainable, self.max_norm)
        terms = terms.detach()
        ok = torch.isfinite(norm)
        if self.world == 1:
            ok = ok & torch.isfinite(terms[0])
        self.found_inf.copy_(~ok)
        self.optimizer.step()
        self._sums += torch.where(ok, torch.cat([terms, self._one]), 0.0)
        self._skipped += (~ok).float()
        if self.aux_optimizer is None:  # frozen quantiles (encoder mode)
            return
        aux_loss = self.model.aux_loss()
        aux_loss.backward()
        if self.world > 1:
            for p in self.quantiles:
                dist.all_reduce(p.grad)
                p.grad /= self.world
        self.aux_optimizer.step()
        self._aux = aux_loss.detach()

    def read(self) -> tuple[StepStats | None, int, float]:
        """(mean loss terms of the good steps since the last read, None if there were none; steps
        skipped so far; the last auxiliary loss). One synchronisation."""
        loss, bpp, mse, n, skipped, aux = torch.cat([self._sums, self._skipped[None], self._aux[None]]).tolist()
        self._sums.zero_()
        return (StepStats(loss / n, bpp / n, mse / n) if n else None), int(skipped), aux

    def skipped(self) -> int:
        return int(self._skipped)

    def add_skipped(self, n: int) -> None:
        self._skipped += n


# -- the run -----------------------------------------------------------------------------------------
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


@dataclass
class _Clock:
    """Training time so far: what earlier runs of a resumed run took, plus this one's."""

    before_s: float
    t0: float

    def seconds(self) -> float:
        return self.before_s + time.monotonic() - self.t0


class _Checkpointer:
    """Everything needed to continue exactly: weights, both optimizers, every rank's generators (the
    numpy one as it was after the last batch the loop took, not after those drawn ahead)."""

    def __init__(self, cfg: TrainConfig, rank: int, world: int, device: torch.device, model: Cheng2020,
                 optimizers: tuple, rng: np.random.Generator):
        self.cfg, self.rank, self.world, self.device = cfg, rank, world, device
        self.model, self.optimizers = model, optimizers
        self.numpy_state = generator_state(rng)

    def restore(self, ckpt: dict, rng: np.random.Generator) -> None:
        self.model.load_state_dict(ckpt["model"])
        for opt, key in zip(self.optimizers, ("optimizer", "aux_optimizer")):
            if opt is not None:
                opt.load_state_dict(ckpt[key])
                _match_layout(opt)
        r = self.rank
        torch.set_rng_state(ckpt["torch_rng"][r % len(ckpt["torch_rng"])])
        if self.device.type == "cuda" and ckpt.get("cuda_rng"):
            torch.cuda.set_rng_state(ckpt["cuda_rng"][r % len(ckpt["cuda_rng"])], self.device)
        rng.bit_generator.state = ckpt["numpy_rng"][r % len(ckpt["numpy_rng"])]
        self.numpy_state = generator_state(rng)

    def _gather(self, obj):
        if self.world == 1:
            return [obj]
        out: list = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def save(self, step: int, skipped: int, clock: _Clock) -> dict:
        state = {
            "format": CHECKPOINT_FORMAT,
            "config": asdict(self.cfg),
            "step": step,
            "skipped": skipped,
            "elapsed_s": clock.seconds(),
            "model": _contiguous(self.model.state_dict()),
            "optimizer": _contiguous(self.optimizers[0].state_dict()),
            "aux_optimizer": _contiguous(self.optimizers[1].state_dict()) if self.optimizers[1] is not None else {},
            "torch_rng": self._gather(torch.get_rng_state()),
            "numpy_rng": self._gather(self.numpy_state),
        }
        if self.device.type == "cuda":
            state["cuda_rng"] = self._gather(torch.cuda.get_rng_state(self.device))
        if self.rank == 0:
            save_checkpoint(self.cfg.out, state)
        return state


def _wrap(model: Cheng2020, cfg: TrainConfig, world: int) -> torch.nn.Module:
    """The module the loop calls: DDP across processes, compiled when asked."""
    net: torch.nn.Module = model
    if world > 1:
        # the quantiles only see the auxiliary loss, outside DDP's forward: TrainingStep all-reduces
        # their gradients by hand
        torch.nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
            model, [n for n, _ in model.named_parameters() if n.endswith(".quantiles")])
        net = torch.nn.parallel.DistributedDataParallel(model)
    if cfg.compile:
        net = torch.compile(net)
    return net


def _log_line(step: int, stats: StepStats | None, skipped: int, aux: float, lr: float, seconds: float) -> str:
    terms = f"loss {stats.loss:.4f} bpp {stats.bpp:.4f} psnr {stats.psnr:.2f} " if stats else "no finite step "
    return (f"step {step} {terms}aux {aux:.1f} lr {lr:.2e} {seconds:.0f}s"
            + (f" skipped {skipped}" if skipped else ""))


def _check_skipped(skipped: int, step: int) -> None:
    if skipped > MAX_SKIPPED_STEPS:
        raise TrainingError(f"{skipped} steps with a non-finite loss or gradient by step {step}: lower --lr")


@dataclass
class _Run:
    """A run ready to step: the network, its step function and checkpointer, where it stands."""

    model: Cheng2020
    trainable: list
    step_fn: TrainingStep
    saver: _Checkpointer
    rng: np.random.Generator
    device: torch.device
    rank: int
    step: int
    clock: _Clock


def _prepare(cfg: TrainConfig, resume: str | None, init_state: dict | None) -> _Run:
    """Network, optimizers and generators, fresh or as a checkpoint left them."""
    rank, world = _distributed()
    ckpt = load_checkpoint(resume) if resume else None
    if ckpt is not None:
        _restore_identity(cfg, ckpt)
    device = _device(cfg, world)
    torch.manual_seed(cfg.seed + rank)
    rng = np.random.default_rng(cfg.seed + 1000 * rank)
    model, trainable, quantiles = build_network(cfg, init_state)
    model.to(device).train()
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizers = make_optimizers(cfg, trainable, quantiles)
    saver = _Checkpointer(cfg, rank, world, device, model, optimizers, rng)
    step, skipped, clock = 0, 0, _Clock(0.0, time.monotonic())
    if ckpt is not None:
        saver.restore(ckpt, rng)
        step, skipped = int(ckpt["step"]), int(ckpt.get("skipped", 0))
        clock.before_s = float(ckpt["elapsed_s"])
    step_fn = TrainingStep(cfg, model, _wrap(model, cfg, world), trainable, quantiles, *optimizers, device, world)
    step_fn.add_skipped(skipped)
    return _Run(model, trainable, step_fn, saver, rng, device, rank, step, clock)


@dataclass(frozen=True)
class _Decision:
    """What the loop does next, the same on every rank: a rank that stopped, checkpointed (a collective)
    or read its own clock for the learning rate alone would leave the others waiting in an all-reduce, or
    drifting apart."""

    elapsed_s: float  # the run's clock (the latest rank's)
    stop: bool  # a signal, or the time budget spent
    checkpoint: bool  # checkpoint_every_s since the last one


def _decide(cfg: TrainConfig, run: _Run, stop: _StopRequest, last_ckpt: float) -> _Decision:
    now = run.clock.seconds()
    votes = [now, float(stop.requested or (cfg.time_limit_s is not None and now >= cfg.time_limit_s)),
             float(time.monotonic() - last_ckpt >= cfg.checkpoint_every_s)]
    if run.saver.world > 1:  # any rank's vote counts (max); ranks wait here for each other anyway
        t = torch.tensor(votes, dtype=torch.float64, device=run.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        votes = t.tolist()
    return _Decision(votes[0], bool(votes[1]), bool(votes[2]))


def _steps(cfg: TrainConfig, run: _Run, data: CropDataset, val_images: list, stop: _StopRequest,
           log: Callable[[str], None], progress: Callable | None) -> None:
    """Step until the step or time budget ends or a signal asks to stop; log, validate and checkpoint
    on the way (the only places that wait for the device). One process decides every step; several
    decide together every log interval (_decide)."""
    run.clock.t0 = last_ckpt = time.monotonic()
    shown: StepStats | None = None
    decide_every = 1 if run.saver.world == 1 else cfg.log_every
    first = run.step
    batches = BatchPrefetcher(data, cfg.batch, run.rng, cfg.prefetch, pin=run.device.type == "cuda")
    try:
        while run.step < cfg.steps:
            if (run.step - first) % decide_every == 0:
                decision = _decide(cfg, run, stop, last_ckpt)
                if decision.checkpoint and run.step > first:
                    run.saver.save(run.step, run.step_fn.skipped(), run.clock)
                    last_ckpt = time.monotonic()
                if decision.stop:
                    break
            if run.step == cfg.entropy_first and run.step > 0:
                _set_entropy_first(run.model, run.trainable, False)
            lr = learning_rate(cfg, run.step, decision.elapsed_s)
            crops, run.saver.numpy_state = batches.next()
            run.step_fn(to_model_input(crops.to(run.device, non_blocking=True), cfg.channels_last), lr)
            run.step += 1
            if run.step % cfg.log_every == 0:
                stats, skipped, aux = run.step_fn.read()
                _check_skipped(skipped, run.step)
                shown = stats or shown
                if run.rank == 0:
                    log(_log_line(run.step, stats, skipped, aux, lr, run.clock.seconds()))
            if progress is not None and run.rank == 0:
                progress(run.step, cfg.steps, shown, lr)
            if val_images and run.step % cfg.val_every == 0:
                v = evaluate(run.model, val_images, cfg.device)
                log(f"val step {run.step} bpp {v.bpp:.4f} psnr {v.psnr:.2f}")
    finally:
        batches.close()


def _leave_process_group() -> None:
    """Ranks that end together: each waits for the others, then the process group is torn down. A rank
    whose interpreter exited with gloo still connected could take the other down with it (SIGABRT)."""
    global _owns_process_group
    if _owns_process_group and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    _owns_process_group = False


def train(
    cfg: TrainConfig,
    resume: str | None = None,
    init_state: dict[str, torch.Tensor] | None = None,
    log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True),
    progress: Callable[[int, int, StepStats | None, float], None] | None = None,
) -> dict:
    """Run (or continue) a training run; returns the final checkpoint dict.

    init_state: weights to start from (a base model for adapters, or q3 for fine-tuning q1/q2).
    progress(step, steps, stats, lr) is called after every step with the statistics of the last log
    interval (None before the first).
    """
    run = _prepare(cfg, resume, init_state)
    data = CropDataset(cfg.data, cfg.patch, cfg.downscale_lossy)
    val_images = load_eval_images(cfg.val, cfg.val_max_side) if cfg.val and run.rank == 0 else []
    if run.rank == 0:
        log(f"train: {len(data.images)} images, λ={cfg.lambda_}, step {run.step}/{cfg.steps}, "
            f"{sum(p.numel() for p in run.trainable)} trainable parameters, world={run.saver.world}")
    _set_entropy_first(run.model, run.trainable, run.step < cfg.entropy_first)
    stop = _StopRequest()
    try:
        _steps(cfg, run, data, val_images, stop, log, progress)
    finally:
        stop.restore()
    skipped = run.step_fn.skipped()
    _check_skipped(skipped, run.step)
    state = run.saver.save(run.step, skipped, run.clock)
    if run.rank == 0:
        log(f"saved {cfg.out} at step {run.step}" + (f", {skipped} steps skipped" if skipped else "")
            + (" (stopped by signal)" if stop.requested else ""))
    _leave_process_group()
    return state
