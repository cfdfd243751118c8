"""The Python API (`adapdate_codec.encode / decode / info`): inputs, round trips, errors, the per-process
model cache and threads. Tiny models (N=8) from conftest, through ADAPDATE_HOME."""

from __future__ import annotations

import io
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageCms

import adapdate_codec
from adapdate_codec import api, codec
from adapdate_codec.bundle import ModelBundle
from adapdate_codec.imageio import Picture
from adapdate_codec.store import ModelStore
from conftest import make_tiny_bundle

SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def photo(h: int = 24, w: int = 40, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([128 + 90 * np.sin(xx / (5 + c) + yy / (9 + c)) for c in range(3)], -1)
    return np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)


def test_public_names() -> None:
    assert {"encode", "decode", "info", "FileInfo", "AdapdateError", "FormatError"} <= set(adapdate_codec.__all__)
    assert adapdate_codec.encode is api.encode and adapdate_codec.FileInfo is api.FileInfo


def test_array_round_trip_matches_the_codec(api_home, tiny_bundle) -> None:
    px = photo()
    data = adapdate_codec.encode(px, model="tiny")
    assert data == codec.encode_picture(Picture(px, "RGB"), tiny_bundle)  # the CLI's path, byte for byte
    im = adapdate_codec.decode(data)
    assert isinstance(im, Image.Image) and im.mode == "RGB" and im.size == (40, 24)
    assert np.array_equal(np.asarray(im), codec.decode_picture(data, lambda h: tiny_bundle).pixels)


def test_every_kind_of_input_gives_the_same_file(api_home, tmp_path) -> None:
    px = photo(seed=1)
    path = tmp_path / "p.png"
    Image.fromarray(px).save(path)
    expected = adapdate_codec.encode(px, model="tiny")
    assert adapdate_codec.encode(Image.fromarray(px), model="tiny") == expected
    assert adapdate_codec.encode(str(path), model="tiny") == expected
    assert adapdate_codec.encode(path, model="tiny") == expected
    assert adapdate_codec.encode(path.read_bytes(), model="tiny") == expected
    (tmp_path / "p.adpd").write_bytes(expected)
    assert adapdate_codec.decode(tmp_path / "p.adpd").tobytes() == adapdate_codec.decode(expected).tobytes()


def test_gray_and_icc_are_restored(api_home) -> None:
    gray = Image.fromarray(photo()[:, :, 1]).convert("L")
    gray_im = adapdate_codec.decode(adapdate_codec.encode(gray, model="tiny"))
    assert gray_im.mode == "L" and gray_im.size == gray.size
    rgb = Image.fromarray(photo())
    buf = io.BytesIO()
    rgb.save(buf, "PNG", icc_profile=SRGB)
    back = adapdate_codec.decode(adapdate_codec.encode(Image.open(buf), model="tiny"))
    assert back.info["icc_profile"] == SRGB
    assert "icc_profile" not in adapdate_codec.decode(adapdate_codec.encode(rgb, model="tiny")).info


def test_info_reads_the_header(api_home) -> None:
    data = adapdate_codec.encode(photo(h=30, w=50), model="tiny")
    fi = adapdate_codec.info(data)
    assert (fi.model, fi.quality, fi.width, fi.height, fi.mode) == ("tiny", 3, 50, 30, "RGB")
    active = ModelStore(api_home).active("tiny", 3)
    assert (fi.fingerprint_kind, fi.fingerprint) == ("decoder", active.decoder_fingerprint)
    assert fi.format_version == 2 and fi.bytes == len(data) and fi.bpp == pytest.approx(len(data) * 8 / 1500)
    assert list(fi.sections) == ["header", "z", "y", "checksum"] and sum(fi.sections.values()) == len(data)
    assert not fi.icc_profile and fi.icc_profile_bytes == 0


