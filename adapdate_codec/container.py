"""The `.adpd` file: a small typed header, length-prefixed sections, a CRC32. Layout: docs/format.md.

`unpack` checks every length against the bytes actually present before using it, and every failure is a
FormatError saying what is wrong. Order of checks: magic, version, structure (truncation, trailing
bytes), checksum, then field values, so that a damaged file is reported as damaged rather than as a
strange field value.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from adapdate_codec.errors import FormatError, InputError

MAGIC = b"ADPD"
# Version 1 (0.1.0): field 7 is the whole model's fingerprint. Version 2: the same layout, field 7 is the
# decoder's fingerprint (bundle.py), so that any encoder of a decoder writes files its every installation
# reads. A version-1 reader refuses version 2 (it would look for a model that need not exist); every later
# reader reads both, forever.
VERSION_MODEL_FINGERPRINT = 1
VERSION_DECODER_FINGERPRINT = 2
VERSION = VERSION_DECODER_FINGERPRINT  # what the encoder writes
VERSIONS = (VERSION_MODEL_FINGERPRINT, VERSION_DECODER_FINGERPRINT)
# what field 7 names, by version
FINGERPRINT_KINDS = {VERSION_MODEL_FINGERPRINT: "model", VERSION_DECODER_FINGERPRINT: "decoder"}
FINGERPRINT_BYTES = 32
MAX_DIMENSION = 1 << 20  # per side; the codec tiles, so this is a sanity bound, not a memory bound
MAX_NAME_BYTES = 255
MAX_SECTIONS = 255
_CRC = struct.Struct(">I")
_MAX_VARINT_BYTES = 10  # enough for any value below 2**70; longer runs are damage

# What codec.py writes into the sections, in order (named here so that `adapdate info` needs no torch).
CODEC_SECTIONS = ("z", "y")

MODES = ("RGB", "L")  # index = code in the file
PADDINGS = ("replicate", "reflect")
_FLAG_ICC = 0x01
_KNOWN_FLAGS = _FLAG_ICC


@dataclass
class Header:
    model_name: str
    quality: int
    fingerprint: bytes  # 32-byte sha256: of the decoder (format 2), or of the whole model version (format 1)
    width: int
    height: int
    mode: str  # "RGB" or "L"
    padding: str  # "replicate" or "reflect"
    icc_profile: bytes | None = None
    # "decoder" (format 2: what codec.encode_picture writes) or "model" (format 1, 0.1.0's files). The default
    # keeps a header built the 0.1.0 way, with a whole model's fingerprint, a valid (format-1) file.
    fingerprint_kind: str = "model"

    @property
    def version(self) -> int:
        return next(v for v, k in FINGERPRINT_KINDS.items() if k == self.fingerprint_kind)


# --- writing ---------------------------------------------------------------------------------------


def _varint(n: int) -> bytes:
    """Unsigned LEB128: 7 bits per byte, low group first, high bit set on all but the last byte."""
    if n < 0:
        raise ValueError(f"varint must be non-negative, got {n}")
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _check_header(h: Header) -> None:
    """Refuse to write what the reader would refuse (these are programming errors, hence ValueError)."""
    if not 0 <= h.quality <= 255:
        raise ValueError(f"quality {h.quality} does not fit in one byte")
    if len(h.fingerprint) != FINGERPRINT_BYTES:
        raise ValueError(f"fingerprint must be {FINGERPRINT_BYTES} bytes, got {len(h.fingerprint)}")
    if not (1 <= h.width <= MAX_DIMENSION and 1 <= h.height <= MAX_DIMENSION):
        raise ValueError(f"image size {h.width}x{h.height} outside 1..{MAX_DIMENSION}")
    if h.mode not in MODES:
        raise ValueError(f"mode {h.mode!r} not one of {MODES}")
    if h.padding not in PADDINGS:
        raise ValueError(f"padding {h.padding!r} not one of {PADDINGS}")
    if h.fingerprint_kind not in FINGERPRINT_KINDS.values():
        raise ValueError(f"fingerprint kind {h.fingerprint_kind!r} not one of {tuple(FINGERPRINT_KINDS.values())}")
    name = h.model_name.encode("utf-8")
    if not 1 <= len(name) <= MAX_NAME_BYTES:
        raise ValueError(f"model name must be 1..{MAX_NAME_BYTES} UTF-8 bytes")


def _header_bytes(h: Header) -> bytes:
    _check_header(h)
    name = h.model_name.encode("utf-8")
    flags = _FLAG_ICC if h.icc_profile else 0
    parts = [
        MAGIC,
        bytes([h.version, flags]),
        _varint(len(name)),
        name,
        bytes([h.quality]),
        bytes(h.fingerprint),
        _varint(h.width),
        _varint(h.height),
        bytes([MODES.index(h.mode), PADDINGS.index(h.padding)]),
    ]
    if h.icc_profile:
        parts += [_varint(len(h.icc_profile)), bytes(h.icc_profile)]
    return b"".join(parts)


def pack(header: Header, sections: list[bytes]) -> bytes:
    """Serialize a header and the coded sections into the bytes of a `.adpd` file."""
    if len(sections) > MAX_SECTIONS:
        raise ValueError(f"at most {MAX_SECTIONS} sections, got {len(sections)}")
    body = b"".join(
        [_header_bytes(header), _varint(len(sections)), *(_varint(len(s)) for s in sections), *map(bytes, sections)]
    )
    return body + _CRC.pack(zlib.crc32(body))


# --- reading ---------------------------------------------------------------------------------------


class _Reader:
    """A cursor over the file that refuses to read past the bytes present."""

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data = data
        self.pos = pos

    def take(self, n: int, what: str) -> bytes:
        if n > len(self.data) - self.pos:
            raise FormatError(
                f"truncated file: {what} needs {n} bytes at offset {self.pos}, "
                f"only {len(self.data) - self.pos} left"
            )
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def byte(self, what: str) -> int:
        return self.take(1, what)[0]

    def varint(self, what: str) -> int:
        value = shift = 0
        for _ in range(_MAX_VARINT_BYTES):
            b = self.byte(what)
            value |= (b & 0x7F) << shift
            if not b & 0x80:
                return value
            shift += 7
        raise FormatError(f"corrupted file: {what} is not a valid number")


@dataclass
class _RawHeader:
    """Header fields as read, before their values are checked."""

    version: int
    flags: int
    name: bytes
    quality: int
    fingerprint: bytes
    width: int
    height: int
    mode_code: int
    padding_code: int
    icc: bytes | None


def _check_magic_and_version(data: bytes) -> None:
    if not data:
        raise FormatError("empty file")
    head = data[: len(MAGIC)]
    if head != MAGIC[: len(head)]:
        raise FormatError("not an adapdate file (bad magic)")
    if len(data) <= len(MAGIC):
        raise FormatError(f"truncated file: only {len(data)} bytes")
    if data[len(MAGIC)] not in VERSIONS:
        raise FormatError(f"unsupported format version {data[len(MAGIC)]} (this adapdate reads versions "
                          f"{' and '.join(map(str, VERSIONS))})")


def _read_raw_header(r: _Reader) -> _RawHeader:
    r.pos = len(MAGIC)
    version = r.byte("version")
    flags = r.byte("flags")
    name_len = r.varint("model name length")
    if name_len > MAX_NAME_BYTES:
        # A longer name cannot have been written; reading it would only misplace every later field.
        raise FormatError(f"corrupted file: model name length {name_len} > {MAX_NAME_BYTES}")
    name = r.take(name_len, "model name")
    quality = r.byte("quality")
    fingerprint = r.take(FINGERPRINT_BYTES, "model fingerprint")
    width = r.varint("width")
    height = r.varint("height")
    mode_code = r.byte("mode")
    padding_code = r.byte("padding")
    icc = None
    if flags & _FLAG_ICC:
        icc = r.take(r.varint("ICC profile length"), "ICC profile")
    return _RawHeader(version, flags, name, quality, fingerprint, width, height, mode_code, padding_code, icc)


def _validate(raw: _RawHeader) -> Header:
    if raw.flags & ~_KNOWN_FLAGS:
        raise FormatError(f"unknown header flags 0x{raw.flags:02x} (file from a newer adapdate?)")
    try:
        name = raw.name.decode("utf-8")
    except UnicodeDecodeError:
        raise FormatError("invalid model name (not UTF-8)") from None
    if not name:
        raise FormatError("empty model name")
    if not name.isprintable():  # a newline or an escape would reach error lines and terminals as it is
        raise FormatError("invalid model name (control characters)")
    for side, value in (("width", raw.width), ("height", raw.height)):
        if not 1 <= value <= MAX_DIMENSION:
            raise FormatError(f"invalid image {side} {value} (must be 1..{MAX_DIMENSION})")
    if raw.mode_code >= len(MODES):
        raise FormatError(f"unknown colour mode code {raw.mode_code}")
    if raw.padding_code >= len(PADDINGS):
        raise FormatError(f"unknown padding code {raw.padding_code}")
    if raw.icc is not None and not raw.icc:
        raise FormatError("ICC profile flag set but the profile is empty")
    return Header(
        model_name=name,
        quality=raw.quality,
        fingerprint=raw.fingerprint,
        width=raw.width,
        height=raw.height,
        mode=MODES[raw.mode_code],
        padding=PADDINGS[raw.padding_code],
        icc_profile=raw.icc,
        fingerprint_kind=FINGERPRINT_KINDS[raw.version],
    )


@dataclass(frozen=True)
class Layout:
    """Where a file's bytes go: the header with the section table (fields 1-15), each section, the checksum.
    The parts add up to the file's size."""

    header_bytes: int
    section_bytes: tuple[int, ...]
    icc_bytes: int  # of header_bytes: the ICC profile (0 when there is none)
    checksum_bytes: int = _CRC.size


