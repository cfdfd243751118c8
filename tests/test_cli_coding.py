"""`adapdate encode` / `adapdate decode`.

Three layers: output planning (pure), the batch / target-bpp logic with a fake codec and store (in
process, fast), and the real command line in a subprocess with the tiny model from `tiny_store`.
Images are tiny and every subprocess runs with one thread: the tests share 2 cores with training jobs.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
import types
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from adapdate_codec.cli.encode import encode
from adapdate_codec.cli.planning import Job, plan_jobs
from adapdate_codec.imageio import Picture

# --- output planning -----------------------------------------------------------------------------------


def test_plan_default_beside_input() -> None:
    assert plan_jobs(("a/photo.jpg", "b.png"), None, ".adpd") == [
        Job("a/photo.jpg", "a/photo.adpd"),
        Job("b.png", "b.adpd"),
    ]


def test_plan_stdin_defaults_to_stdout() -> None:
    assert plan_jobs(("-",), None, ".adpd") == [Job("-", "-")]


def test_plan_one_input_one_file() -> None:
    assert plan_jobs(("x.png",), "y.adpd", ".adpd") == [Job("x.png", "y.adpd")]
    assert plan_jobs(("-",), "-", ".png") == [Job("-", "-")]


def test_plan_folder(tmp_path: Path) -> None:
    expected = [Job("p/a.png", str(tmp_path / "a.adpd")), Job("q/b.jpg", str(tmp_path / "b.adpd"))]
    assert plan_jobs(("p/a.png", "q/b.jpg"), str(tmp_path), ".adpd") == expected
    assert plan_jobs(("p/a.png",), str(tmp_path), ".adpd") == expected[:1]  # an existing folder
    assert plan_jobs(("a.adpd",), "new/", ".png") == [Job("a.adpd", str(Path("new") / "a.png"))]


@pytest.mark.parametrize(
    "inputs, output",
    [
        (("-", "-"), None),
        (("a.png", "-"), "out/"),
        (("a.png", "b.png"), "-"),
        (("x/a.png", "y/a.jpg"), "out"),  # both would be out/a.adpd
    ],
)
def test_plan_usage_errors(inputs: tuple[str, ...], output: str | None) -> None:
    with pytest.raises(click.UsageError):
        plan_jobs(inputs, output, ".adpd")


# --- batch and --target-bpp logic with a fake codec and store ------------------------------------------


class FakeBundle:
    def __init__(self, name: str, quality: int) -> None:
        self.name, self.quality, self.fingerprint = name, quality, f"{quality:064x}"


class FakeStore:
    def __init__(self, home: object = None) -> None:
        pass

    def get(self, name: str | None = None, quality: int | None = None) -> FakeBundle:
        return FakeBundle(name or "fake", quality or 3)

    def qualities(self, name: str | None = None) -> list[int]:
        return [1, 2, 3, 4, 5, 6]


def fake_encode_picture(pic: Picture, bundle: FakeBundle, *, device: str = "cpu", padding: str = "") -> bytes:
    # Exactly `quality` bits per pixel, so the choice under --target-bpp is known.
    n_pixels = pic.pixels.shape[0] * pic.pixels.shape[1]
    return b"\x00" * (bundle.quality * n_pixels // 8)


@pytest.fixture
def fake_codec(monkeypatch):
    import adapdate_codec.store

    module = types.ModuleType("adapdate_codec.codec")
    module.encode_picture = fake_encode_picture  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "adapdate_codec.codec", module)
    monkeypatch.setattr(adapdate_codec.store, "ModelStore", FakeStore)


def write_png(path: Path, h: int = 16, w: int = 16, mode: str = "RGB", seed: int = 0) -> Path:
    a = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    im = Image.fromarray(a)
    if mode != "RGB":
        im = im.convert(mode)
    im.save(path)
    return path


def invoke(command: click.Command, args: list[str]):
    return CliRunner().invoke(command, args, catch_exceptions=False)


@pytest.mark.parametrize("target, quality", [(3.5, 3), (6, 6), (100, 6), (1, 1)])
def test_target_bpp_picks_highest_fitting_quality(fake_codec, tmp_path, target, quality) -> None:
    src = write_png(tmp_path / "a.png")
    r = invoke(encode, [str(src), "--target-bpp", str(target), "--json"])
    assert r.exit_code == 0, r.stderr
    row = json.loads(r.stdout)
    assert row["quality"] == quality and row["bpp"] == quality
    assert f"picked quality {quality}" in r.stderr


def test_target_bpp_below_every_quality_warns_and_uses_lowest(fake_codec, tmp_path) -> None:
    src = write_png(tmp_path / "a.png")
    r = invoke(encode, [str(src), "--target-bpp", "0.5", "--json"])
    assert r.exit_code == 0
    assert json.loads(r.stdout)["quality"] == 1
    assert r.stderr.strip().splitlines() == [
        "adapdate: warning: no installed quality reaches 0.5 bpp; used the lowest, quality 1 (1.000 bpp)"
    ]


def test_quality_and_target_bpp_exclusive(fake_codec, tmp_path) -> None:
    r = invoke(encode, [str(write_png(tmp_path / "a.png")), "-q", "2", "--target-bpp", "1"])
    assert r.exit_code == 2


def test_library_warnings_become_one_line(fake_codec, tmp_path) -> None:
    a = (np.arange(16 * 16, dtype=np.uint16).reshape(16, 16) * 200)
    src = tmp_path / "deep.png"
    Image.fromarray(a).save(src)
    r = invoke(encode, [str(src)])
    assert r.exit_code == 0
    lines = r.stderr.strip().splitlines()
    assert lines[0] == "adapdate: warning: image has more than 8 bits per sample; reduced to 8 bits"
    assert lines[1].startswith(f"{src} -> {tmp_path / 'deep.adpd'}: 96 bytes, 3.000 bpp")  # quality 3: 3 bpp
    assert len(lines) == 2


def test_batch_goes_on_after_a_failure(fake_codec, tmp_path) -> None:
    good = [write_png(tmp_path / f"g{i}.png", seed=i) for i in range(2)]
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    out = tmp_path / "out"
    r = invoke(encode, [str(good[0]), str(bad), str(good[1]), "-o", str(out), "-q", "2", "--json"])
    assert r.exit_code == 1
    rows = json.loads(r.stdout)
    assert [row["error"] is None for row in rows] == [True, False, True]
    assert sorted(p.name for p in out.iterdir()) == ["g0.adpd", "g1.adpd"]
    assert r.stderr.strip().splitlines() == [f"adapdate: error: {bad}: not an image file Pillow can read"]


def test_too_wide_for_the_container(fake_codec, tmp_path) -> None:
    src = tmp_path / "strip.png"
    Image.new("L", ((1 << 20) + 1, 1)).save(src)
    r = invoke(encode, [str(src)])
    assert r.exit_code == 1
    expected = f"adapdate: error: {src}: image is 1048577x1; a .adpd file holds at most 1048576 pixels a side"
    assert r.stderr.strip() == expected
    assert not (tmp_path / "strip.adpd").exists()


# --- the real command line (subprocess, tiny model) ----------------------------------------------------


def run_cli(*args: str, home: Path, stdin: bytes | None = None, cwd: Path | None = None):
    env = {**os.environ, "ADAPDATE_HOME": str(home), "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "adapdate_codec", *args],
        input=stdin,
        capture_output=True,
        env=env,
        cwd=cwd,
        timeout=300,
    )


def encode_args(*args: str) -> list[str]:
    return ["encode", *args, "--model", "tiny", "--threads", "1"]


def decode_args(*args: str) -> list[str]:
    return ["decode", *args, "--threads", "1"]


def assert_one_error_line(r: subprocess.CompletedProcess, *fragments: str) -> str:
    err = r.stderr.decode()
    assert r.returncode == 1, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("adapdate: error: "), err
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


def leftovers(folder: Path, suffix: str) -> list[str]:
    """Outputs or temp files (fileio writes `.<name>.*.tmp`) that a failed command left behind."""
    return sorted(p.name for p in folder.iterdir() if p.suffix in (suffix, ".tmp"))


@pytest.fixture(scope="module")
def coded(tiny_store, tmp_path_factory) -> dict[str, Path]:
    """One image encoded once with --json; shared by the tests that need a valid .adpd."""
    folder = tmp_path_factory.mktemp("coded")
    src = write_png(folder / "photo.png", h=24, w=40)
    r = run_cli(*encode_args(str(src), "--json"), home=tiny_store)
    assert r.returncode == 0, r.stderr.decode()
    return {"folder": folder, "src": src, "adpd": folder / "photo.adpd", "json": json.loads(r.stdout)}


def test_round_trip_keeps_size_and_json_bpp(tiny_store, coded, tmp_path) -> None:
    row, adpd = coded["json"], coded["adpd"]
    assert adpd.exists()
    assert row["output"] == str(adpd) and row["bytes"] == adpd.stat().st_size
    assert (row["width"], row["height"]) == (40, 24)
    assert row["bpp"] == pytest.approx(row["bytes"] * 8 / (40 * 24))
    assert row["model"] == "tiny" and row["quality"] == 3 and row["error"] is None

    out = tmp_path / "back.png"
    r = run_cli(*decode_args(str(adpd), "-o", str(out), "--json"), home=tiny_store)
    assert r.returncode == 0, r.stderr.decode()
    back = Image.open(out)
    assert back.size == (40, 24) and back.mode == "RGB"
    drow = json.loads(r.stdout)
    assert drow["bytes"] == row["bytes"] and drow["model"] == "tiny" and drow["quality"] == 3


def test_same_input_twice_gives_identical_files(tiny_store, coded, tmp_path) -> None:
    again = tmp_path / "again.adpd"
    r = run_cli(*encode_args(str(coded["src"]), "-o", str(again)), home=tiny_store)
    assert r.returncode == 0, r.stderr.decode()
    assert again.read_bytes() == coded["adpd"].read_bytes()
    # Without --json: one summary line.
    lines = r.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and " bytes, " in lines[0] and " bpp, " in lines[0], lines


def test_grayscale_round_trip(tiny_store, tmp_path) -> None:
    src = write_png(tmp_path / "g.png", h=8, w=8, mode="L")
    assert run_cli(*encode_args(str(src)), home=tiny_store).returncode == 0
    r = run_cli(*decode_args(str(tmp_path / "g.adpd"), "-o", str(tmp_path / "g2.png")), home=tiny_store)
    assert r.returncode == 0, r.stderr.decode()
    assert Image.open(tmp_path / "g2.png").mode == "L"


def _damaged(data: bytes) -> dict[str, bytes]:
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x10
    return {
        "truncated": data[: len(data) - 5],
        "bitflip": bytes(flipped),
        "empty": b"",
        "random": bytes(np.random.default_rng(3).integers(0, 256, 300, dtype=np.uint8)),
    }


@pytest.mark.parametrize("kind", ["truncated", "bitflip", "empty", "random"])
def test_bad_adpd_one_line_no_output(tiny_store, coded, tmp_path, kind) -> None:
    bad = tmp_path / "bad.adpd"
    bad.write_bytes(_damaged(coded["adpd"].read_bytes())[kind])
    r = run_cli(*decode_args(str(bad)), home=tiny_store)
    assert_one_error_line(r, "bad.adpd")
    assert leftovers(tmp_path, ".png") == []


def test_non_image_input(tiny_store, tmp_path) -> None:
    src = tmp_path / "notes.png"
    src.write_text("hello")
    assert_one_error_line(run_cli(*encode_args(str(src)), home=tiny_store), "notes.png")
    assert leftovers(tmp_path, ".adpd") == []


def test_alpha_without_drop_alpha(tiny_store, tmp_path) -> None:
    src = tmp_path / "alpha.png"
    Image.new("RGBA", (8, 8), (10, 20, 30, 128)).save(src)
    assert_one_error_line(run_cli(*encode_args(str(src)), home=tiny_store), "--drop-alpha")
    assert leftovers(tmp_path, ".adpd") == []
    r = run_cli(*encode_args(str(src), "--drop-alpha"), home=tiny_store)
    assert r.returncode == 0, r.stderr.decode()
    assert (tmp_path / "alpha.adpd").exists()


def test_missing_input(tiny_store, tmp_path) -> None:
    assert_one_error_line(run_cli(*encode_args(str(tmp_path / "nope.png")), home=tiny_store), "nope.png")
    assert leftovers(tmp_path, ".adpd") == []


def test_model_not_installed(coded, tmp_path) -> None:
    r = run_cli(*decode_args(str(coded["adpd"]), "-o", str(tmp_path / "x.png")), home=tmp_path / "empty-home")
    assert_one_error_line(r, "not installed")
    assert leftovers(tmp_path, ".png") == []


def test_existing_output_needs_force(tiny_store, coded, tmp_path) -> None:
    out = tmp_path / "exists.adpd"
    out.write_bytes(b"keep me")
    r = run_cli(*encode_args(str(coded["src"]), "-o", str(out)), home=tiny_store)
    assert_one_error_line(r, "already exists", "--force")
    assert out.read_bytes() == b"keep me"
    r = run_cli(*encode_args(str(coded["src"]), "-o", str(out), "-f"), home=tiny_store)
    assert r.returncode == 0 and out.read_bytes() == coded["adpd"].read_bytes()


@pytest.mark.parametrize(
    "args",
    [
        ["encode"],  # no input
        ["encode", "x.png", "--quality", "zero"],
        ["encode", "x.png", "--padding", "circular"],
        ["decode", "x.adpd", "-o", "x.gif"],  # no writer for this suffix
        ["encode", "-", "-", "-o", "out/"],
        ["encode", "x.png", "-o", "-", "--json"],
    ],
)
def test_usage_errors_exit_2(tmp_path, args) -> None:
    r = run_cli(*args, home=tmp_path, cwd=tmp_path)
    assert r.returncode == 2, r.stderr.decode()
    assert "Traceback" not in r.stderr.decode()


def test_batch_with_one_bad_file(tiny_store, coded, tmp_path) -> None:
    good = [write_png(tmp_path / f"ok{i}.png", h=8, w=8, seed=i) for i in range(2)]
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    out = tmp_path / "out"
    r = run_cli(*encode_args(str(good[0]), str(bad), str(good[1]), "-o", str(out), "--json"), home=tiny_store)
    err = r.stderr.decode()
    assert r.returncode == 1 and "Traceback" not in err
    assert err.strip().splitlines() == [line for line in err.strip().splitlines() if "broken.png" in line]
    assert len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in out.iterdir()) == ["ok0.adpd", "ok1.adpd"]
    rows = json.loads(r.stdout)
    assert [row["input"] for row in rows] == [str(good[0]), str(bad), str(good[1])]
    assert rows[1]["error"] and rows[0]["error"] is None and rows[2]["error"] is None

    # The decoder batch: .adpd files into a folder, PNG by default.
    r = run_cli(*decode_args(str(out / "ok0.adpd"), str(out / "ok1.adpd"), "-o", str(tmp_path / "png")),
                home=tiny_store)
    assert r.returncode == 0, r.stderr.decode()
    assert sorted(p.name for p in (tmp_path / "png").iterdir()) == ["ok0.png", "ok1.png"]


def test_stdin_stdout(tiny_store, coded, tmp_path) -> None:
    r = run_cli(*encode_args("-", "-o", "-"), home=tiny_store, stdin=coded["src"].read_bytes())
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout == coded["adpd"].read_bytes()
    r = run_cli(*decode_args("-"), home=tiny_store, stdin=r.stdout)
    assert r.returncode == 0, r.stderr.decode()
    assert Image.open(io.BytesIO(r.stdout)).size == (40, 24)


def test_cuda_unavailable_is_a_clear_error(tiny_store, coded, tmp_path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    r = run_cli(*encode_args(str(coded["src"]), "-o", str(tmp_path / "c.adpd"), "--device", "cuda"),
                home=tiny_store)
    assert_one_error_line(r, "CUDA")


def test_help_is_fast_and_does_not_import_torch(tmp_path) -> None:
    code = "import sys, adapdate_codec.cli; print(sorted({'torch', 'compressai', 'numpy'} & set(sys.modules)))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "torch" not in r.stdout and "compressai" not in r.stdout, r.stdout
    start = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "adapdate_codec", "--help"], capture_output=True, timeout=60)
    elapsed = time.perf_counter() - start
    assert r.returncode == 0 and b"encode" in r.stdout
    assert elapsed < 2.0


def test_encode_with_a_missing_model(tiny_store, coded, tmp_path) -> None:
    r = run_cli("encode", str(coded["src"]), "-o", str(tmp_path / "m.adpd"), "--model", "nosuch", home=tiny_store)
    assert_one_error_line(r, "nosuch", "not installed")
    assert leftovers(tmp_path, ".adpd") == []


# --- folders as inputs, --quiet and --verbose ------------------------------------------------------


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    """shots/a.png, shots/b.JPG, shots/notes.txt, shots/.hidden.png, shots/sub/c.png, shots/sub/deeper/d.webp"""
    root = tmp_path / "shots"
    (root / "sub" / "deeper").mkdir(parents=True)
    for rel in ("a.png", "b.JPG", "notes.txt", ".hidden.png", "sub/c.png", "sub/deeper/d.webp"):
        (root / rel).write_bytes(b"x")
    return root


def test_plan_folder_input(shots: Path, tmp_path: Path) -> None:
    from adapdate_codec.cli.planning import IMAGE_SUFFIXES

    out = tmp_path / "out"
    flat = plan_jobs((str(shots),), str(out), ".adpd", accept=IMAGE_SUFFIXES)
    assert flat == [Job(str(shots / "a.png"), str(out / "a.adpd")), Job(str(shots / "b.JPG"), str(out / "b.adpd"))]
    deep = plan_jobs((str(shots),), str(out), ".adpd", accept=IMAGE_SUFFIXES, recursive=True)
    assert [j.dst for j in deep] == [str(out / p) for p in ("a.adpd", "b.adpd", "sub/c.adpd", "sub/deeper/d.adpd")]
    beside = plan_jobs((str(shots),), None, ".adpd", accept=IMAGE_SUFFIXES, recursive=True)
    assert beside[2] == Job(str(shots / "sub/c.png"), str(shots / "sub/c.adpd"))
    # a folder input makes -o a folder, even for one file found
    one = plan_jobs((str(shots / "sub"),), str(tmp_path / "o"), ".adpd", accept=IMAGE_SUFFIXES)
    assert one == [Job(str(shots / "sub/c.png"), str(tmp_path / "o" / "c.adpd"))]


def test_plan_folder_errors(shots: Path, tmp_path: Path) -> None:
    from adapdate_codec.cli.planning import ENCODED_SUFFIXES
    from adapdate_codec.errors import InputError

    with pytest.raises(InputError, match=r"no \.adpd files in this folder \(-r"):
        plan_jobs((str(shots),), None, ".png", accept=ENCODED_SUFFIXES)
    (shots / "a.jpg").write_bytes(b"x")
    with pytest.raises(click.UsageError, match="would both be written"):  # a.png and a.jpg, beside them
        plan_jobs((str(shots / "a.png"), str(shots / "a.jpg")), None, ".adpd")


def test_folder_round_trip_keeps_the_layout(tiny_store, tmp_path) -> None:
    shots = tmp_path / "shots"
    (shots / "sub").mkdir(parents=True)
    write_png(shots / "a.png", h=8, w=8)
    write_png(shots / "sub" / "b.png", h=8, w=16, seed=1)
    r = run_cli(*encode_args(str(shots), "-o", str(tmp_path / "out"), "-r", "--json"), home=tiny_store)
    assert r.returncode == 0, r.stderr.decode()
    assert len(json.loads(r.stdout)) == 2
    assert (tmp_path / "out" / "a.adpd").exists() and (tmp_path / "out" / "sub" / "b.adpd").exists()
    r = run_cli(*decode_args(str(tmp_path / "out"), "-o", str(tmp_path / "back"), "-r"), home=tiny_store)
    assert r.returncode == 0, r.stderr.decode()
    assert Image.open(tmp_path / "back" / "sub" / "b.png").size == (16, 8)


def test_quiet_and_verbose(tiny_store, coded, tmp_path) -> None:
    src = str(coded["src"])
    r = run_cli(*encode_args(src, "-o", str(tmp_path / "q.adpd"), "--quiet"), home=tiny_store)
    assert r.returncode == 0 and r.stderr == b"" and r.stdout == b""
    r = run_cli(*encode_args(src, "-o", str(tmp_path / "q.adpd"), "--quiet"), home=tiny_store)
    assert_one_error_line(r, "already exists")  # errors still show
    r = run_cli(*encode_args(src, "-o", str(tmp_path / "v.adpd"), "-v"), home=tiny_store)
    lines = r.stderr.decode().strip().splitlines()
    assert r.returncode == 0 and len(lines) == 3, lines
    assert lines[0].startswith("adapdate: set-up (torch, codec, model loading): ")
    assert lines[1].endswith(f"(40x24, tiny q3 {coded['json']['fingerprint'][:8]}…)")
    assert lines[2].startswith("adapdate: 1 file in ") and lines[2].endswith(": 1 written, 0 failed")
    r = run_cli(*decode_args(str(coded["adpd"]), "-o", str(tmp_path / "d.png"), "--quiet"), home=tiny_store)
    assert r.returncode == 0 and r.stderr == b""
    r = run_cli(*encode_args(src, "--quiet", "--verbose"), home=tiny_store)
    assert r.returncode == 2


# --- -j N: worker processes ------------------------------------------------------------------------------


def test_parallel_encode_writes_the_files_of_one_process(tiny_store, tmp_path) -> None:
    """-j 2: the same files as -j 1, the bad one reported in one line, --json in the inputs' order."""
    srcs = [write_png(tmp_path / f"p{i}.png", h=24 + 8 * i, w=40, seed=i) for i in range(3)]
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    inputs = [str(srcs[0]), str(bad), str(srcs[1]), str(srcs[2])]
    one = run_cli(*encode_args(*inputs, "-o", str(tmp_path / "one"), "--json", "-j", "1"), home=tiny_store)
    two = run_cli(*encode_args(*inputs, "-o", str(tmp_path / "two"), "--json", "-j", "2"), home=tiny_store)
    for r in (one, two):
        err = r.stderr.decode()
        assert r.returncode == 1 and "Traceback" not in err, err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"adapdate: error: {bad}: "), err
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["p0.adpd", "p1.adpd", "p2.adpd"]
    for i in range(3):
        assert (tmp_path / "two" / f"p{i}.adpd").read_bytes() == (tmp_path / "one" / f"p{i}.adpd").read_bytes()
    rows_one, rows_two = json.loads(one.stdout), json.loads(two.stdout)
    assert [row["input"] for row in rows_two] == inputs
    for a, b in zip(rows_one, rows_two):
        assert {k: v for k, v in a.items() if k not in ("seconds", "output")} == \
               {k: v for k, v in b.items() if k not in ("seconds", "output")}

    # decoding with -j 2 gives the pixels of -j 1
    adpds = [str(tmp_path / "two" / f"p{i}.adpd") for i in range(3)]
    for j in ("1", "2"):
        r = run_cli(*decode_args(*adpds, "-o", str(tmp_path / f"png{j}"), "-j", j), home=tiny_store)
        assert r.returncode == 0, r.stderr.decode()
        assert len(r.stderr.decode().strip().splitlines()) == 3  # one summary line per file
    for i in range(3):
        assert (tmp_path / "png2" / f"p{i}.png").read_bytes() == (tmp_path / "png1" / f"p{i}.png").read_bytes()


