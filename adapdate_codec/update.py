"""Model updates: adapters (and optionally a retrained entropy bottleneck), or a new encoder, coded with NNCodec.

Two scopes, told apart by the manifest:

* ``model`` (manifest format 1, as in 0.1.0): adapters beside the residual blocks of g_a *and* g_s, and
  maybe a new entropy bottleneck. The decoder changes: the patched model is a new decoder.
* ``encoder`` (manifest format 2): g_a / h_a only, as differences to the base's weights (``delta``), or as
  new adapters in g_a's blocks. The decoder stays exactly as it was (same decoder fingerprint), so the
  patched model is a new *encoder* of the installed decoder, and the files it writes decode on every
  installation of that decoder, patched or not. A 0.1.0 reader refuses format 2 ("not supported").

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
FORMAT_VERSION = 1  # the file's layout (header u16); the manifest's "format" says what it holds:
MANIFEST_MODEL = 1  # a model update (adapters in g_a and g_s, bottleneck): 0.1.0's kind
MANIFEST_ENCODER = 2  # an encoder update: g_a / h_a only, the decoder unchanged
SCOPES = {MANIFEST_MODEL: "model", MANIFEST_ENCODER: "encoder"}
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
    format: int = MANIFEST_MODEL
    # encoder updates (format 2) only:
    delta: bool = False  # the tensors are differences to the base's (else: new adapters in g_a)
    base_decoder_fingerprint: str = ""  # the decoder it is for, and that the patched model keeps
    patched_encoder_fingerprint: str = ""

    @property
    def scope(self) -> str:
        return SCOPES[self.format]

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
        if self.format == MANIFEST_MODEL:  # exactly 0.1.0's manifest
            for k in ("delta", "base_decoder_fingerprint", "patched_encoder_fingerprint"):
                del d[k]
        else:
            d["scope"] = self.scope  # said in words too, for people reading `model info`
        return d

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_dict(cls, d: Any) -> "Manifest":
        """A manifest from untrusted JSON: every field type-checked, every size bounded."""
        if not isinstance(d, dict):
            raise UpdateError("the update manifest is not a JSON object")
        fmt = d.get("format")
        if not isinstance(fmt, int) or isinstance(fmt, bool) or fmt not in SCOPES:  # (a list is unhashable)
            raise UpdateError(f"update manifest format {fmt!r} is not supported (this adapdate reads "
                              f"{' and '.join(map(str, SCOPES))})")
        encoder = fmt == MANIFEST_ENCODER
        try:
            if encoder and d.get("scope") != "encoder":
                raise ValueError("scope is not 'encoder'")
            m = cls(
                base_name=_typed(d, "base_name", str), base_quality=_typed(d, "base_quality", int),
                base_fingerprint=_fingerprint(d, "base_fingerprint"), arch=_typed(d, "arch", str),
                N=_typed(d, "N", int),
                # an encoder update of a model without adapters has none
                adapters=d["adapters"] if encoder and d.get("adapters", 0) is None else _typed(d, "adapters", dict),
                lmbda=float(_typed(d, "lmbda", (int, float))), qp=_typed(d, "qp", int),
                tensors=_specs(d, "tensors", tensor=True, scope=SCOPES[fmt]),
                patched_fingerprint=_fingerprint(d, "patched_fingerprint"),
                payload_bytes=_typed(d, "payload_bytes", int), tables=_specs(d, "tables", tensor=False),
                created_at=str(d.get("created_at", "")), adapdate_version=str(d.get("adapdate_version", "")),
                training=d["training"] if isinstance(d.get("training"), dict) else {},
                format=fmt,
                delta=_typed(d, "delta", bool, exact=True) if encoder else False,
                base_decoder_fingerprint=_fingerprint(d, "base_decoder_fingerprint") if encoder else "",
                patched_encoder_fingerprint=_fingerprint(d, "patched_encoder_fingerprint") if encoder else "",
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
        if encoder and m.tables:
            raise UpdateError("an encoder update cannot carry entropy-bottleneck tables (the decoder's)")
        if encoder and not m.delta and not all(".adapter." in t.name for t in m.tensors):
            raise UpdateError("an encoder update that is not a difference may carry new adapters only")
        if m.adapters is not None:
            _check_adapters(m.adapters)
        if encoder and m.adapters is not None and not m.delta and m.adapters.get("side") != "encoder":
            raise UpdateError("an encoder update's new adapters must sit in g_a only (side 'encoder')")
        return m


def _typed(d: dict, key: str, types: type | tuple[type, ...], exact: bool = False) -> Any:
    """d[key] if it has one of `types` (a bool is not a number; exact=True: bool itself is wanted)."""
    v = d.get(key)
    if not isinstance(v, types) or (isinstance(v, bool) and not exact):
        raise ValueError(f"{key} is missing or not {getattr(types, '__name__', 'a number')}")
    return v


def _fingerprint(d: dict, key: str) -> str:
    v = d.get(key)
    if not isinstance(v, str) or not _FINGERPRINT.match(v):
        raise ValueError(f"{key} is not a sha256 fingerprint")
    return v


def _specs(d: dict, key: str, tensor: bool, scope: str = "model") -> tuple[TensorSpec, ...]:
    items = d.get(key, [])
    if not isinstance(items, list) or len(items) > 10_000:
        raise ValueError(f"{key} is not a list")
    specs = []
    for it in items:
        name, shape = (it.get("name"), it.get("shape")) if isinstance(it, dict) else (None, None)
        if not isinstance(name, str) or not isinstance(shape, list) or len(shape) > (4 if tensor else 1) \
                or not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= MAX_ELEMENTS for s in shape):
            raise ValueError(f"{key} holds an invalid entry")
        if tensor and scope == "model" and not is_update_tensor(name):
            raise ValueError(f"{name!r} is not an adapter or entropy-bottleneck parameter")
        if tensor and scope == "encoder" and not is_encoder_tensor(name):
            raise ValueError(f"{name!r} is not an encoder (g_a, h_a) parameter")
        spec = TensorSpec(name, tuple(shape))
        if spec.numel > MAX_ELEMENTS:
            raise ValueError(f"{name} is too large ({spec.numel} values)")
        specs.append(spec)
    if len({s.name for s in specs}) != len(specs):
        raise ValueError(f"{key} names a tensor twice")
    return tuple(specs)


def is_update_tensor(name: str) -> bool:
    """Only adapters and the entropy bottleneck may change: a model update never rewrites base weights."""
    return ".adapter." in name or name.startswith(EB_PREFIX)


def is_encoder_tensor(name: str) -> bool:
    """What an encoder update may touch: g_a and h_a (bundle.ENCODER_PREFIXES, without importing torch)."""
    return name.startswith(("g_a.", "h_a."))


def _check_adapters(d: dict) -> None:
    """The adapter config's shape, checked without importing torch (AdapterConfig's module does)."""
    ok = (d.keys() in ({"type", "R", "v"}, {"type", "R", "v", "side"}) and isinstance(d["type"], str)
          and all(isinstance(d[k], int) and not isinstance(d[k], bool) and 1 <= d[k] <= 4096 for k in ("R", "v"))
          and d.get("side", "both") in ("both", "encoder"))
    if not ok:
        raise UpdateError(f"the update manifest has an invalid adapter configuration {d!r}")


def adapter_config(d: dict | None) -> AdapterConfig | None:
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


def load_checkpoint(path: str | Path, *, any_kind: bool = False) -> dict:
    """An adapters training checkpoint (any_kind: any training checkpoint), loaded without running code
    (weights_only)."""
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
    if any_kind:
        return ckpt
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


def export_update(checkpoint_path: str | Path, store: ModelStore, qp: int = nnc.DEFAULT_QP, *,
                  encoder: bool = False, base: ModelBundle | None = None) -> Update:
    """Code a checkpoint as an update of the installed base it was trained on.

    An adapters checkpoint (`train adapters`) becomes a model update; an encoder checkpoint (`train
    encoder`) an encoder update. encoder=True makes an encoder update of any checkpoint's g_a and h_a
    (e.g. a whole model whose encoder was trained with its decoder frozen elsewhere): its decoder side
    is not shipped, and how far it is from the base's is recorded in the manifest. base: the installed
    model to code against (default: the one the checkpoint names)."""
    ckpt = load_checkpoint(checkpoint_path, any_kind=True)
    if encoder or ckpt["config"].get("encoder") or ckpt["config"].get("encoder_only"):
        return _export_encoder(ckpt, checkpoint_path, store, qp, base)
    if base is not None:
        raise UpdateError("a model update is coded against the base its checkpoint names (--model and --quality "
                          "are for encoder updates)")
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


# -- encoder updates -------------------------------------------------------------------------------------
def build_encoder_patched(base: ModelBundle, tensors: dict[str, torch.Tensor], m: Manifest,
                          name: str | None = None, card: dict | None = None) -> ModelBundle:
    """Base + an encoder update's tensors → a bundle with the base's decoder, exactly (checked)."""
    from adapdate_codec.bundle import build_bundle

    sd = dict(base.state_dict)
    if m.delta:
        for k, d in tensors.items():
            b = sd.get(k)
            if b is None or tuple(b.shape) != tuple(d.shape):
                raise UpdateError(f"the update does not fit {base.name} q{base.quality}: it changes {k}, which "
                                  "the base does not have in that shape")
            sd[k] = b.float() + d.float()  # one float32 addition: the same on every platform
        adapters = base.adapters
        if (adapters.to_dict() if adapters else None) != m.adapters:
            raise UpdateError(f"the update is for a model with adapters {m.adapters}, the base has "
                              f"{adapters.to_dict() if adapters else None}")
    else:
        if base.adapters is not None:
            raise UpdateError(f"{base.name} q{base.quality} already has adapters; this update adds new ones")
        adapters = adapter_config(m.adapters)
        sd.update(tensors)
    try:
        b = build_bundle(name or base.name, base.quality, base.arch, base.N, m.lmbda, sd, adapters=adapters,
                         card=card, half=bool(base.card.get("half_precision")), z_tables=base.tables["z"],
                         y_tables=base.tables["y"])
    except ModelError as e:
        raise UpdateError(f"the update does not fit {base.name} q{base.quality}: {e}") from None
    except RuntimeError as e:  # load_state_dict on a tensor of the wrong shape
        raise UpdateError(f"the update does not fit {base.name} q{base.quality}: {nnc.first_line(e)}") from None
    if b.decoder_fingerprint != base.decoder_fingerprint:
        raise UpdateError("this encoder update would change the decoder; nothing changed")
    return b


def _encoder_base(ckpt: dict, path: str | Path, store: ModelStore, base: ModelBundle | None) -> ModelBundle:
    cfg = ckpt["config"]
    if base is None:
        ref = cfg.get("base")
        if not (isinstance(ref, dict) and isinstance(ref.get("fingerprint"), str)
                and isinstance(ref.get("name"), str) and isinstance(ref.get("quality"), int)):
            raise UpdateError(f"{path}: the checkpoint does not say which installed model it was trained on; "
                              "name it (--model, --quality)")
        try:
            base = store.by_fingerprint(_Ref(ref["name"], ref["quality"], ref["fingerprint"]))
        except ModelNotInstalledError:
            raise UpdateError(f"the base of this checkpoint, {ref['name']} q{ref['quality']} "
                              f"{_short(ref['fingerprint'])}, is not installed; install it first") from None
    if (cfg.get("arch", base.arch), cfg.get("N", base.N)) != (base.arch, base.N):
        raise UpdateError(f"the checkpoint is {cfg.get('arch')} N={cfg.get('N')}, its base {base.arch} N={base.N}")
    return base


def _decoder_side_difference(base_sd: dict[str, torch.Tensor], sd: dict[str, torch.Tensor]) -> dict[str, Any]:
    """How far a checkpoint's decoder side is from the base's (quantiles aside: they only bound the z tables,
    and the base's tables are kept)."""
    from adapdate_codec.bundle import is_encoder_key

    keys = [k for k in base_sd if not is_encoder_key(k) and not k.endswith("quantiles")]
    differ = [k for k in keys if k not in sd or tuple(sd[k].shape) != tuple(base_sd[k].shape)
              or not _same(k, base_sd, sd)]
    worst = max((float((sd[k].float() - base_sd[k].float()).abs().max()) for k in differ
                 if k in sd and tuple(sd[k].shape) == tuple(base_sd[k].shape)), default=0.0)
    return {"tensors": len(differ), "of": len(keys), "max_abs_difference": worst, "example": differ[0] if differ else None}


def _export_encoder(ckpt: dict, path: str | Path, store: ModelStore, qp: int, base: ModelBundle | None) -> Update:
    import torch

    from adapdate_codec.bundle import is_encoder_key, strip_table_buffers

    cfg = ckpt["config"]
    base = _encoder_base(ckpt, path, store, base)
    sd = strip_table_buffers({k: v for k, v in ckpt["model"].items() if isinstance(v, torch.Tensor)})
    decoder_side = _decoder_side_difference(base.state_dict, sd)
    if decoder_side["tensors"] and cfg.get("encoder"):  # trained with the decoder frozen: it cannot differ
        raise UpdateError(f"the checkpoint changes {decoder_side['tensors']} decoder tensors (e.g. "
                          f"{decoder_side['example']}): it was not trained on {base.name} q{base.quality} "
                          f"{_short(base.fingerprint)} with its decoder frozen")
    base_enc = {k: v for k, v in base.state_dict.items() if is_encoder_key(k)}
    if cfg.get("encoder") == "adapters":
        adapters = adapter_config(cfg.get("adapters"))
        if adapters is None or adapters.side != "encoder":
            raise UpdateError(f"{path}: an encoder-adapters checkpoint without encoder-side adapters")
        tensors = {k: v.detach().float() for k, v in sd.items() if ".adapter." in k and is_encoder_key(k)}
        delta, manifest_adapters = False, adapters.to_dict()
    else:
        enc = {k: v for k, v in sd.items() if is_encoder_key(k)}
        missing = sorted(base_enc.keys() - enc.keys())
        extra = sorted(enc.keys() - base_enc.keys())
        wrong = sorted(k for k in base_enc.keys() & enc.keys() if tuple(enc[k].shape) != tuple(base_enc[k].shape))
        if missing or extra or wrong:
            raise UpdateError(f"the checkpoint's encoder does not fit {base.name} q{base.quality} (missing "
                              f"{missing[:2]}, unexpected {extra[:2]}, wrong shape {wrong[:2]})")
        tensors = {k: (enc[k].detach().float() - base_enc[k].float()) for k in sorted(base_enc)
                   if not torch.equal(enc[k].float(), base_enc[k].float())}
        delta, manifest_adapters = True, (base.adapters.to_dict() if base.adapters else None)
    if not tensors:
        raise UpdateError(f"the checkpoint's encoder is the one {base.name} q{base.quality} already has")
    payload = nnc.compress({k: v.numpy() for k, v in sorted(tensors.items())}, qp=qp)
    training = {"step": ckpt.get("step"), "steps": cfg.get("steps"), "encoder": cfg.get("encoder") or "whole"}
    if decoder_side["tensors"]:
        training["decoder_side_not_shipped"] = decoder_side
    draft = Manifest(
        base_name=base.name, base_quality=base.quality, base_fingerprint=base.fingerprint, arch=base.arch, N=base.N,
        adapters=manifest_adapters, lmbda=float(cfg.get("lmbda") or base.lmbda), qp=qp,
        tensors=tuple(TensorSpec(k, tuple(v.shape)) for k, v in sorted(tensors.items())),
        patched_fingerprint="0" * 64, payload_bytes=len(payload),
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"), training=training,
        format=MANIFEST_ENCODER, delta=delta, base_decoder_fingerprint=base.decoder_fingerprint,
        patched_encoder_fingerprint="0" * 64,
    )
    # decode what we coded, and build from that exactly as a patch will
    patched = build_encoder_patched(base, decode_tensors(Update(draft, payload, {})), draft)
    m = dataclasses.replace(draft, patched_fingerprint=patched.fingerprint,
                            patched_encoder_fingerprint=patched.encoder_fingerprint)
    return Update(m, payload, {})


def _apply_encoder_update(u: Update, data: bytes, store: ModelStore, name: str, source: str) -> PatchResult:
    """An encoder update: the active decoder must be the update's; the base encoder may be any installed
    version of it. The patched model becomes a new version: another encoder of the same decoder."""
    m = u.manifest
    try:
        active = store.active(name, m.base_quality)
    except ModelNotInstalledError:
        raise UpdateError(f"this update is for {name} q{m.base_quality}, which is not installed") from None
    if active.fingerprint == m.patched_fingerprint:
        return PatchResult(active, active, m, already_applied=True)
    decoder = store.identities(active)[0]
    if decoder != m.base_decoder_fingerprint:
        raise UpdateError(f"this encoder update is for {name} q{m.base_quality} decoder "
                          f"{_short(m.base_decoder_fingerprint)}, but the active decoder is {_short(decoder)}; "
                          "nothing changed")
    entry = next((e for e in store.history(name, m.base_quality) if e.fingerprint == m.base_fingerprint), None)
    if entry is None:
        raise UpdateError(f"this encoder update changes {name} q{m.base_quality} version "
                          f"{_short(m.base_fingerprint)}, which is not installed; nothing changed")
    base = store._load(entry)
    _check_architecture(base, m)
    summary = update_summary(u, data)
    bundle = build_encoder_patched(base, decode_tensors(u), m, name=name,
                                   card={"source": source, "parent_fingerprint": base.fingerprint, "update": summary,
                                         "trained": m.training})
    _check_patched(bundle, m)
    new = store.install_bundle(bundle, source=source, update=summary, expect_active=active.fingerprint)
    return PatchResult(active, new, m)


# -- patch ----------------------------------------------------------------------------------------------
def _check_architecture(base: ModelBundle, m: Manifest) -> None:
    if (base.arch, base.N) != (m.arch, m.N):
        raise UpdateError(f"the update is for {m.arch} N={m.N}, the installed base is {base.arch} N={base.N}")


def _check_patched(bundle: ModelBundle, m: Manifest) -> None:
    """The model an update builds must be exactly the one it names (else nothing is installed)."""
    if bundle.fingerprint != m.patched_fingerprint:
        raise UpdateError(f"the patched model's fingerprint {_short(bundle.fingerprint)} is not the update's "
                          f"{_short(m.patched_fingerprint)} (another platform or NNCodec version?); nothing changed")


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
            "created_at": m.created_at, "scope": m.scope}


def apply_update(data: bytes, store: ModelStore, name: str | None = None, source: str = "update") -> PatchResult:
    """Verify an update against the active base, build the patched model and install it as a new version.

    Nothing in the store changes unless every check passed (the store writes the bundle first and its
    manifest last, under a lock, and installs only if the base is still the active version)."""
    u = parse_update(data)
    m = u.manifest
    name = name or m.base_name
    if m.scope == "encoder":
        return _apply_encoder_update(u, data, store, name, source)
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
    _check_architecture(base, m)
    summary = update_summary(u, data)
    bundle = build_patched(base, decode_tensors(u), m, z_tables_of(u, base), name=name,
                           card={"source": source, "parent_fingerprint": base.fingerprint, "update": summary,
                                 "trained": m.training})
    _check_patched(bundle, m)
    new = store.install_bundle(bundle, source=source, update=summary, expect_active=base.fingerprint)
    return PatchResult(active, new, m)
