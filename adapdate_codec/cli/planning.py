"""Which input goes to which output: the jobs of `adapdate encode` / `adapdate decode` (pure, no I/O
besides asking whether `-o` names an existing folder)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import click

from adapdate_codec.errors import OutputError
from adapdate_codec.fileio import STDIO

ENCODED_SUFFIX = ".adpd"
DECODED_SUFFIX = ".png"


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


def check_stdout(jobs: list[Job], as_json: bool, force: bool) -> None:
    if any(j.dst == STDIO for j in jobs):
        if as_json:
            raise click.UsageError("--json prints to stdout; it cannot be used when the output is '-'")
        if sys.stdout.isatty() and not force:
            raise OutputError("refusing to write binary data to a terminal (use -o FILE, a pipe, or -f)")


def display(path: str, stdio_name: str) -> str:
    return stdio_name if path == STDIO else path
