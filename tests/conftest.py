"""Shared fixtures: a tiny random-init model (N=8) as a bundle and installed in a throwaway store.

Tiny networks keep the suite fast on 2 cores; the coding path (fixed point, tables, wavefront,
container) is the same code that runs the N=128 models.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

SHARED = Path(__file__).resolve().parents[1].parent / "shared"

# Tests share 2 cores with each other and with background work: one thread each is faster overall.
torch.set_num_threads(1)


def make_tiny_bundle(name: str = "tiny", quality: int = 3, seed: int = 0):
    from adapdate_codec.bundle import build_bundle
    from adapdate_codec.network import build_model

    torch.manual_seed(seed)
    net = build_model("cheng2020-anchor", 8)
    return build_bundle(name, quality, "cheng2020-anchor", 8, 0.0067, net.state_dict(),
                        card={"note": "random-init test model"})


@pytest.fixture(scope="session")
def tiny_bundle():
    return make_tiny_bundle()


@pytest.fixture(scope="session")
def tiny_store(tiny_bundle, tmp_path_factory) -> Path:
    """An ADAPDATE_HOME folder with the tiny model installed as `tiny` q3 (do not modify it)."""
    from adapdate_codec.store import ModelStore

    home = tmp_path_factory.mktemp("adapdate_home")
    ModelStore(home).install_bundle(tiny_bundle, source="tests")
    return home


@pytest.fixture
def fresh_store(tiny_bundle, tmp_path) -> Path:
    """Like tiny_store, but a new folder per test (for tests that change the store)."""
    from adapdate_codec.store import ModelStore

    ModelStore(tmp_path / "home").install_bundle(tiny_bundle, source="tests")
    return tmp_path / "home"


@pytest.fixture
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip("../shared is not available")
    return SHARED


@pytest.fixture
def api_home(tiny_store, monkeypatch) -> Path:
    """tiny_store as the store of the Python API (ADAPDATE_HOME), with the API's model cache emptied."""
    from adapdate_codec import api

    monkeypatch.setenv("ADAPDATE_HOME", str(tiny_store))
    api.clear_model_cache()
    return tiny_store
