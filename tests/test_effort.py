"""--effort: the encoder's latent search (adapdate_codec/search/) on tiny networks."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from adapdate_codec import codec
from adapdate_codec.imageio import Picture
from adapdate_codec.search import levels, sga, tiles
from adapdate_codec.search.refine import rd_cost, search_latents


def _photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Smooth colours plus texture: something a codec can spend bits on."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([128 + 90 * np.sin(xx / 9 + c) * np.cos(yy / 13 - c) for c in range(3)], -1)
    return np.clip(base + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)


def _cost_of_file(data: bytes, bundle, px: np.ndarray, lmbda: float) -> float:
    """J of a file as a user gets it: its real size and its real decode."""
    out = codec.decode_picture(data, lambda h: bundle)
    h, w = px.shape[:2]
    mse = float(np.mean((out.pixels.astype(float) - px.astype(float)) ** 2)) / 255**2
    return 8 * len(data) / (h * w) + lmbda * 255**2 * mse


def test_levels_are_checked_and_anneal():
    assert levels.level(0) is None
    for bad in (-1, 10, 1.5, True):
        with pytest.raises(ValueError):
            levels.level(bad)
    steps = [levels.level(e).steps for e in range(1, 10)]
    assert steps == sorted(steps) and len(set(steps)) == 9
    lev = levels.level(9)
    taus = [lev.tau(s) for s in range(lev.steps)]
    assert taus[0] == lev.tau_start and math.isclose(taus[-1], lev.tau_end)
    assert all(a >= b for a, b in zip(taus, taus[1:]))


def test_sga_stays_between_floor_and_ceiling_and_hardens():
    gen = torch.Generator().manual_seed(0)
    v = torch.linspace(-3.9, 3.9, 1001)
    soft = sga.sga(v, 0.5, gen)
    assert bool(((soft >= torch.floor(v)) & (soft <= torch.floor(v) + 1)).all())
    hard = sga.sga(torch.tensor([0.1, 0.9, -0.2, 2.6]), 1e-3, gen)
    assert torch.allclose(hard, torch.tensor([0.0, 1.0, 0.0, 3.0]), atol=1e-3)
    v.requires_grad_(True)
    sga.sga(v, 0.5, gen).sum().backward()
    assert v.grad is not None and bool(torch.isfinite(v.grad).all())


def test_windows_cover_the_latent_once():
    for H, W in ((32, 48), (100, 52), (4, 200)):
        seen = torch.zeros(H, W, dtype=torch.int32)
        for win in tiles.windows(H, W):
            seen[slice(*win.core_rows), slice(*win.core_cols)] += 1
            assert win.rows[0] <= win.core_rows[0] and win.rows[1] >= win.core_rows[1]
            assert all(v % 4 == 0 for v in (*win.rows, *win.cols))
        assert bool((seen == 1).all())
    assert len(tiles.windows(32, 48)) == 1  # a Kodak image: one window, no margin


@pytest.mark.parametrize("shape", [(64, 96), (200, 840)])  # one window; two windows (840 px: 56 latents)
def test_effort_never_makes_a_file_worse_and_decodes(tiny_bundle, shape):
    px = _photo(*shape)
    pic = Picture(px, "RGB")
    plain = codec.encode_picture(pic, tiny_bundle)
    data, res = codec.encode_picture_search(pic, tiny_bundle, effort=2)
    assert res.effort == 2 and res.steps == levels.level(2).steps and res.chosen in ("plain", "refined")
    lm = tiny_bundle.lmbda
    # the file decodes with the plain decoder, and is no worse at the model's λ than effort 0's
    assert _cost_of_file(data, tiny_bundle, px, lm) <= _cost_of_file(plain, tiny_bundle, px, lm) + 1e-9
    # the search's costs are those of the real coder and decoder (sections only: the header is the same)
    gain = _cost_of_file(plain, tiny_bundle, px, lm) - _cost_of_file(data, tiny_bundle, px, lm)
    assert gain == pytest.approx(res.plain_cost - min(res.plain_cost, res.refined_cost), rel=1e-3, abs=1e-6)
    # same format: the header is level 0's
    from adapdate_codec import container

    assert container.unpack(data)[0] == container.unpack(plain)[0]


def test_search_lowers_the_cost_of_its_latents(tiny_bundle):
    """On the relaxed objective's own terms: the refined latents cost less than the plain ones (the search
    does something; whether the file keeps them is the real coder's call)."""
    px = _photo(64, 64, seed=3)
    yf, zf = codec.analyze_float(px, tiny_bundle)
    snet = sga.search_net(tiny_bundle.network(), "cpu")
    x = torch.from_numpy(px).permute(2, 0, 1)[None].float() / 255
    lm = tiny_bundle.lmbda
    with torch.no_grad():
        before = sga.objective(snet, x, torch.round(yf), torch.round(zf), lm, (64, 64)).loss
        y, z = sga.refine(snet, x, yf, zf, lm, levels.Level(steps=30, lr=0.05), (64, 64))
        after = sga.objective(snet, x, y, z, lm, (64, 64)).loss
    assert float(after) < float(before)
    assert torch.equal(y, torch.round(y)) and torch.equal(z, torch.round(z))