def test_parallel_workers_are_capped_by_files_memory_and_stdio(monkeypatch) -> None:
    from adapdate_codec.cli import parallel

    jobs = [Job(f"{i}.png", f"{i}.adpd") for i in range(3)]
    said: list[str] = []
    monkeypatch.setattr(parallel, "available_memory", lambda: 100 * parallel.WORKER_MEMORY)
    assert parallel.worker_count(8, jobs, said.append) == 3 and said == []
    monkeypatch.setattr(parallel, "available_memory", lambda: 2 * parallel.WORKER_MEMORY + 1)
    assert parallel.worker_count(3, jobs, said.append) == 2
    assert said == ["adapdate: -j 3: memory for 2 workers (about 1.5 GiB each), using 2"]
    with pytest.raises(click.UsageError, match="stdin or stdout"):
        parallel.worker_count(2, [Job("-", "a.adpd"), *jobs], said.append)
    assert parallel.worker_count(4, [Job("-", "-")], said.append) == 1  # one file: no workers, stdio is fine
    monkeypatch.setattr(parallel, "cores", lambda: 4)
    said.clear()
    assert parallel.threads_per_worker(None, 2) == 2  # the cores shared out
    assert parallel.threads_per_worker(2, 2, said.append) == 2 and said == []
    assert parallel.threads_per_worker(3, 2, said.append) == 3  # --threads is per worker, even when too many
    assert said == ["adapdate: warning: -j 2 --threads 3: 6 threads on 4 cores is slower than sharing them out "
                    "(leave --threads out)"]
    assert parallel.threads_per_worker(None, 1) is None  # torch's default: every core


def test_a_worker_codes_nothing_more_once_the_batch_has_ended(monkeypatch) -> None:
    """Ctrl-C (or a fatal error) in one job: the jobs the executor already handed this worker are skipped."""
    import threading

    from adapdate_codec.cli import parallel
    from adapdate_codec.cli.report import Verbosity

    calls: list[str] = []

    def work(job, rep):
        calls.append(job.src)
        raise KeyboardInterrupt

    stop = threading.Event()
    monkeypatch.setattr(parallel, "_work", work)
    monkeypatch.setattr(parallel, "_stop", stop)
    with pytest.raises(KeyboardInterrupt):
        parallel._run_job(Job("a.png", "a.adpd"), "a.png", True, Verbosity.NORMAL, ())
    assert stop.is_set()
    assert parallel._run_job(Job("b.png", "b.adpd"), "b.png", True, Verbosity.NORMAL, ()) == (None, [], None)
    assert calls == ["a.png"]
