"""Large images are coded in chunks and tiles: every chunked path must give exactly what one pass over
the whole image gives (same integers, same bytes), or files stop decoding. Tiny models, small images:
chunk and tile sizes are shrunk instead, so that every boundary case shows up in a few latents."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from compressai.ans import BufferedRansEncoder, RansEncoder
from PIL import Image

from adapdate_codec import codec, container, entropy, tiling
from adapdate_codec.bundle import ModelBundle
from adapdate_codec.fixedpoint import FRAC, FixedPointRangeError
from adapdate_codec.imageio import Picture

DATA = Path(__file__).parent / "data"


def _latents(bundle, seed: int = 0, shape: tuple[int, int] = (11, 17)) -> tuple[torch.Tensor, torch.Tensor]:
    """Random integer y_hat (M, H, W) and h_s params for it, as the encoder sees them."""
    g = torch.Generator().manual_seed(seed)
    M, (H, W) = bundle.N, shape
    y_hat = torch.round(torch.randn(M, H, W, generator=g, dtype=torch.float64) * 6)
    z_hat = torch.round(torch.randn(M, -(-H // 4), -(-W // 4), generator=g, dtype=torch.float64) * 3)
    params = bundle.fixed_point.hyper(z_hat)[:, :H, :W].contiguous()
    return y_hat, params


def _one_pass_parameters(fp, y_hat: torch.Tensor, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole-latent computation the encoder used before chunking (masked conv over all positions)."""
    M = y_hat.shape[0]
    ctx = fp.context_full(y_hat)
    feats = torch.cat((params, ctx), 0).reshape(4 * M, -1).T
    return fp.entropy_parameters(feats)


def _one_call_encode_y(y_hat: torch.Tensor, params: torch.Tensor, fp, tables) -> bytes:
    """The encoder before chunking: whole-image lists handed to one RansEncoder call."""
    M, H, W = y_hat.shape
    scale_idx, means = _one_pass_parameters(fp, y_hat, params)
    index, mu = entropy.table_indexes(scale_idx, means, tables)
    sym = y_hat.reshape(M, -1).T.to(torch.int64) - mu
    order = np.concatenate([i * W + j for i, j in entropy.wavefront(H, W)])
    return RansEncoder().encode_with_indexes(sym[order].reshape(-1).to(torch.int32).tolist(),
                                             index[order].reshape(-1).to(torch.int32).tolist(),
                                             tables.cdfs, tables.lengths, tables.offsets)


@pytest.mark.parametrize("rows", [1, 2, 3, 100])
def test_chunked_entropy_parameters_equal_one_pass(tiny_bundle, rows):
    fp = tiny_bundle.fixed_point
    y_hat, params = _latents(tiny_bundle)
    ref_idx, ref_mean = _one_pass_parameters(fp, y_hat, params)
    chunks = list(fp.parameter_chunks(y_hat, params, rows_per_chunk=rows))
    assert [(r0, r1) for r0, r1, _, _ in chunks] == [(r, min(11, r + rows)) for r in range(0, 11, rows)]
    assert torch.equal(torch.cat([c[2] for c in chunks]), ref_idx)
    assert torch.equal(torch.cat([c[3] for c in chunks]), ref_mean)


def test_encoder_context_equals_decoder_context(tiny_bundle):
    """The encoder's row blocks and the decoder's gathered positions see the same taps."""
    fp = tiny_bundle.fixed_point
    y_hat, _ = _latents(tiny_bundle, seed=2, shape=(6, 9))
    M, H, W = y_hat.shape
    y_pad = torch.nn.functional.pad(y_hat * 2.0**FRAC, (2, 2, 2, 0))
    i, j = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    gathered = fp.context_rows(y_pad, i.reshape(-1), j.reshape(-1))
    assert torch.equal(fp.context_block(y_pad, H, W), gathered)
    ref = fp.context_full(y_hat).reshape(2 * M, -1).T
    assert torch.equal(gathered, ref)


@pytest.mark.parametrize("rows, per_call, threads", [(1, 1, 1), (3, 50, 1), (4, 10**9, 1), (1, 50, 3), (2, 7, 2)])
def test_chunked_encode_y_gives_the_one_call_bytes(tiny_bundle, rows, per_call, threads):
    fp, tables = tiny_bundle.fixed_point, tiny_bundle.cdf_y
    y_hat, params = _latents(tiny_bundle, seed=1, shape=(9, 14))
    y_hat[0, 4, 5] = 400  # far outside every table: escape (bypass) coding inside a chunk
    expected = _one_call_encode_y(y_hat, params, fp, tables)
    got = entropy.encode_y(y_hat, params, fp, tables, rows_per_chunk=rows, symbols_per_call=per_call,
                           threads=threads)
    assert got == expected
    assert torch.equal(entropy.decode_y(got, params, fp, tables), y_hat)


