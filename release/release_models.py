"""Turn training checkpoints into the shipped (compact) default models, with measured model cards.

    .venv/bin/python release/release_models.py runs/h200-1130/q{1,2,3,4,5,6}.ckpt --root 3 \
        [--shared ../shared] [--note TEXT] [--skip-eval]

1. Each checkpoint becomes a float model (quantiles fitted, as `model install` does).
2. The root quality gets grids from its Fisher information on training crops (release/compaction.py)
   and is stored whole; every other quality is snapped to the root's grids and stored as its
   difference to the root (adapdate_codec/compact.py). Written: models/cheng2020-anchor-q<Q>.adpm + .json.
3. The cost of the grids is measured against the float weights (estimated rate and PSNR, same images)
   on val and on Kodak (evaluation only).
4. The compact models are measured with real files (`adapdate eval`) on val and Kodak, together with
   Pillow's JPEG 4:2:0 on the same images; BD-rates against CompressAI's published BPG-444 and JPEG
   curves and against the models shipped before (their cards) go into every card.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "release"))

from compaction import DEFAULT_C, DEFAULT_CAP, fisher, fisher_grids, quantization_cost  # noqa: E402

from adapdate_codec import compact  # noqa: E402
from adapdate_codec.bdrate import CurveError, RDCurve, bd_psnr, bd_rate, load_reference  # noqa: E402
from adapdate_codec.bundle import ModelBundle, build_bundle  # noqa: E402
from adapdate_codec.data import load_eval_images  # noqa: E402
from adapdate_codec.network import LAMBDAS  # noqa: E402
from adapdate_codec.train import load_checkpoint, with_fitted_quantiles  # noqa: E402

MODELS = ROOT / "models"
NAME = "cheng2020-anchor"


def float_model(path: str, card_extra: dict) -> ModelBundle:
    ckpt = load_checkpoint(path)
    cfg = ckpt["config"]
    q = int(cfg["quality"])
    sd, aux = with_fitted_quantiles(ckpt["model"], cfg["arch"], cfg["N"])
    card = {
        "source": "trained by the adapdate project (adapdate train base)",
        "training": {
            "steps": int(ckpt["step"]), "aux_loss_after_quantile_fit": round(aux, 3), "batch": cfg["batch"],
            "patch": cfg["patch"], "lambda": cfg["lmbda"] or LAMBDAS[q], "lr": cfg["lr"],
            "schedule": cfg["schedule"], "warmup": cfg["warmup"], "wall_time_s": round(float(ckpt["elapsed_s"])),
            "bf16_autocast": bool(cfg.get("bf16")), **card_extra,
        },
    }
    return build_bundle(NAME, q, cfg["arch"], cfg["N"], cfg["lmbda"] or LAMBDAS[q], sd, card=card)


def run_eval(folder: str, out: Path, codecs: list[str]) -> dict:
    env = dict(os.environ, ADAPDATE_HOME=str(out.parent / "home"))
    cmd = [sys.executable, "-m", "adapdate_codec", "eval", folder, "--json", str(out), "-f"]
    for c in codecs:
        cmd += ["--codec", c]
    subprocess.run(cmd, check=True, env=env)
    return json.loads(out.read_text())


def curve_of(doc: dict, name: str) -> tuple[list[float], dict]:
    c = next(c for c in doc["codecs"] if c["name"] == name)
    return c["settings"]["values"], c["results"]


def per_quality(doc: dict) -> dict[int, dict]:
    qualities, res = curve_of(doc, "adapdate")
    return {int(q): {"bpp": res["bpp"][i], "psnr_rgb": res["psnr-rgb"][i], "ms_ssim": res["ms-ssim-rgb"][i],
                     "encode_s": res["encoding_time"][i], "decode_s": res["decoding_time"][i]}
            for i, q in enumerate(qualities)}


def jpeg_psnr_at(doc: dict, bpp: float) -> float | None:
    """Pillow JPEG 4:2:0's PSNR at `bpp`, interpolated in log-rate along its measured sweep."""
    import numpy as np

    _, res = curve_of(doc, "jpeg")
    pts = sorted(zip(res["bpp"], res["psnr-rgb"]))
    xs, ys = np.log([p[0] for p in pts]), [p[1] for p in pts]
    if not xs[0] <= np.log(bpp) <= xs[-1]:
        return None
    return float(np.interp(np.log(bpp), xs, ys))


