"""`adapdate encode`: parse arguments, plan outputs, report results.

The work itself is in imageio / codec / container / store; files are handled by fileio. torch, numpy and
Pillow are imported inside the command so that `adapdate --help` stays fast.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import click

from adapdate_codec.cli.batch import Reporter, Result, coded_result, finish, run_batch
from adapdate_codec.cli.options import coding_options, pixel_limit, verbosity
from adapdate_codec.cli.parallel import Workers, threads_per_worker, worker_count
from adapdate_codec.cli.planning import ENCODED_SUFFIX, IMAGE_SUFFIXES, Job, check_stdout, display, is_single, plan_jobs
from adapdate_codec.cli.torch_setup import SetupError, TorchSetup, report_setup
from adapdate_codec.errors import ModelError, ModelNotInstalledError
from adapdate_codec.fileio import check_writable, read_input, write_output

if TYPE_CHECKING:
    from adapdate_codec.bundle import ModelBundle
    from adapdate_codec.imageio import Picture


# measured figures of each --effort level (README, "Effort"): filled in from benchmarks/effort.py
EFFORT_HELP = "see the README's table."


@dataclass(frozen=True)
class EncodeOptions:
    drop_alpha: bool
    padding: str
    device: str
    force: bool
    target_bpp: float | None
    max_pixels: int  # 0: no limit
    effort: int = 0


class Encoder:
    """Loads each model bundle once per run, and encodes one picture at a fixed quality or a target bpp."""

    def __init__(
        self, store: Any, model: str | None, quality: int | None, opts: EncodeOptions, setup: TorchSetup
    ) -> None:
        self.store, self.model, self.quality, self.opts, self.setup = store, model, quality, opts, setup
        self._bundles: dict[int | None, ModelBundle] = {}
        self.search_seconds = 0.0  # of the last picture
        self.qualities: list[int] = []
        if opts.target_bpp is not None:
            self.qualities = sorted(store.qualities(model), reverse=True)
            if not self.qualities:
                from adapdate_codec.store import DEFAULT_NAME

                raise ModelNotInstalledError(f"no quality of model {model or DEFAULT_NAME} is installed")

    def bundle(self, quality: int | None) -> "ModelBundle":
        """Loaded on first use (a missing model is a fatal error of the batch: see run_batch)."""
        if quality not in self._bundles:
            self._bundles[quality] = self.setup.load(lambda: self.store.get(self.model, quality))
        return self._bundles[quality]

    def encode(self, pic: "Picture", quality: int | None, lmbda: float | None = None,
               effort: int | None = None) -> tuple["ModelBundle", bytes]:
        bundle = self.bundle(quality)
        effort = self.opts.effort if effort is None else effort
        if not effort and lmbda is None:
            from adapdate_codec.codec import encode_picture

            return bundle, encode_picture(pic, bundle, device=self.opts.device, padding=self.opts.padding)
        from adapdate_codec.codec import encode_picture_search

        data, res = encode_picture_search(pic, bundle, device=self.opts.device, padding=self.opts.padding,
                                          effort=effort, lmbda=lmbda)
        self.search_seconds += res.seconds
        return bundle, data

    def encode_to_target(self, pic: "Picture", name: str, rep: Reporter) -> tuple["ModelBundle", bytes]:
        """Effort 0: the highest installed quality whose bpp is at most the target (else the lowest, with a
        warning). Effort >= 1: a λ between two qualities, searched to land within 3 % of the target."""
        from adapdate_codec.rate import effort_to_target, encode_to_target

        target = self.opts.target_bpp
        assert target is not None
        height, width = pic.pixels.shape[:2]
        if self.opts.effort:
            r = effort_to_target(self.qualities, lambda q: self.encode(pic, q, effort=0),
                                 lambda q, lm: self.encode(pic, q, lmbda=lm), width, height, target)
            if r.reached:
                rep.info(f"{name}: --target-bpp {target:g}: quality {r.quality}'s model at "
                         f"{r.bpp:.3f} bpp (effort {self.opts.effort})")
            return r.bundle, r.data
        r = encode_to_target(self.qualities, lambda q: self.encode(pic, q), width, height, target)
        if r.reached:
            rep.info(f"{name}: --target-bpp {target:g}: picked quality {r.quality} ({r.bpp:.3f} bpp)")
        return r.bundle, r.data


def _check_size(pic: "Picture") -> None:
    from adapdate_codec.container import check_size

    height, width = pic.pixels.shape[:2]
    check_size(width, height)


def _worker_encode(store_home: str, model: str | None, quality: int | None, opts: EncodeOptions, device: str,
                   threads: int | None):
    """A -j worker's work (run in the worker: its own store, torch set-up and model cache)."""
    from adapdate_codec.store import ModelStore

    enc = Encoder(ModelStore(store_home), model, quality, opts, TorchSetup(device, threads))
    return lambda job, rep: _encode_job(job, rep, enc)


