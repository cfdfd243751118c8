"""Image files ⇄ Picture: formats, modes, alpha, bit depth, orientation, ICC, and bad input."""

from __future__ import annotations

import io
import random
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image, ImageCms

from adapdate_codec.errors import InputError
from adapdate_codec.imageio import Picture, format_for_path, load_picture, save_picture

SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def rgb_array(h: int = 12, w: int = 17, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def encode(im: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    out = io.BytesIO()
    im.save(out, fmt, **kw)
    return out.getvalue()


def load_quiet(data: bytes, **kw) -> Picture:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # these inputs must not warn
        return load_picture(data, **kw)


def png_16bit_rgb(a: np.ndarray) -> bytes:
    """A 48-bit RGB PNG, written by hand because Pillow cannot write one."""
    h, w, _ = a.shape

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    raw = b"".join(b"\x00" + a[y].astype(">u2").tobytes() for y in range(h))
    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


# --- formats -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "TIFF", "WEBP"])
def test_lossless_formats_load_exactly(fmt: str) -> None:
    a = rgb_array()
    kw = {"lossless": True} if fmt == "WEBP" else {}
    pic = load_quiet(encode(Image.fromarray(a), fmt, **kw))
    assert pic.mode == "RGB"
    assert pic.pixels.dtype == np.uint8 and pic.pixels.shape == a.shape
    np.testing.assert_array_equal(pic.pixels, a)


def test_jpeg_loads() -> None:
    a = np.full((16, 16, 3), 120, np.uint8)
    pic = load_quiet(encode(Image.fromarray(a), "JPEG", quality=95))
    assert pic.pixels.shape == (16, 16, 3) and pic.mode == "RGB"
    assert np.abs(pic.pixels.astype(int) - 120).max() <= 2


def test_one_pixel() -> None:
    pic = load_quiet(encode(Image.new("RGB", (1, 1), (1, 2, 3))))
    assert pic.pixels.tolist() == [[[1, 2, 3]]]


# --- modes ---------------------------------------------------------------------------------------------


def test_grayscale_is_remembered() -> None:
    g = rgb_array()[:, :, 0]
    pic = load_quiet(encode(Image.fromarray(g, "L")))
    assert pic.mode == "L" and pic.pixels.shape == (*g.shape, 3)
    for c in range(3):
        np.testing.assert_array_equal(pic.pixels[:, :, c], g)


def test_bilevel_is_gray() -> None:
    im = Image.new("1", (9, 5), 1)
    pic = load_quiet(encode(im))
    assert pic.mode == "L" and pic.pixels.min() == 255


def test_palette_without_transparency() -> None:
    im = Image.fromarray(rgb_array()).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    pic = load_quiet(encode(im))
    assert pic.mode == "RGB"
    np.testing.assert_array_equal(pic.pixels, np.asarray(im.convert("RGB")))


def test_cmyk_converted_with_warning() -> None:
    im = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # red
    with pytest.warns(UserWarning, match="CMYK"):
        pic = load_picture(encode(im, "JPEG", quality=95))
    assert pic.mode == "RGB"
    r, g, b = pic.pixels[4, 4].tolist()
    assert r > 200 and g < 60 and b < 60


# --- alpha ---------------------------------------------------------------------------------------------


def _rgba(alpha: int) -> Image.Image:
    a = np.dstack([rgb_array(), np.full((12, 17), 255, np.uint8)])
    a[0, 0, 3] = alpha
    return Image.fromarray(a, "RGBA")


@pytest.mark.parametrize(
    "im",
    [
        _rgba(0),
        Image.new("LA", (5, 5), (100, 10)),
        Image.new("PA", (5, 5)),
    ],
    ids=["RGBA", "LA", "PA"],
)
def test_transparency_refused(im: Image.Image) -> None:
    data = encode(im, "PNG") if im.mode != "PA" else encode(im.convert("RGBA"))
    with pytest.raises(InputError, match="has an alpha channel; use --drop-alpha"):
        load_picture(data)


def test_palette_transparency_refused() -> None:
    im = Image.new("P", (6, 6), 0)
    im.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    im.putpixel((1, 1), 1)
    data = encode(im, transparency=0)
    with pytest.raises(InputError, match="alpha channel"):
        load_picture(data)
    pic = load_quiet(data, drop_alpha=True)
    assert pic.pixels[1, 1].tolist() == [255, 0, 0] and pic.mode == "RGB"


def test_drop_alpha_keeps_colour() -> None:
    im = _rgba(0)
    pic = load_quiet(encode(im), drop_alpha=True)
    np.testing.assert_array_equal(pic.pixels, np.asarray(im)[:, :, :3])


def test_drop_alpha_gray() -> None:
    pic = load_quiet(encode(Image.new("LA", (5, 5), (100, 10))), drop_alpha=True)
    assert pic.mode == "L" and pic.pixels.max() == pic.pixels.min() == 100


def test_opaque_alpha_is_accepted() -> None:
    # An alpha channel that is 255 everywhere loses nothing when dropped.
    pic = load_quiet(encode(_rgba(255)))
    assert pic.mode == "RGB" and pic.pixels.shape == (12, 17, 3)


# --- bit depth -----------------------------------------------------------------------------------------


def test_16bit_gray_reduced_with_warning() -> None:
    a = np.array([[0, 257, 65535, 32896]], dtype=np.uint16)
    with pytest.warns(UserWarning, match="more than 8 bits"):
        pic = load_picture(encode(Image.fromarray(a)))
    assert pic.mode == "L"
    assert pic.pixels[0, :, 0].tolist() == [0, 1, 255, 128]


def test_48bit_rgb_reduced_with_warning() -> None:
    a = (rgb_array(4, 5).astype(np.uint16) * 257)
    with pytest.warns(UserWarning, match="more than 8 bits"):
        pic = load_picture(png_16bit_rgb(a))
    assert pic.mode == "RGB"
    np.testing.assert_array_equal(pic.pixels, (a // 257).astype(np.uint8))


def test_16bit_tiff_gray_reduced() -> None:
    a = np.full((3, 4), 65535, np.uint16)
    with pytest.warns(UserWarning, match="more than 8 bits"):
        pic = load_picture(encode(Image.fromarray(a), "TIFF"))
    assert pic.pixels.min() == 255 and pic.mode == "L"


def test_16bit_bmp_is_not_wide() -> None:
    # Pillow's "BGR;16" raw mode is a packed 5-6-5 pixel, 8 bits or fewer per sample: no warning.
    pic = load_quiet(encode(Image.new("RGB", (4, 4), (255, 0, 0)), "BMP"))
    assert pic.pixels[0, 0].tolist() == [255, 0, 0]


# --- orientation, ICC ----------------------------------------------------------------------------------


def test_exif_orientation_applied() -> None:
    a = np.zeros((2, 4, 3), np.uint8)  # 4 wide, 2 high
    a[0, 0] = (255, 255, 255)
    im = Image.fromarray(a)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    pic = load_quiet(encode(im, "PNG", exif=exif.tobytes()))
    assert pic.pixels.shape == (4, 2, 3)
    assert pic.pixels[0, 1].tolist() == [255, 255, 255]


def test_icc_profile_kept_and_written_back() -> None:
    pic = load_quiet(encode(Image.fromarray(rgb_array()), icc_profile=SRGB))
    assert pic.icc_profile == SRGB
    for fmt in ("PNG", "JPEG", "WEBP", "TIFF"):
        back = Image.open(io.BytesIO(save_picture(pic, fmt)))
        assert back.info.get("icc_profile") == SRGB, fmt


def test_rgb_profile_on_gray_image_dropped() -> None:
    pic = load_quiet(encode(Image.new("L", (4, 4), 9), icc_profile=SRGB))
    assert pic.icc_profile is None


# --- save ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "png", "BMP", "TIFF", "tif", "WEBP"])
def test_save_lossless_round_trip(fmt: str) -> None:
    pic = Picture(rgb_array(), "RGB")
    back = load_quiet(save_picture(pic, fmt))
    np.testing.assert_array_equal(back.pixels, pic.pixels)


def test_save_jpeg() -> None:
    data = save_picture(Picture(np.full((8, 8, 3), 50, np.uint8), "RGB"), "jpg")
    assert Image.open(io.BytesIO(data)).format == "JPEG"


def test_save_restores_gray() -> None:
    g = np.repeat(rgb_array()[:, :, :1], 3, axis=2)
    im = Image.open(io.BytesIO(save_picture(Picture(g, "L"))))
    assert im.mode == "L"
    np.testing.assert_array_equal(np.asarray(im), g[:, :, 0])


def test_save_unknown_format() -> None:
    with pytest.raises(ValueError):
        save_picture(Picture(rgb_array(), "RGB"), "XYZ")


def test_format_for_path() -> None:
    assert format_for_path("a/b.PNG") == "PNG"
    assert format_for_path("x.jpeg") == "JPEG"
    assert format_for_path("x.tif") == "TIFF"
    assert format_for_path("x.adpd") is None


# --- bad input -----------------------------------------------------------------------------------------


def test_empty_input() -> None:
    with pytest.raises(InputError, match="empty"):
        load_picture(b"")


def test_not_an_image() -> None:
    with pytest.raises(InputError, match="not an image"):
        load_picture(b"hello, this is text\n" * 10)


def test_truncated_png() -> None:
    data = encode(Image.fromarray(rgb_array(32, 32)))
    # (Pillow accepts a PNG cut inside IEND or the last CRC: every pixel is there, so that is fine.)
    for n in (8, 20, 40, len(data) // 2, len(data) - 40):
        with pytest.raises(InputError):
            load_picture(data[:n])


def test_truncated_jpeg() -> None:
    data = encode(Image.fromarray(rgb_array(32, 32)), "JPEG")
    with pytest.raises(InputError):
        load_picture(data[: len(data) // 2])


def test_random_and_bitflipped_inputs_only_raise_input_error() -> None:
    rng = random.Random(7)
    png = encode(Image.fromarray(rgb_array(8, 8)))
    samples = [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 100))) for _ in range(50)]
    for _ in range(50):
        d = bytearray(png)
        d[rng.randrange(len(d))] ^= 1 << rng.randrange(8)
        samples.append(bytes(d))
    for data in samples:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                load_picture(data)
        except InputError as e:
            assert "\n" not in str(e)


def test_pixel_limit(monkeypatch) -> None:
    """adapdate's limit (limits.py) governs, from the header, whatever Pillow's MAX_IMAGE_PIXELS is."""
    data = encode(Image.new("RGB", (8, 8)))
    with pytest.raises(InputError, match="too large: 8x8 is 64 pixels, above the limit of 63"):
        load_picture(data, max_pixels=63)
    monkeypatch.setenv("ADAPDATE_MAX_PIXELS", "10")
    with pytest.raises(InputError, match="above the limit of 10 "):
        load_picture(data)
    assert load_picture(data, max_pixels=64).width == 8  # the option wins over the variable
    monkeypatch.setenv("ADAPDATE_MAX_PIXELS", "0")  # no limit, not even Pillow's own
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)
    assert load_picture(data).width == 8
    monkeypatch.setenv("ADAPDATE_MAX_PIXELS", "lots")
    with pytest.raises(InputError, match="ADAPDATE_MAX_PIXELS must be a whole number"):
        load_picture(data)


def test_a_huge_declared_size_is_refused_from_the_header() -> None:
    """A 12000x12000 PNG of a few hundred bytes: refused at once, before its pixels are decoded."""
    import time

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 12000, 12000, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b""))
    start = time.perf_counter()
    with pytest.raises(InputError, match="too large: 12000x12000"):
        load_picture(png)
    assert time.perf_counter() - start < 1.0