def bd_figures(doc: dict, shared: Path, previous: RDCurve | None, qualities: set[int]) -> dict:
    """BD-rates of the curve of `qualities` (the shipped ones) against published curves and the previous models."""
    settings, res = curve_of(doc, "adapdate")
    keep = [i for i, q in enumerate(settings) if int(q) in qualities]
    curve = RDCurve("adapdate", tuple(res["bpp"][i] for i in keep), tuple(res["psnr-rgb"][i] for i in keep))
    refs = [(label, load_reference(shared / "reference" / "kodak" / file, label))
            for label, file in (("bpg_444", "bpg_444_x265_ycbcr.json"), ("jpeg", "jpeg.json"))]
    if previous is not None:
        refs.append(("previous_models", previous))
    figures = {}
    for label, ref in refs:
        try:
            figures[f"bd_rate_vs_{label}"] = bd_rate(ref, curve)
            figures[f"bd_psnr_vs_{label}_db"] = bd_psnr(ref, curve)
        except CurveError as e:  # curves that do not overlap: recorded, not fatal
            figures[f"bd_rate_vs_{label}"] = f"not defined: {e}"
    return figures


def previous_curve(rev: str = "HEAD") -> RDCurve | None:
    """The Kodak curve of the models shipped before, from their cards (models/*.json at git `rev`)."""
    pts = []
    for q in range(1, 7):
        r = subprocess.run(["git", "show", f"{rev}:models/{NAME}-q{q}.json"], cwd=ROOT, capture_output=True, text=True)
        if r.returncode == 0:
            k = json.loads(r.stdout)["measured"]["kodak"]
            pts.append((k["bpp"], k["psnr_rgb"]))
    return RDCurve("previous", *map(tuple, zip(*sorted(pts)))) if len(pts) >= 2 else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoints", nargs="*")
    ap.add_argument("--root", type=int, default=3, help="Quality stored whole; the others are differences to it.")
    ap.add_argument("--shared", default=str(ROOT.parent / "shared"))
    ap.add_argument("--C", type=float, default=DEFAULT_C)
    ap.add_argument("--cap", type=float, default=DEFAULT_CAP)
    ap.add_argument("--note", default="")
    ap.add_argument("--hardware", default="")
    ap.add_argument("--data-note", default="../shared/data/train (118 photos; JPEGs downscaled x2)")
    ap.add_argument("--skip-eval", action="store_true", help="Only build the compact files and their cost.")
    ap.add_argument("--measure-only", action="store_true", help="Only measure the models in models/ (real files).")
    ap.add_argument("--reuse", action="store_true", help="With --measure-only: reuse runs/release-eval-*.json.")
    ap.add_argument("--previous-rev", default="HEAD", help="git revision whose cards are the models before")
    args = ap.parse_args()
    shared = Path(args.shared)
    if args.measure_only:
        measure(shared, previous_curve(args.previous_rev), args.reuse)
        return
    val, kodak = str(shared / "data" / "val"), str(shared / "data" / "kodak")
    previous = previous_curve(args.previous_rev)
    extra = {"data": args.data_note, "hardware": args.hardware, "note": args.note}
    floats = {b.quality: b for b in (float_model(p, extra) for p in args.checkpoints)}
    root = floats[args.root]
    F = fisher(root, str(shared / "data" / "train"))
    grids = fisher_grids(root, F, args.C, args.cap)
    shipped: dict[int, ModelBundle] = {}
    root_card = dict(root.card)
    shipped[args.root], data = compact.compact_bundle(root, grids, card=root_card)
    files = {args.root: data}
    print(f"q{args.root}: compact, {len(data):,} B", flush=True)
    root_file = compact.decode(data)
    for q, b in sorted(floats.items()):
        if q != args.root:
            shipped[q], files[q] = compact.compact_bundle(b, grids, base=root_file)
        print(f"q{q}: compact, {len(files[q]):,} B", flush=True)
    write(shipped, files)  # usable now; the cards get their figures below
    # the cost of the grids: val (at most 512 px a side, to keep it quick) and all of Kodak
    images = {"val": load_eval_images(val, 512), "kodak": load_eval_images(kodak)}
    for q, b in sorted(shipped.items()):
        b.card["storage"] = {
            "format": f"adapdate compact model, format {compact.FORMAT} (adapdate_codec/compact.py)",
            "bytes": len(files[q]),
            "stored_as": "whole" if q == args.root else f"difference to q{args.root} ({shipped[args.root].fingerprint[:16]})",
            "grids": f"Fisher allocation, C {args.C:g}, cap {args.cap:g} x RMS (release/compaction.py), "
                     f"from q{args.root}",
            "float_fingerprint": floats[q].fingerprint,
            "quantization_cost": {k: quantization_cost(floats[q], b, im).to_dict() for k, im in images.items()},
        }
        cost = b.card["storage"]["quantization_cost"]
        print(f"q{q}: {len(files[q]):,} B, {b.fingerprint[:16]}, cost val {cost['val']['psnr_change_db']:+.4f} dB "
              f"{100 * cost['val']['bpp_change']:+.3f} %, kodak {cost['kodak']['psnr_change_db']:+.4f} dB "
              f"{100 * cost['kodak']['bpp_change']:+.3f} %", flush=True)
    write(shipped, files)
    if not args.skip_eval:
        measure(shared, previous)


