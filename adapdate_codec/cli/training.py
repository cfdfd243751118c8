"""`adapdate train base|adapters|encoder`: argument parsing and progress display only (see train.py)."""

from __future__ import annotations

import re
import sys

import click

from adapdate_codec.errors import TrainingError

_UNITS = {"s": 1, "m": 60, "h": 3600}


def parse_duration(text: str | None) -> float | None:
    """'90m', '2h', '1h30m', '3600' (seconds) -> seconds."""
    if text is None:
        return None
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)([smh])", text)
    if not parts or "".join(a + b for a, b in parts) != text:
        raise click.BadParameter(f"{text!r} is not a duration like 90m, 2h or 1h30m")
    return sum(float(a) * _UNITS[b] for a, b in parts)


def common_options(f):
    options = [
        click.option("--data", required=True, type=click.Path(exists=True, file_okay=False), help="Training images (searched recursively)."),
        click.option("--val", type=click.Path(exists=True, file_okay=False), help="Validation images."),
        click.option("--steps", type=int, default=10000, show_default=True, help="Step budget (and schedule length)."),
        click.option("--time", "time_", help="Wall-time budget, e.g. 90m or 2h; the schedule ends with it."),
        click.option("--batch", type=int, default=8, show_default=True),
        click.option("--patch", type=int, default=128, show_default=True, help="Crop size (multiple of 64)."),
        click.option("--downscale-lossy/--no-downscale-lossy", default=True, show_default=True,
                     help="Downscale JPEG/WebP sources x2 before cropping (hides their coding artefacts)."),
        click.option("--lr", type=float, default=4e-4, show_default=True),
        click.option("--warmup", type=int, default=300, show_default=True, help="Linear warm-up steps."),
        click.option("--schedule", type=click.Choice(["cosine", "constant"]), default="cosine", show_default=True),
        click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N."),
        click.option("--bf16", is_flag=True, help="bfloat16 autocast (fast on GPUs and CPUs with AVX512-BF16 only)."),
        click.option("--channels-last", is_flag=True, help="CUDA: channels-last activations and weights."),
        click.option("--compile", "compile_", is_flag=True, help="CUDA: torch.compile the network."),
        click.option("--entropy-first", type=int, default=0, show_default=True,
                     help="Steps at the start in which only the entropy model trains (g_a, g_s wait)."),
        click.option("--threads", type=int, help="CPU threads."),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("--resume", type=click.Path(exists=True, dir_okay=False), help="Continue from this checkpoint."),
        click.option("--checkpoint-every", type=float, default=180.0, show_default=True, help="Seconds between checkpoints."),
        click.option("--out", required=True, type=click.Path(dir_okay=False), help="Checkpoint to write."),
    ]
    for o in reversed(options):
        f = o(f)
    return f


