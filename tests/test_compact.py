"""Compact model files: exact round trips, differences between versions, damage, built-in unpacking."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest
import torch

from adapdate_codec import compact
from adapdate_codec.bundle import ModelBundle, build_bundle
from adapdate_codec.errors import ModelError
from adapdate_codec.store import ModelStore

N = 16  # big enough that most weights are put on grids (>= 4096 values)


def _float_bundle(seed: int = 0, quality: int = 3, base: ModelBundle | None = None, noise: float = 0.0):
    from adapdate_codec.network import build_model

    torch.manual_seed(seed)
    sd = build_model("cheng2020-anchor", N).state_dict() if base is None else {
        k: (v + noise * torch.randn_like(v) if v.is_floating_point() and not k.endswith("mask") else v)
        for k, v in base.state_dict.items()}
    return build_bundle("cheng2020-anchor", quality, "cheng2020-anchor", N, 0.0067, sd, card={"note": "test"})


@pytest.fixture(scope="module")
def root():
    b = _float_bundle()
    grids = compact.uniform_grids(b.state_dict, 16)
    shipped, data = compact.compact_bundle(b, grids)
    return b, grids, shipped, data


def test_round_trip_is_exact(root, tmp_path):
    float_b, grids, shipped, data = root
    back = compact.decode(data).bundle()
    assert back.fingerprint == shipped.fingerprint
    for k, v in shipped.state_dict.items():
        assert torch.equal(back.state_dict[k], v), k
    # the weights moved onto their grids, by at most half a step
    k = next(iter(grids))
    assert (shipped.state_dict[k] - float_b.state_dict[k]).abs().max() <= compact.step_of(grids[k]) / 2 + 1e-9
    assert shipped.fingerprint != float_b.fingerprint


def test_fingerprint_is_reproduced_in_another_process(root, tmp_path):
    _, _, shipped, data = root
    (tmp_path / "m.adpm").write_bytes(data)
    code = ("import sys; from adapdate_codec import compact; "
            "print(compact.decode(open(sys.argv[1], 'rb').read()).bundle().fingerprint)")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "m.adpm")], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == shipped.fingerprint


def test_a_later_version_is_stored_as_a_small_difference(root):
    float_b, grids, shipped, data = root
    base = compact.decode(data)
    later_float = _float_bundle(seed=1, quality=2, base=float_b, noise=1e-3)
    later, diff = compact.compact_bundle(later_float, grids, base=base)
    _, whole = compact.compact_bundle(later_float, grids)
    assert len(diff) < 0.8 * len(whole)
    hows = {e["how"] for e in compact.read_header(diff)[0]["entries"]}
    assert {"delta", "same"} <= hows
    assert compact.decode(diff, lambda fp: base).bundle().fingerprint == later.fingerprint
    with pytest.raises(ModelError, match="difference to model"):
        compact.decode(diff)


@pytest.mark.parametrize("where", [10, -40, -1])
def test_damage_is_refused_with_one_line(root, where):
    data = bytearray(root[3])
    data[where] ^= 0x20
    with pytest.raises(ModelError, match="damaged") as e:
        compact.decode(bytes(data))
    assert "\n" not in str(e.value)


def test_truncated_and_foreign_files_are_refused(root):
    for bad in (root[3][:100], b"", b"PK\x03\x04" + bytes(100)):
        with pytest.raises(ModelError):
            compact.decode(bad)


def test_weights_off_their_grid_are_refused(root):
    float_b, grids, _, _ = root
    with pytest.raises(ModelError, match="not on its grid"):
        compact.encode(float_b.to_dict(), grids)


def _package(tmp_path, files: dict[str, tuple[ModelBundle, bytes]]):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    for stem, (b, data) in files.items():
        (pkg / f"{stem}.adpm").write_bytes(data)
        (pkg / f"{stem}.json").write_text(json.dumps(b.describe()))
    return pkg


def test_builtin_compact_models_unpack_once_with_a_notice(root, tmp_path, caplog):
    float_b, grids, shipped, data = root
    later, diff = compact.compact_bundle(_float_bundle(seed=1, quality=2, base=float_b, noise=1e-3), grids,
                                         base=compact.decode(data))
    pkg = _package(tmp_path, {"cheng2020-anchor-q3": (shipped, data), "cheng2020-anchor-q2": (later, diff)})
    home = tmp_path / "home"
    with caplog.at_level(logging.INFO, logger="adapdate"):
        store = ModelStore(home=home, builtin=pkg)
        assert {(e.quality, e.builtin) for e in store.list()} == {(2, True), (3, True)}
        assert store.get(quality=2).fingerprint == later.fingerprint  # its base is decoded on the way
        assert store.get(quality=3).fingerprint == shipped.fingerprint
    notices = [r.getMessage() for r in caplog.records]
    assert notices == ["unpacking the built-in model cheng2020-anchor q2 (first use)",
                       "unpacking the built-in model cheng2020-anchor q3 (first use)"]
    assert len(list((home / "builtin").glob("*.pt"))) == 2
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="adapdate"):
        assert ModelStore(home=home, builtin=pkg).get(quality=2).fingerprint == later.fingerprint
    assert not caplog.records  # the second run loads the unpacked copy


def test_damaged_builtin_is_refused_and_nothing_is_kept(root, tmp_path):
    _, _, shipped, data = root
    bad = bytearray(data)
    bad[len(bad) // 2] ^= 1
    pkg = _package(tmp_path, {"cheng2020-anchor-q3": (shipped, bytes(bad))})
    home = tmp_path / "home"
    with pytest.raises(ModelError, match="damaged") as e:
        ModelStore(home=home, builtin=pkg).get(quality=3)
    assert "\n" not in str(e.value)
    assert not list(home.rglob("*.pt")) and not list(home.rglob("*.tmp"))


def test_a_damaged_unpacked_copy_is_rebuilt(root, tmp_path):
    _, _, shipped, data = root
    pkg = _package(tmp_path, {"cheng2020-anchor-q3": (shipped, data)})
    home = tmp_path / "home"
    ModelStore(home=home, builtin=pkg).get(quality=3)
    [cached] = (home / "builtin").glob("*.pt")
    cached.write_bytes(b"garbage")
    assert ModelStore(home=home, builtin=pkg).get(quality=3).fingerprint == shipped.fingerprint


def test_nearest_grid_steps():
    for step in (1e-3, 3e-4, 0.02, 1.0):
        g = compact.nearest_grid(step)
        assert 4 <= g[0] <= 7
        assert abs(compact.step_of(g) / step - 1) < 0.13
