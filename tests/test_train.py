"""Training: the loss goes down, resume is exact, a checkpoint becomes a model that codes, DDP runs."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from adapdate_codec.train import TrainConfig, load_checkpoint, rd_loss, train


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("train")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:96, 0:96]
    for k in range(4):
        img = np.stack([128 + 90 * np.sin(xx / (5 + k + c) + yy / (9 + c)) for c in range(3)], -1)
        Image.fromarray(np.clip(img + rng.normal(0, 5, img.shape), 0, 255).astype(np.uint8)).save(d / f"{k}.png")
    Image.fromarray(rng.integers(0, 255, (200, 150, 3), dtype=np.uint8)).save(d / "big.jpg", quality=95)
    return d


def tiny_config(data_dir: Path, out: Path, **kw) -> TrainConfig:
    base = dict(data=str(data_dir), out=str(out), N=8, steps=4, batch=2, patch=64, lr=1e-3, warmup=1,
                log_every=1000, val_every=1000, checkpoint_every_s=1e9, seed=3)
    base.update(kw)
    return TrainConfig(**base)


def quiet(_msg: str) -> None:
    pass


def test_a_few_steps_lower_the_loss(data_dir, tmp_path):
    from adapdate_codec.data import CropDataset
    from adapdate_codec.network import build_model

    cfg = tiny_config(data_dir, tmp_path / "c.ckpt", steps=40, schedule="constant")
    x = CropDataset(data_dir, 64).batch(4, np.random.default_rng(7))
    torch.manual_seed(cfg.seed)
    before, _ = rd_loss(build_model("cheng2020-anchor", 8).train(), x, cfg.lambda_)
    state = train(cfg, log=quiet)
    net = build_model("cheng2020-anchor", 8)
    net.load_state_dict(state["model"])
    torch.manual_seed(0)
    after, _ = rd_loss(net.train(), x, cfg.lambda_)
    assert float(after) < 0.8 * float(before)


def test_resume_continues_at_the_same_step_with_the_same_state(data_dir, tmp_path):
    straight = train(tiny_config(data_dir, tmp_path / "a.ckpt", steps=4), log=quiet)
    train(tiny_config(data_dir, tmp_path / "b.ckpt", steps=2), log=quiet)
    ckpt = load_checkpoint(tmp_path / "b.ckpt")
    assert ckpt["step"] == 2
    # a resumed run keeps λ, size and seed from the checkpoint, whatever the caller passes
    resumed = train(tiny_config(data_dir, tmp_path / "b.ckpt", steps=4, seed=99), resume=str(tmp_path / "b.ckpt"),
                    log=quiet)
    assert resumed["step"] == 4
    for k, v in straight["model"].items():
        assert torch.equal(v, resumed["model"][k]), k
    a, b = straight["optimizer"]["state"], resumed["optimizer"]["state"]
    assert all(torch.equal(a[i]["exp_avg"], b[i]["exp_avg"]) for i in a)


def test_bottleneck_likelihoods_are_compressais_without_reading_the_device_back():
    from adapdate_codec.network import bottleneck_likelihoods, build_model

    eb = build_model("cheng2020-anchor", 8).entropy_bottleneck
    z = torch.randn(2, 8, 3, 5) * 4
    for training in (True, False):
        torch.manual_seed(1)
        _, theirs = eb(z, training=training)
        torch.manual_seed(1)
        assert torch.equal(bottleneck_likelihoods(eb, z, training), theirs)


def test_schedule_warms_up_then_decays():
    from adapdate_codec.train import learning_rate

    cfg = TrainConfig(data=".", out="x", lr=1e-3, warmup=10, steps=110, min_lr_ratio=0.1)
    assert learning_rate(cfg, 0) == pytest.approx(1e-4)
    assert learning_rate(cfg, 10) == pytest.approx(1e-3)
    assert learning_rate(cfg, 110) == pytest.approx(1e-4)
    assert learning_rate(replace(cfg, time_limit_s=100.0), 20, elapsed_s=100.0) == pytest.approx(1e-4)


def test_checkpoint_installs_and_codes(data_dir, tmp_path):
    from adapdate_codec import codec
    from adapdate_codec.imageio import Picture
    from adapdate_codec.store import ModelStore

    train(tiny_config(data_dir, tmp_path / "m.ckpt", steps=2), log=quiet)
    store = ModelStore(tmp_path / "home")
    entry = store.install(str(tmp_path / "m.ckpt"), name="trained")
    bundle = store.get("trained", entry.quality)
    px = np.asarray(Image.open(data_dir / "0.png"))
    data = codec.encode_picture(Picture(px, "RGB"), bundle)
    out = codec.decode_picture(data, store.by_fingerprint)
    lat = codec.analyze(px, bundle)
    assert np.array_equal(out.pixels, codec.synthesize(lat.y_hat, bundle, *px.shape[:2]))


def test_cli_train_base_writes_a_resumable_checkpoint(data_dir, tmp_path):
    out = tmp_path / "cli.ckpt"
    cmd = [sys.executable, "-m", "adapdate_codec", "train", "base", "--data", str(data_dir), "-N", "8",
           "--steps", "2", "--batch", "1", "--patch", "64", "--threads", "1", "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert load_checkpoint(out)["step"] == 2
    bad = subprocess.run(cmd[:-2] + ["--patch", "100", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_two_gloo_processes_train_data_parallel(data_dir, tmp_path):
    out = tmp_path / "ddp.ckpt"
    env = dict(os.environ, ADAPDATE_DDP_BACKEND="gloo", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "adapdate_codec", "train", "base", "--data", str(data_dir), "-N", "8", "--steps", "2",
           "--batch", "1", "--patch", "64", "--threads", "1", "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-8000:]  # the ranks' own output, not only torchrun's summary
    ckpt = load_checkpoint(out)
    assert ckpt["step"] == 2 and len(ckpt["torch_rng"]) == 2


def test_fitted_quantiles_lower_the_aux_loss_and_change_nothing_else(data_dir, tmp_path):
    from adapdate_codec.network import build_model
    from adapdate_codec.train import with_fitted_quantiles

    state = train(tiny_config(data_dir, tmp_path / "q.ckpt", steps=2), log=quiet)
    net = build_model("cheng2020-anchor", 8)
    net.load_state_dict(state["model"])
    before = float(net.aux_loss())
    sd, after = with_fitted_quantiles(state["model"], "cheng2020-anchor", 8)
    assert after < 0.1 * before
    changed = [k for k in sd if not torch.equal(sd[k], state["model"][k])]
    assert changed and all(k.endswith(".quantiles") for k in changed)


def test_a_non_finite_loss_skips_the_step(data_dir, tmp_path, monkeypatch):
    import adapdate_codec.train as train_mod

    real, calls = train_mod.rate_distortion, []

    def flaky(model, x, lmbda):
        terms = real(model, x, lmbda)
        calls.append(1)
        return terms * float("nan") if len(calls) == 1 else terms  # the first batch overflows

    monkeypatch.setattr(train_mod, "rate_distortion", flaky)
    state = train(tiny_config(data_dir, tmp_path / "n.ckpt", steps=3), log=quiet)
    assert state["step"] == 3 and len(calls) == 3 and state["skipped"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert int(state["optimizer"]["state"][0]["step"]) == 2  # the skipped step left Adam's count alone


def test_a_skipped_step_changes_nothing_and_is_counted_on_the_device(data_dir):
    from adapdate_codec.data import CropDataset
    from adapdate_codec.train import TrainingStep, build_network, make_optimizers

    cfg = tiny_config(data_dir, Path("unused"))
    torch.manual_seed(0)
    model, trainable, quantiles = build_network(cfg, None)
    opts = make_optimizers(cfg, trainable, quantiles)
    step = TrainingStep(cfg, model, model, trainable, quantiles, *opts, torch.device("cpu"), 1)
    x = CropDataset(data_dir, 64).batch(2, np.random.default_rng(0))
    step(x, 1e-3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    moments = {k: v.clone() for k, v in opts[0].state[trainable[0]].items()}
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    step(bad, 1e-3)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert all(torch.equal(v, opts[0].state[trainable[0]][k]) for k, v in moments.items())
    stats, skipped, _ = step.read()
    assert skipped == 1 and np.isfinite(stats.loss)  # the mean covers the good step only
    step(x, 1e-3)
    assert not torch.equal(before["g_a.0.conv1.weight"], model.state_dict()["g_a.0.conv1.weight"])
    assert step.read()[1] == 1


def test_the_batch_worker_draws_what_the_training_thread_would(data_dir, tmp_path):
    ahead = train(tiny_config(data_dir, tmp_path / "w.ckpt", steps=3, prefetch=3), log=quiet)
    inline = train(tiny_config(data_dir, tmp_path / "i.ckpt", steps=3, prefetch=0), log=quiet)
    assert all(torch.equal(v, inline["model"][k]) for k, v in ahead["model"].items())
    assert ahead["numpy_rng"] == inline["numpy_rng"]


def test_entropy_first_leaves_the_transforms_alone_until_its_end(data_dir, tmp_path):
    from adapdate_codec.network import build_model

    torch.manual_seed(5)
    init = build_model("cheng2020-anchor", 8).state_dict()
    early = train(tiny_config(data_dir, tmp_path / "e.ckpt", steps=2, entropy_first=2), init_state=init, log=quiet)
    moved = [k for k in init if not torch.equal(init[k], early["model"][k])]
    assert moved and not any(k.startswith(("g_a.", "g_s.")) for k in moved)
    later = train(tiny_config(data_dir, tmp_path / "e.ckpt", steps=3, entropy_first=2),
                  resume=str(tmp_path / "e.ckpt"), log=quiet)
    assert any(not torch.equal(init[k], later["model"][k]) for k in init if k.startswith("g_s."))


def test_cuda_only_options_on_cpu_are_a_one_line_error(data_dir, tmp_path):
    from adapdate_codec.errors import TrainingError

    out = tmp_path / "cl.ckpt"
    cmd = [sys.executable, "-m", "adapdate_codec", "train", "base", "--data", str(data_dir), "-N", "8",
           "--steps", "1", "--patch", "64", "--channels-last", "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "is for CUDA" in r.stderr and "Traceback" not in r.stderr
    with pytest.raises(TrainingError, match="is for CUDA"):
        train(tiny_config(data_dir, out, compile=True), log=quiet)
    assert not out.exists()


def test_time_budget_and_checkpoints_are_decided_before_a_step(data_dir, tmp_path, monkeypatch):
    import adapdate_codec.train as train_mod

    saves: list[int] = []
    real_save = train_mod._Checkpointer.save

    def counting_save(self, step, skipped, clock):
        saves.append(step)
        return real_save(self, step, skipped, clock)

    monkeypatch.setattr(train_mod._Checkpointer, "save", counting_save)
    state = train(tiny_config(data_dir, tmp_path / "t.ckpt", steps=3, time_limit_s=1e-9), log=quiet)
    assert state["step"] == 0 and saves == [0]  # the budget was spent before the first step: only the final save
    saves.clear()
    state = train(tiny_config(data_dir, tmp_path / "c.ckpt", steps=3, checkpoint_every_s=0.0), log=quiet)
    assert state["step"] == 3 and saves == [1, 2, 3]  # due before steps 2 and 3, then the final one
