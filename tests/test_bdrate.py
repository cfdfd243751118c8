"""Bjøntegaard deltas against cases worked out by hand."""

from __future__ import annotations

import json
import math

import pytest

from adapdate_codec.bdrate import CurveError, RDCurve, bd_psnr, bd_rate, load_reference
from adapdate_codec.errors import InputError

BPP = (0.12, 0.25, 0.5, 0.9, 1.6)
PSNR = (27.1, 29.8, 32.6, 35.2, 38.0)
ANCHOR = RDCurve("anchor", BPP, PSNR)


def scaled(k: float) -> RDCurve:
    return RDCurve(f"x{k}", tuple(k * r for r in BPP), PSNR)


@pytest.mark.parametrize("k, expected", [(1.25, 0.25), (0.8, -0.20), (2.0, 1.0)])
def test_rates_k_times_give_k_minus_one(k: float, expected: float) -> None:
    # ln(k R) - ln(R) = ln k at every PSNR, so the mean log-rate gap is ln k and BD-rate is k - 1
    assert bd_rate(ANCHOR, scaled(k)) == pytest.approx(expected, abs=1e-12)


def test_identical_curves_give_zero() -> None:
    assert bd_rate(ANCHOR, ANCHOR) == pytest.approx(0.0, abs=1e-12)
    assert bd_psnr(ANCHOR, ANCHOR) == pytest.approx(0.0, abs=1e-12)


def test_psnr_shift_of_one_db() -> None:
    better = RDCurve("plus1", BPP, tuple(p + 1.0 for p in PSNR))
    assert bd_psnr(ANCHOR, better) == pytest.approx(1.0, abs=1e-12)
    assert bd_psnr(better, ANCHOR) == pytest.approx(-1.0, abs=1e-12)
    assert bd_rate(ANCHOR, better) < 0  # same quality for fewer bits


def test_partial_overlap_uses_shared_interval_only() -> None:
    # a straight line in (PSNR, log-rate): test is 10 % cheaper; extra points outside the overlap don't count
    anchor = RDCurve("a", tuple(math.exp(0.2 * p) for p in (30, 32, 34, 36)), (30, 32, 34, 36))
    test = RDCurve("t", tuple(0.9 * math.exp(0.2 * p) for p in (33, 35, 37, 39)), (33, 35, 37, 39))
    assert bd_rate(anchor, test) == pytest.approx(-0.1, abs=1e-12)


def test_order_of_points_does_not_matter() -> None:
    shuffled = RDCurve("s", tuple(reversed(BPP)), tuple(reversed(PSNR)))
    assert bd_rate(ANCHOR, shuffled) == pytest.approx(0.0, abs=1e-12)


def test_no_psnr_overlap_is_a_clear_error() -> None:
    high = RDCurve("high", BPP, tuple(p + 20 for p in PSNR))
    with pytest.raises(CurveError, match="do not overlap in PSNR"):
        bd_rate(ANCHOR, high)


def test_too_few_points_is_a_clear_error() -> None:
    with pytest.raises(CurveError, match="at least 2"):
        bd_rate(ANCHOR, RDCurve("one", (0.5,), (30.0,)))
    # non-finite points (lossless: inf PSNR; failures: NaN) don't count
    with pytest.raises(CurveError, match="at least 2"):
        bd_rate(ANCHOR, RDCurve("bad", (0.5, 1.0, 2.0), (30.0, math.nan, math.inf)))


def test_mismatched_lengths() -> None:
    with pytest.raises(CurveError):
        RDCurve("x", (0.1, 0.2), (30.0,))


def test_load_reference(tmp_path) -> None:
    p = tmp_path / "ref.json"
    p.write_text(json.dumps({"name": "BPG", "results": {"bpp": [0.1, 0.5], "psnr-rgb": [28.0, 33.0]}}))
    curve = load_reference(p)
    assert curve.name == "BPG" and curve.bpp == (0.1, 0.5) and curve.psnr == (28.0, 33.0)
    assert load_reference(p, "mine").name == "mine"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"name": "x"}))
    with pytest.raises(InputError, match="CompressAI-style"):
        load_reference(bad)
    with pytest.raises(InputError, match="no such file"):
        load_reference(tmp_path / "missing.json")


def test_published_bpg_reference_is_readable() -> None:
    from conftest import SHARED

    path = SHARED / "reference" / "kodak" / "bpg_444_x265_ycbcr.json"  # ../shared beside the checkout
    if not path.exists():
        pytest.skip("shared Kodak references not present")
    bpg = load_reference(path)
    jpeg = load_reference(path.with_name("jpeg.json"))
    assert bd_rate(bpg, bpg) == pytest.approx(0.0, abs=1e-12)
    assert bd_rate(bpg, jpeg) > 0.5  # JPEG needs far more bits than BPG 4:4:4
