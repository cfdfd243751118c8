"""--effort: BD-rate against effort 0 and seconds per image, per level, in one run.

    .venv/bin/python benchmarks/effort.py --images ../shared/data/val --levels 0,1,3,5 [--crop 256]
        [--limit N] [--qualities 1,2,3,4,5] [--device cuda --batch 12] [--json out.json] [--threads N]

For each quality and level, every image is coded as `adapdate encode -e LEVEL` codes it (the search, then the
cheaper of the plain and refined latents by real bits and real decoded pixels), and decoded with the real
decoder; the RD curve of a level is the mean bpp and mean PSNR over the images at each quality, and its
BD-rate / BD-PSNR is against level 0's curve of the same run. Seconds: the search and the choice per image
(batched searches divide their time among the batch's images), and the whole encode (analysis + plain
coding + search) per image and per megapixel. Output is deterministic for a given input, level, thread count
and machine.

Tune on ../shared/data/val (crops are quick on a CPU); report on Kodak (evaluation only).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def load_images(folder: str, limit: int | None, crop: int | None) -> list[tuple[str, np.ndarray]]:
    paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"))
    out = []
    for p in paths[:limit]:
        a = np.asarray(Image.open(p).convert("RGB"))
        if crop:
            h, w = a.shape[:2]
            t, l = max(0, (h - crop) // 2), max(0, (w - crop) // 2)
            a = np.ascontiguousarray(a[t : t + crop, l : l + crop])
        out.append((p.name, a))
    return out


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * np.log10(255.0**2 / max(mse, 1e-12))


def run(args) -> dict:
    import torch

    from adapdate_codec import codec
    from adapdate_codec.bdrate import RDCurve, bd_psnr, bd_rate
    from adapdate_codec.search.refine import search_batch, search_latents
    from adapdate_codec.store import ModelStore

    if args.threads:
        torch.set_num_threads(args.threads)
    images = load_images(args.images, args.limit, args.crop)
    levels = [int(v) for v in args.levels.split(",")]
    qualities = [int(v) for v in args.qualities.split(",")]
    store = ModelStore(builtin=Path(__file__).resolve().parents[1] / "models") if args.shipped else ModelStore()
    groups: dict[tuple, list[int]] = {}
    for i, (_, a) in enumerate(images):
        groups.setdefault(a.shape, []).append(i)
    rows: list[dict] = []
    report = {"images": args.images, "n_images": len(images), "crop": args.crop, "device": args.device,
              "threads": torch.get_num_threads(), "levels": levels, "qualities": qualities, "rows": rows,
              "started": time.strftime("%Y-%m-%d %H:%M:%S"),
              "schedules": {lv: vars(L) for lv, L in __import__("adapdate_codec.search.levels",
                                                                   fromlist=["LEVELS"]).LEVELS.items()}}
    if args.device.startswith("cuda"):
        report["device_name"] = torch.cuda.get_device_name()
    bundles = {q: store.get(quality=q) for q in qualities}
    if args.warmup:  # the first search on a device pays for its start-up (CUDA context, kernels chosen)
        search_latents(images[0][1], bundles[qualities[0]], 1, device=args.device)
    deadline = time.monotonic() + args.max_seconds if args.max_seconds else None
    # levels outer: each level is done at every quality before the next (a run cut short still has curves)
    for lv in levels:
        for q in qualities:
            bundle = bundles[q]
            if deadline is not None and time.monotonic() > deadline:
                report["stopped"] = f"--max-seconds {args.max_seconds} reached before level {lv}, q{q}"
                break
            for shape, idx in groups.items():
                for b0 in range(0, len(idx), args.batch):
                    chunk = idx[b0 : b0 + args.batch]
                    t0 = time.perf_counter()
                    if len(chunk) == 1 or lv == 0:
                        results = [search_latents(images[i][1], bundle, lv, device=args.device) for i in chunk]
                    else:
                        results = search_batch([images[i][1] for i in chunk], bundle, lv, device=args.device)
                    total = (time.perf_counter() - t0) / len(chunk)
                    for i, r in zip(chunk, results):
                        name, a = images[i]
                        h, w = a.shape[:2]
                        decoded = codec.synthesize(r.latents.y_hat.float(), bundle, h, w, args.device)
                        rows.append({"image": name, "quality": q, "level": lv, "bytes": sum(map(len, r.sections)),
                                     "bpp": 8 * sum(map(len, r.sections)) / (h * w), "psnr": psnr(a, decoded),
                                     "chosen": r.chosen, "search_s": r.seconds, "encode_s": total,
                                     "megapixels": h * w / 1e6, "batch": len(chunk)})
                print(f"q{q} level {lv}: {summary_line(rows, q, lv)}", flush=True)
                report["summary"] = summarize(rows, levels, qualities, RDCurve, bd_rate, bd_psnr)
                if args.json:
                    save(args.json, args.key, report)
        if "stopped" in report:
            break
    report["summary"] = summarize(rows, levels, qualities, RDCurve, bd_rate, bd_psnr)
    report["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    if args.json:
        save(args.json, args.key, report)
    return report


def apply_lr_scale(spec: str | None) -> dict[int, float]:
    """--lr-scale "1=2,5=0.5": this run's levels with their Adam step sizes scaled (tuning only)."""
    import dataclasses

    from adapdate_codec.search import levels as L

    scales = {int(k): float(v) for k, v in (item.split("=") for item in (spec or "").split(",") if item)}
    for lv, m in scales.items():
        L.LEVELS[lv] = dataclasses.replace(L.LEVELS[lv], lr=L.LEVELS[lv].lr * m)
    return scales


