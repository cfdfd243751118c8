"""Model updates: adapters (and optionally a retrained entropy bottleneck) coded with NNCodec.

An update file (``.nnc``) is::

    b"ADPU"  u16 format version  u32 manifest length     (big-endian)
    manifest                                              JSON, UTF-8
    payload                                               NNCodec stream, manifest.payload_bytes long
    tables                                                raw int32 little-endian arrays, manifest.tables
    sha256                                                32 bytes over everything before it

Reading one never executes code: it is JSON, raw integers and an NNCodec stream (bit-syntax parser and
CABAC decoder, no pickle). Every length is checked against the bytes present before it is used.

``export_update`` codes the tensors that differ from the base, decodes them again and builds the patched
model exactly as ``apply_update`` will, so the manifest can carry the fingerprint the patched model
must have; ``apply_update`` refuses anything else. The patched model is a new store version, so files
coded with the base still decode (by fingerprint), and ``rollback`` returns to the base.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import struct
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapdate_codec import __version__, nnc
from adapdate_codec.errors import ModelError, ModelNotInstalledError, UpdateError

if TYPE_CHECKING:
    import numpy as np
    import torch

    from adapdate_codec.adapters import AdapterConfig
    from adapdate_codec.bundle import ModelBundle
    from adapdate_codec.store import ModelEntry, ModelStore

MAGIC = b"ADPU"
FORMAT_VERSION = 1
_HEADER = struct.Struct(">4sHI")  # magic, format version, manifest length
_DIGEST = 32
MAX_MANIFEST_BYTES = 1 << 20
MAX_JSON_DEPTH = 16  # a manifest nests 3 deep; Python's json recurses once per level (RecursionError)
MAX_ELEMENTS = 1 << 26  # per tensor or table, and in all: far above any adapter, far below an allocation bomb
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
TABLE_NAMES = ("cdf", "lengths", "offsets")  # the z tables, as entropy._pack builds them
_FINGERPRINT = re.compile(r"^[0-9a-f]{64}$")
EB_PREFIX = "entropy_bottleneck."


def _short(fp: str) -> str:
    return f"{fp[:8]}…"


# -- manifest -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True)
class Manifest:
    base_name: str
    base_quality: int
    base_fingerprint: str
    arch: str
    N: int
    adapters: dict[str, Any]
    lmbda: float
    qp: int
    tensors: tuple[TensorSpec, ...]
    patched_fingerprint: str
    payload_bytes: int
    tables: tuple[TensorSpec, ...] = ()  # new z tables, present only when the bottleneck changed
    created_at: str = ""
    adapdate_version: str = __version__
    training: dict[str, Any] = field(default_factory=dict)
    format: int = FORMAT_VERSION

    @property
    def parameters(self) -> int:
        return sum(t.numel for t in self.tensors)

    @property
    def bottleneck_changed(self) -> bool:
        return bool(self.tables)

    @property
    def table_bytes(self) -> int:
        return 4 * sum(t.numel for t in self.tables)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["tensors"] = [{"name": t.name, "shape": list(t.shape)} for t in self.tensors]
        d["tables"] = [{"name": t.name, "shape": list(t.shape)} for t in self.tables]
        return d

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_dict(cls, d: Any) -> "Manifest":
        """A manifest from untrusted JSON: every field type-checked, every size bounded."""
        if not isinstance(d, dict):
            raise UpdateError("the update manifest is not a JSON object")
        if d.get("format") != FORMAT_VERSION:
            raise UpdateError(f"update manifest format {d.get('format')!r} is not supported")
        try:
            m = cls(
                base_name=_typed(d, "base_name", str), base_quality=_typed(d, "base_quality", int),
                base_fingerprint=_fingerprint(d, "base_fingerprint"), arch=_typed(d, "arch", str),
                N=_typed(d, "N", int), adapters=_typed(d, "adapters", dict),
                lmbda=float(_typed(d, "lmbda", (int, float))), qp=_typed(d, "qp", int),
                tensors=_specs(d, "tensors", tensor=True), patched_fingerprint=_fingerprint(d, "patched_fingerprint"),
                payload_bytes=_typed(d, "payload_bytes", int), tables=_specs(d, "tables", tensor=False),
                created_at=str(d.get("created_at", "")), adapdate_version=str(d.get("adapdate_version", "")),
                training=d["training"] if isinstance(d.get("training"), dict) else {},
            )
        except (TypeError, ValueError, OverflowError) as e:  # OverflowError: float() of a huge integer
            raise UpdateError(f"the update manifest is invalid: {e}") from None
        if not (0 < m.lmbda < 1e3):
            raise UpdateError(f"the update manifest has an invalid λ {m.lmbda}")
        if m.payload_bytes < 1 or not m.tensors:
            raise UpdateError("the update manifest lists no tensors")
        if m.parameters > MAX_ELEMENTS:
            raise UpdateError(f"the update manifest lists too many parameters ({m.parameters})")
        if m.tables and sorted(t.name for t in m.tables) != sorted(TABLE_NAMES):
            raise UpdateError(f"the update's tables must be {', '.join(TABLE_NAMES)}")
        _check_adapters(m.adapters)
        return m


def _typed(d: dict, key: str, types: type | tuple[type, ...]) -> Any:
    v = d.get(key)
    if not isinstance(v, types) or isinstance(v, bool):
        raise ValueError(f"{key} is missing or not {getattr(types, '__name__', 'a number')}")
    return v


def _fingerprint(d: dict, key: str) -> str:
    v = d.get(key)
    if not isinstance(v, str) or not _FINGERPRINT.match(v):
        raise ValueError(f"{key} is not a sha256 fingerprint")
    return v


def _specs(d: dict, key: str, tensor: bool) -> tuple[TensorSpec, ...]:
    items = d.get(key, [])
    if not isinstance(items, list) or len(items) > 10_000:
        raise ValueError(f"{key} is not a list")
    specs = []
    for it in items:
        name, shape = (it.get("name"), it.get("shape")) if isinstance(it, dict) else (None, None)
        if not isinstance(name, str) or not isinstance(shape, list) or len(shape) > (4 if tensor else 1) \
                or not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= MAX_ELEMENTS for s in shape):
            raise ValueError(f"{key} holds an invalid entry")
        if tensor and not is_update_tensor(name):
            raise ValueError(f"{name!r} is not an adapter or entropy-bottleneck parameter")
        spec = TensorSpec(name, tuple(shape))
        if spec.numel > MAX_ELEMENTS:
            raise ValueError(f"{name} is too large ({spec.numel} values)")
        specs.append(spec)
    if len({s.name for s in specs}) != len(specs):
        raise ValueError(f"{key} names a tensor twice")
    return tuple(specs)


def is_update_tensor(name: str) -> bool:
    """Only adapters and the entropy bottleneck may change: an update never rewrites base weights."""
    return ".adapter." in name or name.startswith(EB_PREFIX)


def _check_adapters(d: dict) -> None:
    """The adapter config's shape, checked without importing torch (AdapterConfig's module does)."""
    ok = (d.keys() == {"type", "R", "v"} and isinstance(d["type"], str)
          and all(isinstance(d[k], int) and not isinstance(d[k], bool) and 1 <= d[k] <= 4096 for k in ("R", "v")))
    if not ok:
        raise UpdateError(f"the update manifest has an invalid adapter configuration {d!r}")


def adapter_config(d: dict) -> AdapterConfig:
    from adapdate_codec.adapters import AdapterConfig

    try:
        return AdapterConfig.from_dict(d)
    except (KeyError, TypeError, ValueError) as e:
        raise UpdateError(f"invalid adapter configuration {d!r}: {e}") from None


# -- the file -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Update:
    manifest: Manifest
    payload: bytes  # NNCodec stream
    tables: dict[str, np.ndarray]  # int32 z tables, empty unless the bottleneck changed

    def to_bytes(self) -> bytes:
        m = self.manifest
        body = m.to_json()
        parts = [_HEADER.pack(MAGIC, FORMAT_VERSION, len(body)), body, self.payload]
        parts += [self.tables[t.name].astype("<i4", copy=False).tobytes() for t in m.tables]
        data = b"".join(parts)
        return data + hashlib.sha256(data).digest()


def is_update_file(path: str | Path) -> bool:
    """True when `path` is a file starting with the update magic; by content, because a model's name
    may also be the name of some file in the current folder."""
    p = Path(path)
    try:
        if not p.is_file():
            return False
        with p.open("rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def parse_update(data: bytes) -> Update:
    """Split and verify an update file: sizes, magic, version, checksum, manifest, section lengths."""
    import numpy as np

    data = bytes(data)
    if len(data) < _HEADER.size + _DIGEST:
        raise UpdateError(f"not an adapdate update file: only {len(data)} bytes")
    magic, version, mlen = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise UpdateError("not an adapdate update file (bad magic)")
    if version != FORMAT_VERSION:
        raise UpdateError(f"update format version {version} is not supported (this adapdate reads {FORMAT_VERSION})")
    available = len(data) - _HEADER.size - _DIGEST
    if mlen > MAX_MANIFEST_BYTES:
        raise UpdateError(f"not a valid update file: its manifest would be {mlen} bytes long")
    if mlen > available:
        raise UpdateError(f"the update file is truncated: its manifest needs {mlen} bytes, {max(available, 0)} present")
    if hashlib.sha256(data[:-_DIGEST]).digest() != data[-_DIGEST:]:
        raise UpdateError("the update file is damaged or truncated (checksum mismatch)")
    body = data[_HEADER.size:_HEADER.size + mlen]
    if _json_depth(body) > MAX_JSON_DEPTH:
        raise UpdateError(f"the update manifest nests deeper than {MAX_JSON_DEPTH} levels")
    try:
        raw = json.loads(body.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError) as e:
        raise UpdateError(f"the update manifest is not valid JSON ({e})") from None
    m = Manifest.from_dict(raw)
    start = _HEADER.size + mlen
    needed = m.payload_bytes + m.table_bytes
    if needed != available - mlen:
        raise UpdateError(f"the update's sections need {needed} bytes but {available - mlen} are present")
    payload = data[start:start + m.payload_bytes]
    tables, pos = {}, start + m.payload_bytes
    for t in m.tables:
        tables[t.name] = np.frombuffer(data, dtype="<i4", count=t.numel, offset=pos).reshape(t.shape).copy()
        pos += 4 * t.numel
    return Update(m, payload, tables)


def _json_depth(body: bytes) -> int:
    """How deep [ and { nest in JSON text, strings left out (an upper bound on what json.loads recurses)."""
    import numpy as np

    a = np.frombuffer(_JSON_STRING.sub(b'""', body), dtype=np.uint8)
    step = np.isin(a, (ord("["), ord("{"))).astype(np.int64) - np.isin(a, (ord("]"), ord("}")))
    return int(np.cumsum(step).max(initial=0))


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not allowed")  # Python's json would accept NaN and Infinity


def read_manifest(data: bytes) -> Manifest:
    """The verified manifest of an update, without decoding or applying anything."""
    return parse_update(data).manifest


# -- tensors --------------------------------------------------------------------------------------------
def decode_tensors(u: Update) -> dict[str, torch.Tensor]:
    """The NNCodec payload as float32 tensors, names and shapes exactly as the manifest lists them."""
    import torch

    decoded = nnc.decompress(u.payload)
    expected = {t.name: t.shape for t in u.manifest.tensors}
    if decoded.keys() != expected.keys():
        extra = sorted(decoded.keys() - expected.keys())
        missing = sorted(expected.keys() - decoded.keys())
        raise UpdateError(f"the update's payload does not match its manifest (missing {missing[:2]}, "
                          f"unexpected {extra[:2]})")
    out = {}
    for name, shape in expected.items():
        a = decoded[name]
        if a.size != TensorSpec(name, shape).numel:
            raise UpdateError(f"the update's tensor {name} has {a.size} values, its manifest says shape {list(shape)}")
        out[name] = torch.from_numpy(a.reshape(shape).copy())  # NNCodec codes 0-d tensors as 1-d
    return out


def z_tables_of(u: Update, base: ModelBundle) -> dict[str, torch.Tensor]:
    """The bottleneck tables the patched model uses: shipped ones, else the base's (never recomputed)."""
    import torch

    if not u.manifest.tables:
        return base.tables["z"]
    from adapdate_codec.entropy import CdfSet

    t = u.tables
    # one CDF per z channel, each at least 2 entries long, laid end to end (see entropy._pack)
    if not (len(t["lengths"]) == len(t["offsets"]) == base.N and (t["lengths"] >= 2).all()
            and int(t["lengths"].astype("int64").sum()) == t["cdf"].size):
        raise UpdateError("the update's entropy-bottleneck tables are inconsistent")
    tables = {k: torch.from_numpy(t[k].astype("int32")) for k in TABLE_NAMES}
    try:
        CdfSet.from_packed(tables)  # valid CDFs: the coders index them without further checks
    except ModelError as e:
        raise UpdateError(f"the update's entropy-bottleneck tables are invalid ({e})") from None
    return tables


def build_patched(base: ModelBundle, tensors: dict[str, torch.Tensor], m: Manifest,
                  z_tables: dict | None, name: str | None = None, card: dict | None = None) -> ModelBundle:
    """Base weights + update tensors → a bundle, with the fixed-point parameters derived as at install."""
    from adapdate_codec.bundle import build_bundle

    sd = dict(base.state_dict)
    sd.update(tensors)
    try:
        return build_bundle(name or base.name, base.quality, base.arch, base.N, m.lmbda, sd,
                            adapters=adapter_config(m.adapters), card=card,
                            half=bool(base.card.get("half_precision")), z_tables=z_tables,
                            y_tables=base.tables["y"])
    except ModelError as e:
        raise UpdateError(f"the update does not fit {base.name} q{base.quality}: {e}") from None
    except RuntimeError as e:  # load_state_dict on a tensor of the wrong shape
        raise UpdateError(f"the update does not fit {base.name} q{base.quality}: {nnc.first_line(e)}") from None


# -- export ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Ref:
    """What store.by_fingerprint needs from a coded file's header."""

    model_name: str
    quality: int
    fingerprint: str


def load_checkpoint(path: str | Path) -> dict:
    """An adapters training checkpoint, loaded without running code (weights_only)."""
    import pickle

    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UpdateError(f"{path}: no such file") from None
    except pickle.UnpicklingError as e:
        if "Weights only load failed" in str(e):
            raise UpdateError(f"{path}: refusing to load it: it holds Python objects, not just tensors") from None
        raise UpdateError(f"{path} is not a training checkpoint ({type(e).__name__})") from None
    except OSError as e:
        raise UpdateError(f"cannot read {path}: {e.strerror or e}") from None
    except Exception as e:  # torch raises many types (struct.error, RuntimeError, ...) on a foreign file
        raise UpdateError(f"{path} is not a training checkpoint ({type(e).__name__})") from None
    if not (isinstance(ckpt, dict) and ckpt.get("format") == 1 and isinstance(ckpt.get("config"), dict)
            and isinstance(ckpt.get("model"), dict)):
        raise UpdateError(f"{path} is not an adapdate training checkpoint")
    cfg = ckpt["config"]
    if not cfg.get("adapters"):
        raise UpdateError(f"{path} is a base-model checkpoint, not an adapters one (`adapdate train adapters`)")
    base = cfg.get("base")
    if not (isinstance(base, dict) and isinstance(base.get("fingerprint"), str) and isinstance(base.get("name"), str)
            and isinstance(base.get("quality"), int)):
        raise UpdateError(f"{path}: the checkpoint does not say which base model it was trained on")
    return ckpt


def changed_tensors(base_sd: dict[str, torch.Tensor], ckpt_sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors an update must carry: every adapter tensor, and the entropy-bottleneck tensors that
    changed if its density changed. Quantiles alone change under the auxiliary loss in every run; they
    only bound the z tables, which the base's tables already cover, so the base's are kept then."""
    import torch

    from adapdate_codec.bundle import strip_table_buffers

    sd = strip_table_buffers({k: v for k, v in ckpt_sd.items() if isinstance(v, torch.Tensor)})
    missing = sorted(base_sd.keys() - sd.keys())
    foreign = sorted(k for k in sd.keys() - base_sd.keys() if ".adapter." not in k)
    if missing or foreign:
        raise UpdateError(f"the checkpoint does not fit its base (missing {missing[:2]}, unexpected {foreign[:2]})")
    differ = [k for k in base_sd if not _same(k, base_sd, sd)]
    base_changes = [k for k in differ if not k.startswith(EB_PREFIX)]
    if base_changes:
        raise UpdateError(f"the checkpoint changes {len(base_changes)} base tensors (e.g. {base_changes[0]}); "
                          "an update carries adapters and the entropy bottleneck only")
    out = {k: v.detach().float() for k, v in sd.items() if ".adapter." in k}
    eb = [k for k in differ if k.startswith(EB_PREFIX)]
    if any(not k.endswith("quantiles") for k in eb):
        out.update({k: sd[k].detach().float() for k in eb})
    return dict(sorted(out.items()))


def _same(key: str, base_sd: dict[str, torch.Tensor], sd: dict[str, torch.Tensor]) -> bool:
    """Equal weights, where a masked conv's weights count only under its mask: CompressAI's MaskedConv2d
    zeroes the masked-out weights in place on every forward, so training changes them without any effect."""
    import torch

    a, b = base_sd[key].float(), sd[key].float()
    mask = base_sd.get(key.rsplit(".", 1)[0] + ".mask") if key.endswith(".weight") else None
    if mask is not None and mask.shape == a.shape == b.shape:
        a, b = a * mask, b * mask
    return torch.equal(a, b)


def export_update(checkpoint_path: str | Path, store: ModelStore, qp: int = nnc.DEFAULT_QP) -> Update:
    """Code an adapters checkpoint as an update of the installed base it was trained on."""
    ckpt = load_checkpoint(checkpoint_path)
    cfg, ref = ckpt["config"], ckpt["config"]["base"]
    try:
        base = store.by_fingerprint(_Ref(ref["name"], ref["quality"], ref["fingerprint"]))
    except ModelNotInstalledError:
        raise UpdateError(f"the base of this checkpoint, {ref['name']} q{ref['quality']} {_short(ref['fingerprint'])}, "
                          "is not installed; install it first") from None
    if (cfg.get("arch", base.arch), cfg.get("N", base.N)) != (base.arch, base.N):
        raise UpdateError(f"the checkpoint is {cfg.get('arch')} N={cfg.get('N')}, its base {base.arch} N={base.N}")
    adapters = adapter_config(cfg["adapters"])
    tensors = changed_tensors(base.state_dict, ckpt["model"])
    payload = nnc.compress({k: v.numpy() for k, v in tensors.items()}, qp=qp)
    draft = Manifest(
        base_name=base.name, base_quality=base.quality, base_fingerprint=base.fingerprint, arch=base.arch, N=base.N,
        adapters=adapters.to_dict(), lmbda=float(cfg.get("lmbda") or base.lmbda), qp=qp,
        tensors=tuple(TensorSpec(k, tuple(v.shape)) for k, v in tensors.items()),
        patched_fingerprint="0" * 64, payload_bytes=len(payload),
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        training={"step": ckpt.get("step"), "steps": cfg.get("steps"),
                  "train_entropy_bottleneck": bool(cfg.get("train_entropy_bottleneck"))},
    )
    # decode what we coded, and build from that exactly as a patch will
    decoded = decode_tensors(Update(draft, payload, {}))
    eb_changed = any(k.startswith(EB_PREFIX) for k in tensors)
    patched = build_patched(base, decoded, draft, z_tables=None if eb_changed else base.tables["z"])
    tables = {k: patched.tables["z"][k].numpy().astype("int32") for k in TABLE_NAMES} if eb_changed else {}
    m = dataclasses.replace(draft, patched_fingerprint=patched.fingerprint,
                            tables=tuple(TensorSpec(k, tuple(v.shape)) for k, v in tables.items()))
    return Update(m, payload, tables)


# -- patch ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PatchResult:
    old: ModelEntry
    new: ModelEntry
    manifest: Manifest
    already_applied: bool = False


def update_summary(u: Update, data: bytes) -> dict[str, Any]:
    """What the store's history records about an update."""
    m = u.manifest
    return {"sha256": hashlib.sha256(data).hexdigest(), "size_bytes": len(data), "qp": m.qp,
            "adapters": m.adapters, "tensors": len(m.tensors), "parameters": m.parameters,
            "bottleneck_changed": m.bottleneck_changed, "base_fingerprint": m.base_fingerprint,
            "created_at": m.created_at}


def apply_update(data: bytes, store: ModelStore, name: str | None = None, source: str = "update") -> PatchResult:
    """Verify an update against the active base, build the patched model and install it as a new version.

    Nothing in the store changes unless every check passed (the store writes the bundle first and its
    manifest last, under a lock, and installs only if the base is still the active version)."""
    u = parse_update(data)
    m = u.manifest
    name = name or m.base_name
    try:
        active = store.active(name, m.base_quality)
    except ModelNotInstalledError:
        raise UpdateError(f"this update is for {name} q{m.base_quality}, which is not installed") from None
    if active.fingerprint == m.patched_fingerprint:
        return PatchResult(active, active, m, already_applied=True)
    if active.fingerprint != m.base_fingerprint:
        raise UpdateError(f"this update is for {name} q{m.base_quality} {_short(m.base_fingerprint)}, but the "
                          f"active version is {_short(active.fingerprint)}; nothing changed")
    base = store.get(name, m.base_quality)
    if base.fingerprint != m.base_fingerprint:  # the active version moved between the two reads
        raise UpdateError(f"{name} q{m.base_quality} changed while patching; nothing changed")
    if (base.arch, base.N) != (m.arch, m.N):
        raise UpdateError(f"the update is for {m.arch} N={m.N}, the installed base is {base.arch} N={base.N}")
    summary = update_summary(u, data)
    bundle = build_patched(base, decode_tensors(u), m, z_tables_of(u, base), name=name,
                           card={"source": source, "parent_fingerprint": base.fingerprint, "update": summary,
                                 "trained": m.training})
    if bundle.fingerprint != m.patched_fingerprint:
        raise UpdateError(f"the patched model's fingerprint {_short(bundle.fingerprint)} is not the update's "
                          f"{_short(m.patched_fingerprint)} (another platform or NNCodec version?); nothing changed")
    new = store.install_bundle(bundle, source=source, update=summary, expect_active=base.fingerprint)
    return PatchResult(active, new, m)
