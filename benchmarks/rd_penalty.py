"""RD cost of adapdate's integer entropy coding against the float model, over the installed qualities.

    .venv/bin/python benchmarks/rd_penalty.py [--images ../shared/data/kodak] [--limit N] [--qualities 1 2 3]

Three curves on the same images, same weights:
  * adapdate: real files (container included), fixed-point entropy parameters, y_hat = round(y);
  * float-ideal: the same y_hat = round(y) and z_hat, rate = -log2 of the float model's own likelihoods
    (Gaussian with float scales and means, CompressAI's GaussianConditional; entropy bottleneck for z):
    what an ideal arithmetic coder with float parameters would spend, no container;
  * compressai: CompressAI's compress/decompress (float parameters, mean-centred y_hat = round(y - mu) + mu).
BD-rates (PCHIP) of adapdate against each; "adapdate vs float-ideal" is the cost of the integer path,
tables and container (about 70 bytes a file), "adapdate-sections" the same without the container;
"float-ideal vs compressai" is the cost of the quantization convention alone.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from adapdate_codec import codec, container, tiling
from adapdate_codec.bdrate import RDCurve, bd_psnr, bd_rate
from adapdate_codec.imageio import Picture
from adapdate_codec.metrics import psnr
from adapdate_codec.store import ModelStore

from bench_coding import compressai_model  # benchmarks/ is on sys.path when run as a script


@torch.no_grad()
def float_ideal_bits(bundle, px: np.ndarray) -> float:
    """-log2 likelihood of adapdate's own (z_hat, y_hat) under the float network."""
    net = bundle.network()
    x = tiling.pad(torch.from_numpy(px).permute(2, 0, 1)[None].contiguous().float() / 255, "replicate")
    y = tiling.analyze(net.g_a, x)
    z_hat = torch.round(net.h_a(y))
    y_hat = torch.round(y)
    C = z_hat.shape[1]
    z_lik = net.entropy_bottleneck._likelihood(z_hat.permute(1, 0, 2, 3).reshape(C, 1, -1))[0]
    if net.entropy_bottleneck.use_likelihood_bound:
        z_lik = net.entropy_bottleneck.likelihood_lower_bound(z_lik)
    params = net.h_s(z_hat)
    gp = net.entropy_parameters(torch.cat((params, net.context_prediction(y_hat)), 1))
    scales, means = gp.chunk(2, 1)
    y_lik = net.gaussian_conditional._likelihood(y_hat, scales, means)
    y_lik = net.gaussian_conditional.likelihood_lower_bound(y_lik)
    return float(-(torch.log2(z_lik).sum() + torch.log2(y_lik).sum()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "kodak"))
    ap.add_argument("--limit", type=int, default=6)
    ap.add_argument("--qualities", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--model")
    args = ap.parse_args()
    from PIL import Image

    paths = sorted(Path(args.images).glob("*.png"))[: args.limit]
    images = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    store = ModelStore()
    curves: dict[str, list[tuple[float, float]]] = {"adapdate": [], "adapdate-sections": [], "float-ideal": [],
                                                    "compressai": []}
    for q in args.qualities:
        bundle = store.get(args.model, q)
        ref = compressai_model(bundle)
        rows = []
        for px in images:
            n = px.shape[0] * px.shape[1]
            data = codec.encode_picture(Picture(px, "RGB"), bundle)
            payload = sum(len(sec) for sec in container.unpack(data)[1])
            p_ours = psnr(px, codec.decode_picture(data, lambda h: bundle).pixels)
            ideal = float_ideal_bits(bundle, px)
            x = torch.from_numpy(px).permute(2, 0, 1)[None].contiguous().float() / 255
            xp = tiling.pad(x, "replicate")
            with torch.no_grad():
                out = ref.compress(xp)
                rec = ref.decompress(out["strings"], out["shape"])["x_hat"]
            rec = tiling.crop(rec, px.shape[0], px.shape[1])
            ref_px = rec[0].clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy()
            ref_bits = 8 * sum(len(s[0]) for s in out["strings"])
            rows.append((len(data) * 8 / n, p_ours, ideal / n, ref_bits / n, psnr(px, ref_px), payload * 8 / n))
        r = np.array(rows).mean(0)
        curves["adapdate"].append((r[0], r[1]))
        curves["adapdate-sections"].append((r[5], r[1]))
        curves["float-ideal"].append((r[2], r[1]))
        curves["compressai"].append((r[3], r[4]))
        print(f"q{q}: adapdate {r[0]:.4f} bpp {r[1]:.3f} dB | float-ideal {r[2]:.4f} bpp (x{r[0] / r[2]:.4f}) | "
              f"compressai {r[3]:.4f} bpp {r[4]:.3f} dB | coded sections alone {r[5]:.4f} bpp", flush=True)
    rd = {k: RDCurve(k, tuple(b for b, _ in v), tuple(p for _, p in v)) for k, v in curves.items()}
    pairs = (("adapdate", "float-ideal"), ("adapdate-sections", "float-ideal"), ("adapdate", "compressai"),
             ("float-ideal", "compressai"))
    for test, anchor in pairs:
        try:
            print(f"BD-rate {test} vs {anchor}: {100 * bd_rate(rd[anchor], rd[test]):+.2f} % "
                  f"(BD-PSNR {bd_psnr(rd[anchor], rd[test]):+.3f} dB) over {len(images)} images")
        except Exception as e:  # non-overlapping curves
            print(f"BD-rate {test} vs {anchor}: not defined ({e})")


if __name__ == "__main__":
    main()
