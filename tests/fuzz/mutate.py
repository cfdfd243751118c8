"""Structure-aware mutations of `.adpd` and `.nnc` files, with the checksum fixed afterwards.

A mutation that breaks the CRC (or the update's sha256) is stopped by the first check; fixing the checksum
after mutating, as an attacker would, makes the mutated file reach the decoder behind it. Each mutation
knows the layout (docs/format.md, update.py) and picks its target by field: header fields, declared sizes,
the section table, the sections' bytes (bit flips, byte sets, splices, truncations), the manifest.

Every case is a pure function of (seed file, case number): `mutate_adpd(seeds, rng)` with
`rng = random.Random(f"{seed}:{i}")`, so any case can be rerun alone.
"""

from __future__ import annotations

import hashlib
import json
import random
import struct
import zlib
from dataclasses import dataclass
from typing import Any, Callable

from adapdate_codec import container, update

INTERESTING_BYTES = (0x00, 0x01, 0x7F, 0x80, 0xFE, 0xFF)
INTERESTING_SIZES = (0, 1, 2, 63, 64, 65, 255, 256, 4096, 65535, 65536, 1 << 20, (1 << 20) + 1, 1 << 31,
                     (1 << 32) - 1, 1 << 40, (1 << 63) - 1)
INTERESTING_NUMBERS = (0, -1, 1, 2**31, 2**53, 2**63, 10**400, 1e308, -1e308, 0.5, 3, 1 << 26, (1 << 26) + 1)


# -- .adpd ------------------------------------------------------------------------------------------------
@dataclass
class Adpd:
    """A `.adpd` file as its raw header fields (container._RawHeader: values unchecked, so that any value
    can be written back), its version byte and its sections."""

    version: int
    raw: container._RawHeader
    sections: list[bytes]
    count: int | None = None  # section count as written (None: len(sections))
    lengths: list[int] | None = None  # section lengths as written (None: the real ones)

    @classmethod
    def parse(cls, data: bytes) -> "Adpd":
        _, sections = container.unpack(data)  # a valid seed
        raw = container._read_raw_header(container._Reader(data))
        return cls(data[len(container.MAGIC)], raw, list(sections))

    def pack(self, fix_crc: bool = True) -> bytes:
        v, h = container._varint, self.raw
        parts = [container.MAGIC, bytes([self.version & 0xFF, h.flags & 0xFF]), v(len(h.name)), h.name,
                 bytes([h.quality & 0xFF]), h.fingerprint, v(h.width), v(h.height),
                 bytes([h.mode_code & 0xFF, h.padding_code & 0xFF])]
        if h.flags & 0x01:
            icc = h.icc or b""
            parts += [v(len(icc)), icc]
        lengths = self.lengths if self.lengths is not None else [len(s) for s in self.sections]
        parts += [v(self.count if self.count is not None else len(self.sections)), *map(v, lengths), *self.sections]
        body = b"".join(parts)
        crc = zlib.crc32(body) if fix_crc else zlib.crc32(body) ^ 1
        return body + struct.pack(">I", crc)


def fix_adpd_crc(data: bytes) -> bytes:
    return data[:-4] + struct.pack(">I", zlib.crc32(data[:-4])) if len(data) > 4 else data


def _bytes_mutation(data: bytes, rng: random.Random, donors: list[bytes]) -> bytes:
    """Bit flips, byte sets, splices (from the same or another file), insertions, deletions, truncation."""
    d = bytearray(data)
    kind = rng.choice(("flip", "flip", "set", "splice", "insert", "delete", "truncate", "repeat", "zero", "random"))
    n = len(d)
    if n == 0:
        return bytes(rng.randbytes(rng.randint(1, 16)))
    if kind == "flip":
        for _ in range(rng.choice((1, 1, 2, 3, 8))):
            d[rng.randrange(n)] ^= 1 << rng.randrange(8)
    elif kind == "set":
        for _ in range(rng.choice((1, 2, 4))):
            d[rng.randrange(n)] = rng.choice(INTERESTING_BYTES + (rng.randrange(256),))
    elif kind == "splice":
        donor = rng.choice(donors) or data
        a, b = sorted(rng.randrange(len(donor) + 1) for _ in range(2))
        at = rng.randrange(n + 1)
        d[at:at + (b - a)] = donor[a:b]
    elif kind == "insert":
        at = rng.randrange(n + 1)
        d[at:at] = rng.randbytes(rng.choice((1, 2, 4, 8, 64)))
    elif kind == "delete":
        a = rng.randrange(n)
        del d[a:a + rng.choice((1, 2, 4, 8, 64))]
    elif kind == "truncate":
        del d[rng.randrange(n):]
    elif kind == "repeat":
        a, b = sorted(rng.randrange(n + 1) for _ in range(2))
        d[b:b] = d[a:b] * rng.choice((1, 2, 16))
    elif kind == "zero":
        a = rng.randrange(n)
        b = min(n, a + rng.choice((4, 8, 32)))
        d[a:b] = bytes(b - a)
    else:
        a = rng.randrange(n)
        d[a:a + 16] = rng.randbytes(len(d[a:a + 16]))
    return bytes(d)


