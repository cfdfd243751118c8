"""An installed model: weights, entropy tables, fixed-point parameters, card and fingerprint.

A bundle file is a ``torch.save`` of plain containers and tensors only, read back with
``weights_only=True`` so that a model file can never execute code. Three sha256 identities:

* ``fingerprint``: the whole model, exactly what coding depends on (architecture, adapter config,
  weights as float32, tables and fixed-point parameters). A model version in the store is this; files
  of format 1 (0.1.0) name it.
* ``decoder_fingerprint``: exactly what decoding uses: architecture, every weight outside the analysis
  transforms g_a and h_a (g_s, h_s, context model, entropy parameters, entropy bottleneck), the decoder-side
  adapter config, the CDF tables and the fixed-point parameters. Files of format 2 name it, so that any
  encoder of that decoder writes files every installation of the decoder reads.
* ``encoder_fingerprint``: g_a and h_a (and their adapters): one of the encoders of a decoder.

Each hash starts from its own format string, so no two kinds can ever be equal.
"""

from __future__ import annotations

import hashlib
import pickle
import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from adapdate_codec.adapters import AdapterConfig
from adapdate_codec.errors import ModelError

BUNDLE_FORMAT = "adapdate-model/1"
DECODER_FORMAT = "adapdate-decoder/1"
ENCODER_FORMAT = "adapdate-encoder/1"
# the analysis transforms: what only the encoder runs (everything else is the decoder's too)
ENCODER_PREFIXES = ("g_a.", "h_a.")
# CompressAI's table buffers: our own tables (entropy.py) replace them.
COMPRESSAI_TABLE_SUFFIXES = ("_quantized_cdf", "_offset", "_cdf_length", "gaussian_conditional.scale_table",
                             # and the context model's mask, which the network builds itself
                             "context_prediction.mask")
# kept in float32 when a bundle is stored in half precision (small, and sensitive)
FP32_KEYS = ("gdn", "entropy_bottleneck", "context_prediction.mask")


def kept_in_float32(key: str) -> bool:
    """Whether a weight stays float32 when a bundle is stored in half precision."""
    return any(s in key for s in FP32_KEYS)


def strip_table_buffers(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state_dict.items() if not k.endswith(COMPRESSAI_TABLE_SUFFIXES)}


def _hash_tensor(h: "hashlib._Hash", name: str, t: torch.Tensor, dtype: torch.dtype) -> None:
    t = t.detach().to("cpu", dtype).contiguous()
    h.update(f"{name}|{tuple(t.shape)}|{dtype}\n".encode())
    h.update(t.numpy().tobytes())


def _walk(prefix: str, tree: Any):
    """(name, tensor) leaves of nested dicts, in sorted order."""
    if isinstance(tree, dict):
        for k in sorted(tree):
            yield from _walk(f"{prefix}.{k}" if prefix else str(k), tree[k])
    elif isinstance(tree, torch.Tensor):
        yield prefix, tree


def compute_fingerprint(arch: str, N: int, adapters: AdapterConfig | None, state_dict: dict,
                        tables: dict, fixed: dict) -> str:
    """The whole model's identity (unchanged since 0.1.0: files of format 1 name it)."""
    return _digest(BUNDLE_FORMAT, arch, N, adapters.to_dict() if adapters else None, state_dict, tables, fixed)


def is_encoder_key(key: str) -> bool:
    """A weight only the encoder uses (g_a, h_a and the adapters inside g_a)."""
    return key.startswith(ENCODER_PREFIXES)


def compute_decoder_fingerprint(arch: str, N: int, adapters: AdapterConfig | None, state_dict: dict,
                                tables: dict, fixed: dict) -> str:
    """What decoding uses, and nothing else: a new encoder leaves it as it is."""
    decoder_adapters = adapters.to_dict() if adapters is not None and adapters.in_decoder else None
    sd = {k: v for k, v in state_dict.items() if not is_encoder_key(k)}
    return _digest(DECODER_FORMAT, arch, N, decoder_adapters, sd, tables, fixed)


def compute_encoder_fingerprint(arch: str, N: int, adapters: AdapterConfig | None, state_dict: dict) -> str:
    """g_a and h_a: which of a decoder's encoders this is."""
    sd = {k: v for k, v in state_dict.items() if is_encoder_key(k)}
    return _digest(ENCODER_FORMAT, arch, N, adapters.to_dict() if adapters else None, sd, {}, {})


