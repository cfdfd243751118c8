"""Bjøntegaard deltas with PCHIP interpolation, as CompressAI and the JPEG AI CTTC compute them.

BD-rate: log-rate is interpolated as a function of PSNR with a monotone piecewise-cubic Hermite
interpolant (scipy's PchipInterpolator) on each curve, both are integrated over the PSNR interval the two
curves share, and the mean difference of log-rate is turned back into a rate ratio:
``exp(mean(ln R_test - ln R_anchor)) - 1``. A negative BD-rate means the test codec needs fewer bits.

BD-PSNR: the same with the axes swapped (PSNR as a function of log-rate, over the shared log-rate
interval); positive means the test codec is better.

Unlike the classic cubic-polynomial fit, PCHIP passes through every point and never overshoots, so a
curve whose rates are all k times another's gives exactly k - 1.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from adapdate_codec.errors import InputError


class CurveError(InputError):
    """Two rate–distortion curves on which a Bjøntegaard delta is not defined."""


@dataclass(frozen=True)
class RDCurve:
    """A rate–distortion curve: bits per pixel and PSNR (dB), one entry per operating point."""

    name: str
    bpp: tuple[float, ...]
    psnr: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.bpp) != len(self.psnr):
            raise CurveError(f"{self.name}: {len(self.bpp)} rates but {len(self.psnr)} PSNR values")


def _usable_points(curve: RDCurve) -> tuple[np.ndarray, np.ndarray]:
    """Finite points with a positive rate, as (log-rate, psnr) sorted by PSNR, duplicates merged.

    Lossless points (PSNR +inf) and failed ones (NaN) cannot sit on a log/PSNR axis; points sharing a
    PSNR value would make the interpolant ill-defined, so their log-rates are averaged.
    """
    rate = np.asarray(curve.bpp, dtype=np.float64)
    dist = np.asarray(curve.psnr, dtype=np.float64)
    keep = np.isfinite(rate) & np.isfinite(dist) & (rate > 0)
    log_rate, dist = np.log(rate[keep]), dist[keep]
    uniq, inverse = np.unique(dist, return_inverse=True)
    merged = np.array([log_rate[inverse == i].mean() for i in range(len(uniq))])
    return merged, uniq


def _check(curve: RDCurve, x: np.ndarray) -> None:
    if len(x) < 2:
        raise CurveError(f"{curve.name}: needs at least 2 distinct finite rate–distortion points, has {len(x)}")


def _mean_gap(x_a: np.ndarray, y_a: np.ndarray, x_t: np.ndarray, y_t: np.ndarray, what: str,
              names: tuple[str, str]) -> float:
    """Mean of (y_t - y_a) over the shared x interval, each y a PCHIP interpolant of its own points."""
    from scipy.interpolate import PchipInterpolator

    lo, hi = max(x_a.min(), x_t.min()), min(x_a.max(), x_t.max())
    if not hi > lo:
        raise CurveError(
            f"{names[1]} and {names[0]} do not overlap in {what} "
            f"([{x_t.min():.3f}, {x_t.max():.3f}] vs [{x_a.min():.3f}, {x_a.max():.3f}])"
        )
    order_a, order_t = np.argsort(x_a), np.argsort(x_t)
    f_a = PchipInterpolator(x_a[order_a], y_a[order_a])
    f_t = PchipInterpolator(x_t[order_t], y_t[order_t])
    return float((f_t.integrate(lo, hi) - f_a.integrate(lo, hi)) / (hi - lo))


def bd_rate(anchor: RDCurve, test: RDCurve) -> float:
    """BD-rate of `test` against `anchor` as a fraction (0.25 means 25 % more bits for the same PSNR)."""
    lr_a, d_a = _usable_points(anchor)
    lr_t, d_t = _usable_points(test)
    _check(anchor, d_a)
    _check(test, d_t)
    gap = _mean_gap(d_a, lr_a, d_t, lr_t, "PSNR", (anchor.name, test.name))
    return math.expm1(gap)


def bd_psnr(anchor: RDCurve, test: RDCurve) -> float:
    """BD-PSNR of `test` against `anchor` in dB (positive: `test` is better at the same rate)."""
    lr_a, d_a = _usable_points(anchor)
    lr_t, d_t = _usable_points(test)
    _check(anchor, d_a)
    _check(test, d_t)
    # PSNR as a function of log-rate needs distinct rates, which distinct PSNRs on a sane curve imply.
    if len(np.unique(lr_a)) != len(lr_a) or len(np.unique(lr_t)) != len(lr_t):
        raise CurveError(f"{test.name} or {anchor.name}: two points share a rate with different PSNR")
    return _mean_gap(lr_a, d_a, lr_t, d_t, "rate", (anchor.name, test.name))


def load_reference(path: str | Path, name: str | None = None) -> RDCurve:
    """Read a CompressAI-style results JSON ({"name", "results": {"bpp", "psnr-rgb"}}) as a curve."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{p}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read {p}: {e}") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{p}: not JSON ({e})") from None
    results = data.get("results") if isinstance(data, dict) else None
    if not isinstance(results, dict) or "bpp" not in results or "psnr-rgb" not in results:
        raise InputError(f'{p}: not a CompressAI-style result (needs "results": {{"bpp", "psnr-rgb"}})')
    try:
        bpp = tuple(float(v) for v in results["bpp"])
        psnr = tuple(math.nan if v is None else float(v) for v in results["psnr-rgb"])
    except (TypeError, ValueError):
        raise InputError(f'{p}: "bpp" and "psnr-rgb" must be lists of numbers') from None
    label = name or str(data.get("name") or p.stem)
    try:
        return RDCurve(label, bpp, psnr)
    except CurveError as e:
        raise InputError(f"{p}: {e}") from None
