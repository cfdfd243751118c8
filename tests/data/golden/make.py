"""Add the golden files that are missing (run at every release that ships a model version or an update;
existing files are never replaced: they are what older releases wrote):

    .venv/bin/python tests/data/golden/make.py

A 96x64 crop of a val photo, coded:

* ``<name>-q<Q>-<fingerprint[:8]>.adpd``: format 1, by a model version of 0.1.0 (the header names the whole
  model). Only 0.1.0 wrote these; they are kept, never made again.
* ``<name>-q<Q>-decoder-<decoder[:8]>.adpd``: format 2 (the header names the decoder), by each shipped
  decoder's built-in encoder.
* ``<name>-q<Q>-decoder-<decoder[:8]>-encoder-<encoder[:8]>.adpd``: format 2, by the new encoder of each
  encoder update in models/updates/ (applied to a scratch store): a file that installations without the
  update must decode.

Beside each: `.png` (its decode) and `.y.npy` (its integer latents).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from adapdate_codec import codec, container, update
from adapdate_codec.imageio import Picture
from adapdate_codec.store import ModelStore

HERE = Path(__file__).parent
SOURCE = Path(__file__).resolve().parents[4] / "shared" / "data" / "val" / "wikipedia-photos_034.png"
UPDATES = Path(__file__).resolve().parents[3] / "models" / "updates"


def crop() -> np.ndarray:
    with Image.open(SOURCE) as im:
        return np.asarray(im.convert("RGB"))[300:364, 500:596].copy()


def write(stem: str, bundle, px: np.ndarray, data: bytes | None = None) -> None:
    """The file (coded here at effort 0 unless given), its decode and its integer latents."""
    data = codec.encode_picture(Picture(px, "RGB"), bundle) if data is None else data
    header, sections = container.unpack(data)
    lat = codec.decode_latents(sections, bundle, header.height, header.width)
    out = codec.decode_picture(data, lambda h: bundle)
    (HERE / f"{stem}.adpd").write_bytes(data)
    Image.fromarray(out.pixels).save(HERE / f"{stem}.png")
    np.save(HERE / f"{stem}.y.npy", lat.y_hat.numpy().astype(np.int16))
    print(stem, len(data), "bytes", file=sys.stderr)


def main() -> None:
    store = ModelStore()
    px = crop()
    for entry in store._builtins(archived=True):
        stem = f"{entry.name}-q{entry.quality}-decoder-{entry.decoder_fingerprint[:8]}"
        if not (HERE / f"{stem}.adpd").exists():
            bundle = store.by_fingerprint(type("H", (), {"model_name": entry.name, "quality": entry.quality,
                                                         "fingerprint": entry.fingerprint})())
            write(stem, bundle, px)
    for path in sorted(UPDATES.glob("*.nnc")):
        data = path.read_bytes()
        m = update.read_manifest(data)
        if m.scope != "encoder":
            continue
        stem = (f"{m.base_name}-q{m.base_quality}-decoder-{m.base_decoder_fingerprint[:8]}"
                f"-encoder-{m.patched_encoder_fingerprint[:8]}")
        if (HERE / f"{stem}.adpd").exists():
            continue
        with tempfile.TemporaryDirectory() as home:
            scratch = ModelStore(home=home)
            update.apply_update(data, scratch)
            write(stem, scratch.get(m.base_name, m.base_quality), px)


def effort_file(quality: int = 3, effort: int = 3) -> None:
    """A file made with the encoder's search (--effort): the same format, decoded by the same decoder; kept
    as `<stem>-e<effort>.adpd` (with its .png and .y.npy) beside the plain file of that model version."""
    store = ModelStore()
    bundle = store.get(quality=quality)
    stem = f"{bundle.name}-q{bundle.quality}-decoder-{bundle.decoder_fingerprint[:8]}-e{effort}"
    if (HERE / f"{stem}.adpd").exists():
        return
    data, res = codec.encode_picture_search(Picture(crop(), "RGB"), bundle, effort=effort)
    if res.chosen != "refined":
        raise SystemExit(f"effort {effort} kept the plain latents on this crop: not a file of the new kind")
    write(stem, bundle, crop(), data)


if __name__ == "__main__":
    main()
    effort_file()
