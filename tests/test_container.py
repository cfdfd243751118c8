"""The .adpd container: round trips, and every kind of damage is a FormatError (never another exception)."""

from __future__ import annotations

import random
import struct
import zlib

import pytest

from adapdate_codec.container import MAX_DIMENSION, Header, pack, read_header, unpack
from adapdate_codec.errors import FormatError

FP = bytes(range(32))


def make_header(**kw) -> Header:
    base = dict(
        model_name="cheng2020-anchor",
        quality=3,
        fingerprint=FP,
        width=37,
        height=21,
        mode="RGB",
        padding="replicate",
        icc_profile=None,
    )
    base.update(kw)
    return Header(**base)


SMALL = pack(make_header(model_name="tiny", icc_profile=b"icc!"), [b"zz", b"yyy", b""])


def reseal(body: bytes) -> bytes:
    """A crafted file: `body` with a valid checksum, to reach the field checks."""
    return body + struct.pack(">I", zlib.crc32(body))


@pytest.mark.parametrize(
    "header",
    [
        make_header(),
        make_header(mode="L", padding="reflect", icc_profile=b"\x00" * 300),
        make_header(width=1, height=1),
        make_header(width=MAX_DIMENSION, height=MAX_DIMENSION, quality=255),
        make_header(model_name="modèle-ü"),
    ],
)
def test_round_trip(header: Header) -> None:
    sections = [b"", b"\x00\x01", bytes(range(256)) * 3]
    got_header, got_sections = unpack(pack(header, sections))
    assert got_header == header
    assert got_sections == sections
    assert read_header(pack(header, sections)) == header


def test_no_sections_round_trip() -> None:
    assert unpack(pack(make_header(), [])) == (make_header(), [])


def test_layout_starts_with_magic_and_version() -> None:
    data = pack(make_header(fingerprint_kind="decoder"), [b"abc"])
    assert data[:5] == b"ADPD\x02"  # format 2: the fingerprint names the decoder
    assert data[-4:] == struct.pack(">I", zlib.crc32(data[:-4]))


def test_format_1_and_2_differ_only_in_the_version_byte_and_say_what_they_name() -> None:
    v2 = pack(make_header(fingerprint_kind="decoder"), [b"abc"])
    v1 = pack(make_header(fingerprint_kind="model"), [b"abc"])
    assert v1[:5] == b"ADPD\x01" and v1[5:-4] == v2[5:-4]
    assert unpack(v1)[0].fingerprint_kind == "model" and read_header(v1).fingerprint_kind == "model"
    assert unpack(v2)[0].fingerprint_kind == "decoder" and read_header(v2).fingerprint_kind == "decoder"


def test_pack_refuses_an_unknown_fingerprint_kind() -> None:
    with pytest.raises(ValueError, match="fingerprint kind"):
        pack(make_header(fingerprint_kind="encoder"), [])


def test_pack_is_deterministic() -> None:
    assert pack(make_header(), [b"x"]) == pack(make_header(), [b"x"])


def test_read_header_needs_only_a_prefix() -> None:
    data = pack(make_header(), [b"q" * 1000])
    assert read_header(data[:100]) == make_header()


@pytest.mark.parametrize(
    "kw",
    [
        dict(width=0),
        dict(height=MAX_DIMENSION + 1),
        dict(fingerprint=b"short"),
        dict(mode="RGBA"),
        dict(padding="zero"),
        dict(quality=256),
        dict(model_name=""),
        dict(model_name="x" * 256),
    ],
)
def test_pack_refuses_what_unpack_would(kw) -> None:
    with pytest.raises(ValueError):
        pack(make_header(**kw), [])


def test_empty_file() -> None:
    with pytest.raises(FormatError, match="^empty file$"):
        unpack(b"")


def test_bad_magic() -> None:
    with pytest.raises(FormatError, match=r"not an adapdate file \(bad magic\)"):
        unpack(b"\x89PNG\r\n\x1a\n" + b"\x00" * 100)


