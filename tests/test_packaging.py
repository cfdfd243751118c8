"""The wheel carries the compact default models (and no 24 MB .pt), within the size budget; the CLI
lists them without decoding anything."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MB = 1 << 20
# A device call carries the project plus its training data in 64 MiB: the tracked tree stays within
# 40 MB, of which the shipped models (all versions, compact) take at most 36.
TREE_BUDGET = 40 * 10**6
MODELS_BUDGET = 36 * 10**6


def _shipped() -> list[Path]:
    return sorted((ROOT / "models").rglob("cheng2020-anchor-q*.adpm"))


def test_models_fit_the_size_budget():
    total = sum(p.stat().st_size for p in (ROOT / "models").rglob("*") if p.is_file())
    assert total <= MODELS_BUDGET, f"models/ holds {total / MB:.1f} MiB, over the budget"
    assert not list((ROOT / "models").rglob("*.pt")), "models/ must ship compact files, not .pt bundles"


def test_tracked_tree_fits_the_size_budget():
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    total = sum((ROOT / f).stat().st_size for f in files.decode().split("\0") if f and (ROOT / f).is_file())
    assert total <= TREE_BUDGET, f"the tracked tree is {total / 1e6:.1f} MB"


def test_every_shipped_model_has_a_card_naming_its_fingerprint():
    from adapdate_codec import compact

    assert _shipped(), "models/ holds no default model"
    for p in _shipped():
        card = json.loads(p.with_suffix(".json").read_text())
        assert card["fingerprint"] == compact.file_fingerprint(p.read_bytes()), p.name
        assert card["measured"]["kodak"]["bpp"] > 0 and card["storage"]["quantization_cost"]


def test_wheel_contains_the_compact_models_only(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    wheel = next(tmp_path.glob("adapdate-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        infos = z.infolist()
    names = {i.filename for i in infos}
    for p in _shipped():
        rel = p.relative_to(ROOT / "models")
        assert f"adapdate_models/{rel}" in names
        assert f"adapdate_models/{rel.with_suffix('.json')}" in names
    assert not [n for n in names if n.endswith(".pt")]
    assert sum(i.file_size for i in infos if i.filename.startswith("adapdate_models/")) <= MODELS_BUDGET
    assert "adapdate_codec/cli/__init__.py" in names
    assert {"adapdate_codec/report_assets/report.css", "adapdate_codec/report_assets/report.js"} <= names  # eval --html


def test_default_models_are_listed_without_install(tmp_path):
    env = dict(os.environ, ADAPDATE_HOME=str(tmp_path / "empty"))
    r = subprocess.run([sys.executable, "-m", "adapdate_codec", "model", "list", "--json"], capture_output=True,
                       text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    listed = {(m["name"], m["quality"]) for m in json.loads(r.stdout) if m["builtin"]}
    expected = {("cheng2020-anchor", json.loads(p.with_suffix(".json").read_text())["quality"])
                for p in _shipped() if p.parent.name != "archive"}
    assert expected and expected <= listed
    assert not (tmp_path / "empty").exists() or not list((tmp_path / "empty").rglob("*.pt"))  # nothing decoded
