"""The model store: built-in models, installed versions, install / rollback, lookup by fingerprint.

Layout under ``home`` ($ADAPDATE_HOME, else $XDG_DATA_HOME/adapdate, else ~/.local/share/adapdate)::

    models/<name>/q<quality>/<fingerprint[:16]>.pt     a ModelBundle (torch.load(weights_only=True))
    models/<name>/q<quality>/<fingerprint[:16]>.json   its model card (listing never loads torch)
    models/<name>/q<quality>/manifest.json             version history + the active version
    models/<name>/q<quality>/.lock                     flock: one writer per name/quality

Built-in models ship in the ``adapdate_models`` package as compact files with cards (builtin.py) and
are version 0; they are unpacked into ``<home>/builtin/`` on first use.

A version is a whole model: one decoder and one encoder (bundle.py's decoder and encoder fingerprints,
kept in the manifest and the cards). Versions that share a decoder are that decoder's encoders: an
encoder update adds one, and files of format 2, which name a decoder, decode with any of them.

Versions are never deleted, so a file coded with an older version still decodes after an update or a
rollback. The manifest is the commit point: a bundle file is written first and the manifest last,
atomically, so a crash in between leaves an unreferenced file and a valid store (an exception or
Ctrl-C in between removes the new files again). Writers hold the slot's lock; the next writer removes
what a killed one left (temporary files, unreferenced bundles).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from adapdate_codec import builtin, zoo
from adapdate_codec.errors import ModelError, ModelNotInstalledError
from adapdate_codec.fileio import atomic_write

if TYPE_CHECKING:
    from adapdate_codec.bundle import ModelBundle

DEFAULT_NAME = "cheng2020-anchor"
DEFAULT_QUALITY = 3
BUILTIN_VERSION = 0
MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
HOME_ENV = "ADAPDATE_HOME"

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")  # a name becomes a folder: no separators
_BUNDLE_FILE = re.compile(r"^[0-9a-f]{16}\.(pt|json)$")  # <fingerprint[:16]>.pt and its card


@dataclass(frozen=True)
class ModelEntry:
    name: str
    quality: int
    version: int  # 0: built-in; installed versions count from 1
    fingerprint: str  # sha256 hex
    source: str
    path: Path
    active: bool
    builtin: bool
    installed_at: str | None = None
    parent_fingerprint: str | None = None
    update: dict | None = None
    # None only for versions installed by 0.1.0, whose cards lack them (computed when needed)
    decoder_fingerprint: str | None = None
    encoder_fingerprint: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


@dataclass
class Manifest:
    name: str
    quality: int
    active: int | None = None
    versions: list[dict] = field(default_factory=list)

    def to_json(self) -> bytes:
        d = {"format": MANIFEST_FORMAT, "name": self.name, "quality": self.quality,
             "active": self.active, "versions": self.versions}
        return (json.dumps(d, indent=2) + "\n").encode()

    def find(self, fingerprint: str) -> dict | None:
        return next((v for v in self.versions if v["fingerprint"] == fingerprint), None)


def default_home() -> Path:
    if os.environ.get(HOME_ENV):
        return Path(os.environ[HOME_ENV]).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share"
    return base / "adapdate"


def builtin_dir() -> Path | None:
    """The folder of the `adapdate_models` package, or None when it is not installed."""
    from importlib.resources import files

    try:
        return Path(str(files("adapdate_models")))
    except ModuleNotFoundError:
        return None


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise ModelError(f"invalid model name {name!r} (letters, digits, '.', '_' and '-' only)")
    return name


def check_quality(quality: int) -> int:
    if not isinstance(quality, int) or not 1 <= quality <= 99:
        raise ModelError(f"invalid quality {quality!r} (a number from 1 up)")
    return quality


def short(fingerprint: str) -> str:
    return f"{fingerprint[:8]}…"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from None


class ModelStore:
    def __init__(self, home: str | Path | None = None, builtin: str | Path | None = None):
        self.home = Path(home) if home is not None else default_home()
        self.builtin = Path(builtin) if builtin is not None else builtin_dir()
        self._cache: dict[Path, ModelBundle] = {}
        self._builtin_unpacker: builtin.Unpacker | None = None

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    def slot(self, name: str, quality: int) -> Path:
        return self.models_dir / check_name(name) / f"q{check_quality(quality)}"

    # -- reading (JSON only) -------------------------------------------------------------
    def _manifest(self, name: str, quality: int) -> Manifest:
        path = self.slot(name, quality) / MANIFEST
        if not path.exists():
            return Manifest(name, quality)
        d = _read_json(path)
        try:
            return Manifest(name, quality, d["active"], list(d["versions"]))
        except (KeyError, TypeError):
            raise ModelError(f"{path} is not a valid manifest") from None

    def _builtin_files(self) -> list[builtin.BuiltinFile]:
        return builtin.scan(self.builtin)

    def _unpacker(self) -> builtin.Unpacker:
        if self._builtin_unpacker is None:  # one per store: bases are decoded once for all their versions
            self._builtin_unpacker = builtin.Unpacker(self._builtin_files(), self.home / "builtin")
        return self._builtin_unpacker

    def _builtins(self, archived: bool = False) -> list[ModelEntry]:
        """The package's models (version 0): the current ones, and with archived=True earlier releases' too."""
        return [ModelEntry(name=f.name, quality=f.quality, version=BUILTIN_VERSION, fingerprint=f.fingerprint,
                           source=str(f.card.get("source", "built-in")), path=f.path, active=False, builtin=True,
                           decoder_fingerprint=_fp_or_none(f.card.get("decoder_fingerprint")),
                           encoder_fingerprint=_fp_or_none(f.card.get("encoder_fingerprint")))
                for f in self._builtin_files() if f.current or archived]

    def _slot_keys(self) -> set[tuple[str, int]]:
        keys = {(e.name, e.quality) for e in self._builtins()}
        if self.models_dir.is_dir():
            for manifest in self.models_dir.glob(f"*/q*/{MANIFEST}"):
                q = manifest.parent.name[1:]
                if q.isdigit() and _NAME.match(manifest.parent.parent.name):
                    keys.add((manifest.parent.parent.name, int(q)))
        return keys

    def history(self, name: str | None = None, quality: int | None = None) -> list[ModelEntry]:
        """Every version of name/quality, oldest first: the built-in one (if any), then installed ones."""
        name, quality = name or DEFAULT_NAME, quality or DEFAULT_QUALITY
        builtin = next((e for e in self._builtins() if (e.name, e.quality) == (name, quality)), None)
        m = self._manifest(name, quality)
        active = m.active if m.active is not None else (BUILTIN_VERSION if builtin else None)
        entries = []
        if builtin is not None:
            entries.append(dataclasses.replace(builtin, active=active == BUILTIN_VERSION))
        slot = self.slot(name, quality)
        for v in m.versions:
            path = slot / v["file"]
            dec, enc = v.get("decoder_fingerprint"), v.get("encoder_fingerprint")
            if dec is None or enc is None:  # installed by 0.1.0: maybe a later card says
                dec, enc = _card_identities(path.with_suffix(".json"))
            entries.append(ModelEntry(
                name=name, quality=quality, version=int(v["version"]), fingerprint=v["fingerprint"],
                source=v.get("source", ""), path=path, active=v["version"] == active,
                builtin=False, installed_at=v.get("installed_at"),
                parent_fingerprint=v.get("parent_fingerprint"), update=v.get("update"),
                decoder_fingerprint=_fp_or_none(dec), encoder_fingerprint=_fp_or_none(enc),
            ))
        return entries

    def list(self) -> list[ModelEntry]:
        return [e for key in sorted(self._slot_keys()) for e in self.history(*key)]

    def qualities(self, name: str | None = None) -> list[int]:
        name = name or DEFAULT_NAME
        return sorted(q for n, q in self._slot_keys() if n == name)

    def active(self, name: str | None = None, quality: int | None = None) -> ModelEntry:
        name, quality = name or DEFAULT_NAME, quality or DEFAULT_QUALITY
        entry = next((e for e in self.history(name, quality) if e.active), None)
        if entry is None:
            hint = (f"run `adapdate model install {name}:{quality}`" if name in zoo.SUPPORTED
                    else "see `adapdate model list`")
            raise ModelNotInstalledError(f"{name} q{quality} is not installed; {self._installed_summary()}; "
                                         + hint)
        return entry

    def _installed_summary(self) -> str:
        keys = sorted(self._slot_keys())
        if not keys:
            return "no models are installed"
        by_name: dict[str, list[int]] = {}
        for n, q in keys:
            by_name.setdefault(n, []).append(q)
        return "installed: " + ", ".join(f"{n} q{','.join(map(str, qs))}" for n, qs in by_name.items())

    def info(self, name: str | None = None, quality: int | None = None) -> dict[str, Any]:
        """The active version's card, size on disk and update history, from JSON only; its decoder, and the
        encoders installed for that decoder (the versions that share it)."""
        entry = self.active(name, quality)
        card_path = entry.path.with_suffix(".json")
        card = _read_json(card_path) if card_path.exists() else {}
        n = card.get("N")
        history = self.history(entry.name, entry.quality)
        encoders = [e.to_dict() for e in history
                    if e.decoder_fingerprint is not None and e.decoder_fingerprint == entry.decoder_fingerprint]
        return {
            **entry.to_dict(),
            "arch": card.get("arch"),
            "N": n,
            "M": card.get("M", n),  # cheng2020-anchor uses M = N
            "lmbda": card.get("lmbda", card.get("lambda")),
            "parameters": card.get("parameters"),
            "adapters": card.get("adapters"),
            "size_bytes": entry.path.stat().st_size if entry.path.exists() else None,
            "card": card,
            "encoders": encoders,
            "history": [e.to_dict() for e in history],
        }

    # -- loading bundles -----------------------------------------------------------------
    def get(self, name: str | None = None, quality: int | None = None) -> ModelBundle:
        """The active version of name/quality (installed versions take precedence over built-in)."""
        return self._load(self.active(name, quality))

    def decoder_of(self, entry: ModelEntry) -> str | None:
        """The decoder fingerprint of a version, computed from its model where its card does not say
        (installed by 0.1.0); None if its file cannot be loaded."""
        if entry.decoder_fingerprint is not None:
            return entry.decoder_fingerprint
        try:  # a missing or damaged file is a ModelError
            return self._load(entry).decoder_fingerprint
        except ModelError:
            return None

    def by_fingerprint(self, header: Any) -> ModelBundle:
        """A model a coded file can be decoded with; header has model_name, quality, fingerprint and
        fingerprint_kind: "model" (format 1: that exact version, active or not) or "decoder" (format 2: any
        version with that decoder, the active one first)."""
        fp = header.fingerprint.hex() if isinstance(header.fingerprint, bytes) else str(header.fingerprint)
        kind = getattr(header, "fingerprint_kind", "model")
        name, quality = header.model_name, header.quality
        candidates = self.history(name, quality) if _NAME.match(name) else []
        candidates.sort(key=lambda e: not e.active)  # stable: the active version, then the others in order
        # the same weights may also be installed under another name or quality, or archived
        everywhere = candidates + self.list() + self._builtins(archived=True)
        if kind == "model":
            entry = next((e for e in everywhere if e.fingerprint == fp), None)
            if entry is not None:
                return self._load(entry)
        else:
            first_error: ModelError | None = None
            for e in (e for e in everywhere if e.decoder_fingerprint == fp):
                try:  # any of the decoder's encoders will do: one whose file is damaged need not stop the rest
                    return self._load(e)
                except ModelError as err:
                    first_error = first_error or err
            if first_error is not None:
                raise first_error
            for e in everywhere:  # versions whose cards do not say (installed by 0.1.0): ask the model
                if e.decoder_fingerprint is None and self.decoder_of(e) == fp:
                    return self._load(e)
        what = "decoder" if kind == "decoder" else "version"
        raise ModelNotInstalledError(f"this file needs {name} q{quality} {what} {short(fp)} which is not "
                                     "installed; run `adapdate model list`")

    def identities(self, entry: ModelEntry) -> tuple[str, str]:
        """(decoder, encoder) fingerprints of a version: from its card, else from the model itself."""
        if entry.decoder_fingerprint and entry.encoder_fingerprint:
            return entry.decoder_fingerprint, entry.encoder_fingerprint
        b = self._load(entry)
        return b.decoder_fingerprint, b.encoder_fingerprint

    def _load(self, entry: ModelEntry) -> ModelBundle:
        if entry.path in self._cache:
            return self._cache[entry.path]
        from adapdate_codec.bundle import ModelBundle

        label = f"{entry.name} q{entry.quality} {_label(entry)}"
        if not entry.path.exists():
            raise ModelError(f"{label}: {entry.path} is missing; reinstall it with `adapdate model install`")
        try:
            if entry.builtin:
                bundle = self._unpacker().bundle(next(f for f in self._builtin_files() if f.path == entry.path))
            else:
                bundle = ModelBundle.load(entry.path)
        except ModelError:
            raise
        except Exception as e:  # torch raises many types on a damaged file; all mean "unusable"
            raise ModelError(f"{label}: cannot load {entry.path}: {_first_line(e)}") from None
        if bundle.fingerprint != entry.fingerprint:
            raise ModelError(f"{label}: {entry.path} is damaged (fingerprint {short(bundle.fingerprint)} "
                             f"instead of {short(entry.fingerprint)}); reinstall it")
        self._cache[entry.path] = bundle
        return bundle

    # -- writing -------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self, name: str, quality: int) -> Iterator[Path]:
        slot = self.slot(name, quality)
        try:
            slot.mkdir(parents=True, exist_ok=True)
            lock = open(slot / ".lock", "a")
        except OSError as e:
            raise ModelError(f"cannot write to the model store {self.home}: {e.strerror or e}") from None
        with lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                self._clean_slot(slot, name, quality)
                yield slot
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def _clean_slot(self, slot: Path, name: str, quality: int) -> None:
        """Remove what a writer killed half-way left behind (only writers holding the lock create files, so
        with it held nothing here is in use): temporary files, and bundles the manifest does not list
        (written, but the manifest, the commit point, was not)."""
        for tmp in slot.glob(".*.tmp"):
            with contextlib.suppress(OSError):
                tmp.unlink()
        try:
            listed = {v["file"] for v in self._manifest(name, quality).versions}
        except (ModelError, KeyError, TypeError):
            return  # an unreadable manifest: leave everything for a person to look at
        for path in slot.iterdir():
            if _BUNDLE_FILE.match(path.name) and path.with_suffix(".pt").name not in listed:
                with contextlib.suppress(OSError):
                    path.unlink()

    def install_bundle(self, bundle: ModelBundle, source: str, update: dict | None = None,
                       expect_active: str | None = None) -> ModelEntry:
        """Add `bundle` as a new version of its name/quality and make it active (no duplicates).

        expect_active: install only if this fingerprint is still the active version once the lock is
        held (a patch checks its base, then builds for a while: another writer may have moved on).
        """
        name, quality, fp = bundle.name, int(bundle.quality), bundle.fingerprint
        builtin = next((e for e in self._builtins() if (e.name, e.quality, e.fingerprint) == (name, quality, fp)),
                       None)
        with self._locked(name, quality) as slot:
            m = self._manifest(name, quality)
            current = next((e for e in self.history(name, quality) if e.active), None)
            # (the same bundle already active is fine too: two identical patches racing both succeed)
            if expect_active is not None and (current is None or current.fingerprint not in (expect_active, fp)):
                now = short(current.fingerprint) if current else "none"
                raise ModelError(f"{name} q{quality}: the active version changed meanwhile ({now}, expected "
                                 f"{short(expect_active)}); nothing installed")
            written: list[Path] = []  # files this call creates, removed again if it fails before the commit
            try:
                known = m.find(fp)
                if known is not None:
                    if not (slot / known["file"]).exists():
                        _write_bundle(bundle, slot / known["file"], source, written)
                    m.active = known["version"]
                elif builtin is not None:
                    m.active = BUILTIN_VERSION
                else:
                    version = max((v["version"] for v in m.versions), default=BUILTIN_VERSION) + 1
                    file = f"{fp[:16]}.pt"
                    _write_bundle(bundle, slot / file, source, written)  # bundle first, manifest last
                    record = {"version": version, "fingerprint": fp, "file": file, "source": source,
                              "installed_at": _now(), "parent_fingerprint": current.fingerprint if current else None,
                              "decoder_fingerprint": bundle.decoder_fingerprint,
                              "encoder_fingerprint": bundle.encoder_fingerprint}
                    if update is not None:
                        record["update"] = update
                    m.versions.append(record)
                    m.active = version
                atomic_write(slot / MANIFEST, m.to_json())
            except BaseException:
                # an error (or Ctrl-C) before the manifest is written leaves the store as it was
                for p in written:
                    with contextlib.suppress(OSError):
                        p.unlink()
                raise
            # ours, even if another install makes a newer version active right after the lock is released
            return next(e for e in self.history(name, quality) if e.fingerprint == fp)

    def rollback(self, name: str | None = None, quality: int | None = None, part: str = "version") -> ModelEntry:
        """Make an earlier version active again; nothing is deleted.

        part: "version", the version installed before the active one; "encoder", the latest earlier encoder of
        the active decoder (the decoder stays); "decoder", the latest earlier version with another decoder."""
        if part not in ROLLBACK_PARTS:
            raise ValueError(f"part must be one of {ROLLBACK_PARTS}, not {part!r}")
        name, quality = name or DEFAULT_NAME, quality or DEFAULT_QUALITY
        self.active(name, quality)  # ModelNotInstalledError when there is nothing at all
        with self._locked(name, quality) as slot:
            entries = self.history(name, quality)
            i = next((i for i, e in enumerate(entries) if e.active), 0)
            target = self._rollback_target(entries, i, part)
            if target is None:
                what = {"version": "earlier version", "encoder": "earlier encoder of its decoder",
                        "decoder": "earlier decoder"}[part]
                raise ModelError(f"{name} q{quality} ({_label(entries[i])}) has no {what}; nothing to roll back to")
            m = self._manifest(name, quality)
            m.active = target.version
            atomic_write(slot / MANIFEST, m.to_json())
            return dataclasses.replace(target, active=True)

    def _rollback_target(self, entries: list[ModelEntry], i: int, part: str) -> ModelEntry | None:
        if part == "version":
            return entries[i - 1] if i > 0 else None
        decoder, encoder = self.identities(entries[i])
        for e in reversed(entries[:i]):
            d, c = self.identities(e)
            if (part == "encoder" and d == decoder and c != encoder) or (part == "decoder" and d != decoder):
                return e
        return None

    def install(self, source: str, *, quality: int | None = None, name: str | None = None,
                progress: zoo.Progress | None = None) -> ModelEntry:
        """Install from a CompressAI zoo name (``cheng2020-anchor:3``), an http(s) URL or a local file."""
        if source.startswith(("http://", "https://")):
            return self._install_download(source, source, quality, name, progress)
        path = Path(source).expanduser()
        if path.exists():
            if not path.is_file():
                raise ModelError(f"{path} is not a file")
            bundle = _bundle_from_file(path, quality=quality, name=name, source=str(path.resolve()))
            return self.install_bundle(bundle, source=str(path.resolve()))
        parsed = zoo.parse_zoo_name(source)
        if parsed is None or parsed[0] not in zoo.SUPPORTED:
            raise ModelError(f"{source}: not a file, an http(s) URL or a CompressAI model name "
                             f"(e.g. {DEFAULT_NAME}:{DEFAULT_QUALITY})")
        zoo_name, zoo_quality = parsed
        q = zoo_quality or quality
        if q is None:
            raise ModelError(f"which quality of {zoo_name}? use {zoo_name}:Q or --quality Q")
        if zoo_quality is not None and quality is not None and quality != zoo_quality:
            raise ModelError(f"{source} is quality {zoo_quality}, not --quality {quality}")
        url = zoo.zoo_model(zoo_name, q).url
        return self._install_download(url, f"compressai:{zoo_name}:{q}", q, name, progress)

    def _install_download(self, url: str, source: str, quality: int | None, name: str | None,
                          progress: zoo.Progress | None) -> ModelEntry:
        try:
            self.home.mkdir(parents=True, exist_ok=True)
            _remove_dead_downloads(self.home)
            tmp = tempfile.TemporaryDirectory(prefix=_DOWNLOAD_PREFIX, dir=self.home)
            owner = open(Path(tmp.name) / ".lock", "a")
        except OSError as e:
            raise ModelError(f"cannot write to the model store {self.home}: {e.strerror or e}") from None
        with tmp as folder, owner:
            fcntl.flock(owner.fileno(), fcntl.LOCK_EX)  # alive: _remove_dead_downloads leaves this one alone
            path = Path(folder) / zoo.url_filename(url)
            zoo.download(url, path, progress)
            bundle = _bundle_from_file(path, quality=quality, name=name, source=url, hash_checked=True)
            return self.install_bundle(bundle, source=source)


ROLLBACK_PARTS = ("version", "encoder", "decoder")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def _fp_or_none(v: Any) -> str | None:
    return v if isinstance(v, str) and _HEX64.match(v) else None


def _card_identities(card_path: Path) -> tuple[str | None, str | None]:
    """The decoder and encoder fingerprints a version's card gives (cards written after 0.1.0 do)."""
    try:
        card = json.loads(card_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None, None
    if not isinstance(card, dict):
        return None, None
    return card.get("decoder_fingerprint"), card.get("encoder_fingerprint")


_DOWNLOAD_PREFIX = ".download-"
_DOWNLOAD_GRACE_S = 60  # a folder this recent may not hold its lock yet


def _remove_dead_downloads(home: Path) -> None:
    """Download folders whose process died (kill -9): nobody holds their lock. Downloads are not under a
    slot's lock (the model's name is known only afterwards), hence a lock of their own."""
    for folder in home.glob(f"{_DOWNLOAD_PREFIX}*"):
        try:
            if time.time() - folder.stat().st_mtime < _DOWNLOAD_GRACE_S:
                continue
            with open(folder / ".lock", "a") as lock:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                shutil.rmtree(folder, ignore_errors=True)
        except OSError:  # BlockingIOError: a live download
            continue


# -- reading model files (torch is imported here, lazily) -------------------------------------------
_TABLE_SUFFIXES = ("_quantized_cdf", "_offset", "_cdf_length")


def is_table_buffer(key: str) -> bool:
    """CompressAI's entropy-coder buffers, which the bundle's own tables replace."""
    return key.endswith(_TABLE_SUFFIXES) or key == "gaussian_conditional.scale_table"


def safe_torch_load(path: Path) -> Any:
    """torch.load that can never run code from the file; every failure becomes one ModelError line."""
    import pickle
    import warnings

    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # pickle-protocol chatter on old files
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" in str(e):
            raise ModelError(f"{path}: refusing to load it: it holds Python objects, not just tensors "
                             "(loading it could run code)") from None
        raise ModelError(f"{path} is not a model file ({_first_line(e)})") from None
    except OSError as e:
        raise ModelError(f"cannot read {path}: {e.strerror or e}") from None
    except Exception as e:  # a damaged or foreign file surfaces as many exception types from torch
        raise ModelError(f"{path} is not a model file ({type(e).__name__}: {_first_line(e)})") from None


def _is_checkpoint(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("format") == 1 and "config" in obj and "model" in obj


def _is_bundle(obj: Any) -> bool:
    return isinstance(obj, dict) and ("fingerprint" in obj or "format" in obj) and not _is_checkpoint(obj)


def _bundle_from_file(path: Path, *, quality: int | None, name: str | None, source: str,
                      hash_checked: bool = False) -> ModelBundle:
    from adapdate_codec import bundle as bundle_mod

    if not hash_checked and zoo.hash_prefix(path.name):
        zoo.check_hash(path.name, zoo.file_sha256(path))  # a manual download must match its name too
    obj = safe_torch_load(path)
    if _is_checkpoint(obj):
        return _from_checkpoint(obj, path, quality=quality, name=name, source=source)
    if _is_bundle(obj):
        try:
            b = bundle_mod.ModelBundle.load(path)
        except ModelError:
            raise
        except Exception as e:  # see safe_torch_load
            raise ModelError(f"{path}: not a valid adapdate model ({_first_line(e)})") from None
        if (quality is not None and quality != b.quality) or (name is not None and name != b.name):
            raise ModelError(f"{path} is {b.name} q{b.quality}; --name/--quality cannot change a model's identity")
        return b
    sd = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(sd, dict):
        raise ModelError(f"{path} is neither a CompressAI state dict, an adapdate model nor a training checkpoint")
    q = quality if quality is not None else zoo.quality_from_name(path.name)
    if q is None:
        raise ModelError(f"cannot tell the quality of {path.name}; pass --quality Q")
    from adapdate_codec.network import ARCHITECTURES, LAMBDAS

    if q not in LAMBDAS:
        raise ModelError(f"quality {q} has no λ; known qualities: {', '.join(map(str, sorted(LAMBDAS)))}")
    arch = ARCHITECTURES[0]
    sd = clean_state_dict(sd, path)
    N = infer_N(sd, path)
    check_state_dict(sd, arch, N, None, path)
    card = {"source": source, "original_file": path.name, "trained": "CompressAI (pretrained, MSE)"}
    return bundle_mod.build_bundle(name or arch, q, arch, N, LAMBDAS[q], sd, adapters=None, card=card)


def _from_checkpoint(ckpt: dict, path: Path, *, quality: int | None, name: str | None,
                     source: str) -> ModelBundle:
    from adapdate_codec import bundle as bundle_mod
    from adapdate_codec.adapters import AdapterConfig
    from adapdate_codec.network import LAMBDAS

    cfg = ckpt["config"]
    try:
        arch, N, q = str(cfg["arch"]), int(cfg["N"]), int(cfg["quality"])
        lmbda = float(cfg["lmbda"]) if cfg.get("lmbda") is not None else LAMBDAS[q]
        adapters = AdapterConfig.from_dict(cfg.get("adapters"))
    except (KeyError, TypeError, ValueError) as e:
        raise ModelError(f"{path}: training checkpoint has an invalid config ({_first_line(e)})") from None
    if quality is not None and quality != q:
        raise ModelError(f"{path} is a q{q} checkpoint, not --quality {quality}")
    if not isinstance(ckpt["model"], dict):
        raise ModelError(f"{path}: training checkpoint has no model weights")
    sd = clean_state_dict(ckpt["model"], path)
    check_state_dict(sd, arch, N, adapters, path)
    from adapdate_codec.train import with_fitted_quantiles

    sd, _ = with_fitted_quantiles(sd, arch, N, adapters)  # a short run leaves them far from the density
    trained = {k: ckpt.get(k) for k in ("step", "elapsed_s")}
    trained.update({k: cfg.get(k) for k in ("steps", "batch", "patch", "lr", "data", "train_entropy_bottleneck")})
    card = {"source": source, "original_file": path.name, "trained": trained}
    return bundle_mod.build_bundle(name or arch, q, arch, N, lmbda, sd, adapters=adapters, card=card)


def clean_state_dict(sd: dict, path: Path) -> dict:
    """CompressAI's legacy names → current ones, without the buffers our tables replace."""
    import torch
    from compressai.zoo.pretrained import load_pretrained

    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items()):
        raise ModelError(f"{path}: the state dict holds entries that are not named tensors")
    return {k: v for k, v in load_pretrained(sd).items() if not is_table_buffer(k)}


def infer_N(sd: dict, path: Path) -> int:
    w = sd.get("g_a.0.conv1.weight")
    if w is None or w.dim() != 4:
        raise ModelError(f"{path} is not a cheng2020-anchor model (no g_a.0.conv1.weight)")
    return int(w.shape[0])


def check_state_dict(sd: dict, arch: str, N: int, adapters: Any, path: Path) -> None:
    """Names and shapes must match the network exactly: a partial model must not install."""
    from adapdate_codec.network import build_model

    try:
        expected = {k: v.shape for k, v in build_model(arch, N, adapters).state_dict().items()
                    if not is_table_buffer(k)}
    except ValueError as e:
        raise ModelError(f"{path}: {e}") from None
    missing = sorted(expected.keys() - sd.keys())
    extra = sorted(sd.keys() - expected.keys())
    wrong = sorted(k for k in expected.keys() & sd.keys() if tuple(sd[k].shape) != tuple(expected[k]))
    problems = [f"{len(ks)} {what} (e.g. {ks[0]})" for what, ks in
                (("missing", missing), ("unexpected", extra), ("with the wrong shape", wrong)) if ks]
    if problems:
        raise ModelError(f"{path} does not fit {arch} N={N}: " + "; ".join(problems) + " weights")


def _write_bundle(bundle: ModelBundle, path: Path, source: str, written: list[Path] | None = None) -> None:
    """The bundle file, then its card beside it (so listing needs no torch).
    written: collects the files this call creates (not those it overwrites), for clean-up on failure."""
    card = path.with_suffix(".json")
    if written is not None:
        # recorded before writing: a failure half-way must still remove what was created
        written.extend(p for p in (path, card) if not p.exists())
    try:
        bundle.save(path)
    except OSError as e:
        raise ModelError(f"cannot write {path}: {e.strerror or e}") from None
    atomic_write(card, (json.dumps(card_of(bundle, source), indent=2) + "\n").encode())


def card_of(bundle: ModelBundle, source: str) -> dict[str, Any]:
    """The bundle's own description, plus where this copy came from."""
    card = dict(bundle.describe())
    card.setdefault("lmbda", card.get("lambda", bundle.lmbda))
    card.setdefault("source", source)
    return card


def _label(e: ModelEntry) -> str:
    return "built-in" if e.builtin else f"version {e.version}"


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


