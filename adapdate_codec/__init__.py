"""adapdate: a learned image codec (cheng2020-anchor) with small, patchable model updates.

    import adapdate_codec
    data = adapdate_codec.encode("photo.png", quality=3)      # bytes of an .adpd file
    image = adapdate_codec.decode(data)                        # a PIL image (mode and ICC profile restored)
    print(adapdate_codec.info(data))                           # FileInfo: model, size, bpp... (no torch)

`import adapdate_codec.pillow` lets Pillow open and save .adpd files. Models load once per process and are
shared by threads; every error is an `AdapdateError` (see adapdate_codec.errors). Importing this package is
cheap: torch is imported by the first encode or decode.
"""

from adapdate_codec.api import FileInfo, decode, encode, info
from adapdate_codec.errors import (
    AdapdateError,
    DeviceError,
    FormatError,
    InputError,
    ModelError,
    ModelNotInstalledError,
)

__version__ = "0.1.0"

__all__ = [
    "AdapdateError",
    "DeviceError",
    "FileInfo",
    "FormatError",
    "InputError",
    "ModelError",
    "ModelNotInstalledError",
    "decode",
    "encode",
    "info",
    "__version__",
]
