"""`adapdate encode` and `adapdate decode`: parse arguments, plan outputs, report results.

The work itself is in imageio / codec / container / store; files are handled by fileio. torch, numpy and
Pillow are imported inside the commands so that `adapdate --help` stays fast.

A batch goes on past a bad file: each failure is one line on stderr, the others are written, and the
exit status is 1 at the end if anything failed.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import click

from adapdate_codec.errors import AdapdateError, InputError, ModelError, ModelNotInstalledError, OutputError
from adapdate_codec.fileio import STDIO, check_writable, read_input, write_output

if TYPE_CHECKING:
    from adapdate_codec.bundle import ModelBundle
    from adapdate_codec.container import Header
    from adapdate_codec.imageio import Picture

ENCODED_SUFFIX = ".adpd"
DECODED_SUFFIX = ".png"
_WRITABLE_FORMATS = ".png, .jpg, .webp, .tif or .bmp"


# --- planning: which input goes to which output ------------------------------------------------------


@dataclass(frozen=True)
class Job:
    src: str  # a path or "-" (stdin)
    dst: str  # a path or "-" (stdout)


def _is_folder_target(output: str, n_inputs: int) -> bool:
    return n_inputs > 1 or output.endswith(("/", "\\")) or Path(output).is_dir()


def plan_jobs(inputs: tuple[str, ...], output: str | None, suffix: str) -> list[Job]:
    """Map inputs to outputs. One input + -o FILE: that file; several inputs or -o DIR: DIR/<stem><suffix>;
    no -o: <stem><suffix> beside each input (stdout for stdin)."""
    if inputs.count(STDIO) > 1:
        raise click.UsageError("'-' (stdin) can be given only once")
    if output is None:
        return [Job(s, STDIO if s == STDIO else str(Path(s).with_suffix(suffix))) for s in inputs]
    if output == STDIO and len(inputs) > 1:
        raise click.UsageError("several inputs cannot all be written to stdout; use -o DIR")
    if output == STDIO or not _is_folder_target(output, len(inputs)):
        return [Job(inputs[0], output)]
    if STDIO in inputs:
        raise click.UsageError("'-' (stdin) needs a file name with -o, not a folder")
    folder = Path(output)
    jobs = [Job(s, str(folder / (Path(s).stem + suffix))) for s in inputs]
    seen: dict[str, str] = {}
    for job in jobs:
        if job.dst in seen:
            raise click.UsageError(f"{seen[job.dst]} and {job.src} would both be written to {job.dst}")
        seen[job.dst] = job.src
    return jobs


def _check_stdout(jobs: list[Job], as_json: bool, force: bool) -> None:
    if any(j.dst == STDIO for j in jobs):
        if as_json:
            raise click.UsageError("--json prints to stdout; it cannot be used when the output is '-'")
        if sys.stdout.isatty() and not force:
            raise OutputError("refusing to write binary data to a terminal (use -o FILE, a pipe, or -f)")


def _display(path: str, stdio_name: str) -> str:
    return stdio_name if path == STDIO else path


# --- results and reporting ---------------------------------------------------------------------------


@dataclass
class Result:
    input: str
    output: str
    bytes: int | None = None  # size of the .adpd file (the output of encode, the input of decode)
    width: int | None = None
    height: int | None = None
    bpp: float | None = None
    seconds: float | None = None
    model: str | None = None
    quality: int | None = None
    error: str | None = None


def _bpp(n_bytes: int, width: int, height: int) -> float:
    return n_bytes * 8 / (width * height)


def _one_line(e: BaseException) -> str:
    if isinstance(e, MemoryError):
        return "out of memory (try a smaller image)"
    return " ".join(str(e).split()) or type(e).__name__


def _reported_errors() -> tuple[type[BaseException], ...]:
    """What a per-file step may raise that is reported in one line (anything else is a bug: traced)."""
    errors: list[type[BaseException]] = [AdapdateError, MemoryError]
    torch = sys.modules.get("torch")
    oom = getattr(torch, "OutOfMemoryError", None) if torch is not None else None
    if isinstance(oom, type):
        errors.append(oom)
    return tuple(errors)


def _is_ours(w: warnings.WarningMessage) -> bool:
    """Show warnings raised by adapdate or Pillow (e.g. a decompression-bomb warning); hide third-party
    deprecation noise from torch / compressai, which the user cannot act on."""
    parts = Path(w.filename).parts
    return "adapdate_codec" in parts or "PIL" in parts


class Reporter:
    """Lines on stderr, and a rich progress bar while a batch runs on a terminal."""

    def __init__(self, total: int, show_progress: bool) -> None:
        self._progress: Any = None
        self._task: Any = None
        if show_progress:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self._task = self._progress.add_task("adapdate", total=total)

    def __enter__(self) -> "Reporter":
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def line(self, text: str) -> None:
        if self._progress is not None:
            self._progress.console.print(text, markup=False, highlight=False, soft_wrap=True)
        else:
            click.echo(text, err=True)

    def advance(self) -> None:
        if self._progress is not None:
            self._progress.advance(self._task)


Work = Callable[[Job, Reporter], Result]


def run_batch(
    jobs: list[Job],
    work: Work,
    stdio_in: str,
    *,
    summary: Callable[[Result], str] | None,
    fatal: tuple[type[BaseException], ...] = (),
) -> list[Result]:
    """Run `work` on each job; a failure is reported and recorded, and the batch goes on, except for
    `fatal` errors (every later file would fail the same way), which end the command."""
    results: list[Result] = []
    prefix = len(jobs) > 1
    with Reporter(len(jobs), show_progress=len(jobs) > 1 and sys.stderr.isatty()) as rep:
        for job in jobs:
            name = _display(job.src, stdio_in)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    result = work(job, rep)
                except fatal:
                    raise
                except _reported_errors() as e:
                    result = Result(input=job.src, output=job.dst, error=_one_line(e))
                finally:  # also when a fatal error ends the batch: say what happened before it
                    for w in caught:
                        if _is_ours(w):
                            rep.line(f"adapdate: warning: {name + ': ' if prefix else ''}{_one_line(w.message)}")
            if result.error is not None:
                # fileio's messages may already start with the path ("x.png: no such file"): say it once.
                said = result.error.startswith((f"{name}:", f"{name} "))
                rep.line(f"adapdate: error: {result.error if said else f'{name}: {result.error}'}")
            elif summary is not None:
                rep.line(summary(result))
            results.append(result)
            rep.advance()
    return results


def finish(results: list[Result], as_json: bool, single: bool) -> None:
    if as_json:
        rows = [asdict(r) for r in results]
        click.echo(json.dumps(rows[0] if single else rows, indent=2))
    if any(r.error is not None for r in results):
        sys.exit(1)


# --- torch set-up ------------------------------------------------------------------------------------


class SetupError(AdapdateError):
    """The run cannot work at all (e.g. --device cuda without CUDA): ends a batch at once."""


class TorchSetup:
    """Imports and configures torch on first use, so that a bad input or output fails fast, without it.

    Also keeps the clock of one-time costs (imports, model loading), which per-file times leave out."""

    def __init__(self, device: str, threads: int | None) -> None:
        self.device, self.threads, self._done = device, threads, False
        self.seconds = 0.0

    @contextlib.contextmanager
    def measure(self) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds += time.perf_counter() - start

    def __call__(self) -> None:
        if self._done:
            return
        import torch

        if self.threads is not None:
            torch.set_num_threads(self.threads)
        if self.device == "cuda" and not torch.cuda.is_available():
            raise SetupError("--device cuda: no CUDA device is available (use --device cpu)")
        from adapdate_codec import inference

        inference.REUSE_FREED_MEMORY = True  # this process only codes images: keep freed memory for reuse
        self._done = True

    def load(self, lookup: Callable[[], "ModelBundle"]) -> "ModelBundle":
        """Set up, find a model, import the codec: all one-time costs. The model comes first, so that a
        missing one is reported before the slow codec imports (compressai)."""
        with self.measure():
            self()
            bundle = lookup()
            import adapdate_codec.codec  # noqa: F401
        return bundle


_common_options = [
    click.option("-o", "--output", metavar="OUT", help="Output file, or folder for several inputs ('-' = stdout)."),
    click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True),
    click.option("--threads", type=click.IntRange(min=1), metavar="N", help="CPU threads for torch."),
    click.option("-f", "--force", is_flag=True, help="Overwrite existing outputs."),
    click.option("--json", "as_json", is_flag=True, help="Print per-file results as JSON on stdout."),
]


def _with_common(f: Callable) -> Callable:
    for option in reversed(_common_options):
        f = option(f)
    return f


# --- encode ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EncodeOptions:
    drop_alpha: bool
    padding: str
    device: str
    force: bool
    target_bpp: float | None


class Encoder:
    """Loads each model bundle once per run, and encodes one picture at a fixed quality or a target bpp."""

    def __init__(
        self, store: Any, model: str | None, quality: int | None, opts: EncodeOptions, setup: TorchSetup
    ) -> None:
        self.store, self.model, self.quality, self.opts, self.setup = store, model, quality, opts, setup
        self._bundles: dict[int | None, ModelBundle] = {}
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

    def encode(self, pic: "Picture", quality: int | None) -> tuple["ModelBundle", bytes]:
        bundle = self.bundle(quality)
        from adapdate_codec.codec import encode_picture

        return bundle, encode_picture(pic, bundle, device=self.opts.device, padding=self.opts.padding)

    def encode_to_target(self, pic: "Picture", name: str, rep: Reporter) -> tuple["ModelBundle", bytes]:
        """The highest installed quality whose bpp is at most the target (else the lowest, with a warning).
        Trying qualities from the highest down gives that answer at the first fit."""
        target = self.opts.target_bpp
        assert target is not None
        height, width = pic.pixels.shape[:2]
        for q in self.qualities:
            bundle, data = self.encode(pic, q)
            bpp = _bpp(len(data), width, height)
            if bpp <= target:
                rep.line(f"{name}: --target-bpp {target:g}: picked quality {q} ({bpp:.3f} bpp)")
                return bundle, data
        warnings.warn(
            f"no installed quality reaches {target:g} bpp; used the lowest, quality {q} ({bpp:.3f} bpp)",
            stacklevel=2,
        )
        return bundle, data


def _check_size(pic: "Picture") -> None:
    from adapdate_codec.container import MAX_DIMENSION

    height, width = pic.pixels.shape[:2]
    if max(width, height) > MAX_DIMENSION:
        raise InputError(f"image is {width}x{height}; a .adpd file holds at most {MAX_DIMENSION} pixels a side")


def _encode_job(job: Job, rep: Reporter, enc: Encoder) -> Result:
    from adapdate_codec.imageio import load_picture

    start, one_time = time.perf_counter(), enc.setup.seconds
    name = _display(job.src, "<stdin>")
    data = read_input(job.src)
    check_writable(job.dst, enc.opts.force)  # before the slow part
    pic = load_picture(data, drop_alpha=enc.opts.drop_alpha)
    _check_size(pic)
    if enc.opts.target_bpp is None:
        bundle, payload = enc.encode(pic, enc.quality)
    else:
        bundle, payload = enc.encode_to_target(pic, name, rep)
    write_output(job.dst, payload, enc.opts.force)
    return _result(job, len(payload), pic, bundle, time.perf_counter() - start - (enc.setup.seconds - one_time))


def _result(job: Job, nbytes: int, pic: Any, bundle: Any, seconds: float) -> Result:
    """bpp is always of the .adpd file: its bytes over the picture's pixels."""
    height, width = pic.pixels.shape[:2]
    return Result(input=job.src, output=job.dst, bytes=nbytes, width=int(width), height=int(height),
                  bpp=_bpp(nbytes, width, height), seconds=round(seconds, 3), model=bundle.name,
                  quality=bundle.quality)


