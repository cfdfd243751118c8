"""Turn training checkpoints into the shipped default models, with measured model cards.

    .venv/bin/python release/release_models.py runs/q1.ckpt runs/q2.ckpt runs/q3.ckpt \
        [--val ../shared/data/val] [--kodak ../shared/data/kodak] [--note TEXT]

For each checkpoint: builds the bundle (float16 weights), measures the float16 cost on val, writes
models/cheng2020-anchor-q<Q>.pt + .json; then evaluates the shipped models with real files
(`adapdate eval`) on val and on Kodak (evaluation only) and records bpp / PSNR / MS-SSIM and BD-rates
against CompressAI's published BPG-444 and JPEG Kodak curves in every card.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from adapdate_codec.bdrate import CurveError, RDCurve, bd_psnr, bd_rate, load_reference
from adapdate_codec.bundle import ModelBundle, build_bundle
from adapdate_codec.data import load_eval_images
from adapdate_codec.network import LAMBDAS
from adapdate_codec.network import build_model
from adapdate_codec.train import evaluate, load_checkpoint, with_fitted_quantiles

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
NAME = "cheng2020-anchor"


def fp16_cost_db(ckpt: dict, bundle: ModelBundle, val: str) -> float:
    """PSNR (estimated from the network's reconstruction) lost by storing weights as float16."""
    cfg = ckpt["config"]
    full = build_model(cfg["arch"], cfg["N"])
    full.load_state_dict(ckpt["model"], strict=False)
    images = load_eval_images(val, 512)
    return evaluate(full, images, "cpu").psnr - evaluate(bundle.network(), images, "cpu").psnr


def run_eval(folder: str, out: Path) -> dict:
    env = dict(os.environ, ADAPDATE_HOME=tempfile.mkdtemp(prefix="adapdate-release-"))
    cmd = [sys.executable, "-m", "adapdate_codec", "eval", folder, "--codec", "adapdate", "--json", str(out), "-f"]
    subprocess.run(cmd, check=True, env=env)
    return json.loads(out.read_text())


def per_quality(doc: dict) -> dict[int, dict]:
    res = doc["codecs"][0]["results"]
    qualities = doc["codecs"][0]["settings"]["values"]
    out = {}
    for i, q in enumerate(qualities):
        out[int(q)] = {"bpp": res["bpp"][i], "psnr_rgb": res["psnr-rgb"][i], "ms_ssim": res["ms-ssim-rgb"][i],
                       "encode_s": res["encoding_time"][i], "decode_s": res["decoding_time"][i]}
    return out


def bd_figures(doc: dict, shared: Path) -> dict:
    res = doc["codecs"][0]["results"]
    curve = RDCurve("adapdate", tuple(res["bpp"]), tuple(res["psnr-rgb"]))
    figures = {}
    for label, file in (("bpg_444", "bpg_444_x265_ycbcr.json"), ("jpeg", "jpeg.json")):
        ref = load_reference(shared / "reference" / "kodak" / file, label)
        try:
            figures[f"bd_rate_vs_{label}"] = bd_rate(ref, curve)
            figures[f"bd_psnr_vs_{label}_db"] = bd_psnr(ref, curve)
        except CurveError as e:  # curves that do not overlap: recorded, not fatal
            figures[f"bd_rate_vs_{label}"] = f"not defined: {e}"
    return figures


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--shared", default=str(ROOT.parent / "shared"))
    ap.add_argument("--note", default="")
    ap.add_argument("--hardware", default=f"CPU only: {platform.processor() or platform.machine()}, "
                                          f"{os.cpu_count()} cores, fp32")
    ap.add_argument("--data-note", default="../shared/data/train (118 photos; JPEGs downscaled x2)")
    ap.add_argument("--placeholder", action="store_true", help="Mark the cards as placeholders.")
    args = ap.parse_args()
    shared = Path(args.shared)
    val, kodak = str(shared / "data" / "val"), str(shared / "data" / "kodak")
    bundles: dict[int, ModelBundle] = {}
    for path in args.checkpoints:
        ckpt = load_checkpoint(path)
        cfg = ckpt["config"]
        q = int(cfg["quality"])
        # quantiles of a short run lag behind the density: fitted, as `model install` of a checkpoint does
        ckpt["model"], aux = with_fitted_quantiles(ckpt["model"], cfg["arch"], cfg["N"])
        card = {
            "source": "trained by the adapdate project (adapdate train base)",
            "placeholder": args.placeholder,
            "note": args.note,
            "training": {
                "data": args.data_note, "steps": int(ckpt["step"]), "aux_loss_after_quantile_fit": round(aux, 3),
                "batch": cfg["batch"], "patch": cfg["patch"], "lambda": cfg["lmbda"] or LAMBDAS[q],
                "lr": cfg["lr"], "schedule": cfg["schedule"], "warmup": cfg["warmup"],
                "init": cfg.get("init_note", ""), "wall_time_s": round(float(ckpt["elapsed_s"])),
                "bf16_autocast": bool(cfg.get("bf16")), "hardware": args.hardware,
            },
            "storage": "float16 weights (GDN and entropy bottleneck in float32)",
        }
        bundle = build_bundle(NAME, q, cfg["arch"], cfg["N"], cfg["lmbda"] or LAMBDAS[q], ckpt["model"],
                              card=card, half=True)
        card["fp16_psnr_cost_db_val"] = round(fp16_cost_db(ckpt, bundle, val), 4)
        bundle.card = card
        bundle.save(MODELS / f"{NAME}-q{q}.pt", half=True)
        bundles[q] = bundle
        print(f"q{q}: {bundle.fingerprint[:16]} fp16 cost {card['fp16_psnr_cost_db_val']} dB", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        measured = {}
        for label, folder in (("val", val), ("kodak", kodak)):
            doc = run_eval(folder, Path(tmp) / f"{label}.json")
            measured[label] = (per_quality(doc), bd_figures(doc, shared) if label == "kodak" else {})
    for q, bundle in bundles.items():
        bundle.card["measured"] = {
            label: {**pq.get(q, {}), **({"curve_over_qualities": bd} if bd else {})}
            for label, (pq, bd) in measured.items()
        }
        bundle.card["measured"]["method"] = "adapdate eval (real files, container included); Kodak for evaluation only"
        bundle.save(MODELS / f"{NAME}-q{q}.pt", half=True)
    print(json.dumps({q: b.card["measured"] for q, b in bundles.items()}, indent=1))


if __name__ == "__main__":
    main()
