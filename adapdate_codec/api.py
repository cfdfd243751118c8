"""The Python API: `encode`, `decode` and `info` (re-exported by `adapdate_codec`).

Models are loaded once per process and kept, by fingerprint and device: a file names the exact version
that coded it, so a cached model is never stale (an update installs a new fingerprint). Loading holds one
lock, so that threads asking for the same model wait for one load instead of each doing it; coding itself
runs without it, in parallel. Nothing here changes process-wide settings (torch threads, malloc).

torch, numpy and Pillow are imported on first use: `info` and `adapdate info` run without torch.
"""

from __future__ import annotations

import os
import sys
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Callable, Union

from adapdate_codec import container
from adapdate_codec.errors import DeviceError, ModelNotInstalledError
from adapdate_codec.rate import bpp as _bpp

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

    from adapdate_codec.bundle import ModelBundle
    from adapdate_codec.container import Header
    from adapdate_codec.imageio import Picture
    from adapdate_codec.store import ModelEntry, ModelStore

ImageInput = Union["Image.Image", "np.ndarray", str, os.PathLike, bytes]
FileInput = Union[bytes, bytearray, memoryview, str, os.PathLike]


# --- info: the header only, no torch ---------------------------------------------------------------


@dataclass(frozen=True)
class FileInfo:
    """What an `.adpd` file says about itself (read without running the network)."""

    format_version: int
    model: str
    quality: int
    fingerprint: str  # sha256 hex of the decoder the file needs (format 2), or of the model version (format 1)
    width: int
    height: int
    mode: str  # "RGB" or "L" (grayscale source)
    padding: str
    icc_profile: bool
    bytes: int
    bpp: float
    sections: dict[str, int] = field(default_factory=dict)  # header, z, y, checksum: they add up to `bytes`
    icc_profile_bytes: int = 0
    fingerprint_kind: str = "decoder"  # what `fingerprint` names: "decoder" (format 2) or "model" (format 1)


def _read(data: FileInput) -> bytes:
    if isinstance(data, (str, os.PathLike)):
        from adapdate_codec.fileio import read_input

        return read_input(Path(data))
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    raise TypeError(f"expected the bytes of an .adpd file or a path, got {type(data).__name__}")


def _section_names(n: int) -> list[str]:
    names = list(container.CODEC_SECTIONS)
    return names if n == len(names) else [f"section {i}" for i in range(n)]


def read_file_info(data: bytes) -> tuple["Header", FileInfo]:
    """Verify a whole file (structure and checksum) and describe it; the header too, for who needs it."""
    header, layout = container.inspect(data)
    sections = {"header": layout.header_bytes}
    sections.update(zip(_section_names(len(layout.section_bytes)), layout.section_bytes))
    sections["checksum"] = layout.checksum_bytes
    fi = FileInfo(
        format_version=container.format_version(data), model=header.model_name, quality=header.quality,
        fingerprint=header.fingerprint.hex(), width=header.width, height=header.height, mode=header.mode,
        padding=header.padding, icc_profile=header.icc_profile is not None, bytes=len(data),
        bpp=_bpp(len(data), header.width, header.height), sections=sections, icc_profile_bytes=layout.icc_bytes,
        fingerprint_kind=header.fingerprint_kind,
    )
    return header, fi


def info(data: FileInput) -> FileInfo:
    """Describe an `.adpd` file (bytes or a path) from its header; the checksum is verified, the network is
    not run. Raises FormatError on a damaged file."""
    return read_file_info(_read(data))[1]


@dataclass(frozen=True)
class ModelStatus:
    """Whether a model that decodes a file is installed, and if not, how to get it. For a file that names a
    decoder (format 2), `encoders` lists the installed versions with that decoder (any of them decodes it)."""

    installed: bool
    version: int | None = None  # 0 = built-in; the active version of the decoder if there is one
    active: bool = False
    hint: str | None = None
    encoders: tuple[str, ...] = ()  # "built-in", "v2", ... with that decoder (format 2 files)


def _label(e: "ModelEntry") -> str:
    return "built-in" if e.builtin else f"v{e.version}"


