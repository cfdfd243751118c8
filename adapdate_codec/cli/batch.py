"""Running a batch of jobs in this process, or in -j N worker processes: per-file results, the exit status,
--json.

A batch goes on past a bad file: each failure is one line on stderr, the others are written, and the
exit status is 1 at the end if anything failed. The lines themselves are report.py's.
"""

from __future__ import annotations

import json
import sys
import time

from typing import Callable

import click

from adapdate_codec.cli.parallel import Workers, run_in_workers
from adapdate_codec.cli.planning import Job, display, without_existing
from adapdate_codec.cli.report import Reporter, Verbosity, Work, attempt, details, error_line
from adapdate_codec.results import Result, json_row


def run_batch(
    jobs: list[Job],
    work: Work,
    stdio_in: str,
    *,
    summary: Callable[[Result], str] | None,
    fatal: tuple[type[BaseException], ...] = (),
    verbosity: Verbosity = Verbosity.NORMAL,
    workers: Workers | None = None,
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
                rep.info(summary(result) + (details(result) if verbosity >= Verbosity.VERBOSE else ""))
            results[index] = result
            rep.advance()

        if workers is None or workers.count <= 1:
            for i, job in enumerate(jobs):
                done(i, attempt(job, work, rep, fatal, names[i], prefix))  # type: ignore[arg-type]
        else:
            run_in_workers(workers, jobs, names, prefix, verbosity, fatal, done)
        failed = sum(r is not None and r.error is not None for r in results)
        rep.detail(f"adapdate: {len(results)} file{'s' if len(results) != 1 else ''} in "
                   f"{time.perf_counter() - start:.1f} s: {len(results) - failed} written, {failed} failed")
    return [r for r in results if r is not None]


def skip_existing(jobs: list[Job], verbosity: Verbosity) -> list[Job]:
    """--skip-existing: leave out the jobs whose output exists, saying how many (unless --quiet)."""
    kept, skipped = without_existing(jobs)
    if skipped and verbosity > Verbosity.QUIET:
        click.echo(f"adapdate: {skipped} file{'s' if skipped != 1 else ''} skipped: "
                   f"{'their outputs exist' if skipped != 1 else 'its output exists'}", err=True)
    return kept


def finish(results: list[Result], as_json: bool, single: bool) -> None:
    if as_json:
        rows = [json_row(r) for r in results]
        click.echo(json.dumps(rows[0] if single and rows else rows, indent=2))
    if any(r.error is not None for r in results):
        sys.exit(1)
