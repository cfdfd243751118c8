"""Image files ⇄ `Picture`: the only place that knows about Pillow, modes, alpha, bit depth and ICC.

Every image enters the codec as 8-bit RGB. What the codec cannot carry is either refused (transparency,
unless the user asks to drop it) or reduced with a warning (more than 8 bits per sample). Grayscale is
remembered so that decoding writes a grayscale file again.
"""

from __future__ import annotations

import contextlib
import io
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from adapdate_codec import limits
from adapdate_codec.errors import InputError

# Output formats by file suffix (the CLI picks one from the output name).
OUTPUT_FORMATS: dict[str, str] = {
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".webp": "WEBP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".bmp": "BMP",
}

# Pillow modes that hold one gray sample per pixel; decoding restores them as "L".
_GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
# Raw-mode suffixes Pillow uses for 16 bits per sample ("RGB;16B", "LA;16B", "I;16", ...). Note that
# "BGR;16" / "RGB;16" without an endianness letter are packed 5-6-5 pixels (16-bit BMP), not 16 bits/sample.
_WIDE_RAWMODE_SUFFIXES = ("16B", "16L", "16N", "32", "32B", "32L", "32N", "32F", "32BF", "32S", "32BS")
_WIDE_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
_JPEG_QUALITY = 95  # decoded output saved as JPEG: keep the extra loss small


@dataclass
class Picture:
    pixels: np.ndarray  # H x W x 3, uint8, RGB
    mode: str  # "L" for a grayscale source (decode restores it), "RGB" otherwise
    icc_profile: bytes | None = None

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])


_heif_registered = False


def _register_optional_openers() -> None:
    """Let Pillow open HEIF/HEIC when pillow-heif is installed (imported lazily: it is slow to import)."""
    global _heif_registered
    if _heif_registered:
        return
    _heif_registered = True
    try:
        from pillow_heif import register_heif_opener
    except ImportError:
        return
    register_heif_opener()


@contextlib.contextmanager
def _pillow_bomb_limit():
    """Our limit (limits.py) replaces Pillow's decompression-bomb check, which warns above MAX_IMAGE_PIXELS
    and refuses above twice that whatever --max-pixels says: off meanwhile (ours is checked right after
    opening, on the same header size)."""
    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = old


def _open(data: bytes, limit: int | None) -> Image.Image:
    if not data:
        raise InputError("empty input (not an image)")
    _register_optional_openers()
    try:
        with _pillow_bomb_limit():
            im = Image.open(io.BytesIO(data))
        limits.check_pixels(im.width, im.height, limit)  # from the header: before the pixels are decoded
        return im
    except UnidentifiedImageError:
        raise InputError("not an image file Pillow can read") from None
    except Image.DecompressionBombError as e:
        raise InputError(f"image too large: {e}") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, KeyError) as e:
        raise InputError(f"cannot read image: {e}") from None


def _source_bits_above_8(im: Image.Image) -> bool:
    """Whether the file stores more than 8 bits per sample. Must be asked before load() clears im.tile."""
    if im.mode in _WIDE_MODES:
        return True
    for tile in getattr(im, "tile", None) or ():  # an image made in memory has no tiles
        rawmode = tile.args[0] if isinstance(tile.args, tuple) and tile.args else tile.args
        if isinstance(rawmode, str) and ";" in rawmode and rawmode.rsplit(";", 1)[1] in _WIDE_RAWMODE_SUFFIXES:
            return True
    bits = getattr(im, "tag_v2", {}).get(258)  # TIFF BitsPerSample
    if isinstance(bits, tuple):
        return any(b > 8 for b in bits)
    return isinstance(bits, int) and bits > 8


def _has_transparent_pixels(im: Image.Image) -> bool:
    """True when some pixel is not fully opaque; an all-opaque alpha channel loses nothing when dropped."""
    if not im.has_transparency_data:
        return False
    alpha = im.convert("RGBA" if im.mode not in ("LA", "La") else "LA").getchannel("A")
    lo, _ = alpha.getextrema()
    return lo < 255


