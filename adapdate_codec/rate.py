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


TARGET_TOLERANCE = 0.03  # --target-bpp with --effort: the file lands within 3 % of the target
TARGET_SEARCHES = 5  # searches at most (each one a full search at the effort level)
LAMBDA_REACH = 4.0  # beyond the end qualities, λ moves at most this factor past their own


def _interpolate(x0: float, y0: float, x1: float, y1: float, y: float) -> float:
    """x where the line through (x0, y0), (x1, y1) reaches y (all in log space by the caller)."""
    if y1 == y0:
        return (x0 + x1) / 2
    return x0 + (y - y0) * (x1 - x0) / (y1 - y0)


def search_to_target(
    plain_rates: dict[int, float],
    lambdas: dict[int, float],
    search_at: Callable[[int, float], tuple[Any, bytes]],
    width: int,
    height: int,
    target: float,
    tolerance: float = TARGET_TOLERANCE,
) -> TargetResult:
    """--target-bpp with an effort level: one model, a λ between its neighbours'.

    plain_rates: bpp of each quality's plain (effort 0) file; lambdas: each quality's own λ. The model used
    is the lowest quality whose plain file is above the target (its decoder has the detail to spend the
    bits on; the search then lowers its rate with a smaller λ), or the highest one when every quality is
    below. λ starts where the neighbours' (λ, bpp) line in log-log space crosses the target and is refined
    by the secant method on the searched files' real sizes."""
    import math

    qs = sorted(plain_rates)
    above = [q for q in qs if plain_rates[q] > target]
    q = above[0] if above else qs[-1]
    below = [p for p in qs if p < q]
    log = math.log
    if below:  # the line between the neighbours
        p = below[-1]
        guess = _interpolate(log(plain_rates[p]), log(lambdas[p]), log(plain_rates[q]), log(lambdas[q]), log(target))
        lo, hi = log(lambdas[p]), log(lambdas[q])
    else:  # below the lowest quality (or only one): bpp ~ λ^0.5 around it, as in the shipped curves
        guess = log(lambdas[q]) + 2 * (log(target) - log(plain_rates[q]))
        lo, hi = log(lambdas[q] / LAMBDA_REACH), log(lambdas[q])
    if not above:
        lo, hi = log(lambdas[q]), log(lambdas[q] * LAMBDA_REACH)
        guess = log(lambdas[q]) + 2 * (log(target) - log(plain_rates[q]))
    tried: list[tuple[float, float, Any, bytes]] = []  # (log λ, bpp, bundle, data)
    x = min(max(guess, lo), hi)
    for _ in range(TARGET_SEARCHES):
        bundle, data = search_at(q, math.exp(x))
        rate = bpp(len(data), width, height)
        tried.append((x, rate, bundle, data))
        if abs(rate - target) <= tolerance * target:
            break
        if len(tried) == 1:
            step = 2 * (log(target) - log(rate))  # bpp ~ λ^0.5
            nx = x + step
        else:
            (x0, r0, *_), (x1, r1, *_) = tried[-2], tried[-1]
            nx = _interpolate(log(r0), x0, log(r1), x1, log(target))
        nx = min(max(nx, lo), hi)
        if any(abs(nx - t[0]) < 1e-6 for t in tried):
            break  # pinned at a bound: no λ in reach gets closer
        x = nx
    within = [t for t in tried if abs(t[1] - target) <= tolerance * target]
    under = [t for t in tried if t[1] <= target]
    if within:
        best = min(within, key=lambda t: abs(t[1] - target))
    elif under:
        best = max(under, key=lambda t: t[1])
    else:
        best = min(tried, key=lambda t: t[1])
    reached = best[1] <= target * (1 + tolerance)
    if not reached:
        warnings.warn(f"no λ within reach of quality {q} gets to {target:g} bpp; used {best[1]:.3f} bpp",
                      stacklevel=3)
    return TargetResult(q, best[1], best[3], best[2], reached=reached)


def effort_to_target(
    qualities: Sequence[int],
    plain_at: Callable[[int], tuple[Any, bytes]],
    search_at: Callable[[int, float], tuple[Any, bytes]],
    width: int,
    height: int,
    target: float,
) -> TargetResult:
    """--target-bpp at effort >= 1: each quality's plain file places the target between two qualities,
    then search_to_target finds the λ. plain_at(q) -> (bundle, bytes) at effort 0; search_at(q, λ) at the
    effort level, searching for λ."""
    if not qualities:
        raise ValueError("no qualities to choose from")
    plain = {q: plain_at(q) for q in qualities}
    rates = {q: bpp(len(d), width, height) for q, (_, d) in plain.items()}
    lambdas = {q: float(b.lmbda) for q, (b, _) in plain.items()}
    return search_to_target(rates, lambdas, search_at, width, height, target)
