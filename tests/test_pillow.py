"""The Pillow plugin: real `Image.open` / `Image.save` round trips, damaged files, registration, and the
issue's acceptance one-liner in a fresh interpreter. Tiny models (N=8) through ADAPDATE_HOME."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image, UnidentifiedImageError

import adapdate_codec
import adapdate_codec.pillow  # noqa: F401  (registers the plugin)
from adapdate_codec import api
from adapdate_codec.store import ModelStore
from conftest import make_tiny_bundle
from test_api import SRGB, photo


def test_registered() -> None:
    assert Image.registered_extensions()[".adpd"] == "ADPD"
    assert Image.MIME["ADPD"] == "image/x-adapdate"
    adapdate_codec.pillow.register()  # idempotent
    assert Image.ID.count("ADPD") == 1


def test_save_and_open_round_trip(api_home, tmp_path) -> None:
    px = photo(h=24, w=40)
    path = tmp_path / "k.adpd"
    Image.fromarray(px).save(path, model="tiny")
    assert path.read_bytes() == adapdate_codec.encode(px, model="tiny")  # the same file as the API's
    im = Image.open(path)
    assert (im.format, im.size, im.mode) == ("ADPD", (40, 24), "RGB")
    assert im.get_format_mimetype() == "image/x-adapdate"
    assert im.info["adapdate"].model == "tiny"
    assert np.array_equal(np.asarray(im), np.asarray(adapdate_codec.decode(path.read_bytes())))
    # and on to another format, as any Pillow image
    out = io.BytesIO()
    im.save(out, "PNG")
    assert Image.open(out).size == (40, 24)


def test_file_objects_gray_and_icc(api_home) -> None:
    buf = io.BytesIO()
    Image.fromarray(photo()[:, :, 0]).save(buf, "ADPD", model="tiny")
    buf.seek(0)
    gray = Image.open(buf)
    assert gray.mode == "L" and np.asarray(gray).shape == (24, 40)
    buf = io.BytesIO()
    Image.fromarray(photo()).save(buf, format="ADPD", model="tiny", icc_profile=SRGB)  # as Pillow's savers
    assert Image.open(buf).info["icc_profile"] == SRGB
    src = io.BytesIO()
    Image.fromarray(photo()).save(src, "PNG", icc_profile=SRGB)
    out = io.BytesIO()
    Image.open(src).save(out, "ADPD", model="tiny")
    assert Image.open(io.BytesIO(out.getvalue())).info["icc_profile"] == SRGB


def test_save_options(tmp_path, monkeypatch) -> None:
    home = tmp_path / "home"
    for q in (1, 2):
        ModelStore(home).install_bundle(make_tiny_bundle(name="tiny", quality=q, seed=q), source="tests")
    monkeypatch.setenv("ADAPDATE_HOME", str(home))
    api.clear_model_cache()
    im = Image.fromarray(photo(seed=2))
    im.save(tmp_path / "q1.adpd", model="tiny", quality=1)
    assert Image.open(tmp_path / "q1.adpd").info["adapdate"].quality == 1
    im.save(tmp_path / "t.adpd", model="tiny", target_bpp=1000.0)  # everything fits: the highest quality
    assert Image.open(tmp_path / "t.adpd").info["adapdate"].quality == 2


@pytest.mark.parametrize("damage, reason", [("truncated", "truncated file"), ("bitflip", "checksum mismatch")])
def test_open_damaged_file(api_home, tmp_path, damage, reason) -> None:
    data = bytearray(adapdate_codec.encode(photo(), model="tiny"))
    if damage == "truncated":
        data = data[:-10]
    else:
        data[-8] ^= 1
    path = tmp_path / "bad.adpd"
    path.write_bytes(bytes(data))
    with pytest.raises(UnidentifiedImageError) as caught:
        Image.open(path)
    message = str(caught.value)
    assert reason in message and str(path) in message and "\n" not in message
    assert isinstance(caught.value, adapdate_codec.FormatError)  # our own error too


def test_not_our_format_is_left_to_pillow(api_home, tmp_path) -> None:
    path = tmp_path / "x.adpd"
    path.write_bytes(b"hello")
    with pytest.raises(UnidentifiedImageError, match="cannot identify image file"):
        Image.open(path)


def test_load_without_the_model(api_home, tmp_path) -> None:
    other = make_tiny_bundle(name="tiny", seed=9)  # coded with a version that is not installed
    from adapdate_codec import codec
    from adapdate_codec.imageio import Picture

    path = tmp_path / "other.adpd"
    path.write_bytes(codec.encode_picture(Picture(photo(), "RGB"), other))
    im = Image.open(path)  # the header is fine
    assert im.size == (40, 24)
    with pytest.raises(OSError, match="not installed") as caught:
        im.load()
    assert isinstance(caught.value, adapdate_codec.ModelNotInstalledError)


def test_failed_save_leaves_no_file(api_home, tmp_path) -> None:
    path = tmp_path / "a.adpd"
    with pytest.raises(OSError, match="alpha channel") as caught:
        Image.new("RGBA", (8, 8), (1, 2, 3, 4)).save(path, model="tiny")
    assert isinstance(caught.value, adapdate_codec.InputError)
    assert not path.exists()
    with pytest.raises(adapdate_codec.ModelNotInstalledError):
        Image.new("RGB", (8, 8)).save(path, model="nosuch")
    assert not path.exists()


def test_acceptance_one_liner(tmp_path) -> None:
    """The issue's check, verbatim, in a fresh interpreter; a tiny model stands in for the default one
    (installed as cheng2020-anchor q3 in a throwaway store, so it is the active default)."""
    home = tmp_path / "home"
    ModelStore(home).install_bundle(make_tiny_bundle(name="cheng2020-anchor", quality=3), source="tests")
    Image.fromarray(photo(h=30, w=44)).save(tmp_path / "k.png")
    code = ("import adapdate_codec.pillow; from PIL import Image; Image.open('k.png').save('k.adpd'); "
            "print(Image.open('k.adpd').size)")
    env = {**os.environ, "ADAPDATE_HOME": str(home), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "(44, 30)"
    assert r.stderr == ""  # no third-party warnings either
