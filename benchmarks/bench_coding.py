"""Encode/decode time of adapdate against CompressAI's own compress/decompress, same weights.

Prints ratios measured in one process (absolute times drift with machine load):

    .venv/bin/python benchmarks/bench_coding.py [--model NAME] [--quality Q] [--images DIR] [--limit N] [--old-path]

--old-path also times adapdate's previous inference path (NCHW g_a / g_s, glibc's default heap) in
the same process, so old and new ratios come from the same machine state.

Without a model it uses a random-init N=128 network (timing hardly depends on the weights).
"""

from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path

import numpy as np
import torch

from adapdate_codec import codec, container, inference
from adapdate_codec.imageio import Picture


def kodak_like_images(folder: str | None, limit: int) -> list[np.ndarray]:
    if folder:
        from PIL import Image

        paths = sorted(Path(folder).glob("*.png"))[:limit]
        return [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:512, 0:768]
    return [np.clip(128 + 90 * np.sin(xx / 13 + yy / 17 + k) + rng.normal(0, 10, (512, 768)), 0, 255)
            .astype(np.uint8)[..., None].repeat(3, -1) for k in range(limit)]


def compressai_model(bundle) -> torch.nn.Module:
    from compressai.models import Cheng2020Anchor

    net = Cheng2020Anchor(N=bundle.N)
    torch.nn.Module.load_state_dict(net, bundle.state_dict, strict=False)
    net.update(force=True)
    return net.eval()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model")
    ap.add_argument("--quality", type=int)
    ap.add_argument("--images", help="folder of PNGs (default: synthetic 768x512 images)")
    ap.add_argument("--limit", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--old-path", action="store_true", help="also time the previous NCHW path, interleaved")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    inference.REUSE_FREED_MEMORY = True  # as the CLI does
    if args.model or args.quality:
        from adapdate_codec.store import ModelStore

        bundle = ModelStore().get(args.model, args.quality)
    else:
        from adapdate_codec.bundle import build_bundle
        from adapdate_codec.network import build_model

        torch.manual_seed(0)
        bundle = build_bundle("random", 3, "cheng2020-anchor", 128, 0.0067, build_model("cheng2020-anchor", 128).state_dict())
    ref = compressai_model(bundle)
    rows, old = [], []
    for px in kodak_like_images(args.images, args.limit):
        pic = Picture(px, "RGB")
        x = torch.from_numpy(px).permute(2, 0, 1)[None].contiguous().float() / 255
        codec.encode_picture(pic, bundle)  # warm-up (lazy tables, allocator)
        t = time.perf_counter(); data = codec.encode_picture(pic, bundle); enc = time.perf_counter() - t
        t = time.perf_counter(); dec_pic = codec.decode_picture(data, lambda h: bundle); dec = time.perf_counter() - t
        if args.old_path:
            with old_path():
                t = time.perf_counter(); data_old = codec.encode_picture(pic, bundle); enc_old = time.perf_counter() - t
                t = time.perf_counter(); old_pic = codec.decode_picture(data_old, lambda h: bundle)
                dec_old = time.perf_counter() - t
            old.append((enc_old, dec_old))
            lat_new, lat_old = (codec.decode_latents(container.unpack(d)[1], bundle, *px.shape[:2]) for d in (data, data_old))
            print(f"  old path: enc {enc_old:.2f}s dec {dec_old:.2f}s; files identical: {data == data_old} "
                  f"({int((lat_new.y_hat != lat_old.y_hat).sum())} latents differ); max pixel difference, "
                  f"same file: {max_diff(codec.decode_picture(data_old, lambda h: bundle).pixels, old_pic.pixels)}", flush=True)
        with torch.no_grad():
            t = time.perf_counter(); out = ref.compress(x); enc_ref = time.perf_counter() - t
            t = time.perf_counter(); rec = ref.decompress(out["strings"], out["shape"]); dec_ref = time.perf_counter() - t
        ref_px = rec["x_hat"][0].clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy()
        ref_bytes = sum(len(s[0]) for s in out["strings"])
        p_ours, p_ref = psnr(px, dec_pic.pixels), psnr(px, ref_px)
        rows.append((enc, dec, enc_ref, dec_ref, len(data), ref_bytes, p_ours, p_ref))
        print(f"{px.shape[1]}x{px.shape[0]}: adapdate enc {enc:.2f}s dec {dec:.2f}s {len(data)} B {p_ours:.2f} dB | "
              f"compressai enc {enc_ref:.2f}s dec {dec_ref:.2f}s {ref_bytes} B {p_ref:.2f} dB", flush=True)
    r = np.array(rows)
    print(f"encode speed-up x{r[:, 2].sum() / r[:, 0].sum():.1f}, decode speed-up x{r[:, 3].sum() / r[:, 1].sum():.1f}; "
          f"rate: adapdate file (container included) / compressai strings = {r[:, 4].sum() / r[:, 5].sum():.4f}; "
          f"PSNR adapdate - compressai = {r[:, 6].mean() - r[:, 7].mean():+.3f} dB over {len(r)} images")
    if old:
        o = np.array(old)
        print(f"old path: encode speed-up x{r[:, 2].sum() / o[:, 0].sum():.1f}, decode speed-up x{r[:, 3].sum() / o[:, 1].sum():.1f}; "
              f"new / old time: encode {r[:, 0].sum() / o[:, 0].sum():.3f}, decode {r[:, 1].sum() / o[:, 1].sum():.3f}")


@contextlib.contextmanager
def old_path():
    saved = inference.ANALYSIS_CHANNELS_LAST, inference.SYNTHESIS_CHANNELS_LAST, inference.REUSE_FREED_MEMORY
    inference.ANALYSIS_CHANNELS_LAST = inference.SYNTHESIS_CHANNELS_LAST = inference.REUSE_FREED_MEMORY = False
    try:
        yield
    finally:
        inference.ANALYSIS_CHANNELS_LAST, inference.SYNTHESIS_CHANNELS_LAST, inference.REUSE_FREED_MEMORY = saved


def max_diff(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(int) - b.astype(int)).max())


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(mse, 1e-12)))


if __name__ == "__main__":
    main()