def test_buffered_coder_in_slices_equals_one_call():
    """The CompressAI property encode_y relies on, with bypass symbols at slice edges."""
    tables = entropy.CdfSet.from_packed(entropy.gaussian_tables())
    rng = np.random.default_rng(0)
    n = 5000
    idx = rng.integers(0, len(tables.cdfs), n).astype(np.int32)
    sym = rng.integers(-30, 30, n).astype(np.int32)
    sym[::97] = 3000
    one = RansEncoder().encode_with_indexes(sym.tolist(), idx.tolist(), tables.cdfs, tables.lengths, tables.offsets)
    enc = BufferedRansEncoder()
    for a in range(0, n, 97):
        enc.encode_with_indexes(sym[a : a + 97].tolist(), idx[a : a + 97].tolist(),
                                tables.cdfs, tables.lengths, tables.offsets)
    assert enc.flush() == one


def test_range_errors_match_one_pass(tiny_bundle):
    """A chunk-by-chunk range check must refuse exactly what the whole-latent check refused."""
    fp = tiny_bundle.fixed_point
    y_hat, params = _latents(tiny_bundle, shape=(7, 5))
    for where in (0, 6):  # in the first chunk, and in the last
        p = params.clone()
        p[3, where, 2] = 2.0**50
        with pytest.raises(FixedPointRangeError) as one:
            _one_pass_parameters(fp, y_hat, p)
        with pytest.raises(FixedPointRangeError) as chunked:
            list(fp.parameter_chunks(y_hat, p, rows_per_chunk=2))
        assert str(chunked.value) == str(one.value)
    y = y_hat.clone()
    y[1, 3, 3] = 2.0**45
    with pytest.raises(FixedPointRangeError):
        list(fp.parameter_chunks(y, params, rows_per_chunk=2))
    # in range: the same parameters, no error
    assert len(list(fp.parameter_chunks(y_hat, params, rows_per_chunk=2))) == 4
    # chunks run by several threads refuse the same, with the same message
    p = params.clone()
    p[3, 6, 2] = 2.0**50
    with pytest.raises(FixedPointRangeError) as one:
        _one_pass_parameters(fp, y_hat, p)
    with pytest.raises(FixedPointRangeError) as threaded:
        entropy.encode_y(y_hat, p, fp, tiny_bundle.cdf_y, rows_per_chunk=2, threads=3)
    assert str(threaded.value) == str(one.value)


@pytest.fixture
def small_tiles(monkeypatch):
    monkeypatch.setattr(tiling, "STRIP", 8)
    monkeypatch.setattr(tiling, "BAND_AREA", 24)


def _tiled_input() -> np.ndarray:
    return np.ascontiguousarray(np.tile(np.asarray(Image.open(DATA / "golden-input.png")), (4, 5, 1))[:190, :400])


# sha256 of the coded sections (z and y) of the files the codec wrote before chunked coding (tiles of 8
# latents, halo 4); the header is left out since it names the decoder (format 2) where it named the whole
# model. Same caveat as test_golden: the float analysis transform must give the same y_hat on this platform
TILED_GOLDEN = {
    "replicate": "f9782c928d2bc5785e0b5bca10343fd5d6a34818737993df1633db5ef1589211",
    "reflect": "d513b7d3773893ba9ace1e961237b56ff08700f602dd767421b7d33468d14c78",
}


@pytest.mark.parametrize("padding", sorted(TILED_GOLDEN))
def test_tiled_encode_gives_the_bytes_of_before(small_tiles, padding):
    bundle = ModelBundle.load(DATA / "golden-model.pt")
    data = codec.encode_picture(Picture(_tiled_input(), "RGB"), bundle, padding=padding)
    header, sections = container.unpack(data)
    assert header.fingerprint == bytes.fromhex(bundle.decoder_fingerprint)
    assert hashlib.sha256(b"".join(sections)).hexdigest() == TILED_GOLDEN[padding]


def test_uint8_tiles_equal_float_image(tiny_bundle, small_tiles):
    """Padding as uint8 and converting per tile gives the y of the float image, bit for bit."""
    px = _tiled_input()
    net = tiny_bundle.network()
    with torch.no_grad():
        x = codec._to_float(torch.from_numpy(px).permute(2, 0, 1)[None], "cpu")
        ref = tiling.analyze(net.g_a, tiling.pad(x, "reflect"))
        lat = codec.analyze(px, tiny_bundle, padding="reflect")
    assert torch.equal(lat.y_hat, torch.round(ref)[0].double())


