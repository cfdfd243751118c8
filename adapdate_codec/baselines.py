"""The codecs `adapdate eval` compares: conventional baselines and the adapdate codec itself.

Each is a small class with a name, a default sweep of settings ordered from low to high rate (covering
roughly 0.1–2 bpp on Kodak), `encode(rgb, setting) -> bytes` (the complete file, container included, so
that bpp counts what a user would store), `decode(bytes) -> rgb` and `available()`, which says why a codec
cannot run here instead of failing half-way through an evaluation.

Settings are numbers whose meaning is per codec (`setting_name`): a quality, a QP or a distance.
"""

from __future__ import annotations

import re

import io
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from adapdate_codec.errors import AdapdateError

Setting = float


class CodecError(AdapdateError):
    """A codec failed on one image at one setting (the evaluation records it and goes on)."""


@dataclass(frozen=True)
class Availability:
    """Whether a codec can run here; falsy with a reason when it cannot."""

    ok: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return self.ok


AVAILABLE = Availability(True)


class Codec:
    """Base class: subclasses set the class attributes and implement encode/decode."""

    name: str = ""
    description: str = ""
    setting_name: str = "quality"
    sweep: tuple[Setting, ...] = ()

    def available(self) -> Availability:
        return AVAILABLE

    def default_sweep(self) -> tuple[Setting, ...]:
        return self.sweep

    def prepare(self, setting: Setting) -> None:
        """Load whatever `setting` needs (models, tables) so that it is not counted as encoding time."""

    def encode(self, rgb: np.ndarray, setting: Setting) -> bytes:
        raise NotImplementedError

    def decode(self, data: bytes) -> np.ndarray:
        raise NotImplementedError


def _as_int(setting: Setting) -> int:
    if float(setting) != int(setting):
        raise CodecError(f"setting {setting} must be an integer")
    return int(setting)


# --- Pillow-based codecs -----------------------------------------------------------------------------


def _pil_encode(rgb: np.ndarray, fmt: str, **params: object) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    try:
        Image.fromarray(rgb, "RGB").save(buf, fmt, **params)
    except (OSError, ValueError) as e:
        raise CodecError(f"{fmt} encoding failed: {e}") from e
    return buf.getvalue()


def _pil_decode(data: bytes, fmt: str) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data), formats=[fmt]) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, ValueError) as e:
        raise CodecError(f"{fmt} decoding failed: {e}") from e


class JpegCodec(Codec):
    """Baseline JPEG by libjpeg(-turbo) through Pillow, with optimised Huffman tables."""

    setting_name = "quality"
    sweep = (5, 10, 15, 20, 30, 40, 50, 60, 70, 80, 90, 95)

    def __init__(self, subsampling: int) -> None:
        self.subsampling = subsampling  # Pillow: 0 = 4:4:4, 2 = 4:2:0
        tag = {0: "444", 2: "420"}[subsampling]
        self.name = "jpeg444" if subsampling == 0 else "jpeg"
        self.description = f"JPEG {tag[0]}:{tag[1]}:{tag[2]} (Pillow/libjpeg, optimize=True)"

    def encode(self, rgb: np.ndarray, setting: Setting) -> bytes:
        return _pil_encode(rgb, "JPEG", quality=_as_int(setting), subsampling=self.subsampling, optimize=True)

    def decode(self, data: bytes) -> np.ndarray:
        return _pil_decode(data, "JPEG")


class WebpCodec(Codec):
    name = "webp"
    description = "WebP lossy (Pillow/libwebp, method 6)"
    sweep = (0, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95)

    def available(self) -> Availability:
        from PIL import features

        return AVAILABLE if features.check("webp") else Availability(False, "Pillow was built without WebP")

    def encode(self, rgb: np.ndarray, setting: Setting) -> bytes:
        return _pil_encode(rgb, "WEBP", quality=_as_int(setting), method=6)

    def decode(self, data: bytes) -> np.ndarray:
        return _pil_decode(data, "WEBP")


class AvifCodec(Codec):
    name = "avif"
    description = "AVIF 4:4:4 (Pillow's built-in libavif, speed 4)"
    sweep = (10, 20, 30, 40, 50, 60, 70, 80, 90)

    def available(self) -> Availability:
        from PIL import features

        if not features.check("avif"):
            return Availability(False, "Pillow was built without AVIF (needs Pillow >= 11.2 with libavif)")
        return AVAILABLE

    def encode(self, rgb: np.ndarray, setting: Setting) -> bytes:
        return _pil_encode(rgb, "AVIF", quality=_as_int(setting), subsampling="4:4:4", speed=4)

    def decode(self, data: bytes) -> np.ndarray:
        return _pil_decode(data, "AVIF")


# --- JPEG XL (imagecodecs) ---------------------------------------------------------------------------