def model_status(fi: FileInfo, store: "ModelStore | None" = None) -> ModelStatus:
    """Looked up like decoding does (same name and quality first, then any slot), from the store's JSON."""
    from adapdate_codec import zoo
    from adapdate_codec.store import ModelStore, check_name, short

    store = store or ModelStore()
    try:
        slot: list[ModelEntry] = store.history(check_name(fi.model), fi.quality)
    except Exception:  # a name or quality no slot can have (the file is valid; the store just lacks it)
        slot = []

    def names_it(e: "ModelEntry") -> bool:
        return (e.decoder_fingerprint if fi.fingerprint_kind == "decoder" else e.fingerprint) == fi.fingerprint

    matches = [e for e in slot if names_it(e)] or [e for e in store.list() if names_it(e)]
    if not matches and fi.fingerprint_kind == "decoder":  # versions installed by 0.1.0 do not say: ask them
        matches = [e for e in slot if e.decoder_fingerprint is None and store.decoder_of(e) == fi.fingerprint]
    if matches:
        entry = next((e for e in matches if e.active), matches[0])
        encoders = tuple(_label(e) for e in matches) if fi.fingerprint_kind == "decoder" else ()
        return ModelStatus(True, entry.version, entry.active, encoders=encoders)
    what = "decoder" if fi.fingerprint_kind == "decoder" else "version"
    if slot:
        others = ", ".join(f"{_label(e)} {short(e.fingerprint)}" for e in slot)
        hint = (f"installed {fi.model} q{fi.quality} versions are {others}; this file needs {what} "
                f"{short(fi.fingerprint)}: apply the update it was coded with (`adapdate model patch UPDATE.nnc`) "
                "or install its model file (`adapdate model install FILE`)")
    elif fi.model in zoo.SUPPORTED:
        hint = (f"`adapdate model install {fi.model}:{fi.quality}` if it was coded with CompressAI's weights, "
                "else `adapdate model install FILE` with the model that coded it")
    else:
        hint = f"install the model that coded it: `adapdate model install FILE` (named {fi.model} q{fi.quality})"
    return ModelStatus(False, hint=hint)


# --- loaded models, cached per process -------------------------------------------------------------


class _ModelCache:
    """Bundles by identity ("model:<fingerprint>" or "decoder:<decoder fingerprint>") and device, ready to
    code: network built and moved, tables and fixed-point parameters unpacked, all under the lock
    (ModelBundle builds them lazily, and not thread-safely). A loaded bundle is kept under both of its
    identities, so that encoding and decoding in one process share it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._bundles: dict[tuple[str, str], ModelBundle] = {}

    def _get(self, identity: str, device: str, load: Callable[[], "ModelBundle"]) -> "ModelBundle":
        key = (identity, device)
        bundle = self._bundles.get(key)  # a dict read is atomic: no lock once loaded
        if bundle is not None:
            return bundle
        with self._lock:
            bundle = self._bundles.get(key)
            if bundle is None:
                bundle = load()
                _prepare(bundle, device)
                self._bundles[key] = bundle
                for other in (f"model:{bundle.fingerprint}", f"decoder:{bundle.decoder_fingerprint}"):
                    self._bundles.setdefault((other, device), bundle)
        return bundle

    def active(self, model: str | None, quality: int | None, device: str) -> "ModelBundle":
        """The active version of model/quality (looked up in the store on every call: JSON only)."""
        from adapdate_codec.store import ModelStore

        store = ModelStore()
        return self._get(f"model:{store.active(model, quality).fingerprint}", device,
                         lambda: store.get(model, quality))

    def exact(self, header: "Header", device: str) -> "ModelBundle":
        """A model that decodes this file (format 2: any with its decoder; format 1: that version)."""
        from adapdate_codec.store import ModelStore

        key = f"{header.fingerprint_kind}:{header.fingerprint.hex()}"
        return self._get(key, device, lambda: ModelStore().by_fingerprint(header))

    def clear(self) -> None:
        with self._lock:
            self._bundles.clear()


def check_device(device: str) -> None:
    """DeviceError unless `device` can code here (imports torch)."""
    import torch

    try:
        kind = torch.device(device).type
    except RuntimeError:
        raise DeviceError(f"unknown device {device!r} (use 'cpu' or 'cuda')") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {device!r}: no CUDA device is available (use device='cpu')")


def _prepare(bundle: "ModelBundle", device: str) -> None:
    check_device(device)
    bundle.network().to(device)
    bundle.fixed_point, bundle.cdf_z, bundle.cdf_y  # noqa: B018 (cached properties, built here once)


_models = _ModelCache()


def clear_model_cache() -> None:
    """Forget the loaded models (they are reloaded on next use)."""
    _models.clear()


def load_active_model(model: str | None = None, quality: int | None = None, device: str = "cpu") -> str:
    """Load the model `encode(quality=, model=, device=)` uses now, e.g. in a worker before its first file
    (ModelNotInstalledError, DeviceError here rather than then). Returns its version's fingerprint."""
    return _models.active(model, quality, device).fingerprint


def load_model(header: "Header", device: str = "cpu") -> str:
    """Load a model that decodes this file, as `decode` does (ModelNotInstalledError). Returns the
    fingerprint of the version loaded (format 2 files name only its decoder)."""
    return _models.exact(header, device).fingerprint


# --- encode / decode -------------------------------------------------------------------------------


def _codec() -> ModuleType:
    """adapdate_codec.codec, imported without CompressAI's `torch.jit.script is deprecated` warning, which
    a user of this library cannot act on (filtered for that import only)."""
    if "adapdate_codec.codec" not in sys.modules:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
            import adapdate_codec.codec  # noqa: F401
    return sys.modules["adapdate_codec.codec"]


