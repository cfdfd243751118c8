"""Choosing the grids of a compact model (adapdate_codec/compact.py), and measuring what they cost.

Grid allocation: a weight's quantization noise (variance step²/12) raises the RD loss by about
½·F·step² where F is its diagonal Fisher information (mean squared per-sample gradient of the RD loss
on training crops). Spending the fewest bits for a given total loss gives every tensor the step
``C / sqrt(F)`` (reverse water-filling); the step is capped at ``cap × RMS`` because the diagonal
Fisher underrates some tensors badly (the hyper-synthesis gets near-zero gradients per sample, yet
zeroing it breaks the rate). C and cap were chosen on ../shared/data/val (never on Kodak):

    uniform RMS/8:              7.4 MB, val +1.86 % bpp, -0.074 dB
    uniform RMS/32:            10.2 MB, val +0.18 % bpp, -0.002 dB
    Fisher, C 2e-6, cap 1/8:    7.4 MB, val +0.27 % bpp, -0.012 dB
    Fisher, C 1e-6, cap 1/8:    8.0 MB, val +0.08 % bpp, -0.002 dB   <- the default
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch

from adapdate_codec.compact import Grid, nearest_grid, quantizable
from adapdate_codec.data import CropDataset
from adapdate_codec.train import evaluate, rd_loss

DEFAULT_C = 1e-6
DEFAULT_CAP = 1 / 8


def fisher(bundle, data: str, crops: int = 16, patch: int = 256, seed: int = 0) -> dict[str, float]:
    """Mean squared per-sample gradient of the RD loss, per quantizable tensor (train mode: noisy latents,
    so that gradients reach the analysis transform)."""
    net = copy.deepcopy(bundle.network()).train()
    params = dict(net.named_parameters())
    keys = [k for k, v in bundle.state_dict.items() if quantizable(k, v) and k in params]
    ds = CropDataset(data, patch)
    rng = np.random.default_rng(seed)
    out = {k: 0.0 for k in keys}
    for _ in range(crops):
        net.zero_grad()
        loss, _ = rd_loss(net, ds.batch(1, rng), bundle.lmbda)
        loss.backward()
        for k in keys:
            out[k] += float(params[k].grad.double().pow(2).mean()) / crops
    return out


def fisher_grids(bundle, F: dict[str, float], C: float = DEFAULT_C, cap: float = DEFAULT_CAP) -> dict[str, Grid]:
    grids = {}
    for k, v in bundle.state_dict.items():
        if quantizable(k, v):
            rms = max(float(v.double().pow(2).mean().sqrt()), 2.0**-30)
            grids[k] = nearest_grid(min(C / math.sqrt(F.get(k, 0.0) + 1e-30), cap * rms))
    return grids


@dataclass
class Cost:
    bpp_float: float
    psnr_float: float
    bpp: float
    psnr: float

    @property
    def bpp_change(self) -> float:
        return self.bpp / self.bpp_float - 1

    @property
    def psnr_change_db(self) -> float:
        return self.psnr - self.psnr_float

    def to_dict(self) -> dict:
        return {"psnr_change_db": round(self.psnr_change_db, 5), "bpp_change": round(self.bpp_change, 6),
                "float": {"bpp": self.bpp_float, "psnr": self.psnr_float},
                "compact": {"bpp": self.bpp, "psnr": self.psnr}}


def _estimate(net, images) -> tuple[float, float]:
    s = evaluate(net, images, "cpu")
    return s.bpp, 10 * math.log10(1 / s.mse)


@torch.no_grad()
def quantization_cost(float_bundle, compact_bundle, images) -> Cost:
    """Estimated bpp / PSNR of the network with float and with compact weights on the same images
    (rounded latents, the model's own likelihoods): the cost of the grid alone."""
    return Cost(*_estimate(float_bundle.network(), images), *_estimate(compact_bundle.network(), images))
