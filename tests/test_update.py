"""Adapter updates (.nnc): NNCodec wrapper, export → patch → rollback, refusals, atomicity, safety, CLI.

Everything runs on the tiny N=8 model of conftest.py; an adapters "checkpoint" is built directly in
train.py's format (base weights + adapters whose last conv is non-zero), which is what two training
steps would produce, without the training time.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from adapdate_codec import nnc, store as store_mod, update
from adapdate_codec.adapters import AdapterConfig
from adapdate_codec.errors import ModelError, UpdateError
from adapdate_codec.network import build_model
from adapdate_codec.store import ModelStore
from conftest import make_tiny_bundle
from model_fixtures import ADAPTERS, make_checkpoint



# -- helpers ---------------------------------------------------------------------------------------------
def snapshot(home: Path) -> dict[str, bytes]:
    """Every file of a store, by relative path: 'unchanged' means byte for byte."""
    return {str(p.relative_to(home)): p.read_bytes() for p in sorted(home.rglob("*")) if p.is_file()}


def checkpoint_network(ckpt: dict):
    net = build_model("cheng2020-anchor", ckpt["config"]["N"], AdapterConfig.from_dict(ckpt["config"]["adapters"]))
    net.load_state_dict(ckpt["model"])
    return net.eval()


def rewrite(data: bytes, manifest: dict | None = None, payload: bytes | None = None) -> bytes:
    """An update with a replaced manifest/payload and a *valid* checksum (a crafted, not a damaged file)."""
    u = update.parse_update(data)
    body = json.dumps(manifest if manifest is not None else u.manifest.to_dict()).encode()
    payload = u.payload if payload is None else payload
    head = struct.pack(">4sHI", update.MAGIC, update.FORMAT_VERSION, len(body))
    raw = head + body + payload + b"".join(v.astype("<i4").tobytes() for v in u.tables.values())
    return raw + hashlib.sha256(raw).digest()


class Boom:
    """Unpickling this creates a marker file: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture(scope="module")
def exported(tiny_bundle, tmp_path_factory):
    """(checkpoint path, checkpoint, update bytes) for the tiny base, exported once."""
    folder = tmp_path_factory.mktemp("update")
    home = folder / "home"
    store = ModelStore(home)
    store.install_bundle(tiny_bundle, source="tests")
    ckpt_path = folder / "adapters.ckpt"
    ckpt = make_checkpoint(tiny_bundle, ckpt_path)
    data = update.export_update(ckpt_path, store).to_bytes()
    return ckpt_path, ckpt, data


# -- NNCodec wrapper -------------------------------------------------------------------------------------
def test_adapter_counts():
    for kind, count in (("resblock", 7), ("all", 13)):
        net = build_model("cheng2020-anchor", 8, AdapterConfig(kind, 2, 3))
        assert sum(k.endswith(".adapter.0.weight") for k in net.state_dict()) == count


def test_step_size_matches_nncodec():
    from nncodec.nnc_core.common import get_stepsize_from_qp

    for qp in (-75, -60, -50, -38, -37, -1, 0, 3):
        assert nnc.step_size(qp) == pytest.approx(get_stepsize_from_qp(np.int32(qp), 2))


def test_nnc_round_trip_keeps_names_shapes_dtypes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # NNCodec's default would write ./bitstream.nnc
    rng = np.random.default_rng(0)
    tensors = {"g_s.0.adapter.2.weight": rng.normal(0, 0.05, (8, 4, 1, 1)).astype(np.float32),
               "g_s.0.adapter.2.bias": rng.normal(0, 0.05, (8,)).astype(np.float32),
               "entropy_bottleneck.biases.0": rng.normal(0, 1, (8, 3, 1)),  # float64: converted
               "scalar": np.array(0.5, np.float32),                           # 0-d: NNCodec would crash
               "zeros": np.zeros((4, 4, 3, 3), np.float32)}
    out = nnc.decompress(nnc.compress(tensors, qp=-38))
    assert list(out) == list(tensors)
    assert all(v.dtype == np.float32 for v in out.values())
    assert out["g_s.0.adapter.2.weight"].shape == (8, 4, 1, 1) and out["scalar"].shape == (1,)
    assert np.abs(out["g_s.0.adapter.2.weight"] - tensors["g_s.0.adapter.2.weight"]).max() <= 2 * nnc.step_size(-38)
    # 1-d tensors (biases) use NNCodec's fixed non-weight qp (-75): nearly lossless whatever qp is
    assert np.abs(out["g_s.0.adapter.2.bias"] - tensors["g_s.0.adapter.2.bias"]).max() <= 2 * nnc.step_size(-75)
    assert not out["zeros"].any()
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("bad, message", [
    ({}, "no tensors"),
    ({"a": np.arange(3)}, "only floating-point"),
    ({"a": np.array([1.0, np.nan], np.float32)}, "NaN"),
])
def test_nnc_compress_refuses_bad_input(bad, message):
    with pytest.raises(UpdateError, match=message):
        nnc.compress(bad)


