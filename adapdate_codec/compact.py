"""Compact, exact model files (``.adpm``): the form in which models are shipped.

A shipped model *is* what its compact file decodes to, so its fingerprint (bundle.py) is defined on
the decoded weights and comes out bit for bit the same on every platform:

* large weight tensors are integer levels on a per-tensor grid ``step = mult * 2**shift`` (a small
  integer times a power of two): float32 holds every ``level * step`` exactly, so turning levels back
  into weights is exact;
* the integer path's weights (fixed-point int16) are levels too, ``W = level * g``;
* small or sensitive tensors (biases, GDN, the entropy bottleneck) and the CDF tables are stored
  verbatim, zlib-compressed.

Nothing is derived when a file is read: the decoded tree is exactly ``ModelBundle.to_dict()`` of the
model that was written, and ``ModelBundle.from_dict`` checks its fingerprint.

A version may be stored as the *difference* to another one (``base``): where a tensor sits on the
base's grid, only the integer level differences are coded (small after a fine-tune), and a tensor
that did not change costs nothing. Earlier versions of the shipped models stay in the package this way.

Levels are coded with CompressAI's rANS coder, one stream per tensor with its own quantized
histogram (rare far-out levels take the coder's escape path). The whole file is checked (sha256)
before any of it is decoded, so damage is refused as a whole, never half-used.

Layout::

    b"ADPM" | format (u8) | header length (u32, big-endian) | header (JSON, UTF-8) | blobs | sha256

The header lists every tensor leaf (``state_dict/…``, ``tables/…``, ``fixed/…``) with its dtype,
shape, encoding and the offsets of its blobs; everything else (name, quality, card…) is plain JSON.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
import zlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import torch

from adapdate_codec.errors import ModelError

MAGIC = b"ADPM"
FORMAT = 1
SUFFIX = ".adpm"
_HASH = 32
_TREES = ("state_dict", "tables", "fixed")
_DTYPES = {"float32": torch.float32, "int16": torch.int16, "int32": torch.int32, "int64": torch.int64,
           "float64": torch.float64, "uint8": torch.uint8}
_PRECISION = 16
_MAX_SYMBOLS = 4096  # histogram range per tensor; the rest goes through the escape path
GRID_MIN_ELEMENTS = 4096  # smaller tensors are stored verbatim
MAX_HEADER_BYTES = 16 << 20


# -- grids ----------------------------------------------------------------------------------------
# A grid is (mult, shift): step = mult * 2**shift with a small integer mult, so that a value on it,
# level * mult * 2**shift, is exact in float32 (|level * mult| < 2**24) and in integers.
Grid = tuple[int, int]
GRID_STEPS_PER_OCTAVE = 4  # mult in 4..7 (times 2**(shift)): steps a quarter-octave apart


def quantizable(key: str, t: torch.Tensor) -> bool:
    """Weights put on a coarse grid: large float tensors, except the sensitive GDN / bottleneck ones."""
    from adapdate_codec.bundle import kept_in_float32

    return t.is_floating_point() and t.numel() >= GRID_MIN_ELEMENTS and not kept_in_float32(key) \
        and not key.endswith("mask")


def nearest_grid(step: float) -> Grid:
    """The grid step nearest to `step` (in log scale) among mult * 2**shift, mult in 4..7."""
    e = math.floor(math.log2(step))
    mult = int(round(step / 2.0**e * GRID_STEPS_PER_OCTAVE))  # 4..8
    if mult == 2 * GRID_STEPS_PER_OCTAVE:
        mult, e = GRID_STEPS_PER_OCTAVE, e + 1
    return mult, e - int(math.log2(GRID_STEPS_PER_OCTAVE))


def step_of(grid: Grid) -> float:
    return grid[0] * 2.0 ** grid[1]


def snap_to_grid(state_dict: dict[str, torch.Tensor], grids: dict[str, Grid]) -> dict[str, torch.Tensor]:
    """The weights rounded to their grids (float32, exact multiples of the step)."""
    out = dict(state_dict)
    for k, g in grids.items():
        out[k] = _from_levels(torch.round(state_dict[k].double() / step_of(g)).numpy().astype(np.int64), g,
                              torch.float32, tuple(state_dict[k].shape))
    return out


# -- level coding ---------------------------------------------------------------------------------
def _encode_levels(levels: np.ndarray) -> tuple[bytes, bytes, int]:
    """rANS stream of int levels, the quantized CDF it needs (int32 bytes, zlib) and its offset."""
    from adapdate_codec.cai import RansEncoder, pmf_to_quantized_cdf

    flat = levels.reshape(-1).astype(np.int64)
    lo, hi = int(flat.min()), int(flat.max())
    if hi - lo + 1 > _MAX_SYMBOLS:  # keep the central range; far-out levels are escaped
        lo, hi = (int(v) for v in np.quantile(flat, [1e-5, 1 - 1e-5]).round())
        hi = min(hi, lo + _MAX_SYMBOLS - 1)
    counts = np.bincount(np.clip(flat, lo, hi) - lo, minlength=hi - lo + 1).astype(np.float64)
    outside = int(((flat < lo) | (flat > hi)).sum())
    counts[0] -= (flat < lo).sum()
    counts[-1] -= (flat > hi).sum()
    pmf = (counts / flat.size).tolist() + [max(outside, 1) / flat.size]  # last: the escape symbol
    cdf = pmf_to_quantized_cdf(pmf, _PRECISION)
    stream = RansEncoder().encode_with_indexes(flat.astype(np.int32).tolist(), [0] * flat.size, [cdf],
                                               [len(cdf)], [lo])
    return stream, zlib.compress(np.asarray(cdf, dtype=np.int32).tobytes(), 9), lo


def _decode_levels(stream: bytes, cdf_blob: bytes, offset: int, count: int) -> np.ndarray:
    from adapdate_codec.cai import RansDecoder

    cdf = np.frombuffer(zlib.decompress(cdf_blob), dtype=np.int32).tolist()
    vals = RansDecoder().decode_with_indexes(stream, [0] * count, [cdf], [len(cdf)], [offset])
    return np.asarray(vals, dtype=np.int64)


def grid_levels(t: torch.Tensor, grid: Grid) -> np.ndarray | None:
    """Integer levels L with t == L * step exactly, or None when t is not on that grid."""
    mult, shift = grid
    d = t.detach().cpu().double() * 2.0**-shift  # exact: a power of two
    if not bool(torch.isfinite(d).all()) or (d.numel() and float(d.abs().max()) >= 2**40):
        return None
    lv = torch.round(d / mult)
    if not torch.equal(lv * mult, d):
        return None
    return lv.numpy().astype(np.int64)


def _from_levels(levels: np.ndarray, grid: Grid, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    # integer products and powers of two are exact: the same bits on every platform
    mult, shift = grid
    t = torch.from_numpy((levels.astype(np.int64) * mult).astype(np.float64) * 2.0**shift)
    return t.to(dtype).reshape(shape)


def int_grid(t: torch.Tensor) -> Grid:
    """The coarsest grid (g, 0) an integer tensor sits on: g = gcd of its values."""
    v = t.detach().cpu().to(torch.int64).abs().reshape(-1).numpy()
    g = int(np.gcd.reduce(v)) if v.size else 0
    return (g if 0 < g < 2**15 else 1), 0


# -- the file -------------------------------------------------------------------------------------
def _leaves(d: dict) -> Iterator[tuple[str, torch.Tensor]]:
    """('state_dict/g_a.0.conv1.weight', tensor), … for the tensor trees of a bundle dict."""
    def walk(prefix: str, tree: Any) -> Iterator[tuple[str, torch.Tensor]]:
        if isinstance(tree, dict):
            for k in sorted(tree):
                yield from walk(f"{prefix}/{k}", tree[k])
        elif isinstance(tree, torch.Tensor):
            yield prefix, tree

    for root in _TREES:
        yield from walk(root, d[root])


def _set_leaf(d: dict, path: str, value: torch.Tensor) -> None:
    parts = path.split("/")
    node = d
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value


def _dtype_name(t: torch.Tensor) -> str:
    name = str(t.dtype).removeprefix("torch.")
    if name not in _DTYPES:
        raise ModelError(f"cannot store a {name} tensor in a compact model file")
    return name


def _stored(how: str, grid: Grid | None, lv: np.ndarray | None, t: torch.Tensor) -> tuple[dict, dict[str, bytes]]:
    """One way of storing a leaf: its header fields and its blobs."""
    if how in ("delta", "levels"):
        stream, cdf, offset = _encode_levels(lv)
        return {"how": how, "grid": list(grid), "offset": offset}, {"stream": stream, "cdf": cdf}
    if how == "raw":
        return {"how": how}, {"data": zlib.compress(t.numpy().tobytes(), 9)}
    return {"how": how}, {}


def _candidates(t: torch.Tensor, path: str, grids: dict[str, Grid], base: torch.Tensor | None,
                base_grid: Grid | None) -> Iterator[tuple[str, Grid | None, np.ndarray | None]]:
    """Ways to store leaf t: ('same' | 'delta' | 'levels' | 'raw', grid, levels)."""
    if base is not None and base.dtype == t.dtype and base.shape == t.shape and torch.equal(base, t):
        yield "same", None, None
        return
    key = path.removeprefix("state_dict/")
    own = None
    if path.startswith("fixed/") and path.endswith("/weight"):
        own = int_grid(t)  # the integer path's weights: multiples of the float grid's step
    elif path.startswith("state_dict/") and key in grids:
        own = tuple(grids[key])
    if base is not None and base.shape == t.shape and base.dtype == t.dtype:
        # on the base's grid, or on the version's own when the base sits on it too (a finer one)
        for g in dict.fromkeys(x for x in (base_grid, own) if x is not None):
            a, b = grid_levels(t, g), grid_levels(base, g)
            if a is not None and b is not None:
                yield "delta", g, a - b
    if own is not None:
        lv = grid_levels(t, own)
        if lv is None and path.startswith("state_dict/"):
            raise ModelError(f"{key} is not on its grid {own}: snap the weights before building")
        if lv is not None:
            yield "levels", own, lv
            if path.startswith("state_dict/"):
                return  # snapped weights: their levels always beat their float bytes
    yield "raw", None, None


def encode(bundle_dict: dict, grids: dict[str, Grid], base: "CompactFile | None" = None) -> bytes:
    """The compact file of a bundle (``ModelBundle.to_dict()``, float32), optionally relative to base.

    grids: the grid each state-dict weight was snapped to (``snap_to_grid``); leaves that sit on the
    base's grid are stored as level differences when that is smaller."""
    base_leaves = dict(_leaves(base.tree)) if base is not None else {}
    parts: list[bytes] = []
    size = 0
    entries = []
    for path, t in _leaves(bundle_dict):
        t = t.detach().cpu().contiguous()
        options = [_stored(how, g, lv, t) for how, g, lv in _candidates(
            t, path, grids, base_leaves.get(path), base.grids.get(path) if base is not None else None)]
        fields, data = min(options, key=lambda o: sum(map(len, o[1].values())))
        entry: dict[str, Any] = {"path": path, "dtype": _dtype_name(t), "shape": list(t.shape), **fields}
        for name, b in data.items():  # [offset, length] within the blobs
            entry[name] = [size, len(b)]
            parts.append(b)
            size += len(b)
        entries.append(entry)
    header = {k: v for k, v in bundle_dict.items() if k not in _TREES}
    header["base"] = base.fingerprint if base is not None else None
    header["entries"] = entries
    return _file(header, b"".join(parts))


