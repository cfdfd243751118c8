"""Hostile inputs: declared sizes, the pixel limit, outputs that cannot or must not be written, damaged
update manifests. Each is refused at once with one line (the fuzz harness covers the rest at random)."""

from __future__ import annotations

import hashlib
import struct
import time
import zlib

import pytest
from click.testing import CliRunner

from adapdate_codec import codec, container, update
from adapdate_codec.cli import main
from adapdate_codec.errors import FormatError, ImageTooLargeError, UpdateError
from adapdate_codec.fixedpoint import FixedPointRangeError
from test_cli_coding import assert_one_error_line, encode_args, run_cli, write_png


def small_file_declaring(bundle, width: int, height: int, size: int = 100) -> bytes:
    """A valid container (CRC and all) of `size` bytes whose header declares width x height."""
    header = container.Header(bundle.name, bundle.quality, bundle.fingerprint_bytes, width, height, "RGB", "replicate")
    empty = len(container.pack(header, [b"", b""]))
    z = b"\x00\x00\x00\x80" * ((size - empty) // 8)
    data = container.pack(header, [z, b"\x00" * (size - empty - len(z))])
    assert len(data) == size
    return data


def test_100_bytes_declaring_65536x65536_are_refused_at_once(tiny_bundle):
    data = small_file_declaring(tiny_bundle, 65536, 65536)

    def resolve(header):
        return tiny_bundle

    start = time.perf_counter()
    with pytest.raises(ImageTooLargeError, match="65536x65536 is 4,294,967,296 pixels, above the limit"):
        codec.decode_picture(data, resolve)
    # without a pixel limit: the z section is far too short for that many latents, refused before any work
    with pytest.raises(FormatError, match="cannot hold 8x1024x1024 coded z latents"):
        codec.decode_picture(data, resolve, max_pixels=0)
    assert time.perf_counter() - start < 1.0


def test_cli_refuses_the_100_byte_file_before_loading_anything(tiny_store, tiny_bundle, tmp_path):
    from adapdate_codec.store import ModelStore

    bundle = ModelStore(tiny_store).get("tiny", 3)
    src = tmp_path / "bomb.adpd"
    src.write_bytes(small_file_declaring(bundle, 65536, 65536))
    start = time.perf_counter()
    r = run_cli("decode", str(src), "-o", str(tmp_path / "out.png"), home=tiny_store)
    elapsed = time.perf_counter() - start
    assert_one_error_line(r, "bomb.adpd", "too large: 65536x65536", "--max-pixels")
    assert not (tmp_path / "out.png").exists()
    assert elapsed < 10  # a fresh interpreter; the refusal itself comes before torch is imported


def test_decode_pixel_limit_by_option_and_environment(tiny_store, tmp_path, monkeypatch):
    src = write_png(tmp_path / "p.png", h=24, w=40)
    r = run_cli(*encode_args(str(src)), home=tiny_store)
    assert r.returncode == 0, r.stderr.decode()
    adpd, out = tmp_path / "p.adpd", tmp_path / "out.png"
    assert_one_error_line(run_cli("decode", str(adpd), "-o", str(out), "--max-pixels", "959", home=tiny_store),
                          "40x24 is 960 pixels, above the limit of 959")
    monkeypatch.setenv("ADAPDATE_MAX_PIXELS", "100")
    assert_one_error_line(run_cli("decode", str(adpd), "-o", str(out), home=tiny_store), "limit of 100 ")
    r = run_cli("decode", str(adpd), "-o", str(out), "--max-pixels", "0", home=tiny_store)  # 0: no limit
    assert r.returncode == 0 and out.exists(), r.stderr.decode()
    monkeypatch.setenv("ADAPDATE_MAX_PIXELS", "many")
    assert_one_error_line(run_cli("decode", str(adpd), "-o", str(out), "-f", home=tiny_store),
                          "ADAPDATE_MAX_PIXELS must be a whole number")


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b""))


def test_encode_refuses_a_huge_declared_image_at_once(tiny_store, tmp_path):
    src = tmp_path / "huge.png"
    src.write_bytes(_png_header_only(12000, 12000))
    start = time.perf_counter()
    assert_one_error_line(run_cli(*encode_args(str(src)), home=tiny_store), "huge.png", "too large: 12000x12000")
    assert time.perf_counter() - start < 10 and not (tmp_path / "huge.adpd").exists()


def test_encode_never_overwrites_its_input(tiny_store, tmp_path):
    src = write_png(tmp_path / "x.png")
    before = src.read_bytes()
    assert_one_error_line(run_cli(*encode_args(str(src), "-o", str(src), "-f"), home=tiny_store),
                          "is also the input")
    assert src.read_bytes() == before


def test_encode_checks_the_output_folder_before_working(tiny_store, tmp_path):
    src = write_png(tmp_path / "x.png")
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the output folder should be")
    assert_one_error_line(run_cli(*encode_args(str(src), "-o", str(blocker / "x.adpd")), home=tiny_store),
                          "cannot write", "not-a-folder")


