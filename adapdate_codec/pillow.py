"""Pillow plugin: `Image.open("x.adpd")` decodes and `img.save("x.adpd", quality=3)` encodes.

    import adapdate_codec.pillow          # registers (or call adapdate_codec.pillow.register())
    from PIL import Image
    Image.open("photo.png").save("photo.adpd", quality=2)     # also target_bpp=0.3, effort=3, model=, device=
    Image.open("photo.adpd").convert("L")

`Image.open` reads and verifies the whole file (header and checksum) without running the network, so a
damaged file fails there, as Pillow's `UnidentifiedImageError` with adapdate's one-line reason; the
network runs on `load()` (first pixel access), as with Pillow's own formats. Errors raised while loading
or saving are `OSError`s, as Pillow's are, that are also the library's own (`ModelNotInstalledError`,
`InputError`, ...): `except OSError` and `except adapdate_codec.AdapdateError` both catch them.
"""

from __future__ import annotations

import functools
from typing import IO, Any

from PIL import Image, ImageFile, UnidentifiedImageError

from adapdate_codec import api, container
from adapdate_codec.errors import AdapdateError, FormatError

FORMAT = "ADPD"
EXTENSION = ".adpd"
MIME = "image/x-adapdate"
_DECODER = "adapdate"
# img.save(..., **params) keywords passed on to adapdate_codec.encode (and icc_profile, as Pillow's savers)
_SAVE_PARAMS = ("quality", "model", "target_bpp", "device", "drop_alpha", "effort")


@functools.lru_cache(maxsize=None)
def _pillow_class(error: type[AdapdateError], base: type[OSError]) -> type:
    """`error` that is also Pillow's kind of error (`base`), so either `except` catches it."""
    return type(error.__name__, (base, error), {"__module__": __name__, "__qualname__": error.__name__})


def _as_pillow_error(e: AdapdateError, base: type[OSError] = OSError, filename: Any = None) -> OSError:
    message = f"{filename}: {e}" if filename else str(e)
    return _pillow_class(type(e), base)(message)


def _accept(prefix: bytes) -> bool:
    return prefix[: len(container.MAGIC)] == container.MAGIC


class AdapdateImageFile(ImageFile.ImageFile):
    format = FORMAT
    format_description = "adapdate learned image"

    def _open(self) -> None:
        data = self.fp.read()
        try:
            header, fi = api.read_file_info(data)  # the whole file is checked here (structure, checksum): cheap
        except FormatError as e:
            raise _as_pillow_error(e, UnidentifiedImageError, self.filename) from None
        self._size = (fi.width, fi.height)
        self._mode = fi.mode
        if header.icc_profile:
            self.info["icc_profile"] = header.icc_profile
        self.info["adapdate"] = fi
        self.tile = [_tile(self.size)]


def _tile(size: tuple[int, int]) -> Any:
    tile = getattr(ImageFile, "_Tile", None)  # Pillow >= 11 names the tuple
    args = (_DECODER, (0, 0, *size), 0, None)
    return tile(*args) if tile is not None else args


class _Decoder(ImageFile.PyDecoder):
    """Decodes the whole file at once (the network needs all of it): reads it from the file object."""

    _pulls_fd = True

    def decode(self, buffer: bytes | Any) -> tuple[int, int]:
        assert self.fd is not None
        self.fd.seek(0)
        try:
            im = api.decode(self.fd.read())
        except AdapdateError as e:
            raise _as_pillow_error(e) from None
        if im.mode != self.mode:  # never for a file this plugin opened; a guard for odd callers
            im = im.convert(self.mode)
        self.set_as_raw(im.tobytes())
        return -1, 0


def _save(im: Image.Image, fp: IO[bytes], filename: str | bytes) -> None:
    """Encode first, write once: on an error nothing is written (Pillow removes the file it created)."""
    params = {k: im.encoderinfo[k] for k in _SAVE_PARAMS if im.encoderinfo.get(k) is not None}
    icc = im.encoderinfo.get("icc_profile")
    if icc is not None:  # as Pillow's own savers: the save option overrides the image's profile
        im = im.copy()
        im.info["icc_profile"] = icc
    try:
        data = api.encode(im, **params)
    except AdapdateError as e:
        raise _as_pillow_error(e) from None
    fp.write(data)


_registered = False


def register() -> None:
    """Register the format with Pillow (idempotent): opener, saver, decoder, `.adpd` and `image/x-adapdate`."""
    global _registered
    if _registered:
        return
    Image.register_open(FORMAT, AdapdateImageFile, _accept)
    Image.register_save(FORMAT, _save)
    Image.register_decoder(_DECODER, _Decoder)
    Image.register_extension(FORMAT, EXTENSION)
    Image.register_mime(FORMAT, MIME)
    _registered = True


register()