def _file(header: dict, blobs: bytes) -> bytes:
    hb = json.dumps(header, sort_keys=True).encode()
    body = MAGIC + bytes([FORMAT]) + struct.pack(">I", len(hb)) + hb + blobs
    return body + hashlib.sha256(body).digest()


@dataclass
class CompactFile:
    """A parsed, checked compact file; ``tree`` is the decoded bundle dict (what from_dict takes)."""

    header: dict
    tree: dict
    grids: dict[str, Grid]  # leaf path -> the grid its levels are on (differences are taken on it)

    @property
    def fingerprint(self) -> str:
        return str(self.header["fingerprint"])

    def bundle(self, source: str = "compact model"):
        from adapdate_codec.bundle import ModelBundle

        return ModelBundle.from_dict(self.tree, source)


def read_header(data: bytes, source: str = "compact model") -> tuple[dict, memoryview]:
    """Check the file (magic, format, sha256, lengths) and parse its header; the blobs come back as a view."""
    if len(data) < len(MAGIC) + 5 + _HASH or data[:4] != MAGIC:
        raise ModelError(f"{source} is not a compact adapdate model file")
    if data[4] != FORMAT:
        raise ModelError(f"{source} is compact model format {data[4]}; this adapdate reads format {FORMAT}: "
                         "upgrade adapdate")
    body, digest = data[:-_HASH], data[-_HASH:]
    if hashlib.sha256(body).digest() != digest:
        raise ModelError(f"{source} is damaged (checksum mismatch)")
    (n,) = struct.unpack(">I", body[5:9])
    if n > min(MAX_HEADER_BYTES, len(body) - 9):
        raise ModelError(f"{source} is damaged (header length)")
    try:
        header = json.loads(bytes(body[9:9 + n]).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ModelError(f"{source} is damaged (header)") from None
    if not isinstance(header, dict) or not isinstance(header.get("entries"), list):
        raise ModelError(f"{source} is damaged (header)")
    return header, memoryview(body)[9 + n:]


def decode(data: bytes, resolve_base: Callable[[str], CompactFile] | None = None,
           source: str = "compact model") -> CompactFile:
    """Decode a compact file. resolve_base(fingerprint) gives the version a difference file is against."""
    header, blobs = read_header(data, source)
    base = None
    if header.get("base"):
        if resolve_base is None:
            raise ModelError(f"{source} is stored as a difference to model {header['base'][:8]}…, "
                             "which is not available")
        base = resolve_base(str(header["base"]))
    base_leaves = dict(_leaves(base.tree)) if base is not None else {}
    tree: dict = {k: v for k, v in header.items() if k not in ("entries", "base")}
    for root in _TREES:
        tree[root] = {}
    grids: dict[str, Grid] = {}

    def blob(span: Any) -> bytes:
        start, n = (int(v) for v in span)
        if start < 0 or n < 0 or start + n > len(blobs):
            raise ModelError(f"{source} is damaged (blob outside the file)")
        return bytes(blobs[start:start + n])

    try:
        for e in header["entries"]:
            path, how = str(e["path"]), e["how"]
            if path.split("/")[0] not in _TREES:
                raise ModelError(f"{source} is damaged (entry {path!r})")
            dtype, shape = _DTYPES[e["dtype"]], tuple(int(s) for s in e["shape"])
            count = math.prod(shape)
            if how == "same":
                t = base_leaves[path]
                if path in base.grids:
                    grids[path] = base.grids[path]
            elif how == "raw":
                t = torch.frombuffer(bytearray(zlib.decompress(blob(e["data"]))), dtype=dtype).reshape(shape)
            elif how in ("levels", "delta"):
                grid = (int(e["grid"][0]), int(e["grid"][1]))
                lv = _decode_levels(blob(e["stream"]), blob(e["cdf"]), int(e["offset"]), count)
                if how == "delta":
                    ref = grid_levels(base_leaves[path], grid)
                    if ref is None:
                        raise ModelError(f"{source}: its base does not hold {path} on the grid it expects")
                    lv = lv + ref.reshape(-1)
                t = _from_levels(lv, grid, dtype, shape)
                grids[path] = grid
            else:
                raise ModelError(f"{source} is damaged (unknown encoding {how!r})")
            _set_leaf(tree, path, t)
    except ModelError:
        raise
    except (KeyError, TypeError, ValueError, zlib.error, RuntimeError) as e:
        raise ModelError(f"{source} is damaged ({type(e).__name__}: {e})") from None
    return CompactFile(header, tree, grids)


def file_fingerprint(data: bytes) -> str:
    """The fingerprint a compact file declares (checked again when it is decoded)."""
    return str(read_header(data)[0]["fingerprint"])


# -- making models compact (release time) ---------------------------------------------------------
def uniform_grids(state_dict: dict[str, torch.Tensor], steps_per_rms: float = 16.0) -> dict[str, Grid]:
    """The simplest allocation: every quantizable tensor gets a step of its RMS / steps_per_rms."""
    return {k: nearest_grid(max(float(v.double().pow(2).mean().sqrt()), 2.0**-30) / steps_per_rms)
            for k, v in state_dict.items() if quantizable(k, v)}


def compact_bundle(bundle, grids: dict[str, Grid], base: CompactFile | None = None, card: dict | None = None):
    """(the model rebuilt from its weights snapped to `grids`, its compact file).

    The rebuilt model is the one to ship: its integer path and fingerprint are derived from the
    snapped weights, and decoding the file gives it back exactly (checked here)."""
    from adapdate_codec.bundle import build_bundle

    snapped = snap_to_grid(bundle.state_dict, grids)
    b = build_bundle(bundle.name, bundle.quality, bundle.arch, bundle.N, bundle.lmbda, snapped,
                     adapters=bundle.adapters, card=dict(card if card is not None else bundle.card),
                     z_tables=bundle.tables["z"], y_tables=bundle.tables["y"])
    data = encode(b.to_dict(), grids, base)
    back = decode(data, (lambda fp: base) if base is not None else None).bundle()
    if back.fingerprint != b.fingerprint:
        raise ModelError("the compact file does not decode to the model it was made from")
    return b, data


def with_card(data: bytes, card: dict) -> bytes:
    """The same compact file with another card (the card is not part of the fingerprint)."""
    header, blobs = read_header(data)
    header["card"] = card
    return _file(header, bytes(blobs))
