"""The network: CompressAI's cheng2020-anchor, with optional adapters beside its residual blocks.

State-dict names are CompressAI's own, so official zoo checkpoints load unchanged; adapter
parameters only add keys of the form ``<block>.adapter.<i>.<weight|bias>``.

Quantization convention (shared by training, encoding and decoding):
``z_hat = round(z)`` and ``y_hat = round(y)``, both integers. The entropy parameters are a
function of those integers only, so the decoder can recompute them exactly (see fixedpoint.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from adapdate_codec.adapters import Adapter, AdapterConfig
from adapdate_codec.cai import (ENTROPY_CODER, GDN, EntropyBottleneck, GaussianConditional, MaskedConv2d, conv1x1,
                                conv3x3, subpel_conv3x3)

# CompressAI's cheng2020-anchor λ (MSE) per quality, and N per quality.
LAMBDAS = {1: 0.0018, 2: 0.0035, 3: 0.0067, 4: 0.0130, 5: 0.0250, 6: 0.0483}
ZOO_CHANNELS = {1: 128, 2: 128, 3: 128, 4: 192, 5: 192, 6: 192}
ARCHITECTURES = ("cheng2020-anchor",)


def ste_round(x: torch.Tensor) -> torch.Tensor:
    """Round in the forward pass, identity gradient in the backward pass."""
    return x + (torch.round(x) - x).detach()


def _adapter_branch(adapter: nn.Module | None, before: list[nn.Module] | None = None) -> list[list[nn.Module]]:
    return [] if adapter is None else [[*(before or []), adapter]]


class ResidualBlock(nn.Module):
    """CompressAI's ResidualBlock (in == out channels); out = f(x) + x + A(x)."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv1 = conv3x3(ch, ch)
        self.leaky_relu = nn.LeakyReLU(inplace=True)
        self.conv2 = conv3x3(ch, ch)
        self.adapter: nn.Module | None = None

    def branches(self) -> list[list[nn.Module]]:
        """The chains of modules whose outputs forward adds up (tiling.py derives receptive fields from them)."""
        return [[self.conv1, self.leaky_relu, self.conv2, self.leaky_relu], [], *_adapter_branch(self.adapter)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.leaky_relu(self.conv2(self.leaky_relu(self.conv1(x))))
        out = out + x
        if self.adapter is not None:
            out = out + self.adapter(x)
        return out


class ResidualBlockWithStride(nn.Module):
    """CompressAI's ResidualBlockWithStride; out = f(x) + s + A(s), s = skip(x)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 2):
        super().__init__()
        self.conv1 = conv3x3(in_ch, out_ch, stride=stride)
        self.leaky_relu = nn.LeakyReLU(inplace=True)
        self.conv2 = conv3x3(out_ch, out_ch)
        self.gdn = GDN(out_ch)
        self.skip = conv1x1(in_ch, out_ch, stride=stride) if stride != 1 or in_ch != out_ch else None
        self.adapter: nn.Module | None = None

    def branches(self) -> list[list[nn.Module]]:
        skip = [self.skip] if self.skip is not None else []
        return [[self.conv1, self.leaky_relu, self.conv2, self.gdn], skip, *_adapter_branch(self.adapter, skip)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.gdn(self.conv2(self.leaky_relu(self.conv1(x))))
        s = self.skip(x) if self.skip is not None else x
        out = out + s
        if self.adapter is not None:
            out = out + self.adapter(s)
        return out


class ResidualBlockUpsample(nn.Module):
    """CompressAI's ResidualBlockUpsample; out = f(x) + s + A(s), s = upsample(x)."""

    def __init__(self, in_ch: int, out_ch: int, upsample: int = 2):
        super().__init__()
        self.subpel_conv = subpel_conv3x3(in_ch, out_ch, upsample)
        self.leaky_relu = nn.LeakyReLU(inplace=True)
        self.conv = conv3x3(out_ch, out_ch)
        self.igdn = GDN(out_ch, inverse=True)
        self.upsample = subpel_conv3x3(in_ch, out_ch, upsample)
        self.adapter: nn.Module | None = None

    def branches(self) -> list[list[nn.Module]]:
        return [[self.subpel_conv, self.leaky_relu, self.conv, self.igdn], [self.upsample],
                *_adapter_branch(self.adapter, [self.upsample])]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.igdn(self.conv(self.leaky_relu(self.subpel_conv(x))))
        s = self.upsample(x)
        out = out + s
        if self.adapter is not None:
            out = out + self.adapter(s)
        return out


@dataclass
class ForwardOutput:
    x_hat: torch.Tensor
    y_likelihoods: torch.Tensor
    z_likelihoods: torch.Tensor


class Cheng2020(nn.Module):
    """cheng2020-anchor, built from CompressAI's layers and entropy models with the module names of its
    `Cheng2020Anchor` (so its state dicts, and the zoo's checkpoints, load unchanged), with optional
    adapters. Not a subclass of it: compressai.models would import every model CompressAI has (see cai.py)."""

    def __init__(self, N: int = 128, adapters: AdapterConfig | None = None):
        super().__init__()
        self.N = self.M = N
        self.entropy_bottleneck = EntropyBottleneck(N, entropy_coder=ENTROPY_CODER)
        self.g_a = nn.Sequential(
            ResidualBlockWithStride(3, N, stride=2),
            ResidualBlock(N),
            ResidualBlockWithStride(N, N, stride=2),
            ResidualBlock(N),
            ResidualBlockWithStride(N, N, stride=2),
            ResidualBlock(N),
            conv3x3(N, N, stride=2),
        )
        self.g_s = nn.Sequential(
            ResidualBlock(N),
            ResidualBlockUpsample(N, N, 2),
            ResidualBlock(N),
            ResidualBlockUpsample(N, N, 2),
            ResidualBlock(N),
            ResidualBlockUpsample(N, N, 2),
            ResidualBlock(N),
            subpel_conv3x3(N, 3, 2),
        )
        self.h_a = nn.Sequential(
            conv3x3(N, N),
            nn.LeakyReLU(inplace=True),
            conv3x3(N, N),
            nn.LeakyReLU(inplace=True),
            conv3x3(N, N, stride=2),
            nn.LeakyReLU(inplace=True),
            conv3x3(N, N),
            nn.LeakyReLU(inplace=True),
            conv3x3(N, N, stride=2),
        )
        self.h_s = nn.Sequential(
            conv3x3(N, N),
            nn.LeakyReLU(inplace=True),
            subpel_conv3x3(N, N, 2),
            nn.LeakyReLU(inplace=True),
            conv3x3(N, N * 3 // 2),
            nn.LeakyReLU(inplace=True),
            subpel_conv3x3(N * 3 // 2, N * 3 // 2, 2),
            nn.LeakyReLU(inplace=True),
            conv3x3(N * 3 // 2, N * 2),
        )
        self.entropy_parameters = nn.Sequential(
            nn.Conv2d(N * 12 // 3, N * 10 // 3, 1),
            nn.LeakyReLU(inplace=True),
            nn.Conv2d(N * 10 // 3, N * 8 // 3, 1),
            nn.LeakyReLU(inplace=True),
            nn.Conv2d(N * 8 // 3, N * 6 // 3, 1),
        )
        self.context_prediction = MaskedConv2d(N, 2 * N, kernel_size=5, padding=2, stride=1)
        self.gaussian_conditional = GaussianConditional(None, entropy_coder=ENTROPY_CODER)
        self.adapter_config: AdapterConfig | None = None
        if adapters is not None:
            self.add_adapters(adapters)

    def aux_loss(self) -> torch.Tensor:
        """The entropy bottleneck's quantile loss (CompressAI's CompressionModel.aux_loss)."""
        return self.entropy_bottleneck.loss()

    # -- adapters ------------------------------------------------------------------------
    def residual_blocks(self, kind: str, side: str = "both") -> list[nn.Module]:
        """The blocks that take adapters of type `kind`: in g_a and g_s ("both"), or in g_a only ("encoder")."""
        where = self.g_a if side == "encoder" else self
        types = (ResidualBlock,) if kind == "resblock" else (ResidualBlock, ResidualBlockWithStride,
                                                             ResidualBlockUpsample)
        return [m for m in where.modules() if isinstance(m, types)]

    def add_adapters(self, cfg: AdapterConfig) -> None:
        if self.adapter_config is not None:
            raise ValueError("the model already has adapters")
        for block in self.residual_blocks(cfg.type, cfg.side):
            block.adapter = Adapter(self.N, cfg.R, cfg.v)
        self.adapter_config = cfg

    def adapter_parameters(self):
        return [p for n, p in self.named_parameters() if ".adapter." in n]

    # -- training / estimation --------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> ForwardOutput:  # type: ignore[override]
        """Rate from additive noise, synthesis and context from STE-rounded latents."""
        y = self.g_a(x)
        z = self.h_a(y)
        with torch.autocast(x.device.type, enabled=False):  # rate terms stay in fp32
            z_likelihoods = bottleneck_likelihoods(self.entropy_bottleneck, z.float(), self.training)
        z_hat = ste_round(z) if self.training else torch.round(z)
        y_hat = ste_round(y) if self.training else torch.round(y)
        params = self.h_s(z_hat)
        ctx = context_conv(self.context_prediction, y_hat)
        gaussian_params = self.entropy_parameters(torch.cat((params, ctx), dim=1))
        scales, means = gaussian_params.float().chunk(2, 1)
        with torch.autocast(x.device.type, enabled=False):
            _, y_likelihoods = self.gaussian_conditional(y.float(), scales, means)
        x_hat = self.g_s(y_hat)
        return ForwardOutput(x_hat, y_likelihoods, z_likelihoods)


def context_conv(conv: MaskedConv2d, y_hat: torch.Tensor) -> torch.Tensor:
    """CompressAI's masked context convolution. Its forward zeroes the masked-out weights in place
    first (through .data, which torch.compile cannot trace); compiled code gets weights masked
    beforehand (mask_context_weights, called by the training step) and runs the plain convolution."""
    if torch.compiler.is_compiling():
        return F.conv2d(y_hat, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)
    return conv(y_hat)


@torch.no_grad()
def mask_context_weights(model: Cheng2020) -> None:
    """What MaskedConv2d's forward does first, done outside a compiled forward."""
    conv = model.context_prediction
    conv.weight.mul_(conv.mask)


def bottleneck_likelihoods(eb: EntropyBottleneck, z: torch.Tensor, training: bool) -> torch.Tensor:
    """z's likelihoods under the entropy bottleneck, as CompressAI's forward computes them (noise in
    training, the medians' grid otherwise), with its axis permutation as Python ints: CompressAI builds
    it as a device tensor and unpacks it, which reads the GPU back (a host synchronisation) three times
    per call and stops torch.compile's graph."""
    perm = (1, 0, *range(2, z.dim()))  # B x C x ... <-> C x B x ...
    x = z.permute(*perm).contiguous()
    values = x.reshape(x.size(0), 1, -1)
    outputs = eb.quantize(values, "noise" if training else "dequantize", eb._get_medians())
    likelihood, _, _ = eb._likelihood(outputs)
    if eb.use_likelihood_bound:
        likelihood = eb.likelihood_lower_bound(likelihood)
    return likelihood.reshape(x.shape).permute(*perm).contiguous()


def build_model(arch: str, N: int, adapters: AdapterConfig | None = None) -> Cheng2020:
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(ARCHITECTURES)}")
    return Cheng2020(N=N, adapters=adapters)
