"""Adapters: small conv bottlenecks beside cheng2020's residual blocks.

An adapter is 1x1 conv N->N/R, v x v conv, 1x1 conv N/R->N, with biases and no activation.
Its last conv starts at zero so that inserting a fresh adapter leaves the model unchanged.

`side` says where they sit: "both" (g_a and g_s, the adapters of 0.1.0's updates) or "encoder" (g_a
only: an encoder update, which leaves the decoder, and so every decoder's files, as they were).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

ADAPTER_TYPES = ("resblock", "all")
ADAPTER_SIDES = ("both", "encoder")


@dataclass(frozen=True)
class AdapterConfig:
    type: str = "resblock"
    R: int = 2
    v: int = 3
    side: str = "both"

    def __post_init__(self) -> None:
        if self.type not in ADAPTER_TYPES:
            raise ValueError(f"adapter type must be one of {ADAPTER_TYPES}, not {self.type!r}")
        if self.R < 1 or self.v < 1 or self.v % 2 == 0:
            raise ValueError("adapter R must be >= 1 and v a positive odd number")
        if self.side not in ADAPTER_SIDES:
            raise ValueError(f"adapter side must be one of {ADAPTER_SIDES}, not {self.side!r}")

    def to_dict(self) -> dict:
        d = asdict(self)
        if self.side == "both":  # as 0.1.0 wrote it: fingerprints and manifests of earlier models stay the same
            del d["side"]
        return d

    @property
    def in_decoder(self) -> bool:
        return self.side == "both"

    @classmethod
    def from_dict(cls, d: dict | None) -> "AdapterConfig | None":
        if d is None:
            return None
        return cls(type=str(d["type"]), R=int(d["R"]), v=int(d["v"]), side=str(d.get("side", "both")))


class Adapter(nn.Sequential):
    def __init__(self, channels: int, R: int = 2, v: int = 3):
        hidden = max(1, channels // R)
        super().__init__(
            nn.Conv2d(channels, hidden, 1),
            nn.Conv2d(hidden, hidden, v, padding=v // 2),
            nn.Conv2d(hidden, channels, 1),
        )
        nn.init.zeros_(self[2].weight)
        nn.init.zeros_(self[2].bias)


def adapter_parameter_names(state_dict_keys) -> list[str]:
    """Names of the adapter parameters among a state dict's keys."""
    return [k for k in state_dict_keys if ".adapter." in k]
