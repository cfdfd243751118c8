"""What coding one file gives: its `Result` (also a `--json` row), and its failure said in one line.

Shared by the command line (`-j N`, `--ray`) and the cluster library (`adapdate_codec.ray`), so that a file
coded anywhere is reported the same way. No torch here.
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

from adapdate_codec.errors import AdapdateError


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


def json_row(r: Result) -> dict:
    """A --json row: every field, but encode's own ones only where they were set."""
    from dataclasses import asdict

    return {k: v for k, v in asdict(r).items() if v is not None or k not in ENCODE_ONLY}


def one_line(e: BaseException) -> str:
    if isinstance(e, MemoryError):
        return "out of memory (try a smaller image)"
    return " ".join(str(e).split()) or type(e).__name__


def reported_errors() -> tuple[type[BaseException], ...]:
    """What a per-file step may raise that is reported in one line (anything else is a bug: traced)."""
    errors: list[type[BaseException]] = [AdapdateError, MemoryError]
    torch = sys.modules.get("torch")
    oom = getattr(torch, "OutOfMemoryError", None) if torch is not None else None
    if isinstance(oom, type):
        errors.append(oom)
    return tuple(errors)


def is_ours(w: warnings.WarningMessage) -> bool:
    """Show warnings raised by adapdate or Pillow (e.g. a decompression-bomb warning); hide third-party
    deprecation noise from torch / compressai, which the user cannot act on."""
    parts = Path(w.filename).parts
    return "adapdate_codec" in parts or "PIL" in parts
