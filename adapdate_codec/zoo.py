"""CompressAI's pretrained weights: names → URLs, and downloads checked against the hash in the file name.

CompressAI (like torch.hub) names its files ``<model>-<quality>-<sha256 prefix>.pth.tar``; a download is
kept only if its sha256 starts with that prefix. No torch import here: the URL table comes from
``compressai.zoo.image``, which is imported only when a zoo name is resolved.
"""

from __future__ import annotations

import hashlib
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from adapdate_codec.errors import DownloadError, ModelError

# progress(bytes_done, bytes_total or None)
Progress = Callable[[int, "int | None"], None]

ZOO_URL_ENV = "ADAPDATE_ZOO_URL"  # replaces CompressAI's base URL (mirrors, tests)
ZOO_METRIC = "mse"
SUPPORTED = ("cheng2020-anchor",)
TIMEOUT_S = 30.0
CHUNK = 1 << 16

_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.pth(?:\.tar)?$")
_QUALITY_IN_NAME = re.compile(r"-(\d{1,2})-[0-9a-f]{8,64}\.pth(?:\.tar)?$")
_ZOO_NAME = re.compile(r"^([a-z][a-z0-9_-]*?)(?::(\d{1,2}))?$")


@dataclass(frozen=True)
class ZooModel:
    name: str
    quality: int
    url: str


def hash_prefix(filename: str) -> str | None:
    """The sha256 prefix embedded in a CompressAI-style file name, if there is one."""
    m = _HASH_IN_NAME.search(filename)
    return m.group(1) if m else None


def quality_from_name(filename: str) -> int | None:
    m = _QUALITY_IN_NAME.search(filename)
    return int(m.group(1)) if m else None


def parse_zoo_name(source: str) -> tuple[str, int | None] | None:
    """``cheng2020-anchor:3`` → ("cheng2020-anchor", 3); None if `source` does not look like a zoo name."""
    m = _ZOO_NAME.match(source)
    if not m:
        return None
    return m.group(1), (int(m.group(2)) if m.group(2) else None)


def zoo_model(name: str, quality: int) -> ZooModel:
    """Resolve a zoo name + quality to its URL (CompressAI's table; base URL overridable by env)."""
    if name not in SUPPORTED:
        raise ModelError(f"{name!r} is not a model adapdate can install; known: {', '.join(SUPPORTED)}")
    from compressai.zoo.image import model_urls  # imports torch: only when a zoo name is used

    urls = model_urls[name][ZOO_METRIC]
    if quality not in urls:
        raise ModelError(f"{name} has no quality {quality}; available: {', '.join(map(str, sorted(urls)))}")
    url = urls[quality]
    base = os.environ.get(ZOO_URL_ENV)
    if base:
        url = f"{base.rstrip('/')}/{url.rsplit('/', 1)[1]}"
    return ZooModel(name, quality, url)


def url_filename(url: str) -> str:
    return Path(urllib.parse.urlparse(url).path).name or "download"


def _advice(url: str) -> str:
    return (f"download the file elsewhere and run `adapdate model install path/to/{url_filename(url)}`")


def download(url: str, dest: Path, progress: Progress | None = None) -> str:
    """Fetch `url` into `dest`, returning its sha256 hex; refuse (and remove dest) on a hash mismatch."""
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response, open(dest, "wb") as out:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            done = 0
            while chunk := response.read(CHUNK):
                out.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(done, total)
        if total is not None and done != total:
            raise DownloadError(f"cannot download {url}: connection closed after {done} of {total} bytes; "
                                + _advice(url))
    except urllib.error.HTTPError as e:
        dest.unlink(missing_ok=True)
        raise DownloadError(f"cannot download {url}: HTTP {e.code} {e.reason}; {_advice(url)}") from None
    except urllib.error.URLError as e:
        dest.unlink(missing_ok=True)
        raise DownloadError(f"cannot download {url}: {_reason(e.reason)}; {_advice(url)}") from None
    except (OSError, ValueError) as e:  # reset connections, timeouts, malformed URLs
        dest.unlink(missing_ok=True)
        raise DownloadError(f"cannot download {url}: {_reason(e)}; {_advice(url)}") from None
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    sha = digest.hexdigest()
    try:
        check_hash(url_filename(url), sha)
    except ModelError:
        dest.unlink(missing_ok=True)
        raise
    return sha


def check_hash(filename: str, sha256_hex: str) -> None:
    """A file whose name carries a hash prefix must match it (a truncated or tampered file must not load)."""
    prefix = hash_prefix(filename)
    if prefix is not None and not sha256_hex.startswith(prefix):
        raise ModelError(f"{filename}: sha256 {sha256_hex[:16]}… does not match {prefix} in its name; "
                         "the file is damaged or not the published one, refusing to install it")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _reason(reason: object) -> str:
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return str(reason) or type(reason).__name__
