"""`-j N`: the files of a batch coded by N worker processes, each with its own model, loaded once.

Processes, not threads: one image already keeps the cores busy in the transforms, but the entropy coder
runs on one core per image, so several images at once fill the machine. Workers are spawned (a fresh
interpreter: forking a parent that holds torch's threads can deadlock) and each codes whole files; the
parent keeps the one progress bar, prints each file's lines as it finishes (errors, warnings, summaries:
the same lines as -j 1) and returns the results in the order of the inputs, for --json and the exit status.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Callable

import click

from adapdate_codec.cli.planning import Job
from adapdate_codec.cli.report import Recorder, Verbosity, Work, attempt
from adapdate_codec.errors import AdapdateError
from adapdate_codec.fileio import STDIO
from adapdate_codec.limits import WORKER_MEMORY
from adapdate_codec.procfs import kib_field
from adapdate_codec.results import Result

# -j N asks for N times WORKER_MEMORY; fewer workers start if memory is short.


@dataclass(frozen=True)
class Workers:
    count: int
    make_work: Callable[[], Work]  # picklable; builds a worker's `work` once (the model loads on first use)


class WorkerFatalError(AdapdateError):
    """A fatal error (e.g. a missing model) raised in a worker, ending the batch as it would with -j 1."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


_work: Work | None = None
_stop = None  # an Event shared with the parent: once set, jobs still queued in a worker are not coded


def _start_worker(make_work: Callable[[], Work], stop) -> None:
    global _work, _stop
    _work, _stop = make_work(), stop


def _run_job(job: Job, name: str, prefix: bool, verbosity: Verbosity,
             fatal: tuple[type[BaseException], ...]) -> tuple[Result | None, list[str], tuple[str, int] | None]:
    """(result, lines, fatal error) of one job, in a worker; (None, [], None) once the batch has ended (a
    fatal error, Ctrl-C): the executor hands workers jobs ahead, which cancelling cannot take back."""
    assert _work is not None and _stop is not None
    if _stop.is_set():
        return None, [], None
    rec = Recorder(verbosity)
    try:
        return attempt(job, _work, rec, fatal, name, prefix), rec.lines, None  # type: ignore[arg-type]
    except fatal as e:
        _stop.set()
        return None, rec.lines, (str(e), getattr(e, "exit_code", 1))
    except KeyboardInterrupt:  # Ctrl-C reaches the workers too: this file's write was undone, no more start
        _stop.set()
        raise


def available_memory() -> int | None:
    return kib_field("/proc/meminfo", "MemAvailable")


def worker_count(requested: int, jobs: list[Job], say: Callable[[str], None]) -> int:
    """How many workers to start: no more than files, nor than memory allows (saying so)."""
    n = min(requested, len(jobs))
    if n > 1 and any(STDIO in (j.src, j.dst) for j in jobs):
        raise click.UsageError("-j: '-' (stdin or stdout) cannot be shared by several workers; use -j 1")
    free = available_memory()
    if n > 1 and free is not None and n * WORKER_MEMORY > free:
        fit = max(1, free // WORKER_MEMORY)
        say(f"adapdate: -j {requested}: memory for {fit} worker{'s' if fit > 1 else ''} "
            f"(about {WORKER_MEMORY / 2**30:.1f} GiB each), using {fit}")
        n = fit
    return n


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def threads_per_worker(threads: int | None, workers: int, say: Callable[[str], None] = lambda _: None) -> int | None:
    """--threads applies to each worker; without it, the cores are shared out. More threads than cores in
    all is said: torch's threads spin while they wait for each other, and 2 workers x 2 threads on 2 cores
    took 2.4x as long as 2 x 1."""
    if workers <= 1:
        return threads
    if threads is None:
        return max(1, cores() // workers)
    if threads * workers > cores():
        say(f"adapdate: warning: -j {workers} --threads {threads}: {threads * workers} threads on {cores()} "
            f"cores is slower than sharing them out (leave --threads out)")
    return threads


def run_in_workers(workers: Workers, jobs: list[Job], names: list[str], prefix: bool, verbosity: Verbosity,
                   fatal: tuple[type[BaseException], ...],
                   done: Callable[[int, Result | None, list[str]], None]) -> None:
    """Code `jobs` in worker processes; done(index, result, lines) in the parent as each one finishes (result
    None: the job raised a fatal error, raised here after its lines)."""
    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    pool = ProcessPoolExecutor(workers.count, mp_context=ctx, initializer=_start_worker,
                               initargs=(workers.make_work, stop))
    pending: dict[Future, int] = {}
    try:
        pending = {pool.submit(_run_job, job, name, prefix, verbosity, fatal): i
                   for i, (job, name) in enumerate(zip(jobs, names))}
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in sorted(finished, key=pending.__getitem__):
                index = pending.pop(fut)
                try:
                    result, lines, failure = fut.result()
                except BrokenProcessPool:
                    raise WorkerFatalError("a worker process stopped (out of memory?); the files not reported "
                                           "above were not coded", 1) from None
                done(index, result, lines)  # result None: a fatal error, said after what came before it
                if failure is not None:
                    raise WorkerFatalError(*failure)
    finally:
        if pending:  # ended early (a fatal error, Ctrl-C): what the workers hold is not coded
            stop.set()
        for fut in pending:
            fut.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