def test_check_writable_probes_the_folder(tmp_path):
    from adapdate_codec.errors import OutputError
    from adapdate_codec.fileio import check_writable

    check_writable(tmp_path / "new" / "deeper" / "out.adpd", force=False)  # created later, by the write
    assert not (tmp_path / "new").exists() and not list(tmp_path.iterdir())  # the probe leaves nothing
    (tmp_path / "f").write_text("")
    with pytest.raises(OutputError, match="cannot write"):
        check_writable(tmp_path / "f" / "out.adpd", force=True)


def test_fixed_point_range_errors_are_format_errors(tiny_bundle, monkeypatch):
    from adapdate_codec.imageio import Picture
    import numpy as np

    data = codec.encode_picture(Picture(np.zeros((16, 16, 3), np.uint8), "RGB"), tiny_bundle)

    def out_of_range(z_hat):
        raise FixedPointRangeError("fixed-point accumulator bound 1e17 exceeds 2^52")

    # the decoder enters the integer path through hyper_rows (rows made as the wavefront needs them)
    monkeypatch.setattr(type(tiny_bundle.fixed_point), "hyper_rows", lambda self, z: out_of_range(z))
    with pytest.raises(FormatError, match="outside the model's fixed-point range"):
        codec.decode_picture(data, lambda h: tiny_bundle)


# -- update manifests ------------------------------------------------------------------------------------
def _update_with_manifest_text(text: bytes, payload: bytes = b"x") -> bytes:
    raw = struct.pack(">4sHI", update.MAGIC, update.FORMAT_VERSION, len(text)) + text + payload
    return raw + hashlib.sha256(raw).digest()


@pytest.mark.parametrize("text, message", [
    (b'{"format": 1, "training": ' + b"[" * 50000 + b"]" * 50000 + b"}", "nests deeper than 16"),
    (b'{"format": 1, "lmbda": 1' + b"0" * 400 + b"}", "manifest is invalid"),
])
def test_hostile_manifests_are_one_line_refusals(text, message, tmp_path):
    data = _update_with_manifest_text(text)
    with pytest.raises(UpdateError, match=message):
        update.parse_update(data)
    path = tmp_path / "bad.nnc"
    path.write_bytes(data)
    r = CliRunner().invoke(main, ["model", "info", str(path)])
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1 and message in r.output


def test_json_depth_ignores_brackets_inside_strings():
    assert update._json_depth(b'{"a": "[[[[{{{{", "b": [1, {"c": "\\"]]]"}]}') == 3


def test_model_patch_prints_nothing_on_stderr(fresh_store, tiny_bundle, tmp_path):
    """No third-party FutureWarning (torch.jit.script, when compressai is imported) on a successful run."""
    from adapdate_codec.store import ModelStore
    from model_fixtures import make_checkpoint

    make_checkpoint(tiny_bundle, tmp_path / "a.ckpt")
    (tmp_path / "u.nnc").write_bytes(update.export_update(tmp_path / "a.ckpt", ModelStore(fresh_store)).to_bytes())
    r = run_cli("model", "patch", str(tmp_path / "u.nnc"), home=fresh_store)
    assert r.returncode == 0 and r.stderr.decode() == "", r.stderr.decode()
    assert b"patched tiny q3" in r.stdout


# -- NNCodec runs in a child with limits ------------------------------------------------------------------
def _crash(data):
    import os
    import signal

    os.kill(os.getpid(), signal.SIGFPE)  # what a crafted payload made NNCodec's C++ decoder do


def _spin(data):
    while True:
        pass


@pytest.mark.parametrize("decoder, message", [(_crash, "its decoder crashed: SIGFPE"),
                                              (_spin, "decoding it ran over 1 s of CPU time")])
def test_nncodec_failures_are_one_line_update_errors(monkeypatch, decoder, message):
    from adapdate_codec import nnc

    monkeypatch.setattr(nnc, "_decompress_here", decoder)
    monkeypatch.setattr(nnc, "DECODE_CPU_SECONDS", 1.0)
    with pytest.raises(UpdateError, match=message):
        nnc.decompress(b"\x00" * 64)


def test_nncodec_results_come_back_exactly(monkeypatch):
    import numpy as np

    from adapdate_codec import nnc

    tensors = {"a.adapter.0.weight": np.arange(24, dtype=np.float32).reshape(2, 3, 4), "b": np.float32([1.5]),
               "é": np.zeros((0, 3), np.float32)}
    monkeypatch.setattr(nnc, "_decompress_here", lambda data: tensors)
    out = nnc.decompress(b"x")
    assert out.keys() == tensors.keys() and all(np.array_equal(out[k], v) and out[k].shape == v.shape
                                                for k, v in tensors.items())
    with pytest.raises(UpdateError, match="malformed"):
        nnc._unpack(nnc._pack(tensors)[:-1])