def tune(args) -> dict:
    """For each level and each step-size multiplier: the mean real RD cost J (bits/pixel + λ·255²·MSE, at
    each model's λ, after the choice between plain and refined) over the images and qualities. The best
    multiplier per level is printed as an --lr-scale argument. Run it on val, never on Kodak."""
    import dataclasses

    import torch

    from adapdate_codec.search import levels as L
    from adapdate_codec.search.refine import search_batch
    from adapdate_codec.store import ModelStore

    if args.threads:
        torch.set_num_threads(args.threads)
    images = [a for _, a in load_images(args.images, args.limit, args.crop)]
    store = ModelStore(builtin=Path(__file__).resolve().parents[1] / "models") if args.shipped else ModelStore()
    bundles = {q: store.get(quality=int(q)) for q in args.qualities.split(",")}
    base = dict(L.LEVELS)
    mults = [float(m) for m in args.tune.split(",")]
    table: dict[str, dict[str, float]] = {}
    best: dict[int, float] = {}
    deadline = time.monotonic() + args.max_seconds if args.max_seconds else None
    for lv in (int(v) for v in args.levels.split(",") if int(v) > 0):
        table[str(lv)] = {}
        for m in mults:
            if deadline is not None and time.monotonic() > deadline:
                break
            L.LEVELS[lv] = dataclasses.replace(base[lv], lr=base[lv].lr * m)
            costs = []
            for b in bundles.values():
                for r in search_batch(images, b, lv, device=args.device):
                    costs.append(min(r.plain_cost, r.refined_cost if r.refined_cost is not None else r.plain_cost)
                                 / r.plain_cost)
            table[str(lv)][str(m)] = float(np.mean(costs))
            print(f"level {lv} lr x{m}: J / J(plain) = {np.mean(costs):.4f}", flush=True)
        L.LEVELS[lv] = base[lv]
        if table[str(lv)]:
            best[lv] = float(min(table[str(lv)], key=table[str(lv)].get))
    spec = ",".join(f"{lv}={m:g}" for lv, m in best.items())
    report = {"images": args.images, "crop": args.crop, "qualities": args.qualities, "J_over_plain": table,
              "best": spec}
    print(f"--lr-scale {spec}", flush=True)
    if args.json:
        save(args.json, args.key, report)
    return report


