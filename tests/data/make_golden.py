"""Regenerate the golden files (only when the format changes on purpose, with a version bump):

    .venv/bin/python tests/data/make_golden.py            # everything (a new golden model: never again)
    .venv/bin/python tests/data/make_golden.py --format-2  # only golden-format2.adpd, from the kept model

golden.adpd is format 1 (0.1.0: the header names the whole model); golden-format2.adpd is the same image,
coded by the same model, in format 2 (the header names the decoder).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from adapdate_codec import codec
from adapdate_codec.bundle import build_bundle
from adapdate_codec.imageio import Picture
from adapdate_codec.network import build_model

HERE = Path(__file__).parent


def golden_image() -> np.ndarray:
    yy, xx = np.mgrid[0:48, 0:80]
    img = np.stack([128 + 100 * np.sin(xx / (4 + c) + yy / (6 + c)) for c in range(3)], -1)
    return np.clip(img, 0, 255).astype(np.uint8)


def main() -> None:
    torch.manual_seed(1234)
    net = build_model("cheng2020-anchor", 8)
    with torch.no_grad():  # a random network codes almost nothing: make its latents vary
        net.g_a[6].weight.mul_(30)
    bundle = build_bundle("golden", 3, "cheng2020-anchor", 8, 0.0067, net.state_dict(), card={"note": "golden test model"})
    bundle.save(HERE / "golden-model.pt")
    px = golden_image()
    Image.fromarray(px).save(HERE / "golden-input.png")
    data = codec.encode_picture(Picture(px, "RGB"), bundle)
    (HERE / "golden.adpd").write_bytes(data)
    out = codec.decode_picture(data, lambda h: bundle)
    Image.fromarray(out.pixels).save(HERE / "golden-decoded.png")
    lat = codec.analyze(px, bundle)
    np.save(HERE / "golden-y_hat.npy", lat.y_hat.numpy().astype(np.int32))
    print(bundle.fingerprint, len(data), int((lat.y_hat != 0).sum()), lat.y_hat.numel())


def format_2() -> None:
    from adapdate_codec.bundle import ModelBundle

    bundle = ModelBundle.load(HERE / "golden-model.pt")
    data = codec.encode_picture(Picture(np.asarray(Image.open(HERE / "golden-input.png")), "RGB"), bundle)
    (HERE / "golden-format2.adpd").write_bytes(data)
    print(bundle.decoder_fingerprint, len(data))


if __name__ == "__main__":
    import sys

    format_2() if "--format-2" in sys.argv[1:] else main()
