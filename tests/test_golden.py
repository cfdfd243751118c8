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
    assert codec.encode_picture(Picture(px, "RGB"), bundle) == (DATA / "golden.adpd").read_bytes()


# -- every model version a release shipped: its golden file decodes with the package's models --------
GOLDEN = sorted((DATA / "golden").glob("*.adpd"))


@pytest.fixture(scope="module")
def package_store(tmp_path_factory):
    from adapdate_codec.store import ModelStore

    return ModelStore(home=tmp_path_factory.mktemp("home"))  # nothing installed: the package alone


def test_there_is_a_golden_file_per_shipped_model_version():
    from adapdate_codec.store import ModelStore

    have = {p.stem.rsplit("-", 1)[1] for p in GOLDEN}
    shipped = {e.fingerprint[:8] for e in ModelStore(home=DATA / "no-home")._builtins(archived=True)}
    assert shipped and shipped <= have, f"no golden file for {sorted(shipped - have)}: run tests/data/golden/make.py"


@pytest.mark.parametrize("path", GOLDEN, ids=lambda p: p.stem)
def test_released_golden_file_decodes(path, package_store):
    data = path.read_bytes()
    header, sections = container.unpack(data)
    bundle = package_store.by_fingerprint(header)
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
