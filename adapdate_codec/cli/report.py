"""How the coding commands report files: lines on stderr, a progress bar, and one file's attempt.

What else goes to stderr depends on the verbosity: --quiet: errors and warnings only; default: also a
summary line per file (and a progress bar for a batch on a terminal); -v/--verbose: also set-up times,
per-file details and a total at the end. Shared by the batch in one process (batch.py), its worker
processes (parallel.py) and a Ray cluster's driver (cluster.py); none of them imports another.
"""

from __future__ import annotations

import warnings
from enum import IntEnum
from typing import Any, Callable

import click

from adapdate_codec.cli.planning import Job
from adapdate_codec.rate import bpp
from adapdate_codec.results import Result, is_ours, one_line, reported_errors


class Verbosity(IntEnum):
    QUIET = 0
    NORMAL = 1
    VERBOSE = 2


def coded_result(job: Job, nbytes: int, pic: Any, bundle: Any, seconds: float) -> Result:
    """bpp is always of the .adpd file: its bytes over the picture's pixels."""
    height, width = pic.pixels.shape[:2]
    return Result(input=job.src, output=job.dst, bytes=nbytes, width=int(width), height=int(height),
                  bpp=bpp(nbytes, width, height), seconds=round(seconds, 3), model=bundle.name,
                  quality=bundle.quality, fingerprint=bundle.fingerprint)


def error_line(name: str, message: str) -> str:
    """fileio's messages may already start with the path ("x.png: no such file"): say it once."""
    said = message.startswith((f"{name}:", f"{name} "))
    return f"adapdate: error: {message if said else f'{name}: {message}'}"


def details(r: Result) -> str:
    """What --verbose adds to a file's summary line."""
    version = f" {r.fingerprint[:8]}…" if r.fingerprint else ""
    search = f", effort {r.effort}" if r.effort else ""
    if r.search_seconds is not None:
        search += f" (search {r.search_seconds:.1f} s)"
    return f" ({r.width}x{r.height}, {r.model} q{r.quality}{version}{search})"


class Reporter:
    """Lines on stderr, and a rich progress bar while a batch runs on a terminal.

    `line`: always (errors, warnings); `info`: unless --quiet; `detail`: only with --verbose.
    total None: not known yet (a cluster's workers are still listing); `grow` raises it as files are found."""

    def __init__(self, total: int | None, show_progress: bool, verbosity: Verbosity = Verbosity.NORMAL) -> None:
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

    def grow(self, total: int) -> None:
        if self._progress is not None:
            self._progress.update(self._task, total=total)


class Recorder:
    """A worker's Reporter: keeps the lines, for the parent's Reporter to print when the file is done."""

    def __init__(self, verbosity: Verbosity) -> None:
        self.verbosity, self.lines = verbosity, []

    def line(self, text: str) -> None:
        self.lines.append(text)

    def info(self, text: str) -> None:
        if self.verbosity >= Verbosity.NORMAL:
            self.lines.append(text)

    def detail(self, text: str) -> None:
        if self.verbosity >= Verbosity.VERBOSE:
            self.lines.append(text)

    def advance(self) -> None:
        pass


Work = Callable[[Job, Reporter], Result]


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
        except reported_errors() as e:
            return Result(input=job.src, output=job.dst, error=one_line(e))
        finally:
            for w in caught:
                if is_ours(w):
                    rep.line(f"adapdate: warning: {name + ': ' if prefix else ''}{one_line(w.message)}")
