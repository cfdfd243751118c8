"""Record the decoder and encoder fingerprints of every shipped model version in models/identities.json.

    .venv/bin/python release/identities.py

A file of format 2 names a decoder (adapdate_codec/bundle.py); the store finds the built-in version that has
it from the cards' JSON, without decoding any model. Cards written since the decoder identity existed carry
both fingerprints; for the versions whose cards predate it (0.1.0's), this index does. Each entry is
computed from the decoded weights (the exact shipped model) and checked by tests/test_golden.py. Existing
entries are kept; run it at every release that ships a model version.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from adapdate_codec import builtin
from adapdate_codec.fileio import atomic_write

MODELS = Path(__file__).resolve().parents[1] / "models"


def main() -> None:
    path = MODELS / builtin.IDENTITIES
    known = json.loads(path.read_text()) if path.exists() else {}
    files = builtin.scan(MODELS)
    with tempfile.TemporaryDirectory() as tmp:
        unpacker = builtin.Unpacker(files, Path(tmp))
        for f in files:
            if f.fingerprint in known:
                continue
            b = unpacker.bundle(f)
            known[f.fingerprint] = {"name": f.name, "quality": f.quality,
                                    "decoder_fingerprint": b.decoder_fingerprint,
                                    "encoder_fingerprint": b.encoder_fingerprint}
            print(f"{f.name} q{f.quality} {f.fingerprint[:12]}: decoder {b.decoder_fingerprint[:12]}, "
                  f"encoder {b.encoder_fingerprint[:12]}", flush=True)
    atomic_write(path, (json.dumps(dict(sorted(known.items())), indent=2) + "\n").encode())


if __name__ == "__main__":
    main()
