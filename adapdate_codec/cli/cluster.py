"""`--ray ADDRESS`: a batch coded on a Ray cluster by adapdate_codec.ray. Only checks and printing here.

The lines are -j's: a summary (or one error line) per file as it finishes, its warnings, a progress bar on
a terminal, exit status 1 if any file failed. --json prints one JSON object per line as each file finishes
(JSON Lines, not -j's list: a job of millions of files never holds them all), and a last line on stderr
counts the files written, skipped and failed.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import sys
import time
from adapdate_codec.results import json_row
from typing import IO, Callable, Collection, Iterator

import click

from adapdate_codec.cli.report import Reporter, Verbosity, details, error_line
from adapdate_codec.cluster.storage import is_url
from adapdate_codec.cluster.work import Settings
from adapdate_codec.fileio import STDIO
from adapdate_codec.results import Result


def reject_urls(inputs: tuple[str, ...], output: str | None) -> None:
    """Without --ray, a URL would be taken for a local file name: say what it needs instead."""
    for location in (*inputs, output or ""):
        if is_url(location):
            raise click.UsageError(f"{location}: URLs are read and written by a Ray cluster's workers; add "
                                   "--ray local (or auto, or ray://HOST:PORT)")


def check(inputs: tuple[str, ...], output: str | None, file_suffixes: Collection[str]) -> str:
    """The output folder, or a usage error. `file_suffixes`: what names an output file, not a folder."""
    if output is None:
        raise click.UsageError("--ray needs -o DIR: the folder (or URL) the outputs are written to")
    if STDIO in inputs or output == STDIO:
        raise click.UsageError("--ray: '-' (stdin or stdout) cannot be shared by a cluster's workers; name files")
    if posixpath.splitext(output)[1].lower() in file_suffixes:
        raise click.UsageError(f"--ray: -o {output} names a file; with --ray, -o names the folder outputs go to")
    return output


@contextlib.contextmanager
def _ray_prints_aside(verbosity: Verbosity) -> Iterator[IO[str]]:
    """Ray's driver prints the cluster's own messages (e.g. a worker's death, many lines) on stdout, where
    --json's lines go: they go to stderr with --verbose, else nowhere (our lines say what happened).
    Yields the real stdout."""
    stdout = sys.stdout
    with open(os.devnull, "w") as devnull:
        sys.stdout = sys.stderr if verbosity >= Verbosity.VERBOSE else devnull
        try:
            yield stdout
        finally:
            sys.stdout = stdout


def _plural(n: int) -> str:
    return f"{n} file{'s' if n != 1 else ''}"


def run(settings: Settings, inputs: tuple[str, ...], output: str, *, address: str, workers: int | None,
        recursive: bool, as_json: bool, summary: Callable[[Result], str], verbosity: Verbosity) -> None:
    from adapdate_codec import ray as cluster
    from adapdate_codec.cluster.events import Found, Lost
    from adapdate_codec.cluster.listing import Skipped
    from adapdate_codec.cluster.work import Outcome

    events = cluster.run_dataset(settings, inputs, output, recursive=recursive, address=address, workers=workers)
    start = time.perf_counter()
    written = skipped = failed = 0
    show_progress = sys.stderr.isatty() and verbosity > Verbosity.QUIET
    with _ray_prints_aside(verbosity) as stdout, Reporter(None, show_progress, verbosity) as rep:
        for event in events:
            if isinstance(event, Found):
                rep.grow(event.total)
            elif isinstance(event, Skipped):
                skipped += event.count
            elif isinstance(event, Lost):
                rep.line("adapdate: warning: a Ray worker stopped (out of memory, or its machine lost?)" +
                         (f"; its {_plural(event.files)} are coded again" if event.files else "; another starts"))
            elif isinstance(event, Outcome):
                for text in event.warnings:
                    rep.line(f"adapdate: warning: {event.task.src}: {text}")
                r = event.result
                if event.skipped or r is None:
                    skipped += 1
                elif r.error is not None:
                    failed += 1
                    rep.line(error_line(r.input, r.error))
                else:
                    written += 1
                    if not as_json:
                        rep.info(summary(r) + (details(r) if verbosity >= Verbosity.VERBOSE else ""))
                if as_json and r is not None:
                    click.echo(json.dumps(json_row(r)), file=stdout)
                rep.advance()
        rep.info(f"adapdate: {_plural(written + skipped + failed)} in {time.perf_counter() - start:.1f} s: "
                 f"{written} written, {skipped} skipped, {failed} failed")
    if failed:
        sys.exit(1)
