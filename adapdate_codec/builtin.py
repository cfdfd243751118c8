"""Built-in models: compact files shipped in the ``adapdate_models`` package, unpacked on first use.

The package holds, per model version, ``<name>-q<Q>.adpm`` (compact.py) and its card
``<name>-q<Q>.json`` (name, quality, fingerprint, measurements), so that listing never decodes
anything. The current version of each model sits at the top of the package; versions shipped by
earlier releases stay in ``archive/`` (usually as small differences to a newer version), so that every
file coded by any release still decodes. A card beside a ``.pt`` bundle instead of a compact file is
a built-in too (tests use that).

A compact file is decoded once, checked against its fingerprint and kept in the store's cache
(``<home>/builtin/<fingerprint[:16]>.pt``); a damaged cache file is simply unpacked again.

Every version's decoder and encoder fingerprints (bundle.py) are known without decoding it: from its
card, or for versions whose cards predate them, from ``identities.json`` (whole fingerprint -> decoder and
encoder fingerprints, computed from the decoded weights by ``release/identities.py``; the golden tests
check them).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapdate_codec.errors import ModelError, OutputError

if TYPE_CHECKING:
    from adapdate_codec.bundle import ModelBundle
    from adapdate_codec.compact import CompactFile

log = logging.getLogger("adapdate")

ARCHIVE = "archive"
COMPACT_SUFFIX = ".adpm"
IDENTITIES = "identities.json"


@dataclass(frozen=True)
class BuiltinFile:
    name: str
    quality: int
    fingerprint: str
    path: Path  # the compact file (or a .pt bundle)
    card: dict
    current: bool  # False: an earlier release's version, kept in archive/

    @property
    def compact(self) -> bool:
        return self.path.suffix == COMPACT_SUFFIX


def _read_card(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from None


def scan(folder: Path | None) -> list[BuiltinFile]:
    """Every built-in model version in the package folder: current ones first, then archived ones."""
    if folder is None or not folder.is_dir():
        return []
    identities = _read_card(folder / IDENTITIES) if (folder / IDENTITIES).exists() else {}
    out = []
    for sub, current in ((folder, True), (folder / ARCHIVE, False)):
        for card_path in sorted(sub.glob("*.json")) if sub.is_dir() else []:
            weights = next((p for p in (card_path.with_suffix(COMPACT_SUFFIX), card_path.with_suffix(".pt"))
                            if p.exists()), None)
            if weights is None:
                continue  # a card without weights (e.g. an update's description) is not a model
            card = _read_card(card_path)
            try:
                known = identities.get(str(card["fingerprint"])) if isinstance(identities, dict) else None
                if isinstance(known, dict):
                    card = {**known, **card}
                out.append(BuiltinFile(str(card["name"]), int(card["quality"]), str(card["fingerprint"]),
                                       weights, card, current))
            except (KeyError, TypeError, ValueError):
                raise ModelError(f"built-in model card {card_path} lacks name/quality/fingerprint") from None
    return out


class Unpacker:
    """Decodes built-in compact files (and the versions they are differences to) into bundles."""

    def __init__(self, files: list[BuiltinFile], cache_dir: Path):
        self.by_fingerprint = {f.fingerprint: f for f in files}
        self.cache_dir = cache_dir
        self._decoded: dict[str, CompactFile] = {}

    def bundle(self, f: BuiltinFile) -> ModelBundle:
        from adapdate_codec.bundle import ModelBundle

        if not f.compact:
            return ModelBundle.load(f.path)
        cached = self.cache_dir / f"{f.fingerprint[:16]}.pt"
        if cached.exists():
            try:
                b = ModelBundle.load(cached)
                if b.fingerprint == f.fingerprint:
                    return b
            except ModelError:
                pass  # a damaged cache is rebuilt from the package
        log.info("unpacking the built-in model %s q%d (first use)", f.name, f.quality)
        b = self.compact(f.fingerprint).bundle(str(f.path))
        if b.fingerprint != f.fingerprint:  # from_dict checked the file's own claim; this checks the card's
            raise ModelError(f"{f.path} does not hold the model its card names ({f.fingerprint[:8]}…)")
        try:
            b.save(cached, half=False)
        except (OutputError, OSError) as e:  # a read-only home: the model still works, only slower next time
            log.info("cannot keep the unpacked model in %s (%s)", self.cache_dir, e)
        return b

    def compact(self, fingerprint: str) -> CompactFile:
        from adapdate_codec import compact

        if fingerprint not in self._decoded:
            f = self.by_fingerprint.get(fingerprint)
            if f is None or not f.compact:
                raise ModelError(f"the built-in model {fingerprint[:8]}… that another one is stored against "
                                 "is missing from the package; reinstall adapdate")
            try:
                data = f.path.read_bytes()
            except OSError as e:
                raise ModelError(f"cannot read {f.path}: {e.strerror or e}") from None
            self._decoded[fingerprint] = compact.decode(data, self.compact, str(f.path))
        return self._decoded[fingerprint]
