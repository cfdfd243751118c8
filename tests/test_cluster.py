"""`--ray`: batches coded on a Ray cluster, from and to object storage (adapdate_codec.ray, cluster/).

The listing and the command line's checks run without Ray. The rest runs on one real local Ray cluster
(2 CPU workers, token authentication, every port on 127.0.0.1), started once for this module, with an
S3-compatible server (moto) on 127.0.0.1 beside it; both stop when the module's tests end. The command
line runs in subprocesses that connect to that cluster, with the tiny model (tests/conftest.py).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from click.testing import CliRunner

from adapdate_codec.cluster.listing import Problem, Skipped, Task, list_tasks
from tests.test_cli_coding import decode_args, encode_args, run_cli, write_png

IMAGES = frozenset({".png"})


def names(folder: Path) -> list[str]:
    """Every file under `folder` (temp files included), relative."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def json_lines(stdout: bytes) -> list[dict]:
    lines = stdout.decode().splitlines()
    assert all(line.startswith("{") for line in lines), stdout.decode()[:2000]
    return [json.loads(line) for line in lines]


# --- listing and checks, without Ray ----------------------------------------------------------------------


def test_listing_keeps_the_layout_skips_hidden_and_existing(tmp_path: Path) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    for rel in ("b.png", "a.png", "a.jpg", ".hidden.png", "notes.txt", "sub/c.png", ".git/d.png"):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(b"x")
    (out / "sub").mkdir(parents=True)
    (out / "sub" / "c.adpd").write_bytes(b"done before")
    accept = {".png", ".jpg"}
    items = list(list_tasks((str(src),), str(out), ".adpd", accept, recursive=True, skip_existing=True))
    tasks = [i for i in items if isinstance(i, Task)]
    assert tasks == [Task(str(src / "a.jpg"), str(out / "a.adpd")), Task(str(src / "b.png"), str(out / "b.adpd"))]
    [problem] = [i for i in items if isinstance(i, Problem)]
    assert problem.source == str(src / "a.png") and "would both be written to" in problem.message
    assert [i for i in items if isinstance(i, Skipped)] == [Skipped(1)]
    # without -r: the top folder only; without --skip-existing: sub/c.png is a task again
    top = list(list_tasks((f"file://{src}",), str(out), ".adpd", {".png"}))
    assert [i.src for i in top if isinstance(i, Task)] == [f"file://{src}/a.png", f"file://{src}/b.png"]
    recursive = list(list_tasks((str(src),), str(out), ".adpd", {".png"}, recursive=True))
    assert Task(str(src / "sub" / "c.png"), str(out / "sub" / "c.adpd")) in recursive


