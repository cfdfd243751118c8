"""rans.py: the bounds-checked decoder reads CompressAI's bitstream exactly, and refuses what its encoder
cannot write, without reading outside the stream."""

from __future__ import annotations

import struct
import warnings

import numpy as np
import pytest

from adapdate_codec import entropy, rans
from adapdate_codec.errors import FormatError

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)
    from compressai.ans import BufferedRansEncoder, RansDecoder, RansEncoder


@pytest.fixture(scope="module")
def tables() -> entropy.CdfSet:
    return entropy.CdfSet.from_packed(entropy.gaussian_tables())


def _stream(tables, n: int, seed: int, escapes: float = 0.05):
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(tables.cdfs), n).tolist()
    wide = rng.random(n) < escapes  # far outside the tables: escape (bypass) coding
    sym = (rng.normal(0, 2, n) * np.where(wide, 400, 1)).round().astype(int).tolist()
    return idx, sym


@pytest.mark.parametrize("seed", range(6))
def test_same_symbols_as_compressai(tables, seed):
    idx, sym = _stream(tables, 50 + 700 * seed, seed)
    data = RansEncoder().encode_with_indexes(sym, idx, tables.cdfs, tables.lengths, tables.offsets)
    assert RansDecoder().decode_with_indexes(data, idx, tables.cdfs, tables.lengths, tables.offsets) == sym
    assert rans.decode_all(data, idx, tables.decoding) == sym
    bits = sum(tables.decoding.min_bits(i) for i in idx)
    assert rans.min_stream_bytes(bits) <= len(data)


def test_buffered_stream_decodes_in_pieces(tables):
    idx, sym = _stream(tables, 3000, 7)
    enc = BufferedRansEncoder()
    for a in range(0, 3000, 1000):
        enc.encode_with_indexes(sym[a:a + 1000], idx[a:a + 1000], tables.cdfs, tables.lengths, tables.offsets)
    data = enc.flush()
    dec = rans.RansDecoder(data)
    got = [v for a in range(0, 3000, 700) for v in dec.decode(idx[a:a + 700], tables.decoding)]
    dec.finish()
    assert got == sym


def test_refusals(tables):
    idx, sym = _stream(tables, 400, 3)
    data = RansEncoder().encode_with_indexes(sym, idx, tables.cdfs, tables.lengths, tables.offsets)
    cases = {
        "whole number of 32-bit words": data[:-1],
        "the coder's state alone": data[:4],
        "initial state is out of range": struct.pack("<Q", 5) + data[8:],
        "ends early": data[:-8],
        "left after the last symbol": data + b"\0" * 4,
    }
    for message, bad in cases.items():
        with pytest.raises(FormatError, match=message):
            rans.decode_all(bad, idx, tables.decoding)
    with pytest.raises(FormatError, match="ends early|initial state|left after|escaped value"):
        rans.decode_all(bytes(len(data)), idx, tables.decoding)


def test_every_outcome_is_a_clean_refusal_or_a_decode(tables):
    """Random and damaged streams: only RansError, never anything else, the same each time."""
    idx, sym = _stream(tables, 300, 4)
    good = RansEncoder().encode_with_indexes(sym, idx, tables.cdfs, tables.lengths, tables.offsets)
    rng = np.random.default_rng(0)
    for k in range(200):
        data = bytearray(good)
        if k % 2:
            data = bytearray(rng.bytes(4 * int(rng.integers(2, 60))))
        else:
            for _ in range(int(rng.integers(1, 4))):
                data[int(rng.integers(len(data)))] ^= 1 << int(rng.integers(8))
        outcomes = []
        for _ in range(2):
            try:
                outcomes.append(rans.decode_all(bytes(data), idx, tables.decoding))
            except rans.RansError as e:
                outcomes.append(str(e))
        assert outcomes[0] == outcomes[1]


def test_an_overlong_escape_is_refused():
    cdf = [0, 1 << 15, 1 << 16]  # symbol 1 is the escape of this 1-symbol table
    t = rans.Tables([cdf], [3], [0])
    # low 16 bits >= 2**15 pick the escape, and leave 15 in the low 4 bits: "more than 8 groups follow"
    x = (1 << 40) | (0x8000 + 15)
    with pytest.raises(FormatError, match="escaped value is too long"):
        rans.decode_all(struct.pack("<Q", x), [0], t)


@pytest.mark.parametrize("cdf", [[0, 65536, 65536], [1, 65536], [0, 65535], [0], [0, 40000, 30000, 65536]])
def test_invalid_tables_are_refused(cdf):
    with pytest.raises(ValueError, match="not a valid"):
        rans.Tables([cdf], [len(cdf)], [0])
