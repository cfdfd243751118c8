"""Everything about output files: atomic writes, overwrite rules, stdin/stdout.

The codec never touches paths; this module does. An output either appears complete, or not at all:
data goes to a temporary file in the destination folder, which is renamed over the target at the end
and removed on any error (KeyboardInterrupt included).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from adapdate_codec.errors import InputError, OutputExistsError, OutputError

STDIO = "-"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_with(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Call write(f) on a temp file beside `path`, fsync, then rename it onto `path`."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as e:
        raise OutputError(f"cannot write {path}: {e.strerror or e}") from e
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; outputs get the usual mode
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError):
            raise OutputError(f"cannot write {path}: {e.strerror or e}") from e
        raise


def atomic_write(path: Path, data: bytes) -> None:
    atomic_write_with(path, lambda f: f.write(data))


def check_writable(path: str | Path, force: bool, source: str | Path | None = None) -> None:
    """Before any work: refuse to overwrite an existing output unless forced, to overwrite `source` (the
    input) at all, and to start when the output's folder cannot be written (probed with a temporary file)."""
    if str(path) == STDIO:
        return
    p = Path(path)
    if p.is_dir():
        raise OutputError(f"{p} is a directory")
    if p.exists():
        if source is not None and str(source) != STDIO and _same_file(p, Path(source)):
            raise OutputError(f"{p} is also the input; refusing to overwrite it (choose another output)")
        if not force:
            raise OutputExistsError(f"{p} already exists (use -f/--force to overwrite)")
    _probe_folder(p)


def check_folder_writable(path: str | Path, force: bool, replaceable: Callable[[Path], bool]) -> None:
    """Before any work, for an output folder: refuse a file in the way, an existing folder unless forced,
    and, even when forced, a non-empty folder that `replaceable` does not recognise (so that a mistyped
    path never empties a folder of photos)."""
    p = Path(path)
    if p.exists() or p.is_symlink():
        if not p.is_dir() or p.is_symlink():
            raise OutputError(f"{p} exists and is not a folder")
        if not force:
            raise OutputExistsError(f"{p} already exists (use -f/--force to replace it)")
        if any(p.iterdir()) and not replaceable(p):
            raise OutputError(f"{p} is not empty and not a folder this command wrote; refusing to replace it")
    _probe_folder(p)


@contextlib.contextmanager
def staged_folder(path: str | Path, force: bool = False) -> Iterator[Path]:
    """A temporary folder beside `path` to fill; on a clean exit it becomes `path`, on any error
    (KeyboardInterrupt included) it is removed and `path` is left as it was.

    A folder cannot be renamed over a non-empty one, so with `force` an existing `path` is first moved
    aside, then removed once the new one is in place: `path` is missing for the instant between the two
    renames, never half-written. Call check_folder_writable first.
    """
    target = Path(path)
    parent = target.parent if str(target.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=parent))
        os.chmod(stage, 0o777 & ~_umask())  # mkdtemp makes 0700 folders; outputs get the usual mode
    except OSError as e:
        raise OutputError(f"cannot write {target}: {e.strerror or e}") from e
    try:
        yield stage
        if not target.exists():
            os.replace(stage, target)
            return
        if not force:
            raise OutputExistsError(f"{target} already exists (use -f/--force to replace it)")
        aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=parent))
        os.replace(target, aside / "previous")
        try:
            os.replace(stage, target)
        except BaseException:
            with contextlib.suppress(OSError):  # put the old folder back; if even that fails, it stays aside
                os.replace(aside / "previous", target)
                aside.rmdir()
            raise
        shutil.rmtree(aside, ignore_errors=True)
    except BaseException as e:
        shutil.rmtree(stage, ignore_errors=True)
        if isinstance(e, OSError):
            raise OutputError(f"cannot write {target}: {e.strerror or e}") from e
        raise


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _probe_folder(path: Path) -> None:
    """The nearest existing folder of `path` must take a new file (atomic_write creates missing ones)."""
    folder = path.parent if str(path.parent) else Path(".")
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        if not folder.is_dir():
            raise NotADirectoryError(f"{folder} is not a folder")
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise OutputError(f"cannot write {path}: {e.strerror or e}") from None


def read_input(path: str | Path) -> bytes:
    if str(path) == STDIO:
        return sys.stdin.buffer.read()
    p = Path(path)
    try:
        return p.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{p}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{p} is a directory") from None
    except OSError as e:
        raise InputError(f"cannot read {p}: {e.strerror or e}") from None


def write_output(path: str | Path, data: bytes, force: bool = False) -> None:
    if str(path) == STDIO:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    check_writable(path, force)
    atomic_write(Path(path), data)
