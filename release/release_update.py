"""Ship adapter updates for the default q3 model and measure them with real files.

    .venv/bin/python release/release_update.py runs/gpu2/adapters-resblock.only.pt \
        runs/gpu2/adapters-all.only.pt [--qps -38 -50 -60] [--ship-qp -38] [--limit N]

Each input holds adapter weights trained on the shipped q3 (release/gpu_release_run.py). For each:
builds the adapters checkpoint against the shipped base (its fingerprint), exports it with
`export_update` at every QP, patches a scratch store with `apply_update` (the code path of
`adapdate model patch`), and codes Kodak (evaluation only) and val with the patched and unpatched models.
Reports the update size at every QP and, for the shipped QP, Δbpp and ΔPSNR at q3 and the rate change at equal PSNR: the patched q3 point
against the unpatched q1–q3 curve (PCHIP on log-rate, as in BD-rate; one patched point, so this is the
BD-rate of a single operating point). The update at --ship-qp goes to models/updates/.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy.interpolate import PchipInterpolator

from adapdate_codec.baselines import AdapdateCodec
from adapdate_codec.data import find_images
from adapdate_codec.evaluate import evaluate_image, load_rgb
from adapdate_codec.store import ModelStore
from adapdate_codec.train import save_checkpoint
from adapdate_codec.update import apply_update, export_update, update_summary

ROOT = Path(__file__).resolve().parents[1]
NAME = "cheng2020-anchor"


def measure(store: ModelStore, quality: int, images: list[Path]) -> dict:
    """Mean bpp / PSNR of the store's active model with `adapdate eval`'s own per-image harness."""
    codec = AdapdateCodec(NAME, store=store)
    t = time.monotonic()
    rows = [evaluate_image(load_rgb(p), p.name, codec, quality) for p in images]
    return {"bpp": float(np.mean([r.bpp for r in rows])), "psnr": float(np.mean([r.psnr for r in rows])),
            "seconds": round(time.monotonic() - t, 1)}


def rate_change_at_equal_psnr(curve: list[dict], point: dict) -> tuple[float | None, bool]:
    """Patched point's rate against the unpatched curve's rate at the same PSNR, and whether that needed
    extrapolation: beyond the curve's ends log-rate continues linearly along its last segment (a patched
    q3 usually lands a little above the unpatched q3)."""
    pts = sorted(curve, key=lambda r: r["psnr"])
    x, y = np.array([r["psnr"] for r in pts]), np.log([r["bpp"] for r in pts])
    if len(x) < 2 or np.any(np.diff(x) <= 0):
        return None, False
    p = point["psnr"]
    if x[0] <= p <= x[-1]:
        return float(point["bpp"] / np.exp(PchipInterpolator(x, y)(p)) - 1), False
    i = (0, 1) if p < x[0] else (-2, -1)
    log_rate = y[i[1]] + (p - x[i[1]]) * (y[i[1]] - y[i[0]]) / (x[i[1]] - x[i[0]])
    return float(point["bpp"] / np.exp(log_rate) - 1), True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("adapters", nargs="+")
    ap.add_argument("--qps", type=int, nargs="+", default=[-38, -50, -60])
    ap.add_argument("--ship-qp", type=int, default=-38, help="This QP's update is shipped and measured.")
    ap.add_argument("--unpatched-from-cards", action="store_true",
                    help="Take the unpatched figures from the shipped cards (same code path) instead of re-coding.")
    ap.add_argument("--shared", default=str(ROOT.parent / "shared"))
    ap.add_argument("--limit", type=int)
    ap.add_argument("--json", default=str(ROOT / "models" / "updates" / "measured.json"))
    ap.add_argument("--data-note", default="../shared/data/train (the base's data)")
    ap.add_argument("--cards-only", action="store_true", help="Only (re)write the cards from --json.")
    args = ap.parse_args()
    if args.cards_only:
        return write_cards(json.loads(Path(args.json).read_text()), args.ship_qp, Path(args.json).parent, args.data_note)
    sets = {s: find_images(Path(args.shared) / "data" / s)[: args.limit] for s in ("kodak", "val")}
    tmp = Path(tempfile.mkdtemp(prefix="adapdate-update-"))
    store = ModelStore(home=tmp / "home")
    base = {q: store.get(NAME, q) for q in (1, 2, 3)}
    report: dict = {"base_fingerprint": base[3].fingerprint, "unpatched": {}, "updates": {}}
    for s, images in sets.items():
        if args.unpatched_from_cards and not args.limit:
            report["unpatched"][s] = {f"q{q}": {"bpp": b.card["measured"][s]["bpp"], "psnr": b.card["measured"][s]["psnr_rgb"]}
                                      for q, b in base.items()}
        else:
            report["unpatched"][s] = {f"q{q}": measure(store, q, images) for q in base}
        print(s, "unpatched", report["unpatched"][s], flush=True)
    out_dir = ROOT / "models" / "updates"
    out_dir.mkdir(parents=True, exist_ok=True)
    for path in args.adapters:
        st = torch.load(path, map_location="cpu", weights_only=True)
        cfg = dict(st["config"])
        cfg["base"] = {"name": NAME, "quality": 3, "fingerprint": base[3].fingerprint}
        kind = cfg["adapters"]["type"]
        ckpt_path = tmp / f"{kind}.ckpt"
        save_checkpoint(ckpt_path, {"format": 1, "config": cfg, "step": st["step"], "elapsed_s": st["elapsed_s"],
                                    "model": {**base[3].state_dict, **st["model"]}})
        for qp in args.qps:
            u = export_update(ckpt_path, store, qp=qp)
            data = u.to_bytes()
            scratch = ModelStore(home=tmp / f"patch-{kind}{qp}")
            apply_update(data, scratch)  # verifies the base and the patched fingerprint
            entry = {"bytes": len(data), "summary": update_summary(u, data)}
            for s, images in sets.items() if qp == args.ship_qp else ():
                m = measure(scratch, 3, images)
                ref = report["unpatched"][s]["q3"]
                change, extrapolated = rate_change_at_equal_psnr(list(report["unpatched"][s].values()), m)
                m.update(d_bpp=m["bpp"] / ref["bpp"] - 1, d_psnr=m["psnr"] - ref["psnr"],
                         rate_change_at_equal_psnr=change, extrapolated=extrapolated)
                entry[s] = m
            report["updates"][f"{kind} qp{qp}"] = entry
            print(kind, qp, json.dumps({k: v for k, v in entry.items() if k != "summary"}), flush=True)
            if qp == args.ship_qp:
                (out_dir / f"{NAME}-q3-{kind}.nnc").write_bytes(data)
    report["images"] = {s: len(v) for s, v in sets.items()}
    report["training"] = {Path(p).name: training_of(torch.load(p, map_location="cpu", weights_only=True))
                          for p in args.adapters}
    Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.json}")
    write_cards(report, args.ship_qp, out_dir, args.data_note)


def training_of(st: dict) -> dict:
    cfg = st["config"]
    earlier = int(cfg.get("continued_from_steps", 0))
    return {"type": cfg["adapters"]["type"], "R": cfg["adapters"]["R"], "v": cfg["adapters"]["v"],
            "steps": earlier + int(st["step"]), "batch": cfg["batch"], "patch": cfg["patch"], "lr": cfg["lr"],
            "lambda": cfg["lmbda"] or 0.0067, "bf16_autocast": bool(cfg.get("bf16")),
            "train_entropy_bottleneck": bool(cfg.get("train_entropy_bottleneck"))}


def write_cards(report: dict, ship_qp: int, out_dir: Path, data_note: str) -> None:
    """One card (JSON) beside every shipped update: how it was trained and what it measured."""
    for name, training in report["training"].items():
        kind = training["type"]
        entry = report["updates"][f"{kind} qp{ship_qp}"]
        card = {
            "update": f"{NAME}-q3-{kind}.nnc", "base": {"name": NAME, "quality": 3,
                                                        "fingerprint": report["base_fingerprint"]},
            "qp": ship_qp, "bytes": entry["bytes"],
            "bytes_at_qp": {k.split("qp")[1]: v["bytes"] for k, v in report["updates"].items() if k.startswith(kind)},
            "training": {**training, "data": data_note,
                         "hardware": "one lent NVIDIA H200; base frozen, only the adapters trained"},
            "measured": {s: entry[s] for s in ("kodak", "val") if s in entry},
            "unpatched": report["unpatched"],
            "method": "release/release_update.py: real files through `model patch`'s code path; "
                      "Kodak for evaluation only",
        }
        (out_dir / f"{NAME}-q3-{kind}.json").write_text(json.dumps(card, indent=2) + "\n")


if __name__ == "__main__":
    main()
