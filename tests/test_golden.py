"""Files written by earlier versions must keep decoding: a golden file coded with a fixed tiny model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from adapdate_codec import codec, container
from adapdate_codec.bundle import ModelBundle

DATA = Path(__file__).parent / "data"


def test_golden_file_still_decodes():
    bundle = ModelBundle.load(DATA / "golden-model.pt")
    data = (DATA / "golden.adpd").read_bytes()
    header, sections = container.unpack(data)
    assert header.fingerprint == bundle.fingerprint_bytes
    lat = codec.decode_latents(sections, bundle, header.height, header.width)
    assert torch.equal(lat.y_hat, torch.from_numpy(np.load(DATA / "golden-y_hat.npy")).double())
    out = codec.decode_picture(data, lambda h: bundle)
    expected = np.asarray(Image.open(DATA / "golden-decoded.png"))
    # y_hat is exact on every platform; the float synthesis may differ by one level elsewhere
    assert np.abs(out.pixels.astype(int) - expected).max() <= 1


def test_golden_model_reencodes_to_the_same_bytes():
    bundle = ModelBundle.load(DATA / "golden-model.pt")
    from adapdate_codec.imageio import Picture

    px = np.asarray(Image.open(DATA / "golden-input.png"))
    assert codec.encode_picture(Picture(px, "RGB"), bundle) == (DATA / "golden-format2.adpd").read_bytes()


def test_format_2_golden_file_names_the_decoder_and_codes_what_format_1_did():
    """The same image by the same model in both formats: the same sections, the same pixels; the header
    names the whole model (format 1, 0.1.0) or the decoder (format 2)."""
    bundle = ModelBundle.load(DATA / "golden-model.pt")
    old, new = (DATA / "golden.adpd").read_bytes(), (DATA / "golden-format2.adpd").read_bytes()
    (h1, s1), (h2, s2) = container.unpack(old), container.unpack(new)
    assert (h1.fingerprint_kind, h1.fingerprint) == ("model", bundle.fingerprint_bytes)
    assert (h2.fingerprint_kind, h2.fingerprint) == ("decoder", bundle.decoder_fingerprint_bytes)
    assert s1 == s2 and old[0:4] == new[0:4] and old[5:-4] != new[5:-4]
    expected = np.asarray(Image.open(DATA / "golden-decoded.png"))
    assert np.abs(codec.decode_picture(new, lambda h: bundle).pixels.astype(int) - expected).max() <= 1


# -- every model version a release shipped: its golden file decodes with the package's models --------
GOLDEN = sorted((DATA / "golden").glob("*.adpd"))


@pytest.fixture(scope="module")
def package_store(tmp_path_factory):
    from adapdate_codec.store import ModelStore

    return ModelStore(home=tmp_path_factory.mktemp("home"))  # nothing installed: the package alone


# 0.1.0's model versions: their files (format 1, naming the whole model) must decode forever
RELEASE_0_1_0 = ("8ed609ec", "355e0e24", "7f04f267", "897b48b5", "95707403")


def test_every_0_1_0_model_version_keeps_its_format_1_golden_file():
    have = {p.stem.rsplit("-", 1)[1] for p in GOLDEN if "-decoder-" not in p.stem}
    assert set(RELEASE_0_1_0) <= have
    for p in GOLDEN:
        if "-decoder-" not in p.stem:
            assert container.unpack(p.read_bytes())[0].fingerprint_kind == "model", p.name


def test_there_is_a_format_2_golden_file_per_shipped_decoder():
    from adapdate_codec.store import ModelStore

    have = {p.stem.split("-decoder-")[1][:8] for p in GOLDEN if "-decoder-" in p.stem}
    shipped = {e.decoder_fingerprint[:8] for e in ModelStore(home=DATA / "no-home")._builtins(archived=True)}
    assert shipped and shipped <= have, f"no golden file for {sorted(shipped - have)}: run tests/data/golden/make.py"
    for p in GOLDEN:
        if "-decoder-" in p.stem:
            assert container.unpack(p.read_bytes())[0].fingerprint_kind == "decoder", p.name


@pytest.mark.parametrize("path", GOLDEN, ids=lambda p: p.stem)
def test_released_golden_file_decodes(path, package_store):
    data = path.read_bytes()
    header, sections = container.unpack(data)
    bundle = package_store.by_fingerprint(header)  # format 2: a built-in with that decoder; 1: that version
    # the package's index of identities is what this model really has
    entry = next(e for e in package_store._builtins(archived=True) if e.fingerprint == bundle.fingerprint)
    assert (entry.decoder_fingerprint, entry.encoder_fingerprint) == (bundle.decoder_fingerprint,
                                                                    bundle.encoder_fingerprint)
    lat = codec.decode_latents(sections, bundle, header.height, header.width)
    assert torch.equal(lat.y_hat, torch.from_numpy(np.load(path.with_suffix(".y.npy")).astype(np.float64)))
    out = codec.decode_picture(data, package_store.by_fingerprint)
    expected = np.asarray(Image.open(path.with_suffix(".png")))
    assert out.pixels.shape == expected.shape
    # y_hat is exact on every platform; the float synthesis may differ by one level elsewhere
    assert np.abs(out.pixels.astype(int) - expected).max() <= 1


def test_every_shipped_quality_encodes_from_the_command_line(package_store, tmp_path):
    import os
    import subprocess
    import sys

    qualities = sorted({e.quality for e in package_store._builtins()})
    src = tmp_path / "in.png"
    Image.fromarray(np.asarray(Image.open(GOLDEN[0].with_suffix(".png")))).save(src)
    env = dict(os.environ, ADAPDATE_HOME=str(package_store.home))
    for q in qualities:
        out = tmp_path / f"q{q}.adpd"
        r = subprocess.run([sys.executable, "-m", "adapdate_codec", "encode", str(src), "-o", str(out), "-q", str(q)],
                           capture_output=True, text=True, timeout=600, env=env)
        assert r.returncode == 0, r.stderr
        assert container.unpack(out.read_bytes())[0].quality == q


def test_files_made_with_effort_are_ordinary_files():
    """--effort changes the latents, never the format: the same header and format version as the plain
    file of the same model version (both decode above, pixels compared)."""
    made = [p for p in GOLDEN if p.stem.rsplit("-", 1)[1].startswith("e")]
    assert made, "no golden file made with --effort: run tests/data/golden/make.py"
    for p in made:
        plain = p.with_name(p.stem.rsplit("-", 1)[0] + ".adpd")
        a, b = p.read_bytes(), plain.read_bytes()
        assert container.format_version(a) == container.format_version(b)
        assert container.unpack(a)[0] == container.unpack(b)[0]
        assert a != b


UPDATES = Path(__file__).resolve().parents[1] / "models" / "updates"


@pytest.mark.parametrize("path", sorted(UPDATES.glob("*.nnc")), ids=lambda p: p.stem)
def test_shipped_encoder_update_applies_and_its_files_decode_without_it(path, package_store, tmp_path):
    """What models/updates/README.md promises: `model patch` takes it (the card's checksum, size and
    fingerprints), and a file its encoder writes decodes bit for bit on an installation without it."""
    import hashlib
    import json

    from adapdate_codec import update
    from adapdate_codec.imageio import Picture
    from adapdate_codec.store import ModelStore

    data, card = path.read_bytes(), json.loads(path.with_suffix(".json").read_text())
    assert hashlib.sha256(data).hexdigest() == card["sha256"] and len(data) == card["bytes"] <= 1_000_000
    patched = ModelStore(home=tmp_path / "patched")
    update.apply_update(data, patched, source=path.name)
    m = update.read_manifest(data)
    bundle = patched.get(m.base_name, m.base_quality)
    assert bundle.fingerprint == card["patched_fingerprint"] != card["base"]["fingerprint"]
    assert bundle.decoder_fingerprint == card["base"]["decoder_fingerprint"]
    px = np.asarray(Image.open(GOLDEN[0].with_suffix(".png")).convert("RGB"))
    coded = codec.encode_picture(Picture(px, "RGB"), bundle)
    assert container.unpack(coded)[0].fingerprint == bytes.fromhex(card["base"]["decoder_fingerprint"])
    assert np.array_equal(codec.decode_picture(coded, package_store.by_fingerprint).pixels,
                          codec.decode_picture(coded, patched.by_fingerprint).pixels)