def _wide_gray_to_8bit(im: Image.Image) -> np.ndarray:
    """Scale a 16/32-bit or float gray image to uint8 (Pillow's convert("L") would clip, not scale)."""
    a = np.asarray(im)
    if im.mode == "F":
        a = a.astype(np.float64)
        a = np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
        scale = 255.0 if a.max(initial=0.0) <= 1.0 else 1.0  # floats in [0, 1] or already in [0, 255]
        return np.clip(np.rint(a * scale), 0, 255).astype(np.uint8)
    a = np.clip(a.astype(np.int64), 0, 65535)  # mode "I" is how Pillow holds 16-bit samples in int32
    return ((a * 255 + 32767) // 65535).astype(np.uint8)


def _icc_fits(icc: bytes | None, mode: str) -> bytes | None:
    """Keep the ICC profile only if it describes the colour space we store (GRAY for L, RGB otherwise)."""
    if not icc or len(icc) < 20:
        return None
    space = icc[16:20]
    if (mode == "L" and space == b"GRAY") or (mode == "RGB" and space == b"RGB "):
        return icc
    return None


def _to_rgb(im: Image.Image) -> tuple[np.ndarray, str]:
    """Convert any Pillow mode to (H x W x 3 uint8 RGB, remembered mode)."""
    if im.mode in _GRAY_MODES:
        if im.mode in _WIDE_MODES:
            gray = _wide_gray_to_8bit(im)
        else:
            gray = np.asarray(im.convert("L"))  # drops the alpha of LA / La; "1" becomes 0/255
        return np.repeat(gray[:, :, None], 3, axis=2), "L"
    if im.mode == "P" and im.palette is not None and im.palette.mode in ("L", "LA"):
        gray = np.asarray(im.convert("L"))
        return np.repeat(gray[:, :, None], 3, axis=2), "L"
    if im.mode == "CMYK":
        warnings.warn("CMYK image converted to RGB without colour management; colours may shift", stacklevel=3)
    try:
        if im.has_transparency_data and im.mode not in ("RGB", "RGBA"):
            im = im.convert("RGBA")  # P / PA with transparency: resolve the palette, then drop alpha below
        rgb = im.convert("RGB")
    except ValueError as e:
        raise InputError(f"unsupported image mode {im.mode}: {e}") from None
    return np.asarray(rgb, dtype=np.uint8).copy(), "RGB"


def load_picture(data: bytes, *, drop_alpha: bool = False, max_pixels: int | None = None) -> Picture:
    """Decode image file bytes into an upright 8-bit RGB `Picture`. Raises InputError on anything unusable.
    max_pixels: as limits.max_pixels (None: $ADAPDATE_MAX_PIXELS or the default, 0: no limit)."""
    limit = limits.max_pixels(max_pixels)
    return picture_from_image(_open(data, limit), drop_alpha=drop_alpha, max_pixels=limit or 0)


def picture_from_image(im: Image.Image, *, drop_alpha: bool = False, max_pixels: int | None = None) -> Picture:
    """A Pillow image (opened lazily from a file, or made in memory) as an upright 8-bit RGB `Picture`.
    The pixel limit (max_pixels, as in load_picture) is checked on its size before its pixels are decoded."""
    limit = limits.max_pixels(max_pixels)
    limits.check_pixels(im.width, im.height, limit)
    try:
        wide = _source_bits_above_8(im)
        icc = im.info.get("icc_profile")
        with _pillow_bomb_limit():
            im.load()
        im = ImageOps.exif_transpose(im)
        if not drop_alpha and _has_transparent_pixels(im):
            raise InputError("image has an alpha channel; use --drop-alpha (drop_alpha=True in Python) to encode it without")
        pixels, mode = _to_rgb(im)
    except Image.DecompressionBombError as e:
        raise InputError(f"image too large: {e}") from None
    # Pillow's plugins report corrupt data with any of these, depending on the format.
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, KeyError) as e:
        raise InputError(f"corrupt or unreadable image: {e}") from None
    if pixels.shape[0] < 1 or pixels.shape[1] < 1:
        raise InputError("image has no pixels")
    if wide:
        warnings.warn("image has more than 8 bits per sample; reduced to 8 bits", stacklevel=3)
    return Picture(pixels=np.ascontiguousarray(pixels), mode=mode, icc_profile=_icc_fits(icc, mode))


def picture_from_array(a: np.ndarray) -> Picture:
    """An H x W x 3 (RGB) or H x W (gray) uint8 array as a `Picture`."""
    a = np.asarray(a)
    if a.dtype != np.uint8:
        raise InputError(f"array must be uint8, got {a.dtype}")
    if a.ndim == 2:
        a, mode = np.repeat(a[:, :, None], 3, axis=2), "L"
    elif a.ndim == 3 and a.shape[2] == 3:
        mode = "RGB"
    else:
        raise InputError(f"array must be H x W x 3 (RGB) or H x W (gray), got shape {a.shape}")
    if a.shape[0] < 1 or a.shape[1] < 1:
        raise InputError("image has no pixels")
    # a copy: the caller may change (or have made read-only) its array while we code it
    return Picture(pixels=np.array(a, order="C", copy=True), mode=mode)


def to_image(pic: Picture) -> Image.Image:
    """A decoded `Picture` as a Pillow image: grayscale restored, the ICC profile in `info`."""
    im = Image.fromarray(np.ascontiguousarray(pic.pixels, dtype=np.uint8), "RGB")
    if pic.mode == "L":
        im = im.convert("L")
    if pic.icc_profile:
        im.info["icc_profile"] = pic.icc_profile
    return im


def format_for_path(path: str | Path) -> str | None:
    """Pillow format name for an output file name, or None when its suffix is not one we write."""
    return OUTPUT_FORMATS.get(Path(path).suffix.lower())


def save_picture(pic: Picture, fmt: str = "PNG") -> bytes:
    """Encode a Picture as an image file (PNG by default), restoring grayscale and the ICC profile."""
    fmt = fmt.upper()
    fmt = {"JPG": "JPEG", "TIF": "TIFF"}.get(fmt, fmt)
    if fmt not in set(OUTPUT_FORMATS.values()):
        raise ValueError(f"unsupported output format {fmt}")
    im = to_image(pic)
    options: dict[str, object] = {}
    if pic.icc_profile and fmt != "BMP":  # BMP cannot carry a profile
        options["icc_profile"] = pic.icc_profile
    if fmt == "JPEG":
        options["quality"] = _JPEG_QUALITY
    elif fmt == "WEBP":
        options["lossless"] = True  # the decoded pixels are the result; don't lose more
    out = io.BytesIO()
    im.save(out, fmt, **options)
    return out.getvalue()
