"""The store under faults: kill -9 during `model patch` / `model install`, concurrent patches, leftovers.

The long version is a command: `.venv/bin/python -m tests.fuzz.store_faults --trials 50`.
"""

from __future__ import annotations

import json

from adapdate_codec.store import ModelStore
from conftest import make_tiny_bundle
from fuzz import store_faults


def test_kill_trials_and_concurrent_patches():
    report = store_faults.run(trials=2, pairs=1, seed=1)
    assert not report.failures, report.failures
    killed = sum(n for k, n in report.counts.items() if isinstance(n, int) and ": killed, active is" in k)
    finished = sum(n for k, n in report.counts.items() if isinstance(n, int) and "finished before" in k)
    assert killed + finished == 4 and killed >= 1
    assert report.counts["concurrent: one winner, one refusal"] == 1


def test_the_next_writer_removes_what_a_killed_one_left(fresh_store):
    """A temporary file and a bundle written but never committed (what kill -9 between the two leaves)."""
    store = ModelStore(fresh_store)
    slot = store.slot("tiny", 3)
    listed = {v["file"] for v in json.loads((slot / "manifest.json").read_text())["versions"]}
    (slot / ".0123456789abcdef.pt.x1y2z3.tmp").write_bytes(b"partial")
    (slot / ".manifest.json.abc.tmp").write_bytes(b"{")
    (slot / "0123456789abcdef.pt").write_bytes(b"never committed")
    (slot / "0123456789abcdef.json").write_text("{}")
    assert store.active("tiny", 3).version == 1  # readers are not bothered
    other = make_tiny_bundle(seed=3)
    store.install_bundle(other, source="tests")
    names = {p.name for p in slot.iterdir()}
    assert not any(n.endswith(".tmp") for n in names)
    assert "0123456789abcdef.pt" not in names and "0123456789abcdef.json" not in names
    assert listed <= names and f"{other.fingerprint[:16]}.pt" in names
    assert ModelStore(fresh_store).get("tiny", 3).fingerprint == other.fingerprint


def test_dead_download_folders_are_removed_live_ones_kept(tmp_path):
    import fcntl
    import os

    from adapdate_codec.store import _remove_dead_downloads

    dead, live, young = (tmp_path / f".download-{n}" for n in ("dead", "live", "young"))
    for d in (dead, live, young):
        d.mkdir()
        (d / "cheng2020-anchor-3-e49be189.pth.tar").write_bytes(b"partial")
    for d in (dead, live):
        os.utime(d, (0, 0))  # long ago
    with open(live / ".lock", "a") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        _remove_dead_downloads(tmp_path)
    assert not dead.exists() and live.exists() and young.exists()