def _encode_summary(r: Result) -> str:
    return (
        f"{_display(r.input, '<stdin>')} -> {_display(r.output, '<stdout>')}: "
        f"{r.bytes:,} bytes, {r.bpp:.3f} bpp, {r.seconds:.1f} s"
    )


@click.command()
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT...")
@_with_common
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
              help="Pick the highest installed quality whose size is at most X bits per pixel.")
def encode(
    inputs: tuple[str, ...],
    output: str | None,
    device: str,
    threads: int | None,
    force: bool,
    as_json: bool,
    quality: int | None,
    model: str | None,
    drop_alpha: bool,
    padding: str,
    target_bpp: float | None,
) -> None:
    """Compress images (PNG, JPEG, WebP, TIFF, BMP, ...) into .adpd files."""
    if quality is not None and target_bpp is not None:
        raise click.UsageError("--quality and --target-bpp cannot be used together")
    jobs = plan_jobs(inputs, output, ENCODED_SUFFIX)
    _check_stdout(jobs, as_json, force)
    from adapdate_codec.store import ModelStore

    opts = EncodeOptions(drop_alpha=drop_alpha, padding=padding, device=device, force=force, target_bpp=target_bpp)
    enc = Encoder(ModelStore(), model, quality, opts, TorchSetup(device, threads))
    results = run_batch(
        jobs,
        lambda job, rep: _encode_job(job, rep, enc),
        "<stdin>",
        summary=None if as_json else _encode_summary,
        fatal=(ModelError, SetupError),  # one model for every file: if it is missing, all would fail
    )
    finish(results, as_json, single=len(inputs) == 1)


