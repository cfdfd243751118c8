"""Coding to a bit-rate budget: the highest installed quality whose file stays within a target bpp.

Shared by `adapdate encode --target-bpp` and `adapdate_codec.encode(target_bpp=...)`. No torch here:
`encode_at` does the coding.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable, Sequence


def bpp(n_bytes: int, width: int, height: int) -> float:
    """Bits per pixel of a file of n_bytes holding a width x height image."""
    return n_bytes * 8 / (width * height)


@dataclass(frozen=True)
class TargetResult:
    quality: int
    bpp: float
    data: bytes
    bundle: Any  # the ModelBundle that coded `data`
    reached: bool  # False: no quality fits; `data` is at the lowest one


def encode_to_target(
    qualities: Sequence[int],
    encode_at: Callable[[int], tuple[Any, bytes]],
    width: int,
    height: int,
    target: float,
) -> TargetResult:
    """Try qualities from the highest down; the first that fits is the answer. When none fits, the lowest
    is used with a warning. `encode_at(q)` returns (bundle, file bytes)."""
    if not qualities:
        raise ValueError("no qualities to choose from")
    for q in sorted(qualities, reverse=True):
        bundle, data = encode_at(q)
        rate = bpp(len(data), width, height)
        if rate <= target:
            return TargetResult(q, rate, data, bundle, reached=True)
    warnings.warn(
        f"no installed quality reaches {target:g} bpp; used the lowest, quality {q} ({rate:.3f} bpp)",
        stacklevel=3,
    )
    return TargetResult(q, rate, data, bundle, reached=False)
