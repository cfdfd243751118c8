"""The wheel built from the checkout carries the default models, and the CLI starts fast."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_contains_default_models(tmp_path):
    shipped = sorted(p.name for p in (ROOT / "models").glob("*.pt"))
    assert shipped, "models/ holds no default model"
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    wheel = next(tmp_path.glob("adapdate-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in shipped:
        assert f"adapdate_models/{name}" in names
        assert f"adapdate_models/{Path(name).with_suffix('.json')}" in names
    assert "adapdate_codec/cli/__init__.py" in names


def test_default_models_are_listed_without_install(tmp_path):
    import json
    import os

    env = dict(os.environ, ADAPDATE_HOME=str(tmp_path / "empty"))
    r = subprocess.run([sys.executable, "-m", "adapdate_codec", "model", "list", "--json"], capture_output=True,
                       text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    listed = json.loads(r.stdout)
    names = {(m["name"], m["quality"]) for m in listed}
    shipped = sorted((ROOT / "models").glob("cheng2020-anchor-q*.pt"))
    if not shipped:
        pytest.skip("no default model in models/")
    assert ("cheng2020-anchor", 3) in names
