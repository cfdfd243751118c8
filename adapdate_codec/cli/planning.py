"""Which input goes to which output: the jobs of `adapdate encode` / `adapdate decode`. No I/O besides
listing folders given as inputs and asking whether `-o` names an existing folder."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Collection

import click

from adapdate_codec.errors import InputError, OutputError
from adapdate_codec.fileio import (  # noqa: F401  (the commands take the suffixes from here)
    DECODED_SUFFIX,
    ENCODED_SUFFIX,
    ENCODED_SUFFIXES,
    IMAGE_SUFFIXES,
    STDIO,
    is_hidden_name,
)


@dataclass(frozen=True)
class Job:
    src: str  # a path or "-" (stdin)
    dst: str  # a path or "-" (stdout)


@dataclass(frozen=True)
class Source:
    path: str  # a path or "-" (stdin)
    folder: str | None = None  # the folder input it was found in: outputs keep its subfolders

    @property
    def subfolder(self) -> Path:
        return Path(self.path).parent.relative_to(self.folder) if self.folder is not None else Path()


def _hidden(path: Path, top: Path) -> bool:
    return any(is_hidden_name(part) for part in path.relative_to(top).parts)


def find_inputs(inputs: tuple[str, ...], accept: Collection[str], recursive: bool = False) -> list[Source]:
    """Inputs as files: a folder stands for its files with an accepted suffix (and, with `recursive`, those
    of its subfolders), in sorted order."""
    sources: list[Source] = []
    for s in inputs:
        top = Path(s)
        if s == STDIO or not top.is_dir():
            sources.append(Source(s))
            continue
        candidates = top.rglob("*") if recursive else top.iterdir()
        found = sorted(p for p in candidates
                       if p.suffix.lower() in accept and not _hidden(p, top) and p.is_file())
        if not found:
            kinds = "/".join(sorted(accept)) if len(accept) <= 3 else "image"
            where = "in this folder or its subfolders" if recursive else "in this folder (-r: also in subfolders)"
            raise InputError(f"{s}: no {kinds} files {where}")
        sources.extend(Source(str(p), s) for p in found)
    return sources


def _is_folder_target(output: str, sources: list[Source]) -> bool:
    return (len(sources) > 1 or any(src.folder is not None for src in sources)
            or output.endswith(("/", "\\")) or Path(output).is_dir())


def plan_jobs(
    inputs: tuple[str, ...], output: str | None, suffix: str, *, accept: Collection[str] = (), recursive: bool = False
) -> list[Job]:
    """Map inputs to outputs. One input + -o FILE: that file; several inputs, a folder input or -o DIR:
    DIR/<stem><suffix> (DIR/<subfolder>/<stem><suffix> for files found in a folder's subfolders); no -o:
    <stem><suffix> beside each input (stdout for stdin)."""
    if inputs.count(STDIO) > 1:
        raise click.UsageError("'-' (stdin) can be given only once")
    sources = find_inputs(inputs, accept, recursive)
    if output is None:
        jobs = [Job(s.path, STDIO if s.path == STDIO else str(Path(s.path).with_suffix(suffix))) for s in sources]
    elif output == STDIO:
        if len(sources) > 1:
            raise click.UsageError("several inputs cannot all be written to stdout; use -o DIR")
        jobs = [Job(sources[0].path, output)]
    elif not _is_folder_target(output, sources):
        jobs = [Job(sources[0].path, output)]
    else:
        if STDIO in inputs:
            raise click.UsageError("'-' (stdin) needs a file name with -o, not a folder")
        folder = Path(output)
        jobs = [Job(s.path, str(folder / s.subfolder / (Path(s.path).stem + suffix))) for s in sources]
    _check_distinct(jobs)
    return jobs


def _check_distinct(jobs: list[Job]) -> None:
    """Two inputs must not share an output (a.png and a.jpg -> a.adpd): the second would replace the first."""
    seen: dict[str, str] = {}
    for job in jobs:
        if job.dst == STDIO:
            continue
        if job.dst in seen:
            raise click.UsageError(f"{seen[job.dst]} and {job.src} would both be written to {job.dst}")
        seen[job.dst] = job.src


def without_existing(jobs: list[Job]) -> tuple[list[Job], int]:
    """--skip-existing: the jobs whose output does not exist yet, and how many were left out."""
    kept = [j for j in jobs if j.dst == STDIO or not Path(j.dst).exists()]
    return kept, len(jobs) - len(kept)


def is_single(inputs: tuple[str, ...], paths: list[str]) -> bool:
    """One file named on the command line: --json prints one object, not a list (a folder gives a list)."""
    return len(inputs) == 1 and paths == [inputs[0]]


def check_stdout(jobs: list[Job], as_json: bool, force: bool) -> None:
    if any(j.dst == STDIO for j in jobs):
        if as_json:
            raise click.UsageError("--json prints to stdout; it cannot be used when the output is '-'")
        if sys.stdout.isatty() and not force:
            raise OutputError("refusing to write binary data to a terminal (use -o FILE, a pipe, or -f)")


def display(path: str, stdio_name: str) -> str:
    return stdio_name if path == STDIO else path
