"""Files written by earlier versions must keep decoding: a golden file coded with a fixed tiny model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from adapdate_codec import codec, container
from adapdate_codec.bundle import ModelBundle

DATA = Path(__file__).parent / "data"


def test_golden_file_still_decodes():
    bundle = ModelBundle.load(DATA / "golden-model.pt")
    data = (DATA / "golden.adpd").read_bytes()
    header, sections = container.unpack(data)
    assert header.fingerprint == bundle.fingerprint_bytes
    lat = codec.decode_latents(sections, bundle, header.height, header.width)
    assert torch.equal(lat.y_hat, torch.from_numpy(np.load(DATA / "golden-y_hat.npy")).double())
    out = codec.decode_picture(data, lambda h: bundle)
    expected = np.asarray(Image.open(DATA / "golden-decoded.png"))
    # y_hat is exact on every platform; the float synthesis may differ by one level elsewhere
    assert np.abs(out.pixels.astype(int) - expected).max() <= 1


def test_golden_model_reencodes_to_the_same_bytes():
    bundle = ModelBundle.load(DATA / "golden-model.pt")
    from adapdate_codec.imageio import Picture

    px = np.asarray(Image.open(DATA / "golden-input.png"))
    assert codec.encode_picture(Picture(px, "RGB"), bundle) == (DATA / "golden.adpd").read_bytes()