@pytest.mark.parametrize("version", [0, 3, 255])
def test_wrong_version(version) -> None:
    data = bytearray(SMALL)
    data[4] = version
    with pytest.raises(FormatError, match=rf"unsupported format version {version} \(this adapdate reads "
                                          r"versions 1 and 2\)"):
        unpack(bytes(data))
    with pytest.raises(FormatError, match="unsupported format version"):
        read_header(bytes(data))


def test_checksum_mismatch() -> None:
    data = bytearray(SMALL)
    data[-6] ^= 0xFF  # inside the last section
    with pytest.raises(FormatError, match="checksum mismatch: the file is corrupted"):
        unpack(bytes(data))


def test_trailing_garbage() -> None:
    with pytest.raises(FormatError, match="trailing garbage: 3 bytes"):
        unpack(SMALL + b"abc")


def test_truncated_at_every_length() -> None:
    for n in range(1, len(SMALL)):
        with pytest.raises(FormatError, match="truncated file"):
            unpack(SMALL[:n])


def test_every_single_bit_flip() -> None:
    for i in range(len(SMALL)):
        for bit in range(8):
            data = bytearray(SMALL)
            data[i] ^= 1 << bit
            with pytest.raises(FormatError):
                unpack(bytes(data))


def test_random_bytes() -> None:
    rng = random.Random(1234)
    for _ in range(300):
        n = rng.randrange(0, 200)
        data = bytes(rng.randrange(256) for _ in range(n))
        with pytest.raises(FormatError):
            unpack(data)
        with pytest.raises(FormatError):
            unpack(b"ADPD\x01" + data)  # past the magic, into the parser


def test_random_bytes_read_header_never_crashes() -> None:
    rng = random.Random(99)
    for _ in range(300):
        data = b"ADPD\x01" + bytes(rng.randrange(256) for _ in range(rng.randrange(0, 80)))
        try:
            read_header(data)
        except FormatError:
            pass


def test_overlong_varint() -> None:
    body = b"ADPD\x01\x00" + b"\xff" * 20
    with pytest.raises(FormatError, match="not a valid number"):
        unpack(body)


def test_huge_section_length_is_truncation_not_memory_error() -> None:
    header = pack(make_header(), [])[:-4]  # ends with section count 0
    body = header[:-1] + b"\x01" + b"\xff\xff\xff\xff\x0f"  # one section of 2**32-1 bytes
    with pytest.raises(FormatError, match="truncated file"):
        unpack(reseal(body))


def _crafted(**fields) -> bytes:
    """Build a version-1 file by hand, so that values pack() refuses can be tested on the reader."""
    f = dict(flags=0, name=b"m", quality=3, width=b"\x01", height=b"\x01", mode=0, padding=0, icc=b"")
    f.update(fields)
    body = (
        b"ADPD\x01"
        + bytes([f["flags"], len(f["name"])])
        + f["name"]
        + bytes([f["quality"]])
        + FP
        + f["width"]
        + f["height"]
        + bytes([f["mode"], f["padding"]])
        + f["icc"]
        + b"\x00"  # no sections
    )
    return reseal(body)


def test_crafted_baseline_is_valid() -> None:
    header, sections = unpack(_crafted())
    assert (header.model_name, header.width, header.height, sections) == ("m", 1, 1, [])


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(width=b"\x00"), "invalid image width 0"),
        (dict(height=b"\x81\x80\x40"), "invalid image height"),  # 2**20 + 1
        (dict(mode=2), "unknown colour mode code 2"),
        (dict(padding=9), "unknown padding code 9"),
        (dict(flags=0x80), "unknown header flags"),
        (dict(name=b"\xff\xfe"), "not UTF-8"),
        (dict(name=b""), "empty model name"),
        (dict(name=b"cheng\x0b\n q2"), r"invalid model name \(control characters\)"),  # found by the fuzz run
        (dict(name=b"m\x1b[2J"), "control characters"),  # a terminal escape
        (dict(flags=1, icc=b"\x00"), "profile is empty"),
    ],
)
def test_crafted_bad_values(fields, message) -> None:
    with pytest.raises(FormatError, match=message):
        unpack(_crafted(**fields))
