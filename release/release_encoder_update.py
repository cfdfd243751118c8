"""Encoder updates for the shipped qualities: export, measure with `adapdate eval`, ship the ones that gain.

    .venv/bin/python release/release_encoder_update.py CKPT [CKPT ...] --out runs/enc [--qps -44 -41 -38 ...]
        [--max-bytes 1000000] [--base-from-cards] [--limit N] [--ship]

With --base-from-cards, the built-in curve's points come from the cards (what `adapdate eval` measured at
release) except those of the patched qualities, which are measured again in the same run.

Each CKPT is a training checkpoint of one quality whose g_a/h_a were trained with the decoder frozen:
`adapdate train encoder` writes one (it names its base), and a whole-model checkpoint from elsewhere
(release/continue_run.py's encoder jobs) is taken against the package's built-in model of its quality,
as `adapdate model export-update --encoder -q Q` does (its decoder side is not shipped; the manifest
records how far it was from the base's).

1. Export every CKPT at every QP (`export_update`, the code path of `model export-update`) against the
   built-in model of its quality, and keep the finest QP whose update is at most --max-bytes.
2. Apply the kept updates to a scratch store (`apply_update`, the code path of `model patch`) and run
   `adapdate eval` (real files: container, header and checksum included) on val and on Kodak, with the
   patched store, for the patched qualities; the unpatched curve is measured the same way in a store
   without updates (or taken from the built-in cards, whose figures `adapdate eval` made, with
   --base-from-cards).
3. BD-rate (bdrate.py: PCHIP, PSNR-RGB) of the curve with the updates against the built-in curve, on val
   and on Kodak; per quality, the patched point against the built-in curve at equal PSNR.
4. With --ship: the updates that lower the rate at equal PSNR on **val** go to models/updates/ with a card
   each (Kodak is for evaluation only: it chooses nothing), and measured.json beside them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "release"))

from adapdate_codec.bdrate import RDCurve, bd_psnr, bd_rate  # noqa: E402
from adapdate_codec.store import ModelStore  # noqa: E402
from adapdate_codec.update import apply_update, export_update, read_manifest  # noqa: E402
from release_update import rate_change_at_equal_psnr  # noqa: E402

NAME = "cheng2020-anchor"
SETS = ("val", "kodak")


def quality_of(path: str) -> int:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    return int(ckpt["config"]["quality"])


def export_all(ckpts: list[str], qps: list[int], max_bytes: int, out: Path) -> dict:
    """{quality: {"checkpoint", "bytes_at_qp", "qp", "file"}}: the finest QP within max_bytes is kept."""
    store = ModelStore(home=out / "home-plain")  # the package's models only
    report = {}
    for path in ckpts:
        q = quality_of(path)
        base = store.get(NAME, q)
        sizes, kept = {}, None
        for qp in sorted(qps):  # finest first
            u = export_update(path, store, qp=qp, encoder=True, base=base)
            data = u.to_bytes()
            sizes[str(qp)] = len(data)
            print(f"q{q} qp {qp}: {len(data):,} bytes", flush=True)
            if len(data) <= max_bytes:
                kept = (qp, data, u)
                break  # the finest that fits
        if kept is None:
            print(f"q{q}: no QP fits {max_bytes:,} bytes; not shipped", flush=True)
            continue
        qp, data, u = kept
        file = out / f"{NAME}-q{q}-encoder.nnc"
        file.write_bytes(data)
        report[q] = {"checkpoint": str(path), "bytes_at_qp": sizes, "qp": qp, "file": str(file),
                     "bytes": len(data), "base_fingerprint": base.fingerprint,
                     "decoder_fingerprint": base.decoder_fingerprint,
                     "patched_encoder_fingerprint": u.manifest.patched_encoder_fingerprint,
                     "training": u.manifest.training}
    return report


def run_eval(home: Path, folder: Path, qualities: list[int], out: Path, limit: int | None) -> dict[int, dict]:
    """`adapdate eval` with the store at `home`: {quality: {"bpp", "psnr"}} (means over the images)."""
    cmd = [sys.executable, "-m", "adapdate_codec", "eval", str(folder), "-c", "adapdate",
           "-q", "adapdate=" + ",".join(map(str, qualities)), "--json", str(out), "-f"]
    if limit:
        cmd += ["--limit", str(limit)]
    subprocess.run(cmd, check=True, env={**os.environ, "ADAPDATE_HOME": str(home)}, cwd=ROOT)
    doc = json.loads(out.read_text())
    res = next(c for c in doc["codecs"] if c["name"].startswith("adapdate"))
    settings = [int(v) for v in res["settings"]["values"]]
    return {q: {"bpp": b, "psnr": p} for q, b, p in zip(settings, res["results"]["bpp"], res["results"]["psnr-rgb"])}


def curve(points: dict[int, dict], name: str) -> RDCurve:
    qs = sorted(points)
    return RDCurve(name, tuple(points[q]["bpp"] for q in qs), tuple(points[q]["psnr"] for q in qs))


def measure(report: dict, out: Path, shared: Path, limit: int | None, base_from_cards: bool) -> dict:
    plain, patched = ModelStore(home=out / "home-plain"), ModelStore(home=out / "home-patched")
    qualities = sorted(plain.qualities(NAME))
    for q, r in sorted(report.items()):
        apply_update(Path(r["file"]).read_bytes(), patched, source=r["file"])
    result: dict = {"qualities": qualities, "patched": sorted(report), "sets": {}}
    for s in SETS:
        folder = shared / "data" / s
        if base_from_cards and not limit:
            base = {q: {"bpp": plain.get(NAME, q).card["measured"][s]["bpp"],
                        "psnr": plain.get(NAME, q).card["measured"][s]["psnr_rgb"]} for q in qualities}
            # the patched qualities' own points are measured now, as the patched ones are: a per-quality
            # gain is then one run's code and machine against another's of the same
            base.update(run_eval(plain.home, folder, sorted(report), out / f"eval-{s}-base.json", limit))
        else:
            base = run_eval(plain.home, folder, qualities, out / f"eval-{s}-base.json", limit)
        new = run_eval(patched.home, folder, sorted(report), out / f"eval-{s}-patched.json", limit)
        with_updates = {**base, **new}
        entry = {"base": base, "patched": new,
                 "bd_rate": bd_rate(curve(base, "built-in"), curve(with_updates, "encoder updates")),
                 "bd_psnr_db": bd_psnr(curve(base, "built-in"), curve(with_updates, "encoder updates")),
                 "per_quality": {}}
        for q in sorted(report):
            change, extrapolated = rate_change_at_equal_psnr(list(base.values()), new[q])
            entry["per_quality"][q] = {"d_bpp": new[q]["bpp"] / base[q]["bpp"] - 1,
                                       "d_psnr_db": new[q]["psnr"] - base[q]["psnr"],
                                       "rate_change_at_equal_psnr": change, "extrapolated": extrapolated}
        result["sets"][s] = entry
        print(s, json.dumps({k: v for k, v in entry.items() if k in ("bd_rate", "bd_psnr_db", "per_quality")}),
              flush=True)
    result["images"] = {s: limit or len([p for p in (shared / "data" / s).iterdir() if p.suffix == ".png"])
                        for s in SETS}
    result["base_from_cards"] = bool(base_from_cards and not limit)
    return result


def ship(report: dict, measured: dict, note: str) -> list[int]:
    """Updates that gain on val (rate at equal PSNR) go to models/updates/, each with its card."""
    dest = ROOT / "models" / "updates"
    dest.mkdir(parents=True, exist_ok=True)
    shipped = []
    for q, r in sorted(report.items()):
        val = measured["sets"]["val"]["per_quality"][q]
        if val["rate_change_at_equal_psnr"] is None or val["rate_change_at_equal_psnr"] >= 0:
            print(f"q{q}: no gain on val ({val}); not shipped", flush=True)
            continue
        data = Path(r["file"]).read_bytes()
        m = read_manifest(data)
        name = f"{NAME}-q{q}-encoder.nnc"
        (dest / name).write_bytes(data)
        card = {
            "update": name, "scope": "encoder (g_a, h_a); the decoder is unchanged",
            "base": {"name": NAME, "quality": q, "fingerprint": r["base_fingerprint"],
                     "decoder_fingerprint": r["decoder_fingerprint"]},
            "patched_fingerprint": m.patched_fingerprint,
            "patched_encoder_fingerprint": m.patched_encoder_fingerprint,
            "qp": r["qp"], "bytes": r["bytes"], "bytes_at_qp": r["bytes_at_qp"],
            "sha256": hashlib.sha256(data).hexdigest(),
            "training": {**r["training"], "note": note},
            "measured": {s: {"this_quality": measured["sets"][s]["per_quality"][q],
                             "built_in": measured["sets"][s]["base"][q],
                             "patched": measured["sets"][s]["patched"][q]} for s in SETS},
            "method": "release/release_encoder_update.py: `adapdate eval` (real files) with the update applied by "
                      "`model patch`'s code path, against the built-in model; shipped when it gains on val; "
                      "Kodak for evaluation only",
        }
        (dest / name).with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")
        shipped.append(q)
    return shipped


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--out", required=True)
    ap.add_argument("--qps", type=int, nargs="+", default=[-56, -52, -48, -44, -41, -38, -35, -32, -29, -26])
    ap.add_argument("--max-bytes", type=int, default=1_000_000)
    ap.add_argument("--shared", default=str(ROOT.parent / "shared"))
    ap.add_argument("--limit", type=int)
    ap.add_argument("--base-from-cards", action="store_true")
    ap.add_argument("--ship", action="store_true")
    ap.add_argument("--note", default="", help="How the encoders were trained (goes into the cards).")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = export_all(args.checkpoints, args.qps, args.max_bytes, out)
    measured = measure(report, out, Path(args.shared), args.limit, args.base_from_cards)
    measured["exports"] = report
    (out / "measured.json").write_text(json.dumps(measured, indent=1, default=str) + "\n")
    print(f"wrote {out / 'measured.json'}")
    if args.ship:
        if args.limit:
            raise SystemExit("--ship needs every image (no --limit)")
        shipped = ship(report, measured, args.note)
        summary = {"shipped": shipped, **{k: v for k, v in measured.items() if k != "exports"},
                   "exports": {q: {k: v for k, v in r.items() if k not in ("file", "checkpoint")}
                               for q, r in report.items()}}
        (ROOT / "models" / "updates" / "measured.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
        print(f"shipped q{shipped}")


if __name__ == "__main__":
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    main()
