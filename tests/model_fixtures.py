"""Shared helpers for the model-store tests: tiny (N=8) model files and a local HTTP server.

Everything here is small on purpose: the tests run beside long training jobs on a 2-core machine.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import socket
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

from adapdate_codec.network import build_model

TINY_N = 8


@functools.lru_cache(maxsize=None)
def _base_state(N: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {k: v.detach().clone() for k, v in build_model("cheng2020-anchor", N).state_dict().items()}


def tiny_state_dict(variant: int = 0, N: int = TINY_N) -> dict[str, torch.Tensor]:
    """A CompressAI-style state dict (with CompressAI's entropy-coder buffers); `variant` changes the weights."""
    sd = {k: v.clone() for k, v in _base_state(N).items()}
    sd["g_s.7.0.bias"] += 0.01 * variant  # a different fingerprint per variant
    return sd


def legacy_names(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Old CompressAI names: entropy-bottleneck ParameterLists and DataParallel's `module.` prefix."""
    out = {}
    for k, v in sd.items():
        for old, new in (("_bias", "_biases."), ("_matrix", "_matrices."), ("_factor", "_factors.")):
            if k.startswith(f"entropy_bottleneck.{old}") and k[-1].isdigit():
                k = f"entropy_bottleneck.{new}{k[-1]}"
        out[f"module.{k}"] = v
    return out


def save_zoo_file(folder: Path, sd: dict, quality: int = 3, wrong_hash: bool = False) -> Path:
    """Save `sd` as CompressAI names its files: cheng2020-anchor-<q>-<sha256[:8]>.pth.tar."""
    tmp = folder / "tmp.pth.tar"
    torch.save(sd, tmp)
    sha = hashlib.sha256(tmp.read_bytes()).hexdigest()[:8]
    if wrong_hash:
        sha = f"{(int(sha, 16) + 1) % (1 << 32):08x}"
    path = folder / f"cheng2020-anchor-{quality}-{sha}.pth.tar"
    tmp.rename(path)
    return path


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # keep test output clean
        return None


@contextmanager
def http_server(folder: Path) -> Iterator[str]:
    """Serve `folder` on 127.0.0.1 (a free port) in a thread; yields the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
