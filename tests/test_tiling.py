"""Tiled g_a / g_s equal one pass over the whole image, bit for bit: each module of a tile reads the whole
window of the positions the rest of the tile needs (receptive fields walked back from the network's own
layers). Tiny networks with every block kind and adapters; tiles of a few latents, so that every tile edge
and image edge case shows up. (The shipped q3 is checked on large images by benchmarks/scaling.py
--check.)"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from adapdate_codec import inference, tiling
from adapdate_codec.adapters import AdapterConfig
from adapdate_codec.network import build_model


def _network(adapters: AdapterConfig | None, seed: int = 0, dtype=torch.float64) -> nn.Module:
    torch.manual_seed(seed)
    net = build_model("cheng2020-anchor", 8, adapters=adapters).eval().to(dtype)
    with torch.no_grad():  # fresh adapters add zeros, which would hide a receptive field that is too small
        for name, p in net.named_parameters():
            if ".adapter." in name:
                p.normal_(0, 0.3)
    return net


ADAPTERS = [None, AdapterConfig("all", R=2, v=3), AdapterConfig("resblock", R=4, v=5)]


@pytest.mark.parametrize("adapters", ADAPTERS, ids=["plain", "all-v3", "resblock-v5"])
@pytest.mark.parametrize("strip,band", [(1, 1), (2, 3), (3, 2), (5, 100)])
def test_tiled_transforms_equal_one_pass(adapters, strip, band, monkeypatch):
    net = _network(adapters)
    monkeypatch.setattr(tiling, "STRIP", strip)
    monkeypatch.setattr(tiling, "BAND_AREA", band * strip)
    g = torch.Generator().manual_seed(strip)
    x = torch.rand(1, 3, 7 * 16, 5 * 16, generator=g, dtype=torch.float64)  # 7x5 latents: uneven tiles
    y = torch.round(torch.randn(1, 8, 6, 9, generator=g, dtype=torch.float64) * 4)
    with torch.no_grad():
        # float64 on tiles of 1-5 latents: torch may pick another conv algorithm for such small inputs
        # (last-bit differences); a receptive field short by one position would differ by ~0.1
        assert (tiling.analyze(net.g_a, x) - net.g_a(x)).abs().max() < 1e-12
        assert (tiling.synthesize(net.g_s, y) - net.g_s(y)).abs().max() < 1e-12


def test_fast_path_tiles_equal_one_pass_in_any_thread_count(monkeypatch):
    """float32, channels-last copies (what the codec runs): tiles in 1 to 3 threads give one pass's numbers
    to float32's last bits. (Not bit for bit: oneDNN's brgemm kernels block sums by width and thread count,
    ~1e-6 here on AVX2; the float64 tests above are the bit-exact check of the receptive fields, where a
    window short by one position shows as ~0.1.)"""
    net = _network(AdapterConfig("all"), seed=1, dtype=torch.float32)
    g_a, fmt = inference.inference_transform(net.g_a, "cpu", analysis=True)
    g_s, _ = inference.inference_transform(net.g_s, "cpu", analysis=False)
    x = torch.rand(1, 3, 10 * 16, 7 * 16, generator=torch.Generator().manual_seed(2))
    monkeypatch.setattr(tiling, "STRIP", 3)
    monkeypatch.setattr(tiling, "BAND_AREA", 6)
    monkeypatch.setattr(tiling, "MIN_BLOCK", 2)
    with torch.no_grad():
        y_ref = g_a(x.contiguous(memory_format=fmt))
        y_hat = torch.round(y_ref)
        x_ref = g_s(y_hat.contiguous(memory_format=fmt))
        for threads in (1, 2, 3):
            y = tiling.analyze(g_a, x, memory_format=fmt, threads=threads)
            x_hat = tiling.synthesize(g_s, y_hat, memory_format=fmt, threads=threads)
            assert (y - y_ref).abs().max() <= 1e-5 * y_ref.abs().max()
            assert (x_hat - x_ref).abs().max() <= 1e-5 * x_ref.abs().max()
    assert torch.get_num_threads() == 1  # conftest's setting, restored


def test_each_module_reads_only_what_the_rest_of_the_tile_needs():
    """Output latents 8..16 of g_a (stride 16): the full-resolution input spans them plus the network's
    receptive field (a few latents, more above than below: strided convs look back), each module's input
    aligned to its stride; the last module reads one position of halo at its own resolution."""
    net = _network(None)
    plan = tiling.plan_axis(list(net.g_a), 48 * 16, (8, 16), axis=0)
    assert plan.spans[0] == (56, 298)  # 72 pixels above latent 8, 42 below latent 15
    assert plan.spans[-2] == (14, 32)  # conv3x3 stride 2 at 1/8 resolution: 2*8-1 .. 2*15+1, even start
    assert plan.spans[-1] == (8, 16)
    assert all(lo % 2 == 0 for lo, _ in plan.spans[:-1])  # every module but the RB ones has stride 2
    # at the image's edge, a module reads from 0 (its own zero padding is the image's)
    edge = tiling.plan_axis(list(net.g_s), 20, (0, 16), axis=1)
    assert edge.spans[0] == (0, 8) and edge.spans[-1] == (0, 16)


def test_receptive_field_of_a_conv_and_a_pixel_shuffle():
    conv = nn.Conv2d(1, 1, 3, stride=2, padding=1)
    assert tiling.need(conv, (4, 6), axis=0) == (7, 12)
    assert tiling.forward(conv, 6, 10, axis=0) == (3, 5)
    with pytest.raises(ValueError, match="multiple of 2"):
        tiling.forward(conv, 5, 10, axis=0)
    assert tiling.need(nn.PixelShuffle(2), (3, 8), axis=1) == (1, 4)
    with pytest.raises(TypeError, match="receptive field"):
        tiling.need(nn.Upsample(scale_factor=2), (0, 4), axis=0)


def _pad_by_steps(x: torch.Tensor, mode: str) -> torch.Tensor:
    """The padding of earlier versions (F.pad on the whole image, in steps): files depend on it."""
    H, W = tiling.padded_size(*x.shape[-2:])
    while (x.shape[-2], x.shape[-1]) != (H, W):
        dh, dw = H - x.shape[-2], W - x.shape[-1]
        m = mode
        if mode == "reflect":
            dh, dw = min(dh, x.shape[-2] - 1), min(dw, x.shape[-1] - 1)
            if dh == 0 and H != x.shape[-2] or dw == 0 and W != x.shape[-1]:
                m, dh, dw = "replicate", H - x.shape[-2], W - x.shape[-1]
        x = torch.nn.functional.pad(x, (0, dw, 0, dh), mode=m)
    return x


@pytest.mark.parametrize("mode", tiling.PADDING_MODES)
@pytest.mark.parametrize("h,w", [(1, 1), (1, 70), (70, 1), (2, 3), (9, 64), (64, 65), (100, 21)])
def test_padded_image_reads_the_padded_pixels(mode, h, w):
    g = torch.Generator().manual_seed(h * 1000 + w)
    px = torch.randint(0, 256, (h, w, 3), generator=g, dtype=torch.uint8)
    ref = _pad_by_steps(px.permute(2, 0, 1)[None].float(), mode)
    assert torch.equal(tiling.pad(px.permute(2, 0, 1)[None].float(), mode), ref)
    image = tiling.PaddedImage(px, mode)
    assert image.shape == ref.shape
    H, W = ref.shape[-2:]
    for rows, cols in [((0, H), (0, W)), ((0, min(H, 5)), (W - 7, W)), ((H // 2, H), (1, W // 2 + 1))]:
        region = image.read(rows, cols)
        assert torch.equal(region.float(), ref[..., rows[0] : rows[1], cols[0] : cols[1]])