def save(path: str, key: str | None, report: dict) -> None:
    """Atomically; with key, as that entry of the JSON object already there (several runs, one file)."""
    data = report
    if key:
        data = json.loads(Path(path).read_text()) if Path(path).exists() else {}
        data[key] = report
    tmp = f"{path}.tmp"
    Path(tmp).write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def summary_line(rows: list[dict], q: int, lv: int) -> str:
    rs = [r for r in rows if r["quality"] == q and r["level"] == lv]
    return (f"{np.mean([r['bpp'] for r in rs]):.4f} bpp, {np.mean([r['psnr'] for r in rs]):.2f} dB, "
            f"search {np.mean([r['search_s'] for r in rs]):.2f} s/image, refined kept "
            f"{sum(r['chosen'] == 'refined' for r in rs)}/{len(rs)}")


def summarize(rows, levels, qualities, RDCurve, bd_rate, bd_psnr) -> dict:
    def curve(lv: int):
        pts = [[r for r in rows if r["level"] == lv and r["quality"] == q] for q in qualities]
        pts = [p for p in pts if p]
        return RDCurve(f"effort {lv}", tuple(float(np.mean([r["bpp"] for r in p])) for p in pts),
                       tuple(float(np.mean([r["psnr"] for r in p])) for p in pts))

    out = {}
    anchor = curve(0) if 0 in levels else None
    for lv in levels:
        rs = [r for r in rows if r["level"] == lv]
        if not rs:
            continue
        c = curve(lv)
        entry = {"bpp": c.bpp, "psnr": c.psnr,
                 "search_s_per_image": float(np.mean([r["search_s"] for r in rs])),
                 "encode_s_per_image": float(np.mean([r["encode_s"] for r in rs])),
                 "encode_s_per_mp": float(np.sum([r["encode_s"] for r in rs]) / np.sum([r["megapixels"] for r in rs])),
                 "refined_kept": f"{sum(r['chosen'] == 'refined' for r in rs)}/{len(rs)}"}
        if anchor is not None and lv != 0 and len(c.bpp) == len(anchor.bpp) and len(c.bpp) >= 2:
            try:
                entry["bd_rate"] = bd_rate(anchor, c)
                entry["bd_psnr"] = bd_psnr(anchor, c)
            except Exception as e:  # noqa: BLE001 (a curve too short or crossing: said, not fatal)
                entry["bd_error"] = str(e)
        out[str(lv)] = entry
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "val"))
    ap.add_argument("--levels", default="0,1,3,5")
    ap.add_argument("--qualities", default="1,2,3,4,5")
    ap.add_argument("--limit", type=int)
    ap.add_argument("--crop", type=int, help="Centre crops of this side (quick tuning runs).")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=1, help="Images of one size searched together (GPU).")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--shipped", action="store_true", help="The tree's models/ (the device has no store).")
    ap.add_argument("--json")
    ap.add_argument("--key", help="Write the report as this entry of --json's object (several runs, one file).")
    ap.add_argument("--warmup", action="store_true", help="One untimed search first (GPU start-up).")
    ap.add_argument("--max-seconds", type=float, help="Start no new level/quality after this long.")
    ap.add_argument("--lr-scale", metavar="L=M,...", help="Scale these levels' step sizes (tuning runs).")
    ap.add_argument("--tune", metavar="M,...", help="Tune: try these step-size multipliers for each level.")
    args = ap.parse_args()
    if args.tune:
        tune(args)
        return
    scales = apply_lr_scale(args.lr_scale)
    report = run(args)
    print(f"{'level':>5} {'BD-rate':>8} {'BD-PSNR':>8} {'search s/img':>12} {'encode s/img':>12} {'s/MP':>7} kept")
    for lv, e in report["summary"].items():
        bd = f"{100 * e['bd_rate']:+.1f} %" if "bd_rate" in e else "-"
        bp = f"{e['bd_psnr']:+.2f}" if "bd_psnr" in e else "-"
        print(f"{lv:>5} {bd:>8} {bp:>8} {e['search_s_per_image']:>12.2f} {e['encode_s_per_image']:>12.2f} "
              f"{e['encode_s_per_mp']:>7.2f} {e['refined_kept']}")


if __name__ == "__main__":
    main()