def test_nnc_decompress_damage_is_one_update_error():
    good = nnc.compress({"w": np.random.default_rng(1).normal(0, 0.1, (16, 8, 3, 3)).astype(np.float32)})
    flipped = bytearray(good)
    flipped[len(flipped) // 2] ^= 0x10
    for damaged in (b"", good[:1], good[: len(good) // 2], bytes(flipped), b"\x00" * 64, os.urandom(300)):
        try:
            out = nnc.decompress(damaged)
        except UpdateError as e:
            assert "\n" not in str(e)
        else:  # a flip NNCodec cannot notice still yields well-formed tensors (the file checksum catches it)
            assert set(out) == {"w"}


def test_nnc_qp_out_of_range():
    with pytest.raises(UpdateError, match="qp"):
        nnc.compress({"w": np.ones((2, 2), np.float32)}, qp=500)


# -- export / patch ---------------------------------------------------------------------------------------
def test_export_manifest(exported, tiny_bundle):
    _, ckpt, data = exported
    m = update.read_manifest(data)
    assert (m.base_name, m.base_quality, m.base_fingerprint) == ("tiny", 3, tiny_bundle.fingerprint)
    assert m.adapters == ADAPTERS and m.qp == -38 and m.format == update.FORMAT_VERSION
    assert {t.name for t in m.tensors} == {k for k in ckpt["model"] if ".adapter." in k}
    assert len(m.tensors) == 7 * 6 and not m.bottleneck_changed  # quantiles alone are not shipped
    assert m.patched_fingerprint != tiny_bundle.fingerprint and m.created_at and m.adapdate_version
    assert data[:4] == b"ADPU" and m.payload_bytes < len(data) < 20_000


def test_patch_round_trip(exported, fresh_store, tiny_bundle):
    _, ckpt, data = exported
    store = ModelStore(fresh_store)
    result = update.apply_update(data, store, source="adapters.nnc")
    m = result.manifest
    assert not result.already_applied
    assert result.old.fingerprint == tiny_bundle.fingerprint
    assert result.new.version == result.old.version + 1 == 2 and result.new.active
    assert result.new.fingerprint == m.patched_fingerprint
    assert result.new.parent_fingerprint == tiny_bundle.fingerprint
    assert result.new.update["size_bytes"] == len(data) and result.new.update["qp"] == -38

    fresh = ModelStore(fresh_store)
    patched = fresh.get("tiny", 3)
    assert patched.fingerprint == m.patched_fingerprint and patched.adapters == AdapterConfig(**ADAPTERS)
    assert patched.tables["z"] is not None and all(
        torch.equal(patched.tables["z"][k], tiny_bundle.tables["z"][k]) for k in update.TABLE_NAMES)
    # adapters equal the checkpoint's up to NNCodec's quantization; everything else is the base, bit for bit
    tol = 2 * nnc.step_size(m.qp)
    for k, v in patched.state_dict.items():
        if ".adapter." in k:
            assert (v - ckpt["model"][k]).abs().max() <= tol, k
        else:
            assert torch.equal(v, tiny_bundle.state_dict[k]), k
    torch.manual_seed(0)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        ref = checkpoint_network(ckpt)
        a, b = ref(x), patched.network()(x)
        assert torch.equal(ref.g_a(x).round(), patched.network().g_a(x).round())
        y_hat = ref.g_a(x).round()
        assert (ref.g_s(y_hat) - patched.network().g_s(y_hat)).abs().max() < 20 * tol
    assert (a.x_hat - b.x_hat).abs().mean() < 1e-3

    info = fresh.info("tiny", 3)
    assert [h["version"] for h in info["history"]] == [1, 2] and info["history"][-1]["active"]
    assert info["history"][-1]["update"]["base_fingerprint"] == tiny_bundle.fingerprint
    assert fresh.info("tiny", 3)["adapters"] == ADAPTERS


def test_patch_with_retrained_bottleneck_ships_tables(fresh_store, tiny_bundle, tmp_path):
    store = ModelStore(fresh_store)
    make_checkpoint(tiny_bundle, tmp_path / "eb.ckpt", bottleneck=True)
    u = update.export_update(tmp_path / "eb.ckpt", store, qp=-50)
    m = u.manifest
    assert m.bottleneck_changed and [t.name for t in m.tables] == list(update.TABLE_NAMES)
    assert any(t.name == "entropy_bottleneck.biases.0" for t in m.tensors)
    assert any(t.name == "entropy_bottleneck.quantiles" for t in m.tensors)  # with a new density, new bounds
    result = update.apply_update(u.to_bytes(), store)
    patched = ModelStore(fresh_store).get("tiny", 3)
    assert patched.fingerprint == result.new.fingerprint == m.patched_fingerprint
    for k in update.TABLE_NAMES:
        assert np.array_equal(patched.tables["z"][k].numpy(), u.tables[k])
    assert not torch.equal(patched.state_dict["entropy_bottleneck.biases.0"],
                           tiny_bundle.state_dict["entropy_bottleneck.biases.0"])


def test_export_refusals(fresh_store, tiny_bundle, tmp_path):
    store = ModelStore(fresh_store)
    make_checkpoint(tiny_bundle, tmp_path / "touch.ckpt", touch_base=True)
    with pytest.raises(UpdateError, match="changes 1 base tensors"):
        update.export_update(tmp_path / "touch.ckpt", store)
    other = make_tiny_bundle(seed=5)
    make_checkpoint(other, tmp_path / "other.ckpt")
    with pytest.raises(UpdateError, match="is not installed"):
        update.export_update(tmp_path / "other.ckpt", store)
    base_ckpt = {"format": 1, "config": {"adapters": None}, "model": {}}
    torch.save(base_ckpt, tmp_path / "base.ckpt")
    with pytest.raises(UpdateError, match="not an adapters one"):
        update.export_update(tmp_path / "base.ckpt", store)
    (tmp_path / "junk.ckpt").write_bytes(b"junk")
    with pytest.raises(UpdateError, match="not a training checkpoint"):
        update.export_update(tmp_path / "junk.ckpt", store)
    with pytest.raises(UpdateError, match="no such file"):
        update.export_update(tmp_path / "missing.ckpt", store)


def test_wrong_base_is_refused_and_store_unchanged(exported, fresh_store):
    _, _, data = exported
    store = ModelStore(fresh_store)
    other = make_tiny_bundle(seed=7)
    store.install_bundle(other, source="another base")  # now the active tiny q3 is not the update's base
    before = snapshot(fresh_store)
    with pytest.raises(UpdateError) as e:
        update.apply_update(data, store)
    m = update.read_manifest(data)
    assert m.base_fingerprint[:8] in str(e.value) and other.fingerprint[:8] in str(e.value)
    assert snapshot(fresh_store) == before
    with pytest.raises(UpdateError, match="not installed"):
        update.apply_update(data, store, name="nosuchmodel")
    assert snapshot(fresh_store) == before


def test_patch_twice_and_patch_a_patched_model(exported, fresh_store, tiny_bundle, tmp_path):
    _, _, data = exported
    store = ModelStore(fresh_store)
    first = update.apply_update(data, store)
    again = update.apply_update(data, store)
    assert again.already_applied and again.new.version == first.new.version
    make_checkpoint(tiny_bundle, tmp_path / "second.ckpt", seed=9)
    second = update.export_update(tmp_path / "second.ckpt", store).to_bytes()
    before = snapshot(fresh_store)
    with pytest.raises(UpdateError, match="active version is"):
        update.apply_update(second, store)  # its base is no longer active: roll back first
    assert snapshot(fresh_store) == before
    store.rollback("tiny", 3)
    assert update.apply_update(second, store).new.version == 3
    store.rollback("tiny", 3)
    assert update.apply_update(data, store).new.version == 2  # re-applying reuses the installed version


def _damaged(data: bytes) -> list[tuple[str, bytes]]:
    def flip(i: int) -> bytes:
        b = bytearray(data)
        b[i] ^= 0x01
        return bytes(b)

    header = update._HEADER.size
    return [("magic", flip(0)), ("version", flip(5)), ("length", flip(8)), ("manifest", flip(header + 5)),
            ("payload", flip(len(data) - 40)), ("checksum", flip(len(data) - 1)),
            ("truncated", data[:-1]), ("half", data[: len(data) // 2]), ("header only", data[:header]),
            ("empty", b""), ("trailing", data + b"\x00")]


def test_corrupted_and_truncated_updates_are_refused(exported, fresh_store):
    _, _, data = exported
    store = ModelStore(fresh_store)
    before = snapshot(fresh_store)
    for label, bad in _damaged(data):
        with pytest.raises(UpdateError) as e:
            update.apply_update(bad, store)
        assert "\n" not in str(e.value), label
        with pytest.raises(UpdateError):
            update.read_manifest(bad)
    assert snapshot(fresh_store) == before


def test_crafted_updates_with_valid_checksum_are_refused(exported, fresh_store):
    _, _, data = exported
    store = ModelStore(fresh_store)
    u = update.parse_update(data)
    good = u.manifest.to_dict()
    before = snapshot(fresh_store)
    payload = bytearray(u.payload)
    payload[len(payload) // 2] ^= 0x04
    crafted = [
        rewrite(data, payload=bytes(payload)),                                   # NNCodec error or other weights
        rewrite(data, {**good, "patched_fingerprint": "0" * 64}),                # wrong promised fingerprint
        rewrite(data, {**good, "tensors": good["tensors"][:-1]}),                # manifest ≠ payload
        rewrite(data, {**good, "tensors": [{"name": "g_a.0.conv1.weight", "shape": [8, 3, 3, 3]}]}),  # base weight
        rewrite(data, {**good, "payload_bytes": good["payload_bytes"] + 1}),      # lengths disagree
        rewrite(data, {**good, "tensors": [{"name": "x.adapter.0.weight", "shape": [1 << 20, 1 << 20]}]}),
        rewrite(data, {**good, "adapters": {"type": "resblock", "R": 2, "v": "3"}}),
        rewrite(data, {**good, "format": 99}),
        rewrite(data, [1, 2, 3]),
    ]
    for bad in crafted:
        with pytest.raises(UpdateError) as e:
            update.apply_update(bad, store)
        assert "\n" not in str(e.value)
    assert snapshot(fresh_store) == before


def test_old_files_decode_after_patch_and_rollback(exported, fresh_store, tiny_bundle):
    from adapdate_codec.codec import decode_picture, encode_picture
    from adapdate_codec.imageio import Picture

    _, _, data = exported
    store = ModelStore(fresh_store)
    pic = Picture(pixels=np.random.default_rng(3).integers(0, 256, (48, 64, 3), dtype=np.uint8), mode="RGB")
    old = encode_picture(pic, store.get("tiny", 3))
    expected = decode_picture(old, store.by_fingerprint).pixels
    update.apply_update(data, store)
    new = encode_picture(pic, ModelStore(fresh_store).get("tiny", 3))
    for s in (ModelStore(fresh_store),):
        assert np.array_equal(decode_picture(old, s.by_fingerprint).pixels, expected)
        assert decode_picture(new, s.by_fingerprint).pixels.shape == (48, 64, 3)
    entry = ModelStore(fresh_store).rollback("tiny", 3)
    assert entry.fingerprint == tiny_bundle.fingerprint
    after = ModelStore(fresh_store)
    assert np.array_equal(decode_picture(old, after.by_fingerprint).pixels, expected)
    assert decode_picture(new, after.by_fingerprint).pixels.shape == (48, 64, 3)  # the patched version stays


@pytest.mark.parametrize("where", ["build", "bundle file", "card", "manifest", "interrupt"])
def test_error_half_way_leaves_the_store_intact(exported, fresh_store, monkeypatch, where):
    from adapdate_codec import bundle as bundle_mod

    _, _, data = exported
    store = ModelStore(fresh_store)
    before = snapshot(fresh_store)
    real_write = store_mod.atomic_write
    real_save = bundle_mod.ModelBundle.save

    def failing_write(path, payload):
        if (where == "manifest" and path.name == "manifest.json") or \
                (where in ("card", "interrupt") and path.suffix == ".json" and path.name != "manifest.json"):
            raise KeyboardInterrupt if where == "interrupt" else OSError(28, "No space left on device")
        real_write(path, payload)

    def failing_save(self, path, half=None):
        real_save(self, path, half)  # the bundle file is complete, then the disk fills up
        raise ModelError("cannot write: No space left on device")

    if where == "build":
        monkeypatch.setattr(bundle_mod, "build_bundle", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    elif where == "bundle file":
        monkeypatch.setattr(bundle_mod.ModelBundle, "save", failing_save)
    else:
        monkeypatch.setattr(store_mod, "atomic_write", failing_write)
    with pytest.raises((UpdateError, ModelError, OSError, KeyboardInterrupt, RuntimeError)):
        update.apply_update(data, store)
    monkeypatch.undo()
    assert snapshot(fresh_store) == before
    fresh = ModelStore(fresh_store)
    assert fresh.active("tiny", 3).fingerprint == update.read_manifest(data).base_fingerprint
    assert update.apply_update(data, fresh).new.active  # and a retry works


def test_concurrent_patches_do_not_corrupt_the_store(exported, fresh_store, tiny_bundle, tmp_path):
    _, _, first = exported
    make_checkpoint(tiny_bundle, tmp_path / "second.ckpt", seed=11)
    second = update.export_update(tmp_path / "second.ckpt", ModelStore(fresh_store)).to_bytes()
    outcomes: list[object] = []

    def patch(data: bytes) -> None:
        try:
            outcomes.append(update.apply_update(data, ModelStore(fresh_store)))
        except (UpdateError, ModelError) as e:  # the loser: its base is no longer active
            outcomes.append(e)

    threads = [threading.Thread(target=patch, args=(d,)) for d in (first, second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    winners = [o for o in outcomes if isinstance(o, update.PatchResult)]
    assert len(outcomes) == 2 and len(winners) == 1, outcomes
    fresh = ModelStore(fresh_store)
    history = fresh.history("tiny", 3)
    assert [e.version for e in history] == [1, 2][: len(history)] and fresh.active("tiny", 3).version == 2
    assert fresh.get("tiny", 3).fingerprint == winners[0].new.fingerprint
    assert history[-1].parent_fingerprint == tiny_bundle.fingerprint


# -- no code execution -----------------------------------------------------------------------------------
def test_update_files_cannot_execute_code(exported, fresh_store, tmp_path):
    _, _, data = exported
    marker = tmp_path / "pwned"
    evil = pickle.dumps(Boom(marker))
    u = update.parse_update(data)
    store = ModelStore(fresh_store)
    before = snapshot(fresh_store)
    crafted = [
        evil,                                                       # a pickle instead of an update
        update.MAGIC + evil,                                        # behind our magic
        rewrite(data, payload=evil),                                # as the NNCodec payload (valid checksum)
        rewrite(data, {**u.manifest.to_dict(), "training": {"blob": evil.hex()}, "payload_bytes": len(evil)},
                payload=evil),                                      # in the manifest and as payload
    ]
    for bad in crafted:
        with pytest.raises(UpdateError):
            update.apply_update(bad, store)
        try:
            update.read_manifest(bad)  # reading the manifest may succeed: it is JSON, it runs nothing
        except UpdateError:
            pass
    assert not marker.exists()
    assert snapshot(fresh_store) == before
    torch.save({"format": 1, "config": {"adapters": ADAPTERS}, "model": Boom(marker)}, tmp_path / "evil.ckpt")
    with pytest.raises(UpdateError, match="refusing to load"):
        update.export_update(tmp_path / "evil.ckpt", store)
    assert not marker.exists()


def test_reading_an_update_never_unpickles(exported, monkeypatch):
    _, _, data = exported

    def forbidden(*a, **k):
        raise AssertionError("pickle used while reading an update")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, forbidden)
    monkeypatch.setattr(np, "load", forbidden)
    u = update.parse_update(data)
    tensors = update.decode_tensors(u)
    assert len(tensors) == len(u.manifest.tensors)


# -- size against qp -------------------------------------------------------------------------------------
def test_update_size_grows_with_finer_qp(exported, fresh_store):
    ckpt_path, _, _ = exported
    store = ModelStore(fresh_store)
    sizes = {qp: len(update.export_update(ckpt_path, store, qp=qp).to_bytes()) for qp in (-38, -50, -60)}
    print(f"\nupdate size by qp (N=8, resblock R=2 v=3): {sizes}")
    assert sizes[-38] < sizes[-50] < sizes[-60]


# -- command line ----------------------------------------------------------------------------------------
def adapdate(home: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "ADAPDATE_HOME": str(home), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "adapdate_codec", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)


def test_cli_export_info_patch_rollback(tiny_store, tiny_bundle, tmp_path):
    home = tmp_path / "home"
    shutil.copytree(tiny_store, home)
    make_checkpoint(tiny_bundle, tmp_path / "adapters.ckpt")
    out = tmp_path / "update.nnc"

    r = adapdate(home, "model", "export-update", str(tmp_path / "adapters.ckpt"), "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert "update.nnc" in r.stdout and "bytes" in r.stdout and "7 adapters" in r.stdout
    size = out.stat().st_size

    r = adapdate(home, "model", "info", str(out), "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["base_fingerprint"] == tiny_bundle.fingerprint and info["size_bytes"] == size
    assert info["adapters"] == ADAPTERS and info["qp"] == -38

    before = snapshot(home)
    r = adapdate(home, "model", "patch", str(out))
    assert r.returncode == 0, r.stderr
    assert f"{tiny_bundle.fingerprint[:16]} (v1) →" in r.stdout and "(v2), now active" in r.stdout
    assert snapshot(home) != before

    r = adapdate(home, "model", "info", "tiny", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["version"] == 2 and d["history"][-1]["update"]["size_bytes"] == size

    r = adapdate(home, "model", "rollback", "tiny")
    assert r.returncode == 0, r.stderr
    assert tiny_bundle.fingerprint[:16] in r.stdout


def test_cli_errors_are_one_line(tiny_store, tiny_bundle, tmp_path, monkeypatch, exported):
    from click.testing import CliRunner

    from adapdate_codec import cli

    home = tmp_path / "home"
    shutil.copytree(tiny_store, home)
    monkeypatch.setenv("ADAPDATE_HOME", str(home))
    ckpt_path, _, data = exported
    good = tmp_path / "u.nnc"
    good.write_bytes(data)

    def run(*args: str):
        return CliRunner().invoke(cli.main, ["model", *args])

    r = run("export-update", str(ckpt_path), "-o", str(good))
    assert r.exit_code == 1 and "already exists" in r.output and len(r.output.strip().splitlines()) == 1
    r = run("export-update", str(ckpt_path), "-o", str(tmp_path / "v.nnc"), "--qp", "-50")
    assert r.exit_code == 0, r.output
    bad = tmp_path / "bad.nnc"
    bad.write_bytes(data[:-3])
    before = snapshot(home)
    for args in (("patch", str(bad)), ("patch", str(tmp_path / "missing.nnc")), ("info", str(bad)),
                 ("patch", str(good), "--model", "nosuch")):
        r = run(*args)
        assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1, (args, r.output)
    assert snapshot(home) == before
    r = run("info", str(good))
    assert r.exit_code == 0 and "tiny q3" in r.output and "qp" in r.output
    r = run("patch", str(good))
    assert r.exit_code == 0 and "(v2), now active" in r.output, r.output
    r = run("patch", str(good))
    assert r.exit_code == 0 and "already" in r.output, r.output
    r = run("info", "tiny")  # a model name still works beside update paths
    assert r.exit_code == 0 and "history" in r.output and "update" in r.output


def test_real_training_checkpoint_exports_and_patches(fresh_store, tiny_bundle, tmp_path):
    """Two real adapter-training steps (train.train), as `adapdate train adapters` runs them."""
    from PIL import Image

    from adapdate_codec.train import TrainConfig, train

    data = tmp_path / "images"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(data / f"{i}.png")
    cfg = TrainConfig(data=str(data), out=str(tmp_path / "run.ckpt"), quality=3, N=8, steps=2, batch=1, patch=64,
                      warmup=1, lr=1e-2, log_every=1000, adapters=dict(ADAPTERS), lmbda=tiny_bundle.lmbda,
                      base={"name": "tiny", "quality": 3, "fingerprint": tiny_bundle.fingerprint})
    train(cfg, init_state=tiny_bundle.state_dict, log=lambda s: None)
    store = ModelStore(fresh_store)
    u = update.export_update(tmp_path / "run.ckpt", store)
    assert not u.manifest.bottleneck_changed and len(u.manifest.tensors) == 42
    result = update.apply_update(u.to_bytes(), store)
    assert result.new.fingerprint == u.manifest.patched_fingerprint and result.new.active
