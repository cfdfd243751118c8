"""Which inputs a cluster job codes, and into which outputs: listed folder by folder, as a stream.

Runs on a worker (see runner.py), which may be the only machine that can reach the storage: the driver
receives tasks a batch at a time, never a list of every file. One folder's names are held at a time (the
largest folder bounds the memory). Layout is -j's with `-o DIR`: SRC's files go to DIR/<stem><suffix>, and
those of its subfolders (-r) to DIR/<subfolder>/<stem><suffix>. No Ray here.
"""

from __future__ import annotations

import itertools
import posixpath
from dataclasses import dataclass
from typing import Any, Collection, Iterator, Union

from adapdate_codec.cluster import storage
from adapdate_codec.errors import AdapdateError
from adapdate_codec.fileio import is_hidden_name
from adapdate_codec.results import one_line


@dataclass(frozen=True)
class Task:
    src: str  # a path or URL, spelled from the SRC the user gave
    dst: str


@dataclass(frozen=True)
class Skipped:
    count: int  # inputs whose output exists already (--skip-existing)


@dataclass(frozen=True)
class Problem:
    source: str
    output: str  # where it would have gone (the output folder for a whole source)
    message: str  # one line; the job goes on without this input


Listed = Union[Task, Skipped, Problem]


def _output_names(location: str) -> frozenset[str]:
    """Names in an output folder (one listing per folder instead of one request per file)."""
    fs, path = storage.filesystem(location)
    try:
        return frozenset(posixpath.basename(p.rstrip("/")) for p in fs.ls(path, detail=False))
    except (FileNotFoundError, NotADirectoryError):
        return frozenset()


def _accepted(name: str, accept: Collection[str]) -> bool:
    return bool(name) and not is_hidden_name(name) and posixpath.splitext(name)[1].lower() in accept


def _folder(src: str, fs: Any, top: str, dst: str, suffix: str, accept: Collection[str], recursive: bool,
            skip_existing: bool) -> Iterator[Listed]:
    found = False
    for dirpath, dirs, files in fs.walk(top, maxdepth=None if recursive else 1, on_error="raise", detail=False):
        dirs[:] = sorted(d for d in dirs if not is_hidden_name(d))  # pruned in place: walk skips the others
        names = sorted(f for f in files if _accepted(f, accept))
        if not names:
            continue
        found = True
        rel = dirpath[len(top):].strip("/") if dirpath.startswith(top) else ""
        out_dir = storage.join(dst, rel)
        existing = _output_names(out_dir) if skip_existing else frozenset()
        seen: dict[str, str] = {}
        skipped = 0
        for name in names:
            source, out_name = storage.join(src, rel, name), storage.stem(name) + suffix
            if out_name in seen:  # a.png and a.jpg: the second would replace the first
                out = storage.join(out_dir, out_name)
                yield Problem(source, out, f"{seen[out_name]} and {source} would both be written to {out}")
                continue
            seen[out_name] = source
            if out_name in existing:
                skipped += 1
            else:
                yield Task(source, storage.join(out_dir, out_name))
        if skipped:
            yield Skipped(skipped)
        fs.invalidate_cache(dirpath)  # object stores cache listings: keep one folder's at a time
    if not found:
        kinds = "/".join(sorted(accept)) if len(accept) <= 3 else "image"
        where = "in this folder or its subfolders" if recursive else "in this folder (-r: also in subfolders)"
        yield Problem(src, dst, f"no {kinds} files {where}")


def list_tasks(sources: tuple[str, ...], dst: str, suffix: str, accept: Collection[str], recursive: bool = False,
               skip_existing: bool = False) -> Iterator[Listed]:
    """The tasks of `sources` (files or folders, paths or URLs) into the folder `dst`, in order; problems
    (a folder that cannot be listed or holds nothing to code) as items, so that the job goes on."""
    for src in sources:
        try:
            fs, top = storage.filesystem(src)
            if fs.isdir(top):
                yield from _folder(src, fs, top, dst, suffix, accept, recursive, skip_existing)
                continue
            task = Task(src, storage.join(dst, storage.stem(src) + suffix))  # a file, or missing: the worker says
            yield Skipped(1) if skip_existing and storage.exists(task.dst) else task
        except Exception as e:  # a storage's own errors (permissions, network): this source only
            yield Problem(src, dst, str(e) if isinstance(e, AdapdateError) else f"cannot list: {one_line(e)}")


class Lister:
    """The listing as a Ray actor holds it: the driver asks for the next batch when it needs work."""

    def __init__(self, sources: tuple[str, ...], dst: str, suffix: str, accept: Collection[str], recursive: bool,
                 skip_existing: bool) -> None:
        self._items = list_tasks(sources, dst, suffix, accept, recursive, skip_existing)

    def next(self, n: int) -> list[Listed]:
        """Up to n items; [] once everything is listed."""
        return list(itertools.islice(self._items, n))