def _digest(fmt: str, arch: str, N: int, adapters: dict | None, state_dict: dict, tables: dict, fixed: dict) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"format": fmt, "arch": arch, "N": N, "adapters": adapters}, sort_keys=True).encode())
    for name, t in _walk("", state_dict):
        _hash_tensor(h, "w." + name, t, torch.float32)
    for name, t in _walk("", tables):
        _hash_tensor(h, "t." + name, t, torch.int64)
    for name, t in _walk("", fixed):
        _hash_tensor(h, "f." + name, t, torch.int64)
    return h.hexdigest()


@dataclass
class ModelBundle:
    name: str
    quality: int
    arch: str
    N: int
    lmbda: float
    state_dict: dict[str, torch.Tensor]
    tables: dict[str, dict[str, torch.Tensor]]
    fixed: dict[str, dict[str, torch.Tensor]]
    adapters: AdapterConfig | None = None
    card: dict = field(default_factory=dict)
    fingerprint: str = ""

    def __post_init__(self) -> None:
        if not self.fingerprint:
            self.fingerprint = self.compute_fingerprint()

    def compute_fingerprint(self) -> str:
        return compute_fingerprint(self.arch, self.N, self.adapters, self.state_dict, self.tables, self.fixed)

    @property
    def fingerprint_bytes(self) -> bytes:
        return bytes.fromhex(self.fingerprint)

    # (cached: the weights of a bundle are not changed once it is built)
    @cached_property
    def decoder_fingerprint(self) -> str:
        return compute_decoder_fingerprint(self.arch, self.N, self.adapters, self.state_dict, self.tables, self.fixed)

    @cached_property
    def encoder_fingerprint(self) -> str:
        return compute_encoder_fingerprint(self.arch, self.N, self.adapters, self.state_dict)

    @property
    def decoder_fingerprint_bytes(self) -> bytes:
        return bytes.fromhex(self.decoder_fingerprint)

    @property
    def parameter_count(self) -> int:
        return sum(v.numel() for k, v in self.state_dict.items() if v.is_floating_point() and not k.endswith("mask"))

    def describe(self) -> dict:
        """The card plus the identity fields (what the sidecar JSON holds)."""
        return {**self.card, "name": self.name, "quality": self.quality, "arch": self.arch, "N": self.N,
                "M": self.N, "lambda": self.lmbda, "fingerprint": self.fingerprint,
                "decoder_fingerprint": self.decoder_fingerprint, "encoder_fingerprint": self.encoder_fingerprint,
                "parameters": self.parameter_count,
                "adapters": self.adapters.to_dict() if self.adapters else None}

    # -- runtime objects (built on first use) ---------------------------------------------------
    def network(self):
        return self._network

    @cached_property
    def _network(self):
        from adapdate_codec.network import build_model

        net = build_model(self.arch, self.N, self.adapters)
        missing, unexpected = net.load_state_dict(self.state_dict, strict=False)
        missing = [k for k in missing if not k.endswith(COMPRESSAI_TABLE_SUFFIXES)]
        if missing or unexpected:
            raise ModelError(f"model {self.name} q{self.quality}: weights do not fit {self.arch} "
                             f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
        return net.eval()

    @cached_property
    def fixed_point(self):
        from adapdate_codec.fixedpoint import FixedPointParams

        return FixedPointParams(self.fixed)

    @cached_property
    def cdf_z(self):
        from adapdate_codec.entropy import CdfSet

        return CdfSet.from_packed(self.tables["z"])

    @cached_property
    def cdf_y(self):
        from adapdate_codec.entropy import CdfSet

        return CdfSet.from_packed(self.tables["y"])

    # -- files ------------------------------------------------------------------------------------
    def to_dict(self, half: bool = False) -> dict:
        from adapdate_codec.fixedpoint import is_fixed_point_key

        # the integer path's float weights are exactly its dequantized integers: stored once, as integers
        sd = {k: (v.half() if half and v.is_floating_point() and not kept_in_float32(k) else v)
              for k, v in self.state_dict.items() if not is_fixed_point_key(k)}
        return {"format": BUNDLE_FORMAT, "name": self.name, "quality": self.quality, "arch": self.arch,
                "N": self.N, "lmbda": self.lmbda, "adapters": self.adapters.to_dict() if self.adapters else None,
                "state_dict": sd, "tables": self.tables, "fixed": self.fixed, "card": self.card,
                "fingerprint": self.fingerprint}

    def save(self, path: str | Path, half: bool | None = None) -> None:
        """Write the bundle and its sidecar card `<path>.json` atomically.
        half: store weights as float16 (only when they are exactly representable, i.e. built with half)."""
        from adapdate_codec.fileio import atomic_write, atomic_write_with

        path = Path(path)
        half = bool(self.card.get("half_precision")) if half is None else half
        atomic_write_with(path, lambda f: torch.save(self.to_dict(half=half), f))
        atomic_write(path.with_suffix(".json"), (json.dumps(self.describe(), indent=2) + "\n").encode())

    @classmethod
    def from_dict(cls, d: dict, source: str = "model") -> "ModelBundle":
        if not isinstance(d, dict) or d.get("format") != BUNDLE_FORMAT:
            raise ModelError(f"{source} is not an adapdate model file")
        from adapdate_codec.fixedpoint import dequantize

        try:
            sd = {k: (v.float() if v.is_floating_point() else v) for k, v in d["state_dict"].items()}
            sd.update(dequantize(d["fixed"]))
            b = cls(name=str(d["name"]), quality=int(d["quality"]), arch=str(d["arch"]), N=int(d["N"]),
                    lmbda=float(d["lmbda"]), state_dict=sd, tables=d["tables"], fixed=d["fixed"],
                    adapters=AdapterConfig.from_dict(d["adapters"]), card=dict(d.get("card") or {}),
                    fingerprint="")
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ModelError(f"{source} is damaged: {e}") from None
        if b.fingerprint != d.get("fingerprint"):
            raise ModelError(f"{source} is damaged: its fingerprint does not match its contents")
        return b

    @classmethod
    def load(cls, path: str | Path) -> "ModelBundle":
        try:
            d = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise ModelError(f"{path}: no such model file") from None
        except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, TypeError, AttributeError) as e:
            # weights_only unpickling refuses anything but tensors and plain containers
            raise ModelError(f"{path} is not a valid adapdate model file ({type(e).__name__})") from None
        return cls.from_dict(d, str(path))