# --- decode ------------------------------------------------------------------------------------------


class Resolver:
    """header -> ModelBundle through the store, each version loaded once per run."""

    def __init__(self, store: Any, setup: TorchSetup) -> None:
        self.store, self.setup = store, setup
        self._cache: dict[bytes, ModelBundle] = {}

    def __call__(self, header: "Header") -> "ModelBundle":
        key = bytes(header.fingerprint)
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


def _decode_job(job: Job, rep: Reporter, resolve: Resolver, device: str, force: bool) -> Result:
    from adapdate_codec.container import unpack
    from adapdate_codec.imageio import save_picture

    start, one_time = time.perf_counter(), resolve.setup.seconds
    data = read_input(job.src)
    check_writable(job.dst, force)
    header, _ = unpack(data)  # a damaged file fails here, cheaply, before torch is even imported
    bundle = resolve(header)  # so does a missing model, before the codec's slow imports
    from adapdate_codec.codec import decode_picture

    pic = decode_picture(data, resolve, device=device)
    write_output(job.dst, save_picture(pic, _output_format(job.dst)), force)
    return _result(job, len(data), pic, bundle, time.perf_counter() - start - (resolve.setup.seconds - one_time))


def _decode_summary(r: Result) -> str:
    return (
        f"{_display(r.input, '<stdin>')} -> {_display(r.output, '<stdout>')}: "
        f"{r.width}x{r.height}, {r.bpp:.3f} bpp, {r.seconds:.1f} s"
    )


@click.command()
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT...")
@_with_common
def decode(
    inputs: tuple[str, ...], output: str | None, device: str, threads: int | None, force: bool, as_json: bool
) -> None:
    """Decompress .adpd files into images (PNG by default; the output suffix picks the format)."""
    jobs = plan_jobs(inputs, output, DECODED_SUFFIX)
    for job in jobs:
        _output_format(job.dst)  # an unknown suffix is a usage error before any work
    _check_stdout(jobs, as_json, force)
    from adapdate_codec.store import ModelStore

    resolve = Resolver(ModelStore(), TorchSetup(device, threads))
    results = run_batch(
        jobs,
        lambda job, rep: _decode_job(job, rep, resolve, device, force),
        "<stdin>",
        summary=None if as_json else _decode_summary,
        fatal=(SetupError,),  # files may need different models: a missing one fails only its files
    )
    finish(results, as_json, single=len(inputs) == 1)