def test_tiled_decode_equals_float_reconstruction(tiny_bundle, small_tiles):
    """Tiles quantized to uint8 as they come give the pixels of the full float reconstruction."""
    px = _tiled_input()
    data = codec.encode_picture(Picture(px, "RGB"), tiny_bundle)
    header, sections = container.unpack(data)
    lat = codec.decode_latents(sections, tiny_bundle, header.height, header.width)
    assert torch.equal(lat.y_hat, codec.analyze(px, tiny_bundle).y_hat)
    with torch.no_grad():
        x_hat = tiling.synthesize(tiny_bundle.network().g_s, lat.y_hat[None].float())
    expected = np.ascontiguousarray(
        tiling.crop(x_hat, *px.shape[:2])[0].clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy())
    assert np.array_equal(codec.decode_picture(data, lambda h: tiny_bundle).pixels, expected)


def test_decoding_leaves_the_thread_count_alone(tiny_bundle):
    data = codec.encode_picture(Picture(_tiled_input()[:64, :64], "RGB"), tiny_bundle)
    torch.set_num_threads(2)
    try:
        codec.decode_picture(data, lambda h: tiny_bundle)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)


def _one_pass_hyper(fp, z_hat: torch.Tensor) -> torch.Tensor:
    """h_s as earlier versions ran it: every layer over the whole input, then the pixel shuffle."""
    from adapdate_codec.fixedpoint import conv_full

    A = z_hat.double() * 2.0**FRAC
    for layer, shuffle in fp.hs:
        A = conv_full(layer, A, rows_per_chunk=10**6)
        if shuffle is not None:
            A = torch.nn.functional.pixel_shuffle(A[None], int(shuffle))[0]
    return A


def test_hyper_rows_equal_one_pass(tiny_bundle):
    fp = tiny_bundle.fixed_point
    z_hat = torch.round(torch.randn(8, 5, 7, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 4)
    ref = _one_pass_hyper(fp, z_hat)
    rows = fp.hyper_rows(z_hat)
    assert rows.shape == tuple(ref.shape) and rows.input.dtype == torch.float32  # small values: exact as float32
    assert torch.equal(fp.hyper(z_hat), ref)
    assert torch.equal(torch.cat([rows.rows(r, min(20, r + 3)) for r in range(0, 20, 3)], 1), ref)


def test_hyper_keeps_float64_where_float32_is_not_exact(tiny_bundle):
    fp = tiny_bundle.fixed_point
    z_hat = torch.round(torch.randn(8, 3, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64) * 4)
    z_hat[2, 1, 1] = 2.0**22  # activations beyond 2**24 after the FRAC scaling
    rows = fp.hyper_rows(z_hat)
    assert rows.input.dtype == torch.float64
    assert torch.equal(rows.rows(0, 12), _one_pass_hyper(fp, z_hat))


def test_hyper_range_error_is_that_of_one_pass(tiny_bundle):
    fp = tiny_bundle.fixed_point
    z_hat = torch.zeros(8, 3, 4, dtype=torch.float64)
    z_hat[0, 1, 1] = 2.0**40
    with pytest.raises(FixedPointRangeError) as one:
        _one_pass_hyper(fp, z_hat)
    with pytest.raises(FixedPointRangeError) as rows:
        fp.hyper_rows(z_hat)
    assert str(rows.value) == str(one.value)


def test_row_window_gives_every_row_asked_for():
    from adapdate_codec.fixedpoint import RowWindow, TensorRows

    g = torch.Generator().manual_seed(5)
    params = torch.randint(-1000, 1000, (4, 40, 6), generator=g).double()
    params[1, 30, 2] = 2.0**40  # not exact as float32: the window turns float64 from there on
    window = RowWindow(TensorRows(params), chunk=4)
    for lo, hi in [(0, 1), (0, 3), (1, 9), (5, 9), (8, 20), (19, 31), (30, 40), (39, 40)]:
        t, first = window.get(lo, hi)
        assert torch.equal(t[:, lo - first : hi - first].double(), params[:, lo:hi])
    assert t.dtype == torch.float64 and t.shape[1] <= 40 - 19


def test_decoder_keeps_latents_beyond_float32_exact(tiny_bundle):
    """The decoder holds y in float32 while that is exact; a latent of 2**24 + 1 turns it to float64."""
    fp, tables = tiny_bundle.fixed_point, tiny_bundle.cdf_y
    y_hat, params = _latents(tiny_bundle, seed=6, shape=(5, 6))
    y_hat[1, 3, 2] = 2.0**24 + 1
    data = entropy.encode_y(y_hat, params, fp, tables)
    back = entropy.decode_y(data, params, fp, tables)
    assert back.dtype == torch.float64 and torch.equal(back, y_hat)
    assert entropy.decode_y(entropy.encode_y(y_hat.clamp(-50, 50), params, fp, tables), params, fp, tables).dtype \
        == torch.float32