def _size(rng: random.Random) -> int:
    return rng.choice(INTERESTING_SIZES + (rng.randrange(1, 5000), rng.randrange(1, 1 << 21)))


def mutate_adpd(seeds: list[bytes], rng: random.Random) -> tuple[str, bytes]:
    """(what was mutated, the mutated file). Most keep a valid CRC; a few break it on purpose."""
    seed = rng.choice(seeds)
    f = Adpd.parse(seed)
    donors = [s for s in seeds]
    what = rng.choice(("section", "section", "section", "section", "sizes", "header", "table", "bytes", "bytes",
                       "sections-swap", "stack"))
    rounds = rng.randint(2, 4) if what == "stack" else 1
    for _ in range(rounds):
        kind = rng.choice(("section", "sizes", "header", "table", "bytes")) if what == "stack" else what
        if not f.sections:  # an earlier round of a stack dropped the only section
            f.sections.append(rng.randbytes(rng.randrange(0, 64)))
        if kind == "section":  # the coded data itself: what reaches the rANS decoder
            i = rng.randrange(len(f.sections))
            f.sections[i] = _bytes_mutation(f.sections[i], rng, [s for other in seeds for s in Adpd.parse(other).sections])
        elif kind == "sizes":  # a declared size: pixels, as any number a varint holds
            field_ = rng.choice(("width", "height", "both"))
            if field_ in ("width", "both"):
                f.raw.width = _size(rng)
            if field_ in ("height", "both"):
                f.raw.height = _size(rng)
        elif kind == "header":
            choice = rng.choice(("version", "flags", "name", "quality", "fingerprint", "mode", "padding", "icc"))
            if choice == "version":  # 1 <-> 2 changes what the fingerprint names: the other kind is not installed
                f.version = rng.choice((0, 1, 2, 3, 255))
            elif choice == "flags":
                f.raw.flags = rng.randrange(256)
            elif choice == "name":
                f.raw.name = rng.choice((b"", b"\xff\xfe", b"x" * 255, b"../../etc", f.raw.name[:-1], f.raw.name + b"-2"))
            elif choice == "quality":
                f.raw.quality = rng.choice((0, 1, 2, 4, 99, 255))
            elif choice == "fingerprint":
                fp = bytearray(f.raw.fingerprint)
                fp[rng.randrange(32)] ^= 1 << rng.randrange(8)
                f.raw.fingerprint = bytes(fp)
            elif choice == "mode":
                f.raw.mode_code = rng.randrange(4)
            elif choice == "padding":
                f.raw.padding_code = rng.randrange(4)
            else:
                f.raw.flags |= 0x01
                f.raw.icc = rng.choice((b"", b"acsp" * 8, rng.randbytes(rng.randrange(1, 300))))
        elif kind == "table":  # the section table: count and lengths that disagree with the bytes
            choice = rng.choice(("count", "length", "drop", "add", "empty"))
            if choice == "count":
                f.count = rng.choice((0, 1, 3, 255, 256))
            elif choice == "length":
                lengths = [len(s) for s in f.sections]
                j = rng.randrange(len(lengths))
                lengths[j] = max(0, lengths[j] + rng.choice((-8, -4, -1, 1, 4, 8, 1 << 20)))
                f.lengths = lengths
            elif choice == "drop":
                f.sections.pop(rng.randrange(len(f.sections)))
            elif choice == "add":
                f.sections.append(rng.randbytes(rng.randrange(0, 64)))
            else:
                f.sections[rng.randrange(len(f.sections))] = b""
        elif kind == "sections-swap":
            other = Adpd.parse(rng.choice(seeds))
            i = rng.randrange(len(f.sections))
            if rng.random() < 0.5 and len(f.sections) > 1:
                f.sections.reverse()
            else:
                f.sections[i] = other.sections[i % len(other.sections)]
        else:  # raw bytes of the whole file, CRC fixed afterwards
            data = _bytes_mutation(f.pack(), rng, seeds)
            return kind, (fix_adpd_crc(data) if rng.random() < 0.9 else data)
    return what, f.pack(fix_crc=rng.random() < 0.95)


