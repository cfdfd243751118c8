"""The model store: install (zoo name, URL, local files), safety, versions, rollback, concurrency."""

from __future__ import annotations

import json
import multiprocessing
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from adapdate_codec import store as store_mod
from adapdate_codec.errors import DownloadError, ModelError, ModelNotInstalledError
from adapdate_codec.store import ModelStore, default_home

from model_fixtures import (
    TINY_N,
    closed_port,
    http_server,
    legacy_names,
    save_zoo_file,
    tiny_state_dict,
)


@pytest.fixture
def bundle_api():
    from adapdate_codec import bundle

    return bundle


@pytest.fixture
def store(tmp_path) -> ModelStore:
    return ModelStore(home=tmp_path / "home", builtin=tmp_path / "no-builtins")


def make_bundle(api, variant: int = 0, quality: int = 3, name: str = "cheng2020-anchor"):
    sd = {k: v for k, v in tiny_state_dict(variant).items() if not store_mod.is_table_buffer(k)}
    return api.build_bundle(name, quality, "cheng2020-anchor", TINY_N, 0.0067, sd, card={"source": "test"})


@dataclass
class FakeHeader:
    model_name: str
    quality: int
    fingerprint: bytes


def manifest(store: ModelStore, name="cheng2020-anchor", quality=3) -> dict:
    return json.loads((store.slot(name, quality) / "manifest.json").read_text())


# -- home ---------------------------------------------------------------------------------------------
def test_home_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("ADAPDATE_HOME", str(tmp_path / "a"))
    assert default_home() == tmp_path / "a"
    monkeypatch.delenv("ADAPDATE_HOME")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_home() == tmp_path / "xdg" / "adapdate"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "h"))
    assert default_home() == tmp_path / "h" / ".local" / "share" / "adapdate"