def test_listing_problems_are_items_and_the_job_goes_on(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    write_png(tmp_path / "one.png")
    items = list(list_tasks((str(tmp_path / "empty"), str(tmp_path / "one.png"), "nosuch://x/y"), "o", ".adpd",
                            IMAGES))
    assert isinstance(items[0], Problem) and "no .png files in this folder (-r" in items[0].message
    assert items[1] == Task(str(tmp_path / "one.png"), str(Path("o", "one.adpd")))
    assert isinstance(items[2], Problem) and items[2].source == "nosuch://x/y"


@pytest.mark.parametrize("args, message", [
    (["encode", "x.png", "--ray", "local"], "--ray needs -o DIR"),
    (["encode", "-", "-o", "out", "--ray", "local"], "'-' (stdin or stdout)"),
    (["encode", "x.png", "-o", "x.adpd", "--ray", "local"], "names a file"),
    (["encode", "s3://bucket/x.png", "-o", "out"], "add --ray local"),
    (["decode", "x.adpd", "-o", "s3://bucket/out/"], "add --ray local"),
    (["encode", "x.png", "-o", "out", "-f", "--skip-existing"], "cannot be used together"),
])
def test_usage_errors(args: list[str], message: str) -> None:
    from adapdate_codec.cli import main

    r = CliRunner().invoke(main, args)
    assert r.exit_code == 2 and message in r.output, r.output


def test_without_ray_installed_one_line_says_how(tmp_path: Path) -> None:
    code = ("import sys; sys.modules['ray'] = None; from adapdate_codec.cli import main; "
            "sys.argv = ['adapdate', *sys.argv[1:]]; main()")
    r = subprocess.run([sys.executable, "-c", code, "encode", str(write_png(tmp_path / "a.png")), "-o",
                        str(tmp_path / "out"), "--ray", "local"], capture_output=True, timeout=120)
    assert r.returncode == 1
    assert r.stderr.decode().splitlines() == [
        "adapdate: error: --ray needs Ray, which is not installed: pip install 'adapdate[ray]'"]


def test_cli_imports_neither_ray_nor_fsspec() -> None:
    code = "import sys, adapdate_codec.cli; print(sorted({'ray', 'fsspec', 'torch'} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "[]"


def test_skip_existing_without_ray(tiny_store: Path, tmp_path: Path) -> None:
    srcs = [str(write_png(tmp_path / f"p{i}.png", seed=i)) for i in range(2)]
    out = tmp_path / "out"
    out.mkdir()
    (out / "p0.adpd").write_bytes(b"from an earlier run")
    r = run_cli(*encode_args(*srcs, "-o", str(out), "--skip-existing", "--json"), home=tiny_store)
    assert r.returncode == 0, r.stderr.decode()
    assert [row["input"] for row in json.loads(r.stdout)] == [srcs[1]]
    assert r.stderr.decode().splitlines() == ["adapdate: 1 file skipped: its output exists"]
    assert (out / "p0.adpd").read_bytes() == b"from an earlier run"


def test_a_worker_file_by_file(api_home: Path, tmp_path: Path) -> None:
    """One file on a worker, without Ray: existing outputs, a retry after a lost worker, a fatal error."""
    from adapdate_codec.cluster.work import CodecWorker, Settings
    from adapdate_codec.errors import ModelNotInstalledError

    src = str(write_png(tmp_path / "a.png"))
    task = Task(src, str(tmp_path / "out" / "a.adpd"))
    worker = CodecWorker(Settings("encode", model="tiny", threads=1))
    assert worker.ready() is None
    first = worker.run(task)
    assert first.result.error is None and first.result.bytes == (tmp_path / "out" / "a.adpd").stat().st_size
    again = worker.run(task)
    assert again.result.error == f"{task.dst} already exists (use -f/--force to overwrite, or --skip-existing)"
    assert worker.run(task, retry=True).skipped  # written by the lost worker: not an error
    assert CodecWorker(Settings("encode", model="tiny", skip_existing=True)).run(task).skipped
    assert CodecWorker(Settings("encode", model="tiny", force=True)).run(task).result.error is None
    assert isinstance(CodecWorker(Settings("encode", model="nosuch")).ready(), ModelNotInstalledError)
    gif = CodecWorker(Settings("decode")).run(Task(str(tmp_path / "out" / "a.adpd"), str(tmp_path / "a.gif")))
    assert "unknown image format" in gif.result.error


def test_worker_count_follows_the_cluster() -> None:
    from adapdate_codec.cluster.work import Settings, worker_count
    from adapdate_codec.errors import ClusterError

    gib = 2**30
    cpu = Settings("encode")
    assert worker_count({"CPU": 8, "memory": 100 * gib}, cpu, None) == 8
    assert worker_count({"CPU": 8, "memory": 4 * gib}, cpu, None) == 2  # 1.5 GiB each
    assert worker_count({"CPU": 8, "memory": 100 * gib}, Settings("encode", threads=3), None) == 2
    assert worker_count({"CPU": 8, "memory": 100 * gib}, cpu, 3) == 3  # -j 3
    assert worker_count({"CPU": 8, "GPU": 2, "memory": 100 * gib}, Settings("decode", device="cuda"), None) == 2
    with pytest.raises(ClusterError, match="no GPUs"):
        worker_count({"CPU": 8}, Settings("decode", device="cuda"), None)
    with pytest.raises(ClusterError, match="no room for one worker"):
        worker_count({"CPU": 1, "memory": gib}, cpu, None)


# --- a real local cluster, and an S3 server ---------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tiny_store: Path, tmp_path_factory: pytest.TempPathFactory):
    """A 2-CPU Ray cluster and a moto S3 server, both on 127.0.0.1; yields (Ray address, S3 endpoint).

    The environment set here is the cluster's (its workers inherit it: the models, S3's endpoint and
    credentials) and the command line's (the token). Nothing in this session may import Ray before."""
    assert "ray" not in sys.modules, "Ray was imported before its settings were made"
    from moto.server import ThreadedMotoServer

    s3 = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    s3.start()
    host, port = s3.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    with pytest.MonkeyPatch.context() as mp:
        for name, value in {
            "ADAPDATE_HOME": str(tiny_store),
            "OMP_NUM_THREADS": "1",
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # every Ray server on 127.0.0.1, not the machine's address
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": secrets.token_hex(16),  # this cluster's token only (nothing in ~/.ray)
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": endpoint,
        }.items():
            mp.setenv(name, value)
        import ray  # after the environment is set: Ray reads some of it when imported

        temp = tmp_path_factory.mktemp("ray")
        ctx = ray.init(num_cpus=2, include_dashboard=False, object_store_memory=80 << 20, _memory=4 << 30,
                       _temp_dir=str(temp), logging_level=logging.ERROR, log_to_driver=False)
        try:
            yield ctx.address_info["gcs_address"], endpoint
        finally:
            ray.shutdown()
            s3.stop()


def test_ray_codes_a_folder_as_one_process_does(tiny_store: Path, cluster, tmp_path: Path) -> None:
    """Encode and decode with --ray: the files of -j 1 byte for byte, the same error line and rows."""
    address, _ = cluster
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    for i in range(4):
        write_png(src / ("sub" if i == 3 else "") / f"p{i}.png", h=24 + 8 * i, w=40, seed=i)
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    one = run_cli(*encode_args(str(src), "-r", "-o", str(tmp_path / "one"), "--json", "-j", "1"), home=tiny_store)
    on_ray = run_cli(*encode_args(str(src), "-r", "-o", str(tmp_path / "ray"), "--json", "--ray", address),
                     home=tiny_store)
    for r in (one, on_ray):
        assert r.returncode == 1 and "Traceback" not in r.stderr.decode(), r.stderr.decode()
        assert f"adapdate: error: {src / 'broken.png'}: not an image file Pillow can read" in r.stderr.decode()
    assert on_ray.stderr.decode().splitlines()[-1].endswith(": 4 written, 0 skipped, 1 failed")
    expected = ["p0.adpd", "p1.adpd", "p2.adpd", "sub/p3.adpd"]
    assert names(tmp_path / "ray") == names(tmp_path / "one") == expected
    for name in expected:
        assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "one" / name).read_bytes()
    rows = {row["input"]: row for row in json_lines(on_ray.stdout)}  # one JSON object per line
    assert len(rows) == 5
    for row in json.loads(one.stdout):
        assert {k: v for k, v in rows[row["input"]].items() if k not in ("seconds", "output")} == \
               {k: v for k, v in row.items() if k not in ("seconds", "output")}

    one = run_cli(*decode_args(str(tmp_path / "one"), "-r", "-o", str(tmp_path / "png1"), "-j", "1"), home=tiny_store)
    on_ray = run_cli(*decode_args(str(tmp_path / "ray"), "-r", "-o", str(tmp_path / "png2"), "--ray", address),
                     home=tiny_store)
    assert one.returncode == 0 and on_ray.returncode == 0, on_ray.stderr.decode()
    lines = on_ray.stderr.decode().splitlines()
    assert len(lines) == 5 and lines[-1].endswith(": 4 written, 0 skipped, 0 failed")  # a summary per file
    assert names(tmp_path / "png2") == ["p0.png", "p1.png", "p2.png", "sub/p3.png"]
    for name in names(tmp_path / "png1"):
        assert (tmp_path / "png2" / name).read_bytes() == (tmp_path / "png1" / name).read_bytes()