# -- .nnc -------------------------------------------------------------------------------------------------
@dataclass
class Nnc:
    manifest: Any  # JSON value (normally a dict)
    payload: bytes
    tables: bytes
    magic: bytes = update.MAGIC
    version: int = update.FORMAT_VERSION
    manifest_text: bytes | None = None  # raw manifest bytes (None: json.dumps(manifest))

    @classmethod
    def parse(cls, data: bytes) -> "Nnc":
        u = update.parse_update(data)
        _, _, mlen = update._HEADER.unpack_from(data)
        start = update._HEADER.size + mlen
        return cls(json.loads(data[update._HEADER.size:start]), u.payload, data[start + len(u.payload):-32])

    def pack(self, fix_digest: bool = True, keep_payload_bytes: bool = False) -> bytes:
        m = self.manifest
        if isinstance(m, dict) and not keep_payload_bytes:
            m = dict(m, payload_bytes=len(self.payload))
        body = self.manifest_text if self.manifest_text is not None else json.dumps(m).encode()
        raw = struct.pack(">4sHI", self.magic, self.version & 0xFFFF, len(body)) + body + self.payload + self.tables
        digest = hashlib.sha256(raw).digest()
        return raw + (digest if fix_digest else bytes(32))


def fix_nnc_digest(data: bytes) -> bytes:
    return data[:-32] + hashlib.sha256(data[:-32]).digest() if len(data) > 32 else data


def _nested(depth: int) -> bytes:
    """JSON text nested `depth` deep (built as text: json.dumps itself recurses)."""
    opens = "".join('[' if i % 2 else '{"a":' for i in range(depth))
    closes = "".join(']' if i % 2 else '}' for i in reversed(range(depth)))
    return (opens + "0" + closes).encode()