# -- downloads ------------------------------------------------------------------------------------------
def test_install_from_url_checks_hash_and_installs(store, tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    f = save_zoo_file(served, tiny_state_dict())
    seen: list[tuple[int, int | None]] = []
    with http_server(served) as base:
        entry = store.install(f"{base}/{f.name}", progress=lambda d, t: seen.append((d, t)))
    assert (entry.name, entry.quality, entry.version, entry.active) == ("cheng2020-anchor", 3, 1, True)
    assert seen and seen[-1] == (f.stat().st_size, f.stat().st_size)
    b = store.get()
    assert b.fingerprint == entry.fingerprint and b.N == TINY_N and b.lmbda == pytest.approx(0.0067)
    assert not any(k.endswith("_quantized_cdf") for k in b.state_dict)
    card = json.loads(entry.path.with_suffix(".json").read_text())
    assert card["fingerprint"] == entry.fingerprint and card["N"] == TINY_N and card["parameters"] > 0
    assert not list(store.home.glob(".download-*"))  # the temporary download is gone


def test_install_zoo_name_uses_compressai_table(store, tmp_path, monkeypatch):
    from compressai.zoo import image

    served = tmp_path / "served"
    served.mkdir()
    f = save_zoo_file(served, tiny_state_dict(), quality=2)
    real = image.model_urls["cheng2020-anchor"]["mse"][2]
    monkeypatch.setitem(image.model_urls["cheng2020-anchor"]["mse"], 2, real.rsplit("/", 1)[0] + "/" + f.name)
    with http_server(served) as base:
        monkeypatch.setenv("ADAPDATE_ZOO_URL", base)
        entry = store.install("cheng2020-anchor:2")
    assert entry.quality == 2 and entry.source == "compressai:cheng2020-anchor:2"
    assert store.get(quality=2).lmbda == pytest.approx(0.0035)


def test_wrong_hash_is_refused_and_nothing_installed(store, tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    f = save_zoo_file(served, tiny_state_dict(), wrong_hash=True)
    with http_server(served) as base, pytest.raises(ModelError, match="does not match"):
        store.install(f"{base}/{f.name}")
    assert store.list() == []
    assert not list(store.home.rglob("*.pt")) and not list(store.home.rglob("*.pth.tar"))


def test_offline_gives_one_line_download_error(store):
    url = f"http://127.0.0.1:{closed_port()}/cheng2020-anchor-3-e49be189.pth.tar"
    with pytest.raises(DownloadError) as e:
        store.install(url)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"cannot download {url}: ")
    assert "adapdate model install path/to/cheng2020-anchor-3-e49be189.pth.tar" in msg
    assert store.list() == []


def test_http_404_is_a_download_error(store, tmp_path):
    with http_server(tmp_path) as base, pytest.raises(DownloadError, match="HTTP 404"):
        store.install(f"{base}/cheng2020-anchor-3-e49be189.pth.tar")


# -- local files ----------------------------------------------------------------------------------------
def test_install_local_legacy_state_dict_with_quality_option(store, tmp_path):
    path = tmp_path / "weights.pth.tar"
    torch.save({"state_dict": legacy_names(tiny_state_dict())}, path)
    with pytest.raises(ModelError, match="--quality"):
        store.install(str(path))
    entry = store.install(str(path), quality=4, name="mine")
    assert (entry.name, entry.quality) == ("mine", 4)
    assert store.get("mine", 4).lmbda == pytest.approx(0.0130)
    assert store.qualities("mine") == [4]


def test_local_zoo_file_hash_checked(store, tmp_path):
    bad = save_zoo_file(tmp_path, tiny_state_dict(), wrong_hash=True)
    with pytest.raises(ModelError, match="does not match"):
        store.install(str(bad))
    good = save_zoo_file(tmp_path, tiny_state_dict(1))
    assert store.install(str(good)).quality == 3


def test_malicious_pickle_is_refused_without_running(store, tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    path = tmp_path / "evil.pth.tar"
    torch.save({"g_a.0.conv1.weight": Evil()}, path)
    with pytest.raises(ModelError, match="refusing to load"):
        store.install(str(path), quality=3)
    assert not marker.exists()
    assert store.list() == []


@pytest.mark.parametrize("content", [b"not a model at all" * 10, b""])
def test_garbage_file_is_a_model_error(store, tmp_path, content):
    path = tmp_path / "junk.pt"
    path.write_bytes(content)
    with pytest.raises(ModelError) as e:
        store.install(str(path), quality=3)
    assert "\n" not in str(e.value)


def test_state_dict_for_another_network_is_refused(store, tmp_path):
    sd = tiny_state_dict()
    del sd["g_s.7.0.weight"]
    path = tmp_path / "partial.pth.tar"
    torch.save(sd, path)
    with pytest.raises(ModelError, match="1 missing"):
        store.install(str(path), quality=3)


def test_unknown_source_and_bad_name(store, tmp_path):
    with pytest.raises(ModelError, match="not a file"):
        store.install("no/such/file.pth.tar")
    with pytest.raises(ModelError, match="cheng2020-anchor"):
        store.install("bmshj2018-factorized:3")
    path = save_zoo_file(tmp_path, tiny_state_dict())
    with pytest.raises(ModelError, match="invalid model name"):
        store.install(str(path), name="../escape")


def test_install_training_checkpoint_with_adapters(store, tmp_path):
    from adapdate_codec.adapters import AdapterConfig
    from adapdate_codec.network import build_model

    cfg = {"quality": 3, "lmbda": 0.005, "arch": "cheng2020-anchor", "N": TINY_N,
           "adapters": {"type": "resblock", "R": 2, "v": 3}, "steps": 10}
    net = build_model("cheng2020-anchor", TINY_N, AdapterConfig())
    path = tmp_path / "run.pt"
    torch.save({"format": 1, "config": cfg, "model": net.state_dict(), "step": 10, "elapsed_s": 1.5}, path)
    entry = store.install(str(path))
    b = store.get()
    assert b.fingerprint == entry.fingerprint and b.lmbda == pytest.approx(0.005)
    assert b.adapters == AdapterConfig()
    assert any(".adapter." in k for k in b.state_dict)
    assert store.info()["card"]["trained"]["step"] == 10


def test_install_bundle_file(store, tmp_path, bundle_api):
    b = make_bundle(bundle_api, variant=5)
    path = tmp_path / "mine.pt"
    b.save(path)
    entry = store.install(str(path))
    assert entry.fingerprint == b.fingerprint
    with pytest.raises(ModelError, match="identity"):
        store.install(str(path), quality=4)


# -- versions, rollback, lookup --------------------------------------------------------------------------
def test_versions_rollback_and_by_fingerprint(store, bundle_api):
    b1, b2 = make_bundle(bundle_api, 1), make_bundle(bundle_api, 2)
    e1 = store.install_bundle(b1, "test:1")
    e2 = store.install_bundle(b2, "test:2", update={"file": "u.nnc", "bytes": 123})
    assert (e1.version, e2.version) == (1, 2)
    hist = store.history()
    assert [h.active for h in hist] == [False, True]
    assert hist[1].parent_fingerprint == b1.fingerprint and hist[1].update == {"file": "u.nnc", "bytes": 123}
    assert store.get().fingerprint == b2.fingerprint

    old = store.by_fingerprint(FakeHeader("cheng2020-anchor", 3, bytes.fromhex(b1.fingerprint)))
    assert old.fingerprint == b1.fingerprint

    back = store.rollback()
    assert back.version == 1 and store.get().fingerprint == b1.fingerprint
    assert e2.path.exists()  # the newer version stays so its files still decode
    assert store.by_fingerprint(FakeHeader("cheng2020-anchor", 3, bytes.fromhex(b2.fingerprint)))
    with pytest.raises(ModelError, match="nothing to roll back"):
        store.rollback()

    again = store.install_bundle(b2, "test:again")  # known fingerprint: reactivated, not duplicated
    assert again.version == 2 and len(manifest(store)["versions"]) == 2


def test_missing_model_messages(store, bundle_api):
    with pytest.raises(ModelNotInstalledError, match="no models are installed"):
        store.get()
    store.install_bundle(make_bundle(bundle_api, quality=2), "test")
    with pytest.raises(ModelNotInstalledError, match=r"installed: cheng2020-anchor q2"):
        store.get(quality=5)
    fp = bytes(range(32))
    with pytest.raises(ModelNotInstalledError) as e:
        store.by_fingerprint(FakeHeader("cheng2020-anchor", 3, fp))
    assert str(e.value) == ("this file needs cheng2020-anchor q3 version 00010203… which is not installed; "
                            "run `adapdate model list`")
    with pytest.raises(ModelError, match="nothing to roll back"):
        store.rollback(quality=2)


def test_builtin_models_need_no_install(tmp_path, bundle_api):
    builtin = tmp_path / "builtin"
    builtin.mkdir()
    base = make_bundle(bundle_api, 0)
    base.save(builtin / "cheng2020-anchor-q3.pt")  # writes the card cheng2020-anchor-q3.json beside it
    store = ModelStore(home=tmp_path / "home", builtin=builtin)
    [e] = store.list()
    assert e.builtin and e.active and e.version == 0
    assert store.get().fingerprint == base.fingerprint

    newer = make_bundle(bundle_api, 1)
    store.install_bundle(newer, "update")
    assert store.get().fingerprint == newer.fingerprint  # installed takes precedence
    assert store.history()[1].parent_fingerprint == base.fingerprint
    assert store.rollback().builtin and store.get().fingerprint == base.fingerprint
    assert store.by_fingerprint(FakeHeader("cheng2020-anchor", 3, bytes.fromhex(newer.fingerprint)))


def test_crash_before_manifest_leaves_a_valid_store(store, bundle_api, monkeypatch):
    b1, b2 = make_bundle(bundle_api, 1), make_bundle(bundle_api, 2)
    store.install_bundle(b1, "one")
    real = store_mod.atomic_write

    def crash_on_manifest(path, data):
        if path.name == "manifest.json":
            raise KeyboardInterrupt
        real(path, data)

    monkeypatch.setattr(store_mod, "atomic_write", crash_on_manifest)
    with pytest.raises(KeyboardInterrupt):
        store.install_bundle(b2, "two")
    monkeypatch.setattr(store_mod, "atomic_write", real)
    fresh = ModelStore(home=store.home, builtin=store.builtin)
    assert [e.fingerprint for e in fresh.list()] == [b1.fingerprint]
    assert fresh.get().fingerprint == b1.fingerprint
    assert fresh.install_bundle(b2, "two").version == 2  # the retry reuses the orphaned file name


def test_corrupt_manifest_is_a_model_error(store, bundle_api):
    store.install_bundle(make_bundle(bundle_api), "x")
    (store.slot("cheng2020-anchor", 3) / "manifest.json").write_text("{not json")
    with pytest.raises(ModelError, match="cannot read"):
        store.list()


def test_damaged_bundle_file_is_detected(store, bundle_api):
    entry = store.install_bundle(make_bundle(bundle_api), "x")
    entry.path.write_bytes(b"truncated")
    with pytest.raises(ModelError, match=entry.path.name) as e:
        ModelStore(home=store.home, builtin=store.builtin).get()
    assert "\n" not in str(e.value)


# -- concurrency ----------------------------------------------------------------------------------------
def test_concurrent_installs_threads(store, bundle_api):
    bundles = [make_bundle(bundle_api, v) for v in range(1, 5)]
    errors: list[BaseException] = []

    def run(b):
        try:
            ModelStore(home=store.home, builtin=store.builtin).install_bundle(b, f"t{b.fingerprint[:4]}")
        except BaseException as e:  # collected and re-raised by the test below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(b,)) for b in bundles]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    m = manifest(store)
    assert sorted(v["version"] for v in m["versions"]) == [1, 2, 3, 4]
    assert {v["fingerprint"] for v in m["versions"]} == {b.fingerprint for b in bundles}


def _install_in_child(home: str, builtin: str, variants: list[int]) -> None:
    torch.set_num_threads(1)
    from adapdate_codec import bundle as api

    s = ModelStore(home=home, builtin=builtin)
    for v in variants:
        s.install_bundle(make_bundle(api, v), f"proc{v}")


def test_concurrent_installs_processes(store):
    ctx = multiprocessing.get_context("fork")  # cheap on Linux: children reuse the imported torch
    procs = [ctx.Process(target=_install_in_child, args=(str(store.home), str(store.builtin), vs))
             for vs in ([1, 2], [3, 4])]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=180)
    assert [p.exitcode for p in procs] == [0, 0]
    m = manifest(store)
    assert sorted(v["version"] for v in m["versions"]) == [1, 2, 3, 4]
    assert len({v["fingerprint"] for v in m["versions"]}) == 4
    assert all((store.slot("cheng2020-anchor", 3) / v["file"]).exists() for v in m["versions"])
