"""`adapdate decode`: parse arguments, plan outputs, report results.

A file names the exact model version that coded it; the store finds it (each version loaded once per
run). torch is imported only once a file has passed the container's checks.
"""

from __future__ import annotations

import functools
import time
from typing import TYPE_CHECKING, Any

import click

from adapdate_codec.cli import cluster
from adapdate_codec.cli.batch import finish, run_batch, skip_existing
from adapdate_codec.cli.options import check_existing_options, coding_options, given_workers, pixel_limit, verbosity
from adapdate_codec.cli.parallel import Workers, threads_per_worker, worker_count
from adapdate_codec.cli.planning import DECODED_SUFFIX, ENCODED_SUFFIXES, Job, check_stdout, display, is_single, plan_jobs
from adapdate_codec.cli.report import Reporter, coded_result
from adapdate_codec.cli.torch_setup import SetupError, TorchSetup, report_setup
from adapdate_codec.cluster.work import Settings
from adapdate_codec.fileio import STDIO, check_writable, read_input, write_output
from adapdate_codec.results import Result

if TYPE_CHECKING:
    from adapdate_codec.bundle import ModelBundle
    from adapdate_codec.container import Header

_WRITABLE_FORMATS = ".png, .jpg, .webp, .tif or .bmp"
# names of image files (imageio.OUTPUT_FORMATS, without importing Pillow): --ray's -o is never one
OUTPUT_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp"})


class Resolver:
    """header -> ModelBundle through the store, each version loaded once per run."""

    def __init__(self, store: Any, setup: TorchSetup) -> None:
        self.store, self.setup = store, setup
        self._cache: dict[tuple[str, bytes], ModelBundle] = {}

    def __call__(self, header: "Header") -> "ModelBundle":
        key = (header.fingerprint_kind, bytes(header.fingerprint))
        if key not in self._cache:
            self._cache[key] = self.setup.load(lambda: self.store.by_fingerprint(header))
        return self._cache[key]


def _output_format(dst: str) -> str:
    from adapdate_codec.imageio import format_for_path

    if dst == STDIO:
        return "PNG"
    fmt = format_for_path(dst)
    if fmt is None:
        raise click.UsageError(f"cannot write {dst}: unknown image format (use {_WRITABLE_FORMATS})")
    return fmt


def _decode_job(job: Job, rep: Reporter, resolve: Resolver, device: str, force: bool, max_pixels: int) -> Result:
    from adapdate_codec.container import unpack
    from adapdate_codec.imageio import save_picture
    from adapdate_codec.limits import check_pixels

    start, one_time = time.perf_counter(), resolve.setup.seconds
    data = read_input(job.src)
    check_writable(job.dst, force, source=job.src)
    header, _ = unpack(data)  # a damaged file fails here, cheaply, before torch is even imported
    check_pixels(header.width, header.height, max_pixels or None)  # so does a declared size above the limit
    bundle = resolve(header)  # so does a missing model, before the codec's slow imports
    from adapdate_codec.codec import decode_picture

    pic = decode_picture(data, resolve, device=device, max_pixels=max_pixels)
    write_output(job.dst, save_picture(pic, _output_format(job.dst)), force)
    report_setup(rep, resolve.setup, one_time)
    return coded_result(job, len(data), pic, bundle, time.perf_counter() - start - (resolve.setup.seconds - one_time))


def _worker_decode(store_home: str, device: str, threads: int | None, force: bool, max_pixels: int):
    """A -j worker's work (run in the worker: its own store, torch set-up and model cache)."""
    from adapdate_codec.store import ModelStore

    resolve = Resolver(ModelStore(store_home), TorchSetup(device, threads))
    return lambda job, rep: _decode_job(job, rep, resolve, device, force, max_pixels)


def _decode_summary(r: Result) -> str:
    return (
        f"{display(r.input, '<stdin>')} -> {display(r.output, '<stdout>')}: "
        f"{r.width}x{r.height}, {r.bpp:.3f} bpp, {r.seconds:.1f} s"
    )


@click.command()
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT...")
@coding_options
def decode(
    inputs: tuple[str, ...],
    output: str | None,
    max_pixels: int | None,
    device: str,
    threads: int | None,
    workers: int,
    force: bool,
    skip_existing_outputs: bool,
    ray_address: str | None,
    as_json: bool,
    recursive: bool,
    quiet: bool,
    verbose: bool,
) -> None:
    """Decompress .adpd files into images (PNG by default; the output suffix picks the format).

    An INPUT may be a folder: its .adpd files are decoded (with -r, also those in subfolders, whose layout
    is kept under -o DIR)."""
    level = verbosity(quiet, verbose)
    check_existing_options(force, skip_existing_outputs)
    if ray_address is not None:
        settings = Settings("decode", max_pixels=pixel_limit(max_pixels), device=device, threads=threads or 1,
                            force=force, skip_existing=skip_existing_outputs)
        cluster.run(settings, inputs, cluster.check(inputs, output, OUTPUT_SUFFIXES), address=ray_address,
                    workers=given_workers(workers), recursive=recursive, as_json=as_json, summary=_decode_summary,
                    verbosity=level)
        return
    cluster.reject_urls(inputs, output)
    jobs = plan_jobs(inputs, output, DECODED_SUFFIX, accept=ENCODED_SUFFIXES, recursive=recursive)
    for job in jobs:
        _output_format(job.dst)  # an unknown suffix is a usage error before any work
    check_stdout(jobs, as_json, force)
    if skip_existing_outputs:
        jobs = skip_existing(jobs, level)
    from adapdate_codec.store import ModelStore

    store = ModelStore()
    resolve = Resolver(store, TorchSetup(device, threads))
    limit = pixel_limit(max_pixels)
    say = functools.partial(click.echo, err=True)
    n = worker_count(workers, jobs, say)
    pool = None if n <= 1 else Workers(n, functools.partial(
        _worker_decode, str(store.home), device, threads_per_worker(threads, n, say), force, limit))
    results = run_batch(
        jobs,
        lambda job, rep: _decode_job(job, rep, resolve, device, force, limit),
        "<stdin>",
        summary=None if as_json else _decode_summary,
        fatal=(SetupError,),  # files may need different models: a missing one fails only its files
        verbosity=level,
        workers=pool,
    )
    finish(results, as_json, single=is_single(inputs, [j.src for j in jobs]))
