"""A quick check of an encoder run while it trains: RD loss on val (rounded latents, bits from the
likelihoods, the top-left 512² of each photo) with the built-in encoder and with a checkpoint's g_a/h_a.

    .venv/bin/python release/encoder_proxy.py QUALITY CHECKPOINT [VAL_DIR]

About a minute on 2 CPU cores for q5; what ships is decided by release/release_encoder_update.py (real files)."""
import math
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from adapdate_codec.store import ModelStore

torch.set_num_threads(2)
q, ckpt = int(sys.argv[1]), sys.argv[2]
val = Path(sys.argv[3]) if len(sys.argv) > 3 else Path(__file__).resolve().parents[2] / "shared" / "data" / "val"
base = ModelStore().get(None, q)
net = base.network().float().eval()
c = torch.load(ckpt, map_location="cpu", weights_only=True)
trained = {k: v for k, v in c["model"].items() if k.startswith(("g_a.", "h_a."))}
def run(state):
    net.load_state_dict({**net.state_dict(), **state})
    tot = []
    for p in sorted(val.glob("*.png")):
        x = torch.from_numpy(np.asarray(Image.open(p).convert("RGB"))).permute(2, 0, 1)[None].float() / 255
        h, w = x.shape[2] // 64 * 64, x.shape[3] // 64 * 64
        x = x[:, :, :min(h, 512), :min(w, 512)]
        with torch.no_grad():
            o = net(x)
        n = x.shape[2] * x.shape[3]
        bpp = sum(torch.log(l).sum() for l in (o.y_likelihoods, o.z_likelihoods)).item() / (-math.log(2) * n)
        mse = torch.mean((o.x_hat.clamp(0, 1) - x) ** 2).item()
        tot.append((bpp, 10 * math.log10(1 / mse), base.lmbda * 255**2 * mse + bpp))
    return np.mean(tot, axis=0)
b = run({k: v.clone() for k, v in base.state_dict.items() if k.startswith(("g_a.", "h_a."))})
t = run(trained)
print(f"q{q} step {c['step']}: base bpp {b[0]:.4f} psnr {b[1]:.3f} loss {b[2]:.4f} | ckpt bpp {t[0]:.4f} psnr {t[1]:.3f} loss {t[2]:.4f} | loss {100*(t[2]/b[2]-1):+.2f}%")
