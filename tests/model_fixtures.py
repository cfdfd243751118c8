"""Shared helpers for the model-store tests: tiny (N=8) model files and a local HTTP server.

Everything here is small on purpose: the tests run beside long training jobs on a 2-core machine.
"""

from __future__ import annotations

import functools
from dataclasses import asdict
import hashlib
import http.server
import socket
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

from adapdate_codec.adapters import AdapterConfig
from adapdate_codec.network import build_model

TINY_N = 8
ADAPTERS = {"type": "resblock", "R": 2, "v": 3}


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


def make_checkpoint(base, path: Path, *, adapters: dict = ADAPTERS, seed: int = 1, bottleneck: bool = False,
                    quantiles: bool = True, touch_base: bool = False) -> dict:
    """An adapters checkpoint as `adapdate train adapters` writes it, trained on `base`."""
    from adapdate_codec.train import TrainConfig

    cfg = TrainConfig(data="unused", out=str(path), quality=base.quality, N=base.N, lmbda=base.lmbda,
                      adapters=dict(adapters), train_entropy_bottleneck=bottleneck, steps=2,
                      base={"name": base.name, "quality": base.quality, "fingerprint": base.fingerprint})
    torch.manual_seed(seed)
    net = build_model(base.arch, base.N)
    net.load_state_dict(base.state_dict, strict=False)
    net.add_adapters(AdapterConfig.from_dict(adapters))
    with torch.no_grad():
        for block in net.residual_blocks(adapters["type"]):
            block.adapter[2].weight.normal_(0.0, 0.05)  # a trained adapter: last conv no longer zero
            block.adapter[2].bias.normal_(0.0, 0.01)
        net.context_prediction.weight.mul_(net.context_prediction.mask)  # what every training forward does
        if quantiles:  # the auxiliary loss moves them in every run
            net.entropy_bottleneck.quantiles.add_(0.25)
        if bottleneck:
            net.entropy_bottleneck.biases[0].add_(0.1)
        if touch_base:
            net.g_a[0].conv1.weight.add_(0.01)
    ckpt = {"format": 1, "config": asdict(cfg), "step": 2, "elapsed_s": 1.0, "model": net.state_dict()}
    torch.save(ckpt, path)
    return ckpt


def make_encoder_checkpoint(base, path: Path, *, mode: str = "whole", seed: int = 1, scale: float = 0.05,
                            gain: float = 1.0, touch_decoder: bool = False, adapters: dict = ADAPTERS) -> dict:
    """An encoder checkpoint as `adapdate train encoder` writes it: g_a/h_a changed (mode "whole") or new
    adapters in g_a (mode "adapters"), the decoder side exactly the base's (unless touch_decoder). gain
    scales g_a's last conv: a random tiny encoder's latents all round to 0, a trained one's do not."""
    from adapdate_codec.bundle import is_encoder_key
    from adapdate_codec.train import TrainConfig

    enc_adapters = dict(adapters, side="encoder") if mode == "adapters" else None
    cfg = TrainConfig(data="unused", out=str(path), quality=base.quality, N=base.N, lmbda=base.lmbda,
                      adapters=enc_adapters, encoder=mode, steps=2,
                      base={"name": base.name, "quality": base.quality, "fingerprint": base.fingerprint})
    torch.manual_seed(seed)
    net = build_model(base.arch, base.N)
    net.load_state_dict(base.state_dict, strict=False)
    if enc_adapters:
        net.add_adapters(AdapterConfig.from_dict(enc_adapters))
    with torch.no_grad():
        for name, p in net.named_parameters():
            if mode == "whole" and is_encoder_key(name) and p.dim() > 1:
                p.add_(torch.randn_like(p) * scale * p.abs().mean())  # a trained encoder: every weight moved
        if enc_adapters:
            for block in net.residual_blocks(adapters["type"], "encoder"):
                block.adapter[2].weight.normal_(0.0, scale)
        if mode == "whole":
            net.g_a[6].weight.mul_(gain)
        if touch_decoder:
            net.g_s[0].conv1.weight.add_(0.01)
    ckpt = {"format": 1, "config": asdict(cfg), "step": 2, "elapsed_s": 1.0, "model": net.state_dict()}
    torch.save(ckpt, path)
    return ckpt