@pytest.mark.parametrize("damage", ["truncated", "bitflip", "empty", "not adpd"])
def test_damaged_files_raise_format_error(api_home, damage) -> None:
    data = bytearray(adapdate_codec.encode(photo(), model="tiny"))
    if damage == "truncated":
        data = data[:-3]
    elif damage == "bitflip":
        data[len(data) // 2] ^= 4
    elif damage == "empty":
        data = bytearray()
    else:
        data = bytearray(b"\x89PNG\r\n\x1a\n" + bytes(40))
    with pytest.raises(adapdate_codec.FormatError):
        adapdate_codec.info(bytes(data))
    with pytest.raises(adapdate_codec.FormatError):
        adapdate_codec.decode(bytes(data))


def test_errors_are_the_library_s_own(api_home, tmp_path) -> None:
    with pytest.raises(adapdate_codec.ModelNotInstalledError):
        adapdate_codec.encode(photo(), model="nosuch")
    with pytest.raises(adapdate_codec.InputError, match="uint8"):
        adapdate_codec.encode(photo().astype(np.float32), model="tiny")
    with pytest.raises(adapdate_codec.InputError, match="alpha"):
        adapdate_codec.encode(Image.new("RGBA", (8, 8), (1, 2, 3, 100)), model="tiny")
    assert adapdate_codec.encode(Image.new("RGBA", (8, 8), (1, 2, 3, 100)), model="tiny", drop_alpha=True)
    with pytest.raises(adapdate_codec.InputError, match="no such file"):
        adapdate_codec.encode(tmp_path / "missing.png", model="tiny")
    with pytest.raises(adapdate_codec.DeviceError):
        adapdate_codec.encode(photo(), model="tiny", device="nonsense")
    other = make_tiny_bundle(name="tiny", seed=7)  # a version that is not installed
    data = codec.encode_picture(Picture(photo(), "RGB"), other)
    with pytest.raises(adapdate_codec.ModelNotInstalledError, match="not installed"):
        adapdate_codec.decode(data)
    with pytest.raises(ValueError):
        adapdate_codec.encode(photo(), model="tiny", quality=3, target_bpp=1.0)


@pytest.fixture
def three_qualities(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "home"
    for q in (1, 2, 3):
        ModelStore(home).install_bundle(make_tiny_bundle(name="tiny", quality=q, seed=q), source="tests")
    monkeypatch.setenv("ADAPDATE_HOME", str(home))
    api.clear_model_cache()
    return home


def test_target_bpp_picks_the_highest_quality_that_fits(three_qualities) -> None:
    px = photo(h=32, w=48, seed=4)
    sizes = {q: adapdate_codec.encode(px, model="tiny", quality=q) for q in (1, 2, 3)}
    rates = {q: len(d) * 8 / (32 * 48) for q, d in sizes.items()}
    for target in sorted(rates.values()):
        fitting = [q for q, r in rates.items() if r <= target]
        got = adapdate_codec.encode(px, model="tiny", target_bpp=target)
        assert got == sizes[max(fitting)]
    with pytest.warns(UserWarning, match="no installed quality reaches"):
        got = adapdate_codec.encode(px, model="tiny", target_bpp=min(rates.values()) / 2)
    assert got == sizes[1]


def test_models_load_once_per_process(api_home, monkeypatch) -> None:
    loads: list[str] = []
    original = ModelBundle.load.__func__

    def counting(cls, path):
        loads.append(str(path))
        return original(cls, path)

    monkeypatch.setattr(ModelBundle, "load", classmethod(counting))
    api.clear_model_cache()
    with ThreadPoolExecutor(4) as pool:
        files = list(pool.map(lambda i: adapdate_codec.encode(photo(seed=i), model="tiny"), range(8)))
        list(pool.map(adapdate_codec.decode, files))
    assert len(loads) == 1


@pytest.mark.parametrize("torch_threads", [1, 2])
def test_threads_give_the_same_bytes_and_pixels(api_home, torch_threads) -> None:
    images = [photo(h=40 + 8 * i, w=56, seed=10 + i) for i in range(6)]
    files = [adapdate_codec.encode(px, model="tiny") for px in images]  # one after another
    pixels = [np.asarray(adapdate_codec.decode(d)) for d in files]
    before = torch.get_num_threads()
    torch.set_num_threads(torch_threads)
    barrier = threading.Barrier(3)

    def both(i: int) -> tuple[bytes, np.ndarray]:
        barrier.wait()  # start together, so that the codings overlap
        data = adapdate_codec.encode(images[i], model="tiny")
        return data, np.asarray(adapdate_codec.decode(files[i]))

    try:
        with ThreadPoolExecutor(3) as pool:
            results = list(pool.map(both, range(6)))
    finally:
        torch.set_num_threads(before)
    for (data, px), want_data, want_px in zip(results, files, pixels):
        assert data == want_data
        assert np.array_equal(px, want_px)
