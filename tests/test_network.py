"""The network keeps CompressAI's cheng2020-anchor names without importing compressai.models."""

from __future__ import annotations

import subprocess
import sys

import torch

from adapdate_codec.network import Cheng2020


def test_state_dict_names_and_shapes_are_compressais() -> None:
    from compressai.models import Cheng2020Anchor

    ours = {k: tuple(v.shape) for k, v in Cheng2020(N=16).state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in Cheng2020Anchor(N=16).state_dict().items()}
    assert ours == theirs
    # and a CompressAI state dict loads unchanged, giving the same outputs
    ref = Cheng2020Anchor(N=16).eval()
    net = Cheng2020(N=16).eval()
    net.load_state_dict(ref.state_dict())
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(net.g_s(torch.round(net.g_a(x))), ref.g_s(torch.round(ref.g_a(x))))
        assert torch.equal(net.h_s(net.h_a(ref.g_a(x))), ref.h_s(ref.h_a(ref.g_a(x))))
    assert torch.equal(net.aux_loss(), ref.aux_loss())


_CODE = """
import sys
import numpy as np
from adapdate_codec import codec
from adapdate_codec.bundle import build_bundle
from adapdate_codec.imageio import Picture
from adapdate_codec.network import build_model
import torch
torch.manual_seed(0)
bundle = build_bundle("t", 1, "cheng2020-anchor", 8, 0.0018, build_model("cheng2020-anchor", 8).state_dict())
pic = Picture(np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8), "RGB")
out = codec.decode_picture(codec.encode_picture(pic, bundle), lambda h: bundle)
assert out.pixels.shape == pic.pixels.shape
heavy = sorted(m for m in ("compressai.models", "compressai.datasets", "torch_geometric", "torchvision", "pandas")
               if m in sys.modules)
print("heavy:", heavy)
import compressai  # the whole package is there for whoever asks for it
from compressai.zoo import cheng2020_anchor
print("later:", compressai.models.Cheng2020Anchor.__name__, "ans" in compressai.available_entropy_coders())
"""


def test_coding_does_not_import_compressais_other_models() -> None:
    r = subprocess.run([sys.executable, "-c", _CODE], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "heavy: []" in r.stdout, r.stdout
    assert "later: Cheng2020Anchor True" in r.stdout, r.stdout
