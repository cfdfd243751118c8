"""How large an image adapdate agrees to decode or encode: a limit on pixels, checked before any work.

A 100-byte `.adpd` file (or a 200-byte PNG) can declare 65536x65536 pixels; decoding it would take hours
and many gigabytes before anything failed. Like Pillow's ``Image.MAX_IMAGE_PIXELS``, whose value is the
default here, the limit is checked on the declared size (the header), before anything is allocated.
It is changed with ``--max-pixels N`` or ``$ADAPDATE_MAX_PIXELS`` (0: no limit). Imports nothing heavy.
"""

from __future__ import annotations

import os

from adapdate_codec.errors import ImageTooLargeError, InputError

DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's MAX_IMAGE_PIXELS (about 0.25 GB of 24-bit pixels)
ENV = "ADAPDATE_MAX_PIXELS"

# What one worker process (-j N, or on a Ray cluster) may need: torch, compressai and a model (~0.8 GB
# resident), and the coding of one large photo (24 MP: ~0.4 GB more).
WORKER_MEMORY = 3 << 29  # 1.5 GiB


def parse_max_pixels(text: str, where: str = ENV) -> int | None:
    """A limit as written by a user: a whole number of pixels, 0 for none (None)."""
    try:
        value = int(text.strip().replace("_", ""))
    except ValueError:
        value = -1
    if value < 0:
        raise InputError(f"{where} must be a whole number of pixels (0 for no limit), not {text!r}")
    return value or None


def max_pixels(value: int | None = None) -> int | None:
    """The limit in force: `value` (e.g. from --max-pixels; 0 = none) if given, else $ADAPDATE_MAX_PIXELS,
    else the default. None means no limit."""
    if value is not None:
        return value or None
    env = os.environ.get(ENV)
    if env is not None and env.strip():
        return parse_max_pixels(env)
    return DEFAULT_MAX_PIXELS


def check_pixels(width: int, height: int, limit: int | None) -> None:
    """Refuse an image of width x height pixels above `limit` (None: no limit)."""
    if limit is not None and width * height > limit:
        raise ImageTooLargeError(
            f"image too large: {width}x{height} is {width * height:,} pixels, above the limit of {limit:,} "
            f"(raise it with --max-pixels or ${ENV} if you trust the file)")
