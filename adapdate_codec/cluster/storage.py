"""Files on any fsspec filesystem: local paths, file://, s3://, gs://, ... No Ray here.

Credentials and endpoints come from each filesystem's own environment and configuration (for S3: the
AWS_* variables, ~/.aws, an instance role; for fsspec itself: FSSPEC_* variables), never from adapdate's
flags. Outputs appear whole or not at all: on a local disk they are written to a temp file and renamed
(fileio.atomic_write); in object storage each is one PUT of the whole object (S3, GCS: an object is only
visible once its upload completes), so no temp keys are left behind by a worker that dies.
"""

from __future__ import annotations

import posixpath
from pathlib import Path
from typing import Any

from adapdate_codec.errors import InputError, OutputError, OutputExistsError
from adapdate_codec.results import one_line


def is_url(location: str) -> bool:
    return "://" in location


def join(root: str, *parts: str) -> str:
    """root/part/...: URLs and local paths alike ('/' separators; empty parts dropped)."""
    parts = tuple(p for p in parts if p)
    if not parts:
        return root
    if is_url(root):
        return root.rstrip("/") + "/" + "/".join(parts)
    return str(Path(root, *parts))


def stem(name: str) -> str:
    return posixpath.splitext(posixpath.basename(name))[0]


def filesystem(location: str, error: type[Exception] = InputError) -> tuple[Any, str]:
    """(fsspec filesystem, its path) of a local path or URL; a protocol whose package is missing, or that
    fsspec does not know, is one line (fsspec says which package to install)."""
    import fsspec

    try:
        return fsspec.core.url_to_fs(location)
    except ImportError as e:
        raise error(f"{location}: {one_line(e)} (pip install it on every machine of the cluster)") from None
    except (ValueError, TypeError) as e:
        raise error(f"{location}: {one_line(e)}") from None


def is_local(fs: Any) -> bool:
    from fsspec.implementations.local import LocalFileSystem

    return isinstance(fs, LocalFileSystem)


def read(location: str) -> bytes:
    fs, path = filesystem(location)
    try:
        return fs.cat_file(path)
    except FileNotFoundError:
        raise InputError(f"{location}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{location} is a directory") from None
    except Exception as e:  # any storage's errors (botocore's are not OSErrors): one line, the job goes on
        raise InputError(f"cannot read {location}: {one_line(e)}") from None


def exists(location: str) -> bool:
    fs, path = filesystem(location, OutputError)
    try:
        return fs.exists(path)
    except Exception as e:
        raise OutputError(f"cannot check {location}: {one_line(e)}") from None


def check_writable(location: str, force: bool, source: str) -> None:
    """Before the slow part: never the input, and never an existing output without force."""
    if location == source:
        raise OutputError(f"{location} is also the input; refusing to overwrite it (choose another output)")
    if not force and exists(location):
        raise OutputExistsError(f"{location} already exists (use -f/--force to overwrite, or --skip-existing)")


def write(location: str, data: bytes) -> None:
    """The whole object at once (see the module's docstring)."""
    fs, path = filesystem(location, OutputError)
    if is_local(fs):
        from adapdate_codec.fileio import atomic_write

        atomic_write(Path(path), data)  # temp file + rename; OutputError on failure
        return
    try:
        fs.pipe_file(path, data)
    except Exception as e:
        raise OutputError(f"cannot write {location}: {one_line(e)}") from None