def _parse(data: bytes) -> tuple[Header, list[bytes], Layout]:
    """Parse and verify a whole file (the order of checks is in the module docstring)."""
    _check_magic_and_version(data)
    r = _Reader(data)
    raw = _read_raw_header(r)
    count = r.varint("section count")
    if count > MAX_SECTIONS:
        raise FormatError(f"corrupted file: section count {count} > {MAX_SECTIONS}")
    lengths = [r.varint(f"length of section {i}") for i in range(count)]
    header_end = r.pos
    payload_end = r.pos + sum(lengths)
    expected = payload_end + _CRC.size
    if expected > len(data):
        raise FormatError(f"truncated file: expected {expected} bytes, got {len(data)}")
    if expected < len(data):
        raise FormatError(f"trailing garbage: {len(data) - expected} bytes after the end of the file")
    (stored_crc,) = _CRC.unpack_from(data, payload_end)
    if zlib.crc32(data[:payload_end]) != stored_crc:
        raise FormatError("checksum mismatch: the file is corrupted")
    header = _validate(raw)
    sections = []
    for n in lengths:
        sections.append(r.take(n, "section"))
    layout = Layout(header_bytes=header_end, section_bytes=tuple(lengths), icc_bytes=len(raw.icc or b""))
    return header, sections, layout


def unpack(data: bytes) -> tuple[Header, list[bytes]]:
    """Parse and verify a whole `.adpd` file. Raises FormatError on any defect."""
    header, sections, _ = _parse(bytes(data))
    return header, sections


def inspect(data: bytes) -> tuple[Header, Layout]:
    """Verify a whole file like `unpack` (checksum included) and say where its bytes go."""
    header, _, layout = _parse(bytes(data))
    return header, layout


def format_version(data: bytes) -> int:
    """The version byte of a file that `unpack` or `inspect` accepted."""
    return data[len(MAGIC)]


def check_size(width: int, height: int) -> None:
    """Refuse, as a user's error, an image that no .adpd file can hold."""
    if max(width, height) > MAX_DIMENSION:
        raise InputError(f"image is {width}x{height}; a .adpd file holds at most {MAX_DIMENSION} pixels a side")


def read_header(data: bytes) -> Header:
    """Parse only the header, from the start of a file (a prefix is enough). Does NOT verify the checksum:
    use it to show what a file needs (model, size), and `unpack` to decode."""
    data = bytes(data)
    _check_magic_and_version(data)
    r = _Reader(data)
    return _validate(_read_raw_header(r))