class JpegXlCodec(Codec):
    name = "jpegxl"
    description = "JPEG XL (libjxl through imagecodecs, effort 7), bare codestream"
    setting_name = "distance"
    sweep = (15.0, 10.0, 7.0, 5.0, 3.5, 2.5, 1.8, 1.2, 0.8, 0.5)

    def available(self) -> Availability:
        try:
            import imagecodecs
        except ImportError:
            return Availability(False, "imagecodecs is not installed (pip install imagecodecs)")
        if not imagecodecs.JPEGXL.available:
            return Availability(False, "this imagecodecs build has no JPEG XL")
        return AVAILABLE

    def encode(self, rgb: np.ndarray, setting: Setting) -> bytes:
        import imagecodecs

        try:
            return bytes(imagecodecs.jpegxl_encode(rgb, distance=float(setting), effort=7))
        except imagecodecs.JpegxlError as e:
            raise CodecError(f"JPEG XL encoding failed: {e}") from e

    def decode(self, data: bytes) -> np.ndarray:
        import imagecodecs

        try:
            return np.asarray(imagecodecs.jpegxl_decode(data), dtype=np.uint8)
        except imagecodecs.JpegxlError as e:
            raise CodecError(f"JPEG XL decoding failed: {e}") from e


# --- HEVC 4:4:4 (pillow-heif / libheif / x265) -------------------------------------------------------

HEVC_QP_SWEEP = (46, 42, 38, 34, 30, 26, 22)


def hevc444_params(qp: int) -> dict[str, str]:
    """x265 settings that match BPG: constant QP, no psycho-visual tuning, preset slow.

    libheif applies `x265:*` keys last through x265_param_parse, so `qp` switches rate control to CQP
    and overrides libheif's quality→CRF mapping; libheif itself turns psy-rd / psy-rdoq on, hence the
    explicit zeros. With these, HEIC lands close to CompressAI's BPG 4:4:4 curve; libheif's defaults
    (CRF, psy tuning on) cost ~15 % in BD-rate.
    """
    return {
        "chroma": "444",
        "preset": "slow",
        "x265:qp": str(qp),
        "x265:psy-rd": "0",
        "x265:psy-rdoq": "0",
    }


class Hevc444Codec(Codec):
    name = "hevc444"
    description = "HEVC 4:4:4 intra in HEIF (pillow-heif/libheif/x265, constant QP, preset slow, psy off)"
    setting_name = "qp"
    sweep = HEVC_QP_SWEEP

    def available(self) -> Availability:
        try:
            import pillow_heif
        except ImportError:
            return Availability(False, "pillow-heif is not installed")
        if "x265" not in pillow_heif.libheif_info().get("encoders", {}):
            return Availability(False, "libheif in pillow-heif has no x265 encoder")
        return AVAILABLE

    def encode(self, rgb: np.ndarray, setting: Setting) -> bytes:
        import pillow_heif

        height, width = rgb.shape[:2]
        heif = pillow_heif.from_bytes("RGB", (width, height), np.ascontiguousarray(rgb).tobytes())
        buf = io.BytesIO()
        try:
            # no `quality`: pillow-heif's -1 would mean lossless; tile_size=0 keeps one coded image
            heif.save(buf, enc_params=hevc444_params(_as_int(setting)), tile_size=0)
        except (RuntimeError, ValueError) as e:
            raise CodecError(f"HEVC encoding failed: {e}") from e
        return buf.getvalue()

    def decode(self, data: bytes) -> np.ndarray:
        return decode_heif(data)[0]


def decode_heif(data: bytes) -> tuple[np.ndarray, str]:
    """RGB pixels and the coded chroma format ("444", "420", ...) of a HEIF file."""
    import pillow_heif

    try:
        heif = pillow_heif.open_heif(io.BytesIO(data), convert_hdr_to_8bit=True)
        rgb = np.asarray(heif.to_pillow().convert("RGB"))
    except (RuntimeError, ValueError) as e:
        raise CodecError(f"HEIF decoding failed: {e}") from e
    return rgb, str(heif.info.get("chroma", ""))


# --- BPG (external bpgenc / bpgdec) ------------------------------------------------------------------


class BpgCodec(Codec):
    name = "bpg"
    description = "BPG 4:4:4 (bpgenc -f 444 -e x265 -c ycbcr -b 8, QP sweep)"
    setting_name = "qp"
    sweep = HEVC_QP_SWEEP

    def available(self) -> Availability:
        missing = [tool for tool in ("bpgenc", "bpgdec") if shutil.which(tool) is None]
        if missing:
            return Availability(False, f"{' and '.join(missing)} not on PATH")
        return AVAILABLE

    @staticmethod
    def _run(cmd: list[str]) -> None:
        try:
            subprocess.run(cmd, check=True, capture_output=True)
        except subprocess.CalledProcessError as e:
            err = e.stderr.decode(errors="replace").strip()
            raise CodecError(f"{cmd[0]} failed (exit {e.returncode}): {err}") from e
        except OSError as e:
            raise CodecError(f"cannot run {cmd[0]}: {e}") from e

    def encode(self, rgb: np.ndarray, setting: Setting) -> bytes:
        from PIL import Image

        with tempfile.TemporaryDirectory(prefix="adapdate-bpg-") as tmp:
            src, out = Path(tmp, "in.png"), Path(tmp, "out.bpg")
            Image.fromarray(rgb, "RGB").save(src)
            self._run(["bpgenc", "-o", str(out), "-q", str(_as_int(setting)), "-f", "444", "-e", "x265",
                       "-c", "ycbcr", "-b", "8", str(src)])
            return out.read_bytes()

    def decode(self, data: bytes) -> np.ndarray:
        from PIL import Image

        with tempfile.TemporaryDirectory(prefix="adapdate-bpg-") as tmp:
            src, out = Path(tmp, "in.bpg"), Path(tmp, "out.png")
            src.write_bytes(data)
            self._run(["bpgdec", "-o", str(out), str(src)])
            with Image.open(out) as im:
                return np.asarray(im.convert("RGB"))


