"""Add the golden files of the shipped models that have none yet (run at every release that ships a
new model version; existing files are never replaced: they are what older releases wrote):

    .venv/bin/python tests/data/golden/make.py

For each built-in model version: `<name>-q<Q>-<fingerprint[:8]>.adpd` (a 96x64 crop of a val photo,
coded with that version), `.png` (its decode) and `.y.npy` (its integer latents).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

from adapdate_codec import codec, container
from adapdate_codec.imageio import Picture
from adapdate_codec.store import ModelStore

HERE = Path(__file__).parent
SOURCE = Path(__file__).resolve().parents[4] / "shared" / "data" / "val" / "wikipedia-photos_034.png"


def crop() -> np.ndarray:
    with Image.open(SOURCE) as im:
        return np.asarray(im.convert("RGB"))[300:364, 500:596].copy()


def main() -> None:
    store = ModelStore()
    px = crop()
    for entry in store._builtins(archived=True):
        stem = f"{entry.name}-q{entry.quality}-{entry.fingerprint[:8]}"
        if (HERE / f"{stem}.adpd").exists():
            continue
        bundle = store.by_fingerprint(type("H", (), {"model_name": entry.name, "quality": entry.quality,
                                                     "fingerprint": entry.fingerprint})())
        data = codec.encode_picture(Picture(px, "RGB"), bundle)
        header, sections = container.unpack(data)
        lat = codec.decode_latents(sections, bundle, header.height, header.width)
        out = codec.decode_picture(data, lambda h: bundle)
        (HERE / f"{stem}.adpd").write_bytes(data)
        Image.fromarray(out.pixels).save(HERE / f"{stem}.png")
        np.save(HERE / f"{stem}.y.npy", lat.y_hat.numpy().astype(np.int16))
        print(stem, len(data), "bytes", file=sys.stderr)


def effort_file(quality: int = 3, effort: int = 3) -> None:
    """A file made with the encoder's search (--effort): the same format, decoded by the same decoder; kept
    as `<stem>-e<effort>.adpd` (with its .png and .y.npy) beside the plain file of that model version."""
    store = ModelStore()
    bundle = store.get(quality=quality)
    stem = f"{bundle.name}-q{bundle.quality}-{bundle.fingerprint[:8]}-e{effort}"
    if (HERE / f"{stem}.adpd").exists():
        return
    data, res = codec.encode_picture_search(Picture(crop(), "RGB"), bundle, effort=effort)
    if res.chosen != "refined":
        raise SystemExit(f"effort {effort} kept the plain latents on this crop: not a file of the new kind")
    header, sections = container.unpack(data)
    lat = codec.decode_latents(sections, bundle, header.height, header.width)
    out = codec.decode_picture(data, lambda h: bundle)
    (HERE / f"{stem}.adpd").write_bytes(data)
    Image.fromarray(out.pixels).save(HERE / f"{stem}.png")
    np.save(HERE / f"{stem}.y.npy", lat.y_hat.numpy().astype(np.int16))
    print(stem, len(data), "bytes", file=sys.stderr)


if __name__ == "__main__":
    main()
    effort_file()
