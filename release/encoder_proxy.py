"""A quick check of an encoder run while it trains: RD loss on val (rounded latents, bits from the
likelihoods, each photo's centre 512², as `adapdate train --val` reports it) with the built-in encoder and
with a checkpoint's g_a/h_a.

    .venv/bin/python release/encoder_proxy.py QUALITY CHECKPOINT [VAL_DIR]

About a minute on 2 CPU cores for q5; what ships is decided by release/release_encoder_update.py (real files)."""

import sys
from pathlib import Path

import torch

from adapdate_codec.data import load_eval_images
from adapdate_codec.store import ModelStore
from adapdate_codec.train import ENCODER_PREFIXES, evaluate


def main() -> None:
    torch.set_num_threads(2)
    q, ckpt = int(sys.argv[1]), sys.argv[2]
    val = Path(sys.argv[3]) if len(sys.argv) > 3 else Path(__file__).resolve().parents[2] / "shared" / "data" / "val"
    base = ModelStore().get(None, q)
    net = base.network().float()
    images = load_eval_images(val, 512)
    trained = torch.load(ckpt, map_location="cpu", weights_only=True)
    rows = []
    for state in (base.state_dict, trained["model"]):
        net.load_state_dict({**net.state_dict(), **{k: v for k, v in state.items() if k.startswith(ENCODER_PREFIXES)}})
        with torch.no_grad():
            s = evaluate(net, images, "cpu")
        rows.append((s.bpp, s.psnr, base.lmbda * 255**2 * s.mse + s.bpp))
    (bb, bp, bl), (tb, tp, tl) = rows
    print(f"q{q} step {trained['step']}: built-in bpp {bb:.4f} psnr {bp:.3f} loss {bl:.4f} | "
          f"checkpoint bpp {tb:.4f} psnr {tp:.3f} loss {tl:.4f} | loss {100 * (tl / bl - 1):+.2f}%")


if __name__ == "__main__":
    main()