def _manifest_mutation(m: dict, rng: random.Random) -> tuple[dict | Any, bytes | None]:
    """A changed manifest (or raw manifest text): types, numbers, sizes, shapes, names, nesting."""
    m = json.loads(json.dumps(m))
    choice = rng.choice(("number", "type", "drop", "shape", "name", "nest", "adapters", "tables", "text", "huge-list",
                         "scope", "encoder"))
    keys = list(m)
    if choice == "number":
        m[rng.choice(("base_quality", "N", "lmbda", "qp", "payload_bytes", "format"))] = rng.choice(INTERESTING_NUMBERS)
    elif choice == "type":
        m[rng.choice(keys)] = rng.choice((None, "", [], {}, True, "x" * 1000, [1, 2], {"a": 1}))
    elif choice == "drop":
        m.pop(rng.choice(keys))
    elif choice == "shape" and m.get("tensors"):
        t = rng.choice(m["tensors"])
        t["shape"] = rng.choice(([], [0], [1 << 26], [1 << 13, 1 << 13, 2], [-1], [2, 3, 4, 5, 6], ["3"],
                                 [d + rng.choice((-1, 1)) for d in t["shape"]] or [1]))
    elif choice == "name" and m.get("tensors"):
        t = rng.choice(m["tensors"])
        t["name"] = rng.choice(("g_a.0.weight", "", "entropy_bottleneck.quantiles", t["name"] + "x",
                                m["tensors"][0]["name"], "__class__", "a" * 5000))
    elif choice == "nest":
        m[rng.choice(("training", "adapters", "extra"))] = "@NEST@"
        return m, json.dumps(m).encode().replace(b'"@NEST@"', _nested(rng.choice((8, 17, 100, 5000, 100000))))
    elif choice == "adapters":
        m["adapters"] = rng.choice(({"type": "resblock", "R": 0, "v": 3}, {"type": "nope", "R": 2, "v": 3},
                                    {"type": "resblock", "R": 4097, "v": 3}, {"type": "resblock", "R": 2},
                                    {"type": "all", "R": 2, "v": 3}, {"type": "resblock", "R": 2.5, "v": 3}))
    elif choice == "tables":
        m["tables"] = rng.choice(([], [{"name": "cdf", "shape": [4]}], [{"name": n, "shape": [rng.choice((0, 1, 8, 1 << 26))]}
                                                                         for n in update.TABLE_NAMES]))
    elif choice == "scope":  # an encoder update posing as a model update, and the reverse
        m["format"] = rng.choice((1, 2, 3, True, "2"))
        m["scope"] = rng.choice(("model", "encoder", "decoder", "", None))
    elif choice == "encoder":  # the encoder update's own fields
        field_ = rng.choice(("delta", "base_decoder_fingerprint", "patched_encoder_fingerprint", "name", "adapters"))
        if field_ == "delta":
            m["delta"] = rng.choice((True, False, None, 1, "true"))
        elif field_ == "name" and m.get("tensors"):
            rng.choice(m["tensors"])["name"] = rng.choice(("g_s.0.conv1.weight", "h_s.0.weight", "g_a.0.adapter.0.weight",
                                                           "h_a.99.weight", "entropy_bottleneck._biases.0"))
        elif field_ == "adapters":
            m["adapters"] = rng.choice((None, {"type": "resblock", "R": 2, "v": 3, "side": "both"},
                                        {"type": "resblock", "R": 2, "v": 3, "side": "decoder"},
                                        {"type": "resblock", "R": 2, "v": 3, "side": "encoder"}))
        else:
            fp = m.get(field_)
            m[field_] = rng.choice(("0" * 64, m.get("base_fingerprint"), (fp or "")[:-1] + "0", "x"))
    elif choice == "huge-list":
        m["tensors"] = [{"name": f"g_s.0.adapter.0.weight{i}", "shape": [1]} for i in range(rng.choice((10001, 3000)))]
    else:
        text = json.dumps(m).encode()
        text = _bytes_mutation(text, rng, [text])
        return m, text
    return m, None


def mutate_nnc(seeds: list[bytes], rng: random.Random) -> tuple[str, bytes]:
    seed = rng.choice(seeds)
    f = Nnc.parse(seed)
    what = rng.choice(("payload", "payload", "payload", "manifest", "manifest", "tables", "header", "bytes", "bytes"))
    if what == "payload":  # the NNCodec stream: what reaches NNCodec's parser and CABAC decoder
        donors = [Nnc.parse(s).payload for s in seeds]
        f.payload = _bytes_mutation(f.payload, rng, donors)
        return what, f.pack(keep_payload_bytes=rng.random() < 0.1)
    if what == "manifest":
        f.manifest, f.manifest_text = _manifest_mutation(f.manifest, rng)
        return what, f.pack(keep_payload_bytes=True)
    if what == "tables":
        if f.tables:
            f.tables = _bytes_mutation(f.tables, rng, [f.tables])
            keep = rng.random() < 0.5
        else:
            f.tables = rng.randbytes(4 * rng.randrange(0, 64))
            keep = True
        return what, f.pack(keep_payload_bytes=keep)
    if what == "header":
        choice = rng.choice(("magic", "version", "length"))
        if choice == "magic":
            f.magic = rng.choice((b"ADPD", b"ADPu", b"\0\0\0\0"))
        elif choice == "version":
            f.version = rng.choice((0, 2, 65535))
        else:
            data = f.pack()
            mlen = struct.unpack_from(">I", data, 6)[0]
            new = rng.choice((0, 1, mlen - 1, mlen + 1, 1 << 20, (1 << 20) + 1, (1 << 32) - 1))
            return "header", fix_nnc_digest(data[:6] + struct.pack(">I", new) + data[10:])
        return what, f.pack()
    data = _bytes_mutation(f.pack(), rng, seeds)
    return what, (fix_nnc_digest(data) if rng.random() < 0.9 else data)


MUTATORS: dict[str, Callable[[list[bytes], random.Random], tuple[str, bytes]]] = {
    "adpd": mutate_adpd, "nnc": mutate_nnc}


def case_rng(seed: int, kind: str, i: int) -> random.Random:
    return random.Random(f"{seed}:{kind}:{i}")