def _encode_job(job: Job, rep: Reporter, enc: Encoder) -> Result:
    from adapdate_codec.imageio import load_picture

    start, one_time = time.perf_counter(), enc.setup.seconds
    name = display(job.src, "<stdin>")
    data = read_input(job.src)
    check_writable(job.dst, enc.opts.force, source=job.src)  # before the slow part
    pic = load_picture(data, drop_alpha=enc.opts.drop_alpha, max_pixels=enc.opts.max_pixels)
    del data  # a large photo's file is tens of MB: not kept while it is coded
    _check_size(pic)
    enc.search_seconds = 0.0
    if enc.opts.target_bpp is None:
        bundle, payload = enc.encode(pic, enc.quality)
    else:
        bundle, payload = enc.encode_to_target(pic, name, rep)
    write_output(job.dst, payload, enc.opts.force)
    report_setup(rep, enc.setup, one_time)
    result = coded_result(job, len(payload), pic, bundle, time.perf_counter() - start - (enc.setup.seconds - one_time))
    result.effort = enc.opts.effort
    result.search_seconds = round(enc.search_seconds, 3) if enc.opts.effort else None
    return result


def _encode_summary(r: Result) -> str:
    return (
        f"{display(r.input, '<stdin>')} -> {display(r.output, '<stdout>')}: "
        f"{r.bytes:,} bytes, {r.bpp:.3f} bpp, {r.seconds:.1f} s"
    )


@click.command()
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT...")
@coding_options
@click.option("-q", "--quality", type=click.IntRange(1, 99), help="Model quality (default 3).")
@click.option("-m", "--model", metavar="NAME", help="Model name (default cheng2020-anchor).")
@click.option("--drop-alpha", is_flag=True, help="Encode images with transparency, dropping the alpha channel.")
@click.option(
    "--padding",
    type=click.Choice(["replicate", "reflect"]),
    default="replicate",
    show_default=True,
    help="How to pad the image to a multiple of 64.",
)
@click.option("--target-bpp", type=click.FloatRange(min=0, min_open=True), metavar="X",
              help="Pick the highest installed quality whose size is at most X bits per pixel (with --effort "
                   ">= 1: a trade-off between two qualities, within 3 % of X).")
@click.option("-e", "--effort", type=click.IntRange(0, 9), default=0, show_default=True, metavar="N",
              help="0-9: search for better latents for the same decoder (smaller files at the same quality; "
                   "the files are ordinary .adpd files). Time per megapixel on 2 CPU cores / a GPU, and the "
                   "BD-rate gain: " + EFFORT_HELP)
def encode(
    inputs: tuple[str, ...],
    output: str | None,
    max_pixels: int | None,
    device: str,
    threads: int | None,
    workers: int,
    force: bool,
    as_json: bool,
    recursive: bool,
    quiet: bool,
    verbose: bool,
    quality: int | None,
    model: str | None,
    drop_alpha: bool,
    padding: str,
    target_bpp: float | None,
    effort: int,
) -> None:
    """Compress images (PNG, JPEG, WebP, TIFF, BMP, ...) into .adpd files.

    An INPUT may be a folder: its images are encoded (with -r, also those in subfolders, whose layout is
    kept under -o DIR)."""
    if quality is not None and target_bpp is not None:
        raise click.UsageError("--quality and --target-bpp cannot be used together")
    level = verbosity(quiet, verbose)
    jobs = plan_jobs(inputs, output, ENCODED_SUFFIX, accept=IMAGE_SUFFIXES, recursive=recursive)
    check_stdout(jobs, as_json, force)
    from adapdate_codec.store import ModelStore

    opts = EncodeOptions(drop_alpha=drop_alpha, padding=padding, device=device, force=force, target_bpp=target_bpp,
                         max_pixels=pixel_limit(max_pixels), effort=effort)
    store = ModelStore()
    enc = Encoder(store, model, quality, opts, TorchSetup(device, threads))  # also checks --target-bpp's models
    say = functools.partial(click.echo, err=True)
    n = worker_count(workers, jobs, say)
    pool = None if n <= 1 else Workers(n, functools.partial(
        _worker_encode, str(store.home), model, quality, opts, device, threads_per_worker(threads, n, say)))
    results = run_batch(
        jobs,
        lambda job, rep: _encode_job(job, rep, enc),
        "<stdin>",
        summary=None if as_json else _encode_summary,
        fatal=(ModelError, SetupError),  # one model for every file: if it is missing, all would fail
        verbosity=level,
        workers=pool,
    )
    finish(results, as_json, single=is_single(inputs, [j.src for j in jobs]))