def _run(cfg, resume, init_state, threads) -> None:
    import torch

    from adapdate_codec.train import train as run_training

    if threads:
        torch.set_num_threads(threads)
    if cfg.patch % 64:
        raise click.BadParameter("--patch must be a multiple of 64")
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise TrainingError("--device cuda: no CUDA device is available")
    if sys.stderr.isatty():
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        with Progress(TextColumn("[bold]train"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                      TextColumn("{task.fields[stats]}"), TimeRemainingColumn(), transient=False) as bar:
            task = bar.add_task("train", total=cfg.steps, stats="")

            def progress(step, total, s, lr):
                # s: the last log interval's figures (read from the device only then)
                shown = f"loss {s.loss:.3f} bpp {s.bpp:.3f} psnr {s.psnr:.2f} " if s is not None else ""
                bar.update(task, completed=step, stats=f"{shown}lr {lr:.1e}")

            run_training(cfg, resume=resume, init_state=init_state, progress=progress, log=bar.console.log)
    else:
        run_training(cfg, resume=resume, init_state=init_state)


def _config(**kw):
    from adapdate_codec.train import TrainConfig

    time_s = parse_duration(kw.pop("time_"))
    return TrainConfig(time_limit_s=time_s, checkpoint_every_s=kw.pop("checkpoint_every"), compile=kw.pop("compile_"),
                       **kw)


def _init_state(path: str):
    """Weights to start from: a training checkpoint or an adapdate model file."""
    import torch

    from adapdate_codec.bundle import ModelBundle

    d = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(d, dict) and "model" in d and "config" in d:
        return d["model"]
    return ModelBundle.from_dict(d, path).state_dict


@click.group("train")
def train() -> None:
    """Train base models, adapters and encoders (resumable; see --resume)."""


@train.command("base")
@click.option("--quality", "-q", type=click.IntRange(1, 6), default=3, show_default=True)
@click.option("--lambda", "lmbda", type=float, help="Rate-distortion λ (default: CompressAI's for --quality).")
@click.option("-N", "--channels", "N", type=int, default=128, show_default=True)
@click.option("--init", "init", type=click.Path(exists=True, dir_okay=False), help="Start from these weights (fine-tuning).")
@common_options
def base(quality, lmbda, N, init, resume, threads, **kw) -> None:
    """Train a cheng2020-anchor base model with the MSE rate-distortion loss."""
    cfg = _config(quality=quality, lmbda=lmbda, N=N, **kw)
    _run(cfg, resume, _init_state(init) if init else None, threads)


@train.command("adapters")
@click.option("--model", "name", default=None, help="Installed base model (default cheng2020-anchor).")
@click.option("--quality", "-q", type=click.IntRange(1, 6), default=None, help="Quality of the base (default 3).")
@click.option("--type", "type_", type=click.Choice(["resblock", "all"]), default="resblock", show_default=True)
@click.option("--R", "R", type=int, default=2, show_default=True, help="Bottleneck reduction N -> N/R.")
@click.option("--v", "v", type=int, default=3, show_default=True, help="Kernel size of the middle conv.")
@click.option("--lambda", "lmbda", type=float, help="λ (default: the base model's).")
@click.option("--train-entropy-bottleneck", is_flag=True, help="Also train the entropy bottleneck.")
@click.option("--init", "init", type=click.Path(exists=True, dir_okay=False),
              help="Continue the adapters of this checkpoint (same base, type, R and v).")
@common_options
def adapters(name, quality, type_, R, v, lmbda, train_entropy_bottleneck, init, resume, threads, **kw) -> None:
    """Train adapters on a frozen installed base model."""
    from adapdate_codec.adapters import AdapterConfig
    from adapdate_codec.store import ModelStore

    base_model = ModelStore().get(name, quality)
    if base_model.adapters is not None:
        raise TrainingError(f"{base_model.name} q{base_model.quality} already has adapters; roll back to its base first")
    cfg = _config(quality=base_model.quality, lmbda=lmbda if lmbda is not None else base_model.lmbda,
                  N=base_model.N, arch=base_model.arch, adapters=AdapterConfig(type_, R, v).to_dict(),
                  train_entropy_bottleneck=train_entropy_bottleneck,
                  base={"name": base_model.name, "quality": base_model.quality, "fingerprint": base_model.fingerprint},
                  **kw)
    state = dict(base_model.state_dict)
    if init:
        earlier = {k: v for k, v in _init_state(init).items() if ".adapter." in k}
        if not earlier:
            raise TrainingError(f"{init} holds no adapters")
        state.update(earlier)
    _run(cfg, resume, state, threads)


@train.command("encoder")
@click.option("--model", "name", default=None, help="Installed model whose decoder stays (default cheng2020-anchor).")
@click.option("--quality", "-q", type=click.IntRange(1, 6), default=None, help="Quality of the model (default 3).")
@click.option("--type", "type_", type=click.Choice(["whole", "resblock", "all"]), default="whole", show_default=True,
              help="whole: train all of g_a and h_a; resblock / all: train adapters in g_a's blocks only.")
@click.option("--R", "R", type=int, default=2, show_default=True, help="Adapters: bottleneck reduction N -> N/R.")
@click.option("--v", "v", type=int, default=3, show_default=True, help="Adapters: kernel size of the middle conv.")
@click.option("--lambda", "lmbda", type=float, help="λ (default: the model's).")
@click.option("--init", "init", type=click.Path(exists=True, dir_okay=False),
              help="Continue the encoder (g_a, h_a) of this checkpoint or model file.")
@common_options
def encoder(name, quality, type_, R, v, lmbda, init, resume, threads, **kw) -> None:
    """Train a new encoder (g_a and h_a) for the active version of an installed model; its decoder is frozen.

    `adapdate model export-update` turns the checkpoint into an encoder update (.nnc), whose files decode on
    every installation of the same decoder, patched or not."""
    from adapdate_codec.adapters import AdapterConfig
    from adapdate_codec.bundle import is_encoder_key
    from adapdate_codec.store import ModelStore

    base_model = ModelStore().get(name, quality)
    # whole: the model as it is, its adapters (if any) included; else new adapters in g_a only
    adapters = base_model.adapters.to_dict() if base_model.adapters is not None else None
    if type_ != "whole":
        if base_model.adapters is not None:
            raise TrainingError(f"{base_model.name} q{base_model.quality} already has adapters; train --type whole")
        adapters = AdapterConfig(type_, R, v, side="encoder").to_dict()
    cfg = _config(quality=base_model.quality, lmbda=lmbda if lmbda is not None else base_model.lmbda,
                  N=base_model.N, arch=base_model.arch, adapters=adapters,
                  encoder="whole" if type_ == "whole" else "adapters",
                  base={"name": base_model.name, "quality": base_model.quality, "fingerprint": base_model.fingerprint},
                  **kw)
    state = dict(base_model.state_dict)
    if init:
        earlier = {k: v for k, v in _init_state(init).items() if is_encoder_key(k)}
        if not earlier:
            raise TrainingError(f"{init} holds no encoder weights")
        state.update(earlier)
    _run(cfg, resume, state, threads)
