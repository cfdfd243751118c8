"""Running a batch of jobs: per-file results, one-line errors and warnings, a progress bar, --json.

A batch goes on past a bad file: each failure is one line on stderr, the others are written, and the
exit status is 1 at the end if anything failed. What else goes to stderr depends on the verbosity:
--quiet: errors and warnings only; default: also a summary line per file (and a progress bar for a batch
on a terminal); -v/--verbose: also set-up times, per-file details and a total at the end.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from enum import IntEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import click

from adapdate_codec.cli.planning import Job, display
from adapdate_codec.errors import AdapdateError
from adapdate_codec.rate import bpp

if TYPE_CHECKING:
    from adapdate_codec.cli.parallel import Workers


class Verbosity(IntEnum):
    QUIET = 0
    NORMAL = 1
    VERBOSE = 2


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
    fingerprint: str | None = None  # of the exact model version
    error: str | None = None
    effort: int | None = None  # encode: the --effort level (also 0)
    search_seconds: float | None = None  # encode: time of the latent search (effort >= 1)


ENCODE_ONLY = ("effort", "search_seconds")  # left out of --json rows that lack them (decode's)


def coded_result(job: Job, nbytes: int, pic: Any, bundle: Any, seconds: float) -> Result:
    """bpp is always of the .adpd file: its bytes over the picture's pixels."""
    height, width = pic.pixels.shape[:2]
    return Result(input=job.src, output=job.dst, bytes=nbytes, width=int(width), height=int(height),
                  bpp=bpp(nbytes, width, height), seconds=round(seconds, 3), model=bundle.name,
                  quality=bundle.quality, fingerprint=bundle.fingerprint)


def one_line(e: BaseException) -> str:
    if isinstance(e, MemoryError):
        return "out of memory (try a smaller image)"
    return " ".join(str(e).split()) or type(e).__name__


def error_line(name: str, message: str) -> str:
    """fileio's messages may already start with the path ("x.png: no such file"): say it once."""
    said = message.startswith((f"{name}:", f"{name} "))
    return f"adapdate: error: {message if said else f'{name}: {message}'}"


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
    """Lines on stderr, and a rich progress bar while a batch runs on a terminal.

    `line`: always (errors, warnings); `info`: unless --quiet; `detail`: only with --verbose."""

    def __init__(self, total: int, show_progress: bool, verbosity: Verbosity = Verbosity.NORMAL) -> None:
        self.verbosity = verbosity
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

    def info(self, text: str) -> None:
        if self.verbosity >= Verbosity.NORMAL:
            self.line(text)

    def detail(self, text: str) -> None:
        if self.verbosity >= Verbosity.VERBOSE:
            self.line(text)

    def advance(self) -> None:
        if self._progress is not None:
            self._progress.advance(self._task)


Work = Callable[[Job, Reporter], Result]


def _details(r: Result) -> str:
    """What --verbose adds to a file's summary line."""
    version = f" {r.fingerprint[:8]}…" if r.fingerprint else ""
    search = f", effort {r.effort}" if r.effort else ""
    if r.search_seconds is not None:
        search += f" (search {r.search_seconds:.1f} s)"
    return f" ({r.width}x{r.height}, {r.model} q{r.quality}{version}{search})"


def attempt(job: Job, work: Work, rep: Reporter, fatal: tuple[type[BaseException], ...], name: str,
            prefix: bool) -> Result:
    """One job: its result, or a result holding its one-line error; its warnings said on `rep` (also when
    a fatal error, which is raised, ends the batch: say what happened before it)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            return work(job, rep)
        except fatal:
            raise
        except _reported_errors() as e:
            return Result(input=job.src, output=job.dst, error=one_line(e))
        finally:
            for w in caught:
                if _is_ours(w):
                    rep.line(f"adapdate: warning: {name + ': ' if prefix else ''}{one_line(w.message)}")


def run_batch(
    jobs: list[Job],
    work: Work,
    stdio_in: str,
    *,
    summary: Callable[[Result], str] | None,
    fatal: tuple[type[BaseException], ...] = (),
    verbosity: Verbosity = Verbosity.NORMAL,
    workers: "Workers | None" = None,
) -> list[Result]:
    """Run `work` on each job; a failure is reported and recorded, and the batch goes on, except for
    `fatal` errors (every later file would fail the same way), which end the command. With workers
    (-j N), jobs run in worker processes, each reported as it finishes; results keep the jobs' order."""
    results: list[Result | None] = [None] * len(jobs)
    names = [display(job.src, stdio_in) for job in jobs]
    prefix = len(jobs) > 1
    start = time.perf_counter()
    progress = len(jobs) > 1 and sys.stderr.isatty() and verbosity > Verbosity.QUIET
    with Reporter(len(jobs), show_progress=progress, verbosity=verbosity) as rep:

        def done(index: int, result: Result | None, lines: list[str] = ()) -> None:
            for text in lines:
                rep.line(text)
            if result is None:
                return
            if result.error is not None:
                rep.line(error_line(names[index], result.error))
            elif summary is not None:
                rep.info(summary(result) + (_details(result) if verbosity >= Verbosity.VERBOSE else ""))
            results[index] = result
            rep.advance()

        if workers is None or workers.count <= 1:
            for i, job in enumerate(jobs):
                done(i, attempt(job, work, rep, fatal, names[i], prefix))  # type: ignore[arg-type]
        else:
            from adapdate_codec.cli.parallel import run_in_workers

            run_in_workers(workers, jobs, names, prefix, verbosity, fatal, done)
        failed = sum(r is not None and r.error is not None for r in results)
        rep.detail(f"adapdate: {len(results)} file{'s' if len(results) != 1 else ''} in "
                   f"{time.perf_counter() - start:.1f} s: {len(results) - failed} written, {failed} failed")
    return [r for r in results if r is not None]


def finish(results: list[Result], as_json: bool, single: bool) -> None:
    if as_json:
        rows = [{k: v for k, v in asdict(r).items() if v is not None or k not in ENCODE_ONLY} for r in results]
        click.echo(json.dumps(rows[0] if single else rows, indent=2))
    if any(r.error is not None for r in results):
        sys.exit(1)
