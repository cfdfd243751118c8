"""release/continue_run.py end to end on the CPU with a tiny network: pack -> train -> unpack -> install."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "release" / "continue_run.py"


@pytest.fixture(scope="module")
def continue_run():
    spec = importlib.util.spec_from_file_location("continue_run", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["continue_run"] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A model store whose active cheng2020-anchor q3 is a tiny (N=8) network."""
    from conftest import make_tiny_bundle

    from adapdate_codec.store import ModelStore

    home = tmp_path / "home"
    ModelStore(home).install_bundle(make_tiny_bundle(name="cheng2020-anchor", quality=3), source="tests")
    monkeypatch.setenv("ADAPDATE_HOME", str(home))
    return home


@pytest.fixture
def photos(tmp_path) -> Path:
    d = tmp_path / "photos"
    d.mkdir()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:80, 0:96]
    for k in range(3):
        img = np.stack([128 + 90 * np.sin(xx / (5 + k + c) + yy / (9 + c)) for c in range(3)], -1)
        Image.fromarray(np.clip(img + rng.normal(0, 5, img.shape), 0, 255).astype(np.uint8)).save(d / f"{k}.png")
    return d


def test_pack_train_unpack_install(continue_run, home, photos, tmp_path):
    gpu, out, work, runs = (tmp_path / n for n in ("gpu", "out", "work", "runs"))
    continue_run.main(["pack", "--gpu-dir", str(gpu), "--data", str(photos), "--qualities", "3,2", "--start", "2=3",
                       "--lr-for", "2=5e-4", "--seconds", "60", "--steps", "3", "--warmup", "1", "--device", "cpu",
                       "--batch", "2", "--patch", "64", "--no-bf16", "--no-wheels", "--no-size-check",
                       "--encoder-seconds", "30", "--encoder-lr", "1e-2"])
    plan = json.loads((gpu / "plan.json").read_text())
    assert [(j["name"], j["start_quality"], j["lr"]) for j in plan["jobs"]] == [("q3", 3, 3e-4), ("q2", 3, 5e-4)]
    assert len(list((gpu / "data").glob("*.jpg"))) == 3

    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, str(SCRIPT), "device", "--gpu-dir", str(gpu), "--out", str(out),
                        "--work", str(work)], capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    files = sorted(p.name for p in out.iterdir())
    assert files == ["log.txt", "q2.delta.xz", "q3.delta.xz", "results.json"], (files, (out / "log.txt").read_text())

    continue_run.main(["unpack", str(out), "--out", str(runs)])
    from adapdate_codec.train import load_checkpoint

    trained = torch.load(work / "q2.ckpt", map_location="cpu", weights_only=True)
    back = load_checkpoint(runs / "q2.ckpt")
    assert back["step"] == 3 and back["config"]["quality"] == 2 and back["config"]["lr"] == 5e-4
    for k, v in back["model"].items():  # int8 per-channel deltas: at most half a step off
        assert torch.allclose(v, trained["model"][k].float(), atol=1e-4), k
    # issue 19: the encoder phase -- the same decoder, another encoder
    enc = load_checkpoint(runs / "q2-enc.ckpt")
    assert enc["config"]["encoder_only"] and enc["step"] == 3
    changed = {k for k, v in enc["model"].items() if not torch.equal(v, back["model"][k])}
    assert changed and all(k.startswith(("g_a.", "h_a.")) for k in changed), sorted(changed)[:5]

    from adapdate_codec import cli

    r = CliRunner().invoke(cli.main, ["model", "install", str(runs / "q2.ckpt")])
    assert r.exit_code == 0, r.output
    assert "cheng2020-anchor q2" in r.output


def test_a_changed_start_model_is_refused(continue_run, home, photos, tmp_path):
    from conftest import make_tiny_bundle

    from adapdate_codec.store import ModelStore

    gpu = tmp_path / "gpu"
    continue_run.main(["pack", "--gpu-dir", str(gpu), "--data", str(photos), "--qualities", "3", "--device", "cpu",
                       "--patch", "64", "--no-wheels", "--no-size-check"])
    ModelStore(home).install_bundle(make_tiny_bundle(name="cheng2020-anchor", quality=3, seed=1), source="tests")
    with pytest.raises(SystemExit, match="pack again"):
        continue_run.main(["child", "--gpu-dir", str(gpu), "--work", str(tmp_path), "--out", str(tmp_path),
                           "--child", "q3"])


def test_trial_plan_and_the_job_limit(continue_run, home, photos, tmp_path):
    gpu = tmp_path / "gpu"
    continue_run.main(["pack", "--gpu-dir", str(gpu), "--data", str(photos), "--trial", "6:3", "--qualities", "3",
                       "--patch", "64", "--no-wheels", "--no-size-check"])
    jobs = json.loads((gpu / "plan.json").read_text())["jobs"]
    assert [j["name"] for j in jobs] == ["q6-a", "q6-b", "q6-c", "q6-d", "q3"]
    assert {j["start_quality"] for j in jobs} == {3}
    assert len({j["seed"] for j in jobs[:4]}) == 1 and jobs[4]["seed"] != jobs[0]["seed"]  # trial: one seed
    with pytest.raises(SystemExit, match="at most 6"):
        continue_run.main(["pack", "--gpu-dir", str(gpu), "--data", str(photos), "--trial", "6:3",
                           "--qualities", "1,2,3", "--no-wheels", "--no-size-check"])


def test_release_hands_one_checkpoint_per_quality_to_release_models(continue_run, monkeypatch):
    calls = []
    monkeypatch.setattr(continue_run.subprocess, "run", lambda cmd, **kw: calls.append(cmd))
    results = {"plan": {"bf16": True, "batch": 16, "patch": 256, "data_note": "photos", "created": "now"},
               "jobs": {n: {"device_name": "NVIDIA H200"} for n in ("q6-a", "q6-b", "q5")}}
    written = {"q6-a": (6, Path("a.ckpt")), "q6-b": (6, Path("b.ckpt")), "q5": (5, Path("c.ckpt"))}
    with pytest.raises(SystemExit, match="one job per quality"):
        continue_run.release(results, written, "")
    continue_run.release(results, written, "q6-b,q5")
    assert calls[0][1].endswith("release_models.py") and calls[0][2:4] == ["b.ckpt", "c.ckpt"]


def test_photos_shrink_to_fit_the_payload(continue_run, tmp_path):
    rng = np.random.default_rng(1)
    src = tmp_path / "src"
    src.mkdir()
    yy, xx = np.mgrid[0:300, 0:400]
    for k in range(2):
        img = np.stack([128 + 80 * np.sin(xx / (7 + k + c) + yy / 11) for c in range(3)], -1)
        Image.fromarray(np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)).save(src / f"{k}.png")
    best = continue_run.pack_photos(src, tmp_path / "a", 2**30)
    size = continue_run.folder_bytes(tmp_path / "a")
    assert "JPEG 92" in best
    smaller = continue_run.pack_photos(src, tmp_path / "b", int(size * 0.8))
    assert "JPEG 92" not in smaller and continue_run.folder_bytes(tmp_path / "b") <= size * 0.8
    with pytest.raises(SystemExit, match="even at"):
        continue_run.pack_photos(src, tmp_path / "c", 1000)