def _worker_pids() -> list[int]:
    """Processes of the cluster's coding actors (Ray names them ray::CodecWorker...)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and (proc / "cmdline").read_bytes().startswith(b"ray::CodecWorker"):
                pids.append(int(proc.name))
        except OSError:
            pass
    return pids


def _start(args: list[str], home: Path) -> subprocess.Popen:
    env = {**os.environ, "ADAPDATE_HOME": str(home), "OMP_NUM_THREADS": "1"}
    # Ctrl-C as a terminal gives it, also where the tests run in the background of a shell (which starts
    # them with SIGINT ignored, and Python then keeps it ignored)
    return subprocess.Popen([sys.executable, "-m", "adapdate_codec", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for_outputs(folder: Path, count: int, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while len(list(folder.glob("*.adpd"))) < count:
        assert proc.poll() is None, proc.communicate()[1].decode()
        assert time.monotonic() < deadline, "no outputs in time"
        time.sleep(0.02)


@pytest.fixture
def photos(tmp_path: Path) -> list[Path]:
    """Enough files, large enough (for the tiny model), that a job is still running when it is disturbed."""
    (tmp_path / "src").mkdir()
    return [write_png(tmp_path / "src" / f"p{i:02}.png", h=192, w=192, seed=i) for i in range(24)]


def test_a_lost_worker_files_are_coded_again(tiny_store: Path, cluster, photos: list[Path], tmp_path: Path) -> None:
    address, _ = cluster
    out = tmp_path / "out"
    proc = _start(encode_args(str(tmp_path / "src"), "-o", str(out), "--json", "--ray", address), tiny_store)
    _wait_for_outputs(out, 1, proc)
    deadline = time.monotonic() + 120  # on a busy machine the second worker may still be starting
    while len(pids := _worker_pids()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(pids) == 2
    os.kill(pids[0], signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=300)
    err = stderr.decode()
    assert proc.returncode == 0, err
    assert "adapdate: warning: a Ray worker stopped (out of memory, or its machine lost?); its " in err
    reported = [row["input"] for row in json_lines(stdout)]
    assert len(reported) == len(set(reported))  # each file once
    skipped = len(photos) - len(reported)  # at most the file the lost worker had written before it died
    assert skipped <= 1 and err.splitlines()[-1].endswith(f": {len(reported)} written, {skipped} skipped, 0 failed")
    assert [n for n in names(out)] == [p.with_suffix(".adpd").name for p in photos]  # no temp file left


def test_an_interrupted_job_is_finished_with_skip_existing(tiny_store: Path, cluster, photos: list[Path],
                                                           tmp_path: Path) -> None:
    import adapdate_codec

    address, _ = cluster
    out = tmp_path / "out"
    proc = _start(encode_args(str(tmp_path / "src"), "-o", str(out), "--ray", address), tiny_store)
    _wait_for_outputs(out, 3, proc)
    proc.send_signal(signal.SIGINT)  # Ctrl-C
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130 and stderr.decode().splitlines()[-1] == "adapdate: interrupted"
    done = {p.name for p in out.glob("*.adpd")}
    assert 3 <= len(done) < len(photos)

    r = run_cli(*encode_args(str(tmp_path / "src"), "-o", str(out), "--skip-existing", "--json", "--ray", address),
                home=tiny_store)
    assert r.returncode == 0, r.stderr.decode()
    assert sorted(Path(row["output"]).name for row in json_lines(r.stdout)) == \
        sorted({p.with_suffix(".adpd").name for p in photos} - done)
    assert r.stderr.decode().splitlines()[-1].endswith(
        f": {len(photos) - len(done)} written, {len(done)} skipped, 0 failed")
    adapdate_codec.api.clear_model_cache()  # ADAPDATE_HOME is the tiny store's (see `cluster`)
    rerun = sorted({p.with_suffix(".adpd").name for p in photos} - done)
    for name in [*sorted(done), *rerun[:2]]:  # the stopped job's outputs whole, as the library writes them
        assert (out / name).read_bytes() == adapdate_codec.encode(tmp_path / "src" / name.replace(".adpd", ".png"),
                                                                  model="tiny")


def test_s3_and_file_urls(tiny_store: Path, cluster, tmp_path: Path) -> None:
    """From S3 to S3 (encode), then S3 to file:// (decode); a rerun with --skip-existing codes nothing."""
    import s3fs

    import adapdate_codec

    address, _ = cluster
    fs = s3fs.S3FileSystem()  # the endpoint and credentials from the environment, as on the workers
    fs.mkdir("photos")
    local = tmp_path / "local"
    (local / "sub").mkdir(parents=True)
    for i in range(3):
        path = write_png(local / ("sub" if i == 2 else "") / f"p{i}.png", h=24, w=32 + 8 * i, seed=i)
        fs.pipe_file(f"photos/in/{path.relative_to(local)}", path.read_bytes())
    r = run_cli(*encode_args("s3://photos/in", "s3://photos/in/missing.png", "-r", "-o", "s3://photos/out/",
                             "--json", "--ray", address), home=tiny_store)
    assert r.returncode == 1
    assert "adapdate: error: s3://photos/in/missing.png: no such file" in r.stderr.decode()
    assert sorted(fs.find("photos/out")) == ["photos/out/p0.adpd", "photos/out/p1.adpd", "photos/out/sub/p2.adpd"]
    assert {row["input"] for row in json_lines(r.stdout)} == {
        "s3://photos/in/p0.png", "s3://photos/in/p1.png", "s3://photos/in/sub/p2.png", "s3://photos/in/missing.png"}
    adapdate_codec.api.clear_model_cache()  # ADAPDATE_HOME is the tiny store's (see `cluster`)
    for name in ("p0", "p1", "sub/p2"):  # what the library (and so -j 1, see above) writes
        assert fs.cat_file(f"photos/out/{name}.adpd") == adapdate_codec.encode(local / f"{name}.png", model="tiny")

    r = run_cli(*decode_args("s3://photos/out", "-r", "-o", f"file://{tmp_path}/png", "--ray", address),
                home=tiny_store)
    assert r.returncode == 0, r.stderr.decode()
    assert names(tmp_path / "png") == ["p0.png", "p1.png", "sub/p2.png"]
    for name in ("p0", "p1", "sub/p2"):
        decoded = np.asarray(adapdate_codec.decode(fs.cat_file(f"photos/out/{name}.adpd")))
        assert np.array_equal(np.asarray(Image.open(tmp_path / "png" / f"{name}.png")), decoded)

    r = run_cli(*encode_args("s3://photos/in", "-r", "-o", "s3://photos/out", "--skip-existing", "--json",
                             "--ray", address), home=tiny_store)
    assert r.returncode == 0 and r.stdout == b""
    assert r.stderr.decode().splitlines()[-1].endswith(": 0 written, 3 skipped, 0 failed")


def test_python_api_on_the_cluster(tiny_store: Path, cluster, tmp_path: Path) -> None:
    """encode_dataset / decode_dataset in this process, on the Ray it is connected to."""
    from adapdate_codec.ray import decode_dataset, encode_dataset

    (tmp_path / "src").mkdir()
    for i in range(3):
        write_png(tmp_path / "src" / f"p{i}.png", seed=i)
    seen = []
    summary = encode_dataset(str(tmp_path / "src"), str(tmp_path / "out"), model="tiny", on_result=seen.append)
    assert (summary.written, summary.skipped, summary.failed) == (3, 0, 0)
    assert sorted(r.input for r in seen) == [str(tmp_path / "src" / f"p{i}.png") for i in range(3)]
    assert all(r.model == "tiny" and r.bytes == (tmp_path / "out" / Path(r.output).name).stat().st_size for r in seen)
    summary = decode_dataset(str(tmp_path / "out"), str(tmp_path / "png"), workers=1)
    assert (summary.written, summary.failed) == (3, 0)
    assert names(tmp_path / "png") == ["p0.png", "p1.png", "p2.png"]
