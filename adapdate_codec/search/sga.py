"""The search's objective and its relaxation of rounding.

Objective, per image: bits / pixels + λ · 255² · MSE, the loss the model was trained with, but computed
the way the codec codes: z's bits from the entropy bottleneck's density at z (the codec codes round(z)
with tables made from that density), y's bits from the Gaussian whose scale and mean come from h_s(z) and
the masked context of y itself, the distortion from g_s(y) clamped to [0, 1] as the decoder clamps.

Relaxation: stochastic Gumbel annealing (Yang, Bamler & Mandt, "Improving inference for neural image
compression", NeurIPS 2020). Each latent is a soft, noisy mix of its floor and ceiling, weighted towards
the nearer one; the temperature falls over the search so that the last steps see (almost) hard rounding,
and the rate, the context model and g_s all see the same sample. At the end the latents are rounded.
"""

from __future__ import annotations

import copy
import threading
import weakref
from dataclasses import dataclass

import torch
from torch import nn

from adapdate_codec.search.levels import Level

EPS = 1e-4
# |latent| bound kept during the search: far inside the integer path's exact range (fixedpoint.py checks
# sums against 2**52; plain latents of photos stay under ~40), so a refined file is never refused there
LATENT_LIMIT = 255.0

_copies: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()
_copies_lock = threading.Lock()


class SearchNet(nn.Module):
    """Private copies of the modules the objective runs, frozen: gradients flow to the latents only (no
    weight gradients: a third less work per backward pass), and the shared network is left untouched."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        for name in ("g_s", "h_s", "context_prediction", "entropy_parameters", "entropy_bottleneck",
                     "gaussian_conditional"):
            setattr(self, name, copy.deepcopy(getattr(net, name)))
        self.requires_grad_(False).eval()


def search_net(net: nn.Module, device: str) -> SearchNet:
    """The frozen copy of `net`'s decoder side on `device`, made once per network and device."""
    with _copies_lock:
        per_device = _copies.setdefault(net, {})
        snet = per_device.get(device)
        if snet is None:
            snet = per_device[device] = SearchNet(net).to(device)
    return snet


def sga(v: torch.Tensor, tau: float, gen: torch.Generator) -> torch.Tensor:
    """A relaxed rounding of v: floor(v) + p, p in (0, 1) a two-way Gumbel-softmax sample whose logits are
    -atanh(distance to the integer) / tau (differentiable in v; hard rounding as tau -> 0)."""
    fl = torch.floor(v.detach())
    r = (v - fl).clamp(EPS, 1 - EPS)
    u = torch.rand((2, *v.shape), generator=gen, device=v.device, dtype=v.dtype).clamp_(1e-10, 1 - 1e-10)
    g = -torch.log(-torch.log(u))
    logit = (torch.atanh(r) - torch.atanh(1 - r)) / tau  # ceil's logit minus floor's
    return fl + torch.sigmoid(logit + g[1] - g[0])


def _bits(likelihood: torch.Tensor) -> torch.Tensor:
    """-log2 of likelihoods (B, ...) summed per image -> (B,)."""
    return -torch.log2(likelihood).flatten(1).sum(1)


def z_bits(eb: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """Bits of z (B, C, h, w) under the entropy bottleneck's density at z itself (not on the medians' grid:
    the codec codes round(z))."""
    B, C = z.shape[:2]
    values = z.transpose(0, 1).reshape(C, 1, -1)
    lik = eb._likelihood(values)[0]
    if eb.use_likelihood_bound:
        lik = eb.likelihood_lower_bound(lik)
    return _bits(lik.reshape(C, B, -1).transpose(0, 1))


def y_bits(snet: SearchNet, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    params = snet.h_s(z)
    ctx = snet.context_prediction(y)
    scales, means = snet.entropy_parameters(torch.cat((params, ctx), dim=1)).chunk(2, 1)
    gc = snet.gaussian_conditional
    lik = gc._likelihood(y, scales, means)
    if gc.use_likelihood_bound:
        lik = gc.likelihood_lower_bound(lik)
    return _bits(lik)


@dataclass
class Cost:
    loss: torch.Tensor  # (B,) bits / pixel + λ · 255² · MSE
    bits: torch.Tensor  # (B,)
    mse: torch.Tensor  # (B,), on [0, 1] pixels


def objective(snet: SearchNet, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor, lmbda: float,
              crop: tuple[int, int]) -> Cost:
    """x (B, 3, H, W) in [0, 1]; the distortion counts the top-left crop (h, w) only (the rest is padding
    the decoder crops away, or a neighbouring tile's margin); the rate counts every latent given."""
    h, w = crop
    bits = z_bits(snet.entropy_bottleneck, z) + y_bits(snet, y, z)
    x_hat = snet.g_s(y)[..., :h, :w].clamp(0, 1)
    mse = (x_hat - x[..., :h, :w]).square().flatten(1).mean(1)
    return Cost(bits / (h * w) + lmbda * 255**2 * mse, bits, mse)


PACK_MIN = 1 << 20  # elements: only the large activations (the conversions cost time: ~17 % of a step at 1 << 16)


def _pack(t: torch.Tensor):
    """What autograd keeps for the backward pass, in bfloat16 on the CPU: the search needs gradients to
    point the way, not to the last bit, and g_s's saved activations are most of its memory (a Kodak
    image: ~0.8 GB in float32)."""
    if t.dtype == torch.float32 and t.device.type == "cpu" and t.numel() >= PACK_MIN:
        return t.dtype, t.to(torch.bfloat16)
    return None, t


def _unpack(packed) -> torch.Tensor:
    dtype, t = packed
    return t if dtype is None else t.to(dtype)


def refine(snet: SearchNet, x: torch.Tensor, y0: torch.Tensor, z0: torch.Tensor, lmbda: float, lev: Level,
           crop: tuple[int, int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer latents (y, z) found by `lev.steps` steps of Adam on the relaxed objective, from the analysis
    transform's float latents y0 (B, M, H, W) and z0 (B, N, H/4, W/4). Images of a batch are independent
    (Adam is elementwise): a batch gives each image what a run of its own would."""
    y = y0.detach().clone().requires_grad_(True)
    z = z0.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([y, z], lr=lev.lr)
    gen = torch.Generator(device=x.device)
    gen.manual_seed(seed)
    with torch.enable_grad():
        for step in range(lev.steps):
            tau = lev.tau(step)
            with torch.autograd.graph.saved_tensors_hooks(_pack, _unpack):
                cost = objective(snet, x, sga(y, tau, gen), sga(z, tau, gen), lmbda, crop)
            opt.zero_grad(set_to_none=True)
            cost.loss.sum().backward()
            opt.step()
            with torch.no_grad():
                y.clamp_(-LATENT_LIMIT, LATENT_LIMIT)
                z.clamp_(-LATENT_LIMIT, LATENT_LIMIT)
    return torch.round(y.detach()), torch.round(z.detach())
