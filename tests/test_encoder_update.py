"""The decoder is the standard: decoder and encoder identities, format-2 files, encoder updates, rollback.

All on the tiny N=8 model (conftest.py); encoder checkpoints are built in train.py's format
(model_fixtures.make_encoder_checkpoint), plus one real two-step `train encoder` run.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from adapdate_codec import api, codec, container, update
from adapdate_codec.adapters import AdapterConfig
from adapdate_codec.bundle import build_bundle, is_encoder_key
from adapdate_codec.errors import ModelError, ModelNotInstalledError, UpdateError
from adapdate_codec.imageio import Picture
from adapdate_codec.store import ModelStore
from conftest import make_tiny_bundle
from model_fixtures import ADAPTERS, make_checkpoint, make_encoder_checkpoint
from test_api import photo
from test_cli_coding import run_cli
from test_update import snapshot


def rewrite(data: bytes, manifest: dict) -> bytes:
    """An update with another manifest and a *valid* checksum: crafted, not damaged."""
    u = update.parse_update(data)
    body = json.dumps(manifest).encode()
    raw = struct.pack(">4sHI", update.MAGIC, update.FORMAT_VERSION, len(body)) + body + u.payload
    return raw + hashlib.sha256(raw).digest()


def _rebuilt(b, change) -> object:
    sd = {k: v.clone() for k, v in b.state_dict.items()}
    change(sd)
    return build_bundle(b.name, b.quality, b.arch, b.N, b.lmbda, sd)


# -- identities ------------------------------------------------------------------------------------------
def test_a_new_encoder_keeps_the_decoder_identity_and_a_decoder_change_does_not(tiny_bundle):
    def encoder_change(sd):
        sd["g_a.0.conv1.weight"] += 0.01
        sd["h_a.0.weight"] += 0.01

    enc = _rebuilt(tiny_bundle, encoder_change)
    assert enc.decoder_fingerprint == tiny_bundle.decoder_fingerprint
    assert enc.encoder_fingerprint != tiny_bundle.encoder_fingerprint and enc.fingerprint != tiny_bundle.fingerprint
    for key in ("g_s.0.conv1.weight", "h_s.0.weight", "entropy_parameters.0.bias", "entropy_bottleneck.biases.0",
                "context_prediction.bias"):
        dec = _rebuilt(tiny_bundle, lambda sd: sd[key].add_(0.05))
        assert dec.decoder_fingerprint != tiny_bundle.decoder_fingerprint, key
        assert dec.encoder_fingerprint == tiny_bundle.encoder_fingerprint, key


def test_the_three_identities_never_coincide(tiny_bundle):
    ids = {tiny_bundle.fingerprint, tiny_bundle.decoder_fingerprint, tiny_bundle.encoder_fingerprint}
    assert len(ids) == 3


def test_encoder_side_adapters_sit_in_g_a_only_and_leave_the_decoder(tiny_bundle):
    from adapdate_codec.network import build_model

    cfg = AdapterConfig("resblock", 2, 3, side="encoder")
    net = build_model("cheng2020-anchor", 8, cfg)
    net.load_state_dict(tiny_bundle.state_dict, strict=False)
    names = [k for k in net.state_dict() if ".adapter." in k]
    assert names and all(k.startswith("g_a.") for k in names)
    with torch.no_grad():
        for block in net.residual_blocks("resblock", "encoder"):
            block.adapter[2].weight.normal_(0.0, 0.1)
    b = build_bundle("tiny", 3, "cheng2020-anchor", 8, 0.0067, net.state_dict(), adapters=cfg)
    assert b.decoder_fingerprint == tiny_bundle.decoder_fingerprint != b.fingerprint
    both = AdapterConfig("resblock", 2, 3)
    assert both.to_dict() == {"type": "resblock", "R": 2, "v": 3}  # as 0.1.0 wrote it
    assert AdapterConfig.from_dict(cfg.to_dict()) == cfg


def test_decoder_fingerprints_of_the_package_models_are_known_without_decoding(tmp_path):
    entries = ModelStore(home=tmp_path)._builtins(archived=True)
    assert entries and all(e.decoder_fingerprint and e.encoder_fingerprint for e in entries)


# -- encoder updates: export, patch, and files across installations -------------------------------------
@pytest.fixture(scope="module")
def encoder_update(tiny_bundle, tmp_path_factory):
    """(checkpoint, update bytes) of a whole-encoder update of the tiny base."""
    folder = tmp_path_factory.mktemp("encoder-update")
    store = ModelStore(folder / "home")
    store.install_bundle(tiny_bundle, source="tests")
    ckpt = make_encoder_checkpoint(tiny_bundle, folder / "encoder.ckpt", scale=0.5, gain=30.0)
    return folder / "encoder.ckpt", ckpt, update.export_update(folder / "encoder.ckpt", store).to_bytes()


def test_encoder_update_manifest_says_encoder_only(encoder_update, tiny_bundle):
    _, _, data = encoder_update
    m = update.read_manifest(data)
    assert (m.format, m.scope, m.delta) == (2, "encoder", True)
    assert m.base_fingerprint == tiny_bundle.fingerprint and m.base_decoder_fingerprint == tiny_bundle.decoder_fingerprint
    assert m.tensors and all(is_encoder_key(t.name) for t in m.tensors) and not m.tables
    assert json.loads(data[10:10 + struct.unpack(">I", data[6:10])[0]])["scope"] == "encoder"


def test_encoder_patch_is_a_new_encoder_of_the_same_decoder(encoder_update, fresh_store, tiny_bundle):
    ckpt_path, ckpt, data = encoder_update
    store = ModelStore(fresh_store)
    r = update.apply_update(data, store)
    assert r.new.version == 2 and r.new.active and r.new.fingerprint == r.manifest.patched_fingerprint
    assert r.new.decoder_fingerprint == tiny_bundle.decoder_fingerprint
    assert r.new.encoder_fingerprint == r.manifest.patched_encoder_fingerprint != tiny_bundle.encoder_fingerprint
    patched = ModelStore(fresh_store).get("tiny", 3)
    tol = 2 * update.nnc.step_size(r.manifest.qp)
    for k, v in patched.state_dict.items():
        if is_encoder_key(k):  # the checkpoint's encoder, to NNCodec's quantization of the difference
            assert (v - ckpt["model"][k].float()).abs().max() <= tol + 1e-6, k
        else:  # the decoder, bit for bit
            assert torch.equal(v, tiny_bundle.state_dict[k]), k
    info = ModelStore(fresh_store).info("tiny", 3)
    assert [e["version"] for e in info["encoders"]] == [1, 2]
    assert info["history"][-1]["update"]["scope"] == "encoder"
    assert update.apply_update(data, ModelStore(fresh_store)).already_applied


def test_a_file_from_the_new_encoder_decodes_where_it_was_never_applied(encoder_update, tiny_bundle, tmp_path):
    """The acceptance test, through the command line: two installations (two ADAPDATE_HOMEs); one applies the
    encoder update and encodes; the other, never patched, decodes the file bit-identically to the first."""
    _, _, data = encoder_update
    homes = {}
    for name in ("patched", "plain"):
        homes[name] = tmp_path / name
        ModelStore(homes[name]).install_bundle(tiny_bundle, source="tests")
    (tmp_path / "enc.nnc").write_bytes(data)
    src = tmp_path / "in.png"
    from PIL import Image

    Image.fromarray(photo(h=48, w=72)).save(src)
    r = run_cli("encode", str(src), "-o", str(tmp_path / "before.adpd"), "--model", "tiny", home=homes["patched"])
    assert r.returncode == 0, r.stderr
    r = run_cli("model", "patch", str(tmp_path / "enc.nnc"), home=homes["patched"])
    assert r.returncode == 0 and "a new encoder of decoder" in r.stdout.decode(), r.stderr
    r = run_cli("encode", str(src), "-o", str(tmp_path / "after.adpd"), "--model", "tiny", home=homes["patched"])
    assert r.returncode == 0, r.stderr
    after = (tmp_path / "after.adpd").read_bytes()
    assert after != (tmp_path / "before.adpd").read_bytes()  # the new encoder wrote other latents
    assert container.unpack(after)[0].fingerprint == tiny_bundle.decoder_fingerprint_bytes
    outs = {}
    for name, home in homes.items():
        out = tmp_path / f"{name}.png"
        r = run_cli("decode", str(tmp_path / "after.adpd"), "-o", str(out), home=home)
        assert r.returncode == 0, r.stderr
        outs[name] = out.read_bytes()
    assert outs["patched"] == outs["plain"]
    r = run_cli("info", str(tmp_path / "after.adpd"), "--json", home=homes["plain"])
    row = json.loads(r.stdout)
    assert row["model_installed"] and row["model_encoders"] == ["v1"] and row["fingerprint_kind"] == "decoder"


def test_encoder_adapters_update(fresh_store, tiny_bundle, tmp_path):
    make_encoder_checkpoint(tiny_bundle, tmp_path / "a.ckpt", mode="adapters")
    store = ModelStore(fresh_store)
    u = update.export_update(tmp_path / "a.ckpt", store)
    m = u.manifest
    assert (m.scope, m.delta, m.adapters["side"]) == ("encoder", False, "encoder")
    assert all(".adapter." in t.name and t.name.startswith("g_a.") for t in m.tensors)
    r = update.apply_update(u.to_bytes(), store)
    patched = ModelStore(fresh_store).get("tiny", 3)
    assert patched.decoder_fingerprint == tiny_bundle.decoder_fingerprint and patched.adapters.side == "encoder"
    pic = Picture(photo(), "RGB")
    data = codec.encode_picture(pic, patched)
    assert np.array_equal(codec.decode_picture(data, lambda h: tiny_bundle).pixels,
                          codec.decode_picture(data, lambda h: patched).pixels)
    assert r.new.encoder_fingerprint != tiny_bundle.encoder_fingerprint


def test_export_encoder_of_a_whole_model_checkpoint_records_its_decoder_side(fresh_store, tiny_bundle, tmp_path):
    """A model trained elsewhere (decoder side near the base's, as a float copy of a compact base is): with
    --encoder only g_a/h_a ship, and the manifest says how far its decoder side was."""
    ckpt = make_encoder_checkpoint(tiny_bundle, tmp_path / "w.ckpt", touch_decoder=True)
    ckpt["config"]["encoder"] = None
    ckpt["config"]["base"] = None
    torch.save(ckpt, tmp_path / "w.ckpt")
    store = ModelStore(fresh_store)
    with pytest.raises(UpdateError, match="does not say which installed model"):
        update.export_update(tmp_path / "w.ckpt", store, encoder=True)
    u = update.export_update(tmp_path / "w.ckpt", store, encoder=True, base=store.get("tiny", 3))
    side = u.manifest.training["decoder_side_not_shipped"]
    assert side["tensors"] == 1 and side["example"] == "g_s.0.conv1.weight"
    r = update.apply_update(u.to_bytes(), store)
    assert r.new.decoder_fingerprint == tiny_bundle.decoder_fingerprint


def test_export_refusals(fresh_store, tiny_bundle, tmp_path):
    store = ModelStore(fresh_store)
    make_encoder_checkpoint(tiny_bundle, tmp_path / "d.ckpt", touch_decoder=True)
    with pytest.raises(UpdateError, match="changes 1 decoder tensors"):
        update.export_update(tmp_path / "d.ckpt", store)
    make_encoder_checkpoint(tiny_bundle, tmp_path / "same.ckpt", scale=0.0)
    with pytest.raises(UpdateError, match="already has"):
        update.export_update(tmp_path / "same.ckpt", store)
    other = make_tiny_bundle(seed=7)
    make_encoder_checkpoint(other, tmp_path / "other.ckpt")
    with pytest.raises(UpdateError, match="is not installed"):
        update.export_update(tmp_path / "other.ckpt", store)


# -- refusals at patch time: one line, the store unchanged --------------------------------------------
def test_an_encoder_update_for_another_decoder_is_refused(encoder_update, tiny_bundle, tmp_path):
    _, _, data = encoder_update
    home = tmp_path / "home"
    store = ModelStore(home)
    store.install_bundle(make_tiny_bundle(seed=3), source="tests")  # tiny q3, another decoder
    before = snapshot(home)
    with pytest.raises(UpdateError, match="is for tiny q3 decoder .* but the active decoder is"):
        update.apply_update(data, ModelStore(home))
    assert snapshot(home) == before


def test_damaged_and_crafted_encoder_updates_are_refused(encoder_update, fresh_store, tiny_bundle):
    _, _, data = encoder_update
    before = snapshot(fresh_store)
    m = update.read_manifest(data).to_dict()
    g_s = dict(m, tensors=[dict(t) for t in m["tensors"]])
    g_s["tensors"][0]["name"] = "g_s.0.conv1.weight"
    cases = {
        "checksum": data[:-40] + bytes([data[-40] ^ 1]) + data[-39:],
        "truncated": data[:-1],
        "decoder tensor": rewrite(data, g_s),
        "scope": rewrite(data, dict(m, scope="model")),
        "format 2 without scope": rewrite(data, {k: v for k, v in m.items() if k != "scope"}),
        "decoder fingerprint": rewrite(data, dict(m, base_decoder_fingerprint="0" * 64)),
        "base version": rewrite(data, dict(m, base_fingerprint="1" * 64)),
        "patched": rewrite(data, dict(m, patched_fingerprint="2" * 64)),
        "delta type": rewrite(data, dict(m, delta="yes")),
        "not a delta": rewrite(data, dict(m, delta=False)),
        "tables": rewrite(data, dict(m, tables=[{"name": n, "shape": [1]} for n in update.TABLE_NAMES])),
        "format 3": rewrite(data, dict(m, format=3)),
        "format as a list": rewrite(data, dict(m, format=[2])),  # a fuzz find: unhashable, was a TypeError
        "format as a bool": rewrite(data, dict(m, format=True)),
    }
    for what, bad in cases.items():
        with pytest.raises(UpdateError) as e:
            update.apply_update(bad, ModelStore(fresh_store))
        assert "\n" not in str(e.value), what
        assert snapshot(fresh_store) == before, what


def test_a_model_update_cannot_smuggle_encoder_weights(encoder_update, fresh_store):
    _, _, data = encoder_update
    m = update.read_manifest(data).to_dict()
    as_model = {k: v for k, v in m.items() if k not in ("scope", "delta", "base_decoder_fingerprint",
                                                        "patched_encoder_fingerprint")}
    with pytest.raises(UpdateError, match="not an adapter or entropy-bottleneck parameter"):
        update.apply_update(rewrite(data, dict(as_model, format=1, adapters=ADAPTERS)), ModelStore(fresh_store))


# -- rollback of either part --------------------------------------------------------------------------
def test_rollback_of_the_encoder_or_the_decoder(encoder_update, fresh_store, tiny_bundle, tmp_path):
    _, _, data = encoder_update
    store = ModelStore(fresh_store)
    make_checkpoint(tiny_bundle, tmp_path / "adapters.ckpt")  # a model update: a new decoder
    model_update = update.export_update(tmp_path / "adapters.ckpt", store).to_bytes()
    update.apply_update(data, store)  # v2: encoder update of v1's decoder
    with pytest.raises(ModelError, match="has no earlier decoder"):
        store.rollback("tiny", 3, "decoder")
    assert store.rollback("tiny", 3, "encoder").version == 1
    update.apply_update(data, store)  # v2 again: installed, made active
    assert store.active("tiny", 3).version == 2
    store.rollback("tiny", 3)  # back to v1, whose decoder the model update is for
    r = update.apply_update(model_update, store)  # v3: another decoder
    assert r.new.decoder_fingerprint != tiny_bundle.decoder_fingerprint
    with pytest.raises(ModelError, match="has no earlier encoder"):
        store.rollback("tiny", 3, "encoder")
    back = store.rollback("tiny", 3, "decoder")  # the latest version with the previous decoder
    assert back.decoder_fingerprint == tiny_bundle.decoder_fingerprint and back.version == 2
    r = run_cli("model", "rollback", "tiny", "--decoder", home=fresh_store)
    assert r.returncode == 1 and len(r.stderr.decode().strip().splitlines()) == 1


def test_a_decoder_change_makes_files_that_say_so(fresh_store, tiny_bundle, tmp_path):
    """A model update (adapters in g_s too) is a new decoder: its files name it, and an installation
    without the update cannot decode them (it says which decoder is missing)."""
    store = ModelStore(fresh_store)
    make_checkpoint(tiny_bundle, tmp_path / "adapters.ckpt")
    update.apply_update(update.export_update(tmp_path / "adapters.ckpt", store).to_bytes(), store)
    patched = ModelStore(fresh_store).get("tiny", 3)
    data = codec.encode_picture(Picture(photo(), "RGB"), patched)
    assert container.unpack(data)[0].fingerprint == patched.decoder_fingerprint_bytes != tiny_bundle.decoder_fingerprint_bytes
    plain = tmp_path / "plain"
    ModelStore(plain).install_bundle(tiny_bundle, source="tests")
    with pytest.raises(ModelNotInstalledError, match="decoder"):
        codec.decode_picture(data, ModelStore(plain).by_fingerprint)


def test_a_store_installed_by_0_1_0_still_finds_decoders(fresh_store, tiny_bundle):
    """Manifests and cards written by 0.1.0 lack the decoder fingerprint: it is computed from the model."""
    slot = fresh_store / "models" / "tiny" / "q3"
    manifest = json.loads((slot / "manifest.json").read_text())
    for v in manifest["versions"]:
        v.pop("decoder_fingerprint"), v.pop("encoder_fingerprint")
        card = json.loads((slot / v["file"]).with_suffix(".json").read_text())
        card.pop("decoder_fingerprint"), card.pop("encoder_fingerprint")
        (slot / v["file"]).with_suffix(".json").write_text(json.dumps(card))
    (slot / "manifest.json").write_text(json.dumps(manifest))
    store = ModelStore(fresh_store)
    assert store.active("tiny", 3).decoder_fingerprint is None
    data = codec.encode_picture(Picture(photo(), "RGB"), tiny_bundle)
    assert codec.decode_picture(data, store.by_fingerprint).pixels.shape == (24, 40, 3)
    status = api.model_status(api.info(data), store)  # what `adapdate info` says
    assert status.installed and status.encoders == ("v1",)


# -- training -----------------------------------------------------------------------------------------
def test_train_encoder_moves_only_the_encoder(fresh_store, tiny_bundle, tmp_path):
    """Two real steps of `adapdate train encoder`: g_a/h_a move, the decoder and its quantiles do not; the
    checkpoint exports as an encoder update without --encoder."""
    from PIL import Image

    from adapdate_codec.train import TrainConfig, train

    data = tmp_path / "images"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(data / f"{i}.png")
    cfg = TrainConfig(data=str(data), out=str(tmp_path / "run.ckpt"), quality=3, N=8, steps=2, batch=1, patch=64,
                      warmup=1, lr=1e-2, log_every=1000, encoder="whole", lmbda=tiny_bundle.lmbda,
                      base={"name": "tiny", "quality": 3, "fingerprint": tiny_bundle.fingerprint})
    state = train(cfg, init_state=tiny_bundle.state_dict, log=lambda s: None)
    moved = {k for k, v in state["model"].items() if k in tiny_bundle.state_dict
             and not torch.equal(v.float(), tiny_bundle.state_dict[k].float())}
    assert moved and all(is_encoder_key(k) for k in moved)
    store = ModelStore(fresh_store)
    u = update.export_update(tmp_path / "run.ckpt", store)
    assert u.manifest.scope == "encoder"
    assert update.apply_update(u.to_bytes(), store).new.decoder_fingerprint == tiny_bundle.decoder_fingerprint


def test_any_encoder_of_the_decoder_decodes_even_if_one_model_file_is_damaged(encoder_update, fresh_store,
                                                                              tiny_bundle):
    _, _, data = encoder_update
    r = update.apply_update(data, ModelStore(fresh_store))
    file = codec.encode_picture(Picture(photo(), "RGB"), ModelStore(fresh_store).get("tiny", 3))
    r.new.path.write_bytes(b"damaged")  # the active version, the first one tried
    out = codec.decode_picture(file, ModelStore(fresh_store).by_fingerprint)  # the base (v1) decodes it
    assert np.array_equal(out.pixels, codec.decode_picture(file, lambda h: tiny_bundle).pixels)