def measure(shared: Path, previous: RDCurve | None, reuse: bool = False) -> None:
    """Real files on val and Kodak for the models in models/, JPEG 4:2:0 beside them; into their cards.
    reuse: take the measurements saved in runs/ by an earlier run (e.g. after dropping a model)."""
    val, kodak = str(shared / "data" / "val"), str(shared / "data" / "kodak")
    shipped = {int(json.loads(p.with_suffix(".json").read_text())["quality"]) for p in MODELS.glob(f"{NAME}-q*.adpm")}
    with tempfile.TemporaryDirectory() as tmp:
        measured = {}
        for label, folder in (("val", val), ("kodak", kodak)):
            saved = ROOT / "runs" / f"release-eval-{label}.json"
            if reuse and saved.exists():
                doc = json.loads(saved.read_text())
            else:
                doc = run_eval(folder, Path(tmp) / f"{label}.json", ["adapdate", "jpeg"])
                saved.parent.mkdir(exist_ok=True)
                saved.write_text(json.dumps(doc, indent=1))
            bd = bd_figures(doc, shared, previous, shipped) if label == "kodak" else {}
            measured[label] = (doc, per_quality(doc), bd)
    for path in sorted(MODELS.glob(f"{NAME}-q*.adpm")):
        card = json.loads(path.with_suffix(".json").read_text())
        q = int(card["quality"])
        m_all = {}
        for label, (doc, pq, bd) in measured.items():
            m = dict(pq.get(q, {}))
            jp = jpeg_psnr_at(doc, m["bpp"]) if m else None
            m["jpeg420_psnr_at_this_rate"] = jp
            m["beats_jpeg420"] = None if jp is None else m["psnr_rgb"] >= jp
            if bd:
                m["curve_over_qualities"] = bd
            m_all[label] = m
        m_all["method"] = ("adapdate eval (real files, container included) with Pillow JPEG 4:2:0 on the same "
                           "images; Kodak for evaluation only")
        m_all["platform"] = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
        card["measured"] = m_all
        from adapdate_codec import compact as compact_mod
        from adapdate_codec.fileio import atomic_write

        data = path.read_bytes()
        inner = compact_mod.read_header(data)[0]["card"]
        inner["measured"] = m_all
        atomic_write(path, compact_mod.with_card(data, inner))
        atomic_write(path.with_suffix(".json"), (json.dumps(card, indent=2) + "\n").encode())
        print(f"q{q}:", json.dumps(m_all), flush=True)


def write(shipped: dict[int, ModelBundle], files: dict[int, bytes]) -> None:
    from adapdate_codec.fileio import atomic_write
    from adapdate_codec.store import card_of

    for old in MODELS.glob(f"{NAME}-q*.pt"):
        old.unlink()
    for q, b in shipped.items():
        atomic_write(MODELS / f"{NAME}-q{q}.adpm", compact.with_card(files[q], b.card))
        atomic_write(MODELS / f"{NAME}-q{q}.json", (json.dumps(card_of(b, "built-in"), indent=2) + "\n").encode())


if __name__ == "__main__":
    main()