def test_effort_is_deterministic(tiny_bundle):
    pic = Picture(_photo(64, 128, seed=1), "RGB")
    a = codec.encode_picture(pic, tiny_bundle, effort=1)
    b = codec.encode_picture(pic, tiny_bundle, effort=1)
    assert a == b


def test_effort_zero_is_the_plain_encoder(tiny_bundle):
    px = _photo(64, 64, seed=2)
    res = search_latents(px, tiny_bundle, 0)
    assert res.chosen == "plain" and res.steps == 0
    assert codec.encode_picture(Picture(px, "RGB"), tiny_bundle, effort=0) == codec.encode_picture(
        Picture(px, "RGB"), tiny_bundle)
    assert rd_cost(res.sections, px, px, 0.01) == pytest.approx(8 * sum(map(len, res.sections)) / 64**2)


def test_target_bpp_with_effort_lands_within_three_percent():
    """search_to_target on a model of a codec whose rate falls smoothly with λ (bpp ~ λ^0.45)."""
    from adapdate_codec.rate import effort_to_target

    lambdas = {1: 0.0018, 2: 0.0035, 3: 0.0067, 4: 0.013, 5: 0.025}

    class B:
        def __init__(self, q):
            self.lmbda, self.quality = lambdas[q], q

    def rate(lm):  # bpp of a 100x100 image
        return 2.0 * lm**0.45

    def file(bpp_):
        return b"x" * int(round(bpp_ * 100 * 100 / 8))

    calls = []

    def search_at(q, lm):
        calls.append(lm)
        return B(q), file(rate(lm) * 1.02)  # the search spends a bit more than plain at the same λ

    for target in (0.14, 0.2, 0.27, 0.4):
        calls.clear()
        r = effort_to_target([1, 2, 3, 4, 5], lambda q: (B(q), file(rate(lambdas[q]))), search_at, 100, 100,
                             target)
        assert abs(r.bpp - target) <= 0.03 * target, (target, r.bpp, calls)
        assert r.reached and len(calls) <= 5


def test_api_and_cli_take_effort(api_home, tmp_path):
    import adapdate_codec
    from click.testing import CliRunner
    from PIL import Image

    from adapdate_codec.cli import main

    px = _photo(64, 64, seed=4)
    data = adapdate_codec.encode(px, effort=1)
    assert np.asarray(adapdate_codec.decode(data)).shape == (64, 64, 3)
    with pytest.raises(ValueError):
        adapdate_codec.encode(px, effort=10)
    src = tmp_path / "in.png"
    Image.fromarray(px).save(src)
    res = CliRunner().invoke(main, ["encode", str(src), "-o", str(tmp_path / "o.adpd"), "-e", "1", "--json"])
    assert res.exit_code == 0, res.output
    row = json.loads(res.stdout)
    assert row["effort"] == 1 and row["search_seconds"] >= 0
    assert (tmp_path / "o.adpd").read_bytes() == data
    res = CliRunner().invoke(main, ["encode", str(src), "-o", str(tmp_path / "p.adpd"), "-e", "10"])
    assert res.exit_code == 2 and not (tmp_path / "p.adpd").exists()
