"""The fast CPU inference path (channels-last copies of g_a / g_s, heap reuse) against the plain network."""

from __future__ import annotations

import numpy as np
import torch

from adapdate_codec import codec, inference, tiling
from adapdate_codec.imageio import Picture
from test_codec import smooth_image


def _reference_pixels(bundle, y_hat: torch.Tensor, h: int, w: int) -> np.ndarray:
    with torch.no_grad():
        x = bundle.network().g_s(y_hat[None].float())
    return tiling.crop(x, h, w)[0].clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def test_fast_synthesis_within_one_level_of_the_network(tiny_bundle):
    px = smooth_image(96, 160, seed=3)
    lat = codec.analyze(px, tiny_bundle)
    fast = codec.synthesize(lat.y_hat, tiny_bundle, 96, 160)
    assert fast.shape == (96, 160, 3) and fast.flags.c_contiguous
    assert np.abs(fast.astype(int) - _reference_pixels(tiny_bundle, lat.y_hat, 96, 160)).max() <= 1


def test_fast_analysis_gives_the_latents_of_the_network(tiny_bundle, monkeypatch):
    px = smooth_image(96, 160, seed=4)
    fast = codec.analyze(px, tiny_bundle)
    monkeypatch.setattr(inference, "ANALYSIS_CHANNELS_LAST", False)
    ref = codec.analyze(px, tiny_bundle)
    # a latent within float noise of a rounding boundary may move by one; anything more is a bug
    assert (fast.y_hat - ref.y_hat).abs().max() <= 1
    assert (fast.y_hat != ref.y_hat).float().mean() < 1e-3


def test_fast_path_leaves_the_shared_network_alone(tiny_bundle):
    net = tiny_bundle.network()
    codec.decode_picture(codec.encode_picture(Picture(smooth_image(64, 64), "RGB"), tiny_bundle), lambda h: tiny_bundle)
    for p in net.parameters():
        assert p.is_contiguous() and p.requires_grad


def test_fast_copy_follows_weight_changes():
    from conftest import make_tiny_bundle

    bundle = make_tiny_bundle(seed=7)
    y_hat = codec.analyze(smooth_image(64, 64), bundle).y_hat
    before = codec.synthesize(y_hat, bundle, 64, 64)
    last = bundle.network().g_s[-1][0]  # subpel conv: its bias shifts every output pixel
    with torch.no_grad():
        last.bias.add_(0.5)
    after = codec.synthesize(y_hat, bundle, 64, 64)
    assert not np.array_equal(before, after)
    assert np.abs(after.astype(int) - _reference_pixels(bundle, y_hat, 64, 64)).max() <= 1


class _FakeLibc:
    def __init__(self):
        self.calls = []

    def mallopt(self, param, value):
        self.calls.append((param, value))
        return 1

    def malloc_trim(self, pad):
        self.calls.append(("trim", pad))
        return 1


def test_heap_reuse_is_scoped_and_restores_glibc_defaults(monkeypatch):
    fake = _FakeLibc()
    monkeypatch.setattr(inference, "_LIBC", fake)
    monkeypatch.setattr(inference, "REUSE_FREED_MEMORY", True)
    for k in inference._USER_MALLOC_ENV + ("GLIBC_TUNABLES",):
        monkeypatch.delenv(k, raising=False)
    with inference.reuse_freed_memory():
        with inference.reuse_freed_memory():  # nested (threads): only the outermost sets and restores
            pass
        assert fake.calls == [("trim", 0), *inference._REUSE]  # trimmed first: the slack counts from there
    assert fake.calls == [("trim", 0), *inference._REUSE, *inference._GLIBC_DEFAULTS, ("trim", 0)]


def test_heap_reuse_leaves_user_malloc_settings_alone(monkeypatch):
    fake = _FakeLibc()
    monkeypatch.setattr(inference, "_LIBC", fake)
    monkeypatch.setattr(inference, "REUSE_FREED_MEMORY", True)
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "1000000")
    with inference.reuse_freed_memory():
        pass
    assert fake.calls == [("trim", 0)]  # memory handed back, no setting changed


def test_heap_reuse_is_off_unless_the_application_asks(monkeypatch):
    import subprocess
    import sys

    # a fresh interpreter: the CLI commands run by other tests in this process turn it on
    code = "from adapdate_codec import inference; print(inference.REUSE_FREED_MEMORY)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
    fake = _FakeLibc()
    monkeypatch.setattr(inference, "_LIBC", fake)
    monkeypatch.setattr(inference, "REUSE_FREED_MEMORY", False)
    with inference.reuse_freed_memory():
        pass
    assert fake.calls == [("trim", 0)]  # memory handed back, no setting changed


def test_thread_limit_is_for_the_calling_thread_only():
    import threading

    seen = {}

    def other():
        seen["other"] = torch.get_num_threads()

    before = torch.get_num_threads()
    with inference.thread_limit(before + 2):
        assert torch.get_num_threads() == before + 2
        t = threading.Thread(target=other)
        t.start()
        t.join()
    assert torch.get_num_threads() == before
    assert seen["other"] == before  # torch's own setting, which the limit leaves alone


def test_the_heap_is_trimmed_once_a_transform_grows_it_past_the_slack(monkeypatch):
    fake = _FakeLibc()
    monkeypatch.setattr(inference, "_LIBC", fake)
    rss = [1000]
    monkeypatch.setattr(inference, "_rss", lambda: rss[0])
    monkeypatch.setattr(inference, "HEAP_SLACK", 50)
    monkeypatch.setattr(inference, "REUSE_FREED_MEMORY", False)  # only the trims (in-process CLI tests set it)
    inference.release_if_grown()  # outside a transform: nothing
    with inference.reuse_freed_memory():
        rss[0] = 1040
        inference.release_if_grown()
        assert fake.calls == [("trim", 0)]  # the one at the start
        rss[0] = 1051
        inference.release_if_grown()
        assert fake.calls == [("trim", 0), ("trim", 0)]
    assert fake.calls == [("trim", 0)] * 2