def round_half(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Weights rounded through float16 as they will be stored (FP32_KEYS stay float32, and the
    integer path's weights are stored as integers instead)."""
    from adapdate_codec.fixedpoint import is_fixed_point_key

    def keep(k: str) -> bool:
        return kept_in_float32(k) or is_fixed_point_key(k)

    return {k: (v.half().float() if v.is_floating_point() and not keep(k) else v) for k, v in state_dict.items()}


@torch.no_grad()
def build_bundle(name: str, quality: int, arch: str, N: int, lmbda: float, state_dict: dict[str, torch.Tensor],
                 adapters: AdapterConfig | None = None, card: dict | None = None, half: bool = False,
                 z_tables: dict | None = None, y_tables: dict | None = None) -> ModelBundle:
    """Derive tables and fixed-point parameters from weights: done once, at install or patch time.

    z_tables / y_tables: tables to reuse instead of recomputing (a patch keeps its base's y tables, and
    its z tables when the bottleneck is unchanged, so every installation gets the same fingerprint).
    """
    from adapdate_codec.entropy import SCALE_TABLE, build_tables
    from adapdate_codec.fixedpoint import dequantize, quantize_model
    from adapdate_codec.network import build_model

    sd = strip_table_buffers({k: v.detach().cpu() for k, v in state_dict.items()})
    sd = {k: (v.float() if v.is_floating_point() else v) for k, v in sd.items()}
    if half:
        sd = round_half(sd)
    net = build_model(arch, N, adapters)
    missing, unexpected = net.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.endswith(COMPRESSAI_TABLE_SUFFIXES)]
    if missing or unexpected:
        raise ModelError(f"weights do not fit {arch} N={N}: missing {missing[:3]}, unexpected {unexpected[:3]}")
    net.eval()
    # canonical form: masked-out context weights are zero (CompressAI zeroes them on every forward)
    net.context_prediction.weight.mul_(net.context_prediction.mask)
    fixed = quantize_model(net, SCALE_TABLE)
    sd = strip_table_buffers(net.state_dict())
    sd.update(dequantize(fixed))
    card = dict(card or {})
    card["half_precision"] = half
    return ModelBundle(name=name, quality=quality, arch=arch, N=N, lmbda=lmbda, state_dict=sd,
                       tables=build_tables(net, z_tables, y_tables), fixed=fixed, adapters=adapters,
                       card=card)