# --- adapdate itself ---------------------------------------------------------------------------------


class AdapdateCodec(Codec):
    """The learned codec, through the same public functions `adapdate encode/decode` use.

    Its sweep is the installed qualities of the chosen model; bundles are loaded in `prepare`, so model
    loading is not counted as encoding time.
    """

    name = "adapdate"
    setting_name = "quality"

    def __init__(self, model: str | None = None, device: str = "cpu", store=None, effort: int = 0,
                 name: str = "adapdate") -> None:
        """store: a ModelStore to take models from (default: the user's). effort: the encoder's --effort
        (a variant named adapdate:eN compares levels in one run)."""
        self.model = model
        self.device = device
        self.effort = effort
        self.name = name
        self.description = f"adapdate ({model or 'default model'}, {device}, effort {effort})"
        self._store = store
        self._bundles: dict[int, object] = {}

    def _get_store(self):
        if self._store is None:
            from adapdate_codec.store import ModelStore

            self._store = ModelStore()
        return self._store

    def available(self) -> Availability:
        try:
            import adapdate_codec.codec  # noqa: F401
            import adapdate_codec.store  # noqa: F401
        except ImportError as e:
            return Availability(False, f"the adapdate codec cannot be imported ({e})")
        try:
            if not self._get_store().qualities(self.model):
                return Availability(False, f"no qualities of model {self.model or '(default)'} are installed")
        except AdapdateError as e:
            return Availability(False, str(e))
        return AVAILABLE

    def default_sweep(self) -> tuple[Setting, ...]:
        return tuple(sorted(self._get_store().qualities(self.model)))

    def prepare(self, setting: Setting) -> None:
        quality = _as_int(setting)
        if quality not in self._bundles:
            self._bundles[quality] = self._get_store().get(self.model, quality)

    def encode(self, rgb: np.ndarray, setting: Setting) -> bytes:
        from adapdate_codec.codec import encode_picture
        from adapdate_codec.imageio import Picture

        self.prepare(setting)
        pic = Picture(pixels=np.ascontiguousarray(rgb), mode="RGB", icc_profile=None)
        return encode_picture(pic, self._bundles[_as_int(setting)], device=self.device, effort=self.effort)

    def decode(self, data: bytes) -> np.ndarray:
        from adapdate_codec.codec import decode_picture

        return np.asarray(decode_picture(data, self._get_store().by_fingerprint, device=self.device).pixels)


# --- registry ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CodecOptions:
    """What building a codec may need beyond its name (picklable, for worker processes)."""

    model: str | None = None
    device: str = "cpu"


_FACTORIES: dict[str, Callable[[CodecOptions], Codec]] = {
    "adapdate": lambda o: AdapdateCodec(o.model, o.device),
    "bpg": lambda o: BpgCodec(),
    "hevc444": lambda o: Hevc444Codec(),
    "jpeg": lambda o: JpegCodec(subsampling=2),
    "jpeg444": lambda o: JpegCodec(subsampling=0),
    "webp": lambda o: WebpCodec(),
    "avif": lambda o: AvifCodec(),
    "jpegxl": lambda o: JpegXlCodec(),
}

CODEC_NAMES: tuple[str, ...] = tuple(_FACTORIES)


EFFORT_VARIANT = re.compile(r"adapdate:e([0-9])")  # adapdate at an --effort level, e.g. adapdate:e5


def is_codec_name(name: str) -> bool:
    return name in _FACTORIES or EFFORT_VARIANT.fullmatch(name) is not None


def make_codec(name: str, options: CodecOptions | None = None) -> Codec:
    options = options or CodecOptions()
    variant = EFFORT_VARIANT.fullmatch(name)
    if variant:
        return AdapdateCodec(options.model, options.device, effort=int(variant.group(1)), name=name)
    try:
        factory = _FACTORIES[name]
    except KeyError:
        raise AdapdateError(f"unknown codec {name!r} (known: {', '.join(CODEC_NAMES)}, adapdate:e0 .. "
                            "adapdate:e9)") from None
    return factory(options)