def _picture(image: ImageInput, drop_alpha: bool, max_pixels: int | None) -> "Picture":
    import numpy as np
    from PIL import Image

    from adapdate_codec import imageio

    if isinstance(image, Image.Image):
        return imageio.picture_from_image(image, drop_alpha=drop_alpha, max_pixels=max_pixels)
    if isinstance(image, np.ndarray):
        return imageio.picture_from_array(image)  # already in memory: no limit to protect
    if isinstance(image, (str, os.PathLike, bytes, bytearray, memoryview)):
        return imageio.load_picture(_read(image), drop_alpha=drop_alpha, max_pixels=max_pixels)
    raise TypeError(f"expected a PIL image, an H x W x 3 uint8 array, a path or file bytes, got {type(image).__name__}")


def encode(
    image: ImageInput,
    *,
    quality: int | None = None,
    model: str | None = None,
    target_bpp: float | None = None,
    device: str = "cpu",
    drop_alpha: bool = False,
    max_pixels: int | None = None,
    effort: int = 0,
    padding: str = "replicate",
) -> bytes:
    """Compress an image into the bytes of an `.adpd` file.

    image: a PIL image, an H x W x 3 (or H x W gray) uint8 array, a path, or the bytes of an image file.
    quality / model: an installed model (default: cheng2020-anchor, quality 3). target_bpp: instead of a
    quality, the highest installed one whose file is at most that many bits per pixel (else the lowest,
    with a warning). drop_alpha: encode an image with transparency without its alpha channel.
    max_pixels: refuse images (files, PIL images) above this many pixels, from their header (default
    $ADAPDATE_MAX_PIXELS, else 89,478,485; 0: no limit). padding: how the image is extended to a multiple
    of 64 ("replicate" or "reflect"; cropped back on decoding).
    effort: 0 (default, fastest) to 9: how long the encoder searches for better latents (see the README for
    time and gain per level). Any level gives an ordinary file for the same decoder. With target_bpp,
    effort >= 1 also searches the trade-off between two qualities, landing within 3 % of the target.
    Raises InputError, ModelError (e.g. ModelNotInstalledError), all AdapdateError.
    """
    from adapdate_codec.search.levels import level

    if quality is not None and target_bpp is not None:
        raise ValueError("quality and target_bpp cannot be used together")
    if target_bpp is not None and not target_bpp > 0:
        raise ValueError(f"target_bpp must be positive, got {target_bpp}")
    level(effort)  # ValueError for a level that does not exist, before any work
    if padding not in ("replicate", "reflect"):
        raise ValueError(f"padding must be 'replicate' or 'reflect', got {padding!r}")
    pic = _picture(image, drop_alpha, max_pixels)
    container.check_size(pic.width, pic.height)
    encode_picture = _codec().encode_picture

    def encode_at(q: int | None, lmbda: float | None = None, level: int = effort) -> tuple["ModelBundle", bytes]:
        bundle = _models.active(model, q, device)
        return bundle, encode_picture(pic, bundle, device=device, padding=padding, effort=level, lmbda=lmbda)

    if target_bpp is None:
        return encode_at(quality)[1]
    from adapdate_codec.rate import effort_to_target, encode_to_target
    from adapdate_codec.store import DEFAULT_NAME, ModelStore

    qualities = ModelStore().qualities(model)
    if not qualities:
        raise ModelNotInstalledError(f"no quality of model {model or DEFAULT_NAME} is installed")
    if effort == 0:
        return encode_to_target(qualities, encode_at, pic.width, pic.height, target_bpp).data
    return effort_to_target(qualities, lambda q: encode_at(q, level=0), encode_at, pic.width, pic.height,
                            target_bpp).data


def decode_picture(data: bytes, *, device: str = "cpu", max_pixels: int | None = None) -> "Picture":
    """`decode`, giving the codec's `Picture` (pixels as a numpy array, mode, ICC profile)."""
    from adapdate_codec import limits

    header, _ = container.unpack(data)  # a damaged file fails here, before any model is loaded
    limits.check_pixels(header.width, header.height, limits.max_pixels(max_pixels))  # so does a huge one
    bundle = _models.exact(header, device)
    return _codec().decode_picture(data, lambda _: bundle, device=device, max_pixels=max_pixels)


def decode(data: FileInput, *, device: str = "cpu", max_pixels: int | None = None) -> "Image.Image":
    """Decompress an `.adpd` file (bytes or a path) into a PIL image: mode "RGB" or "L" as the source was,
    the source's ICC profile in `image.info["icc_profile"]`. max_pixels: refuse files that declare more
    pixels (default $ADAPDATE_MAX_PIXELS, else 89,478,485; 0: no limit), before any work. Raises
    FormatError on a damaged file, ImageTooLargeError above the limit, ModelNotInstalledError when the model
    version it names is not installed."""
    from adapdate_codec.imageio import to_image

    return to_image(decode_picture(_read(data), device=device, max_pixels=max_pixels))


__all__ = ["FileInfo", "ModelStatus", "check_device", "clear_model_cache", "decode", "decode_picture", "encode",
           "info", "load_active_model", "load_model", "model_status"]
