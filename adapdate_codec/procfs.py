"""Linux /proc figures (memory), None where there is no /proc."""

from __future__ import annotations


def kib_field(path: str, key: str) -> int | None:
    """The 'Key:  N kB' line of a /proc file, in bytes (None without /proc or the line)."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None
