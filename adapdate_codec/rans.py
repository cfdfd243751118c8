"""A bounds-checked decoder of CompressAI's rANS bitstream (the encoder stays CompressAI's).

Why not CompressAI's own ``RansDecoder``: it trusts its input. It reads 32-bit words past the end of the
string it is given (``Rans64DecInit`` reads 8 bytes even from a shorter one), and its escape ("bypass")
mode loops a data-dependent number of times, each loop reading on. A damaged or hostile section made it
read outside its buffer: crashes (SIGSEGV) and outcomes that changed from run to run.

This decoder reads the same bitstream, symbol for symbol (CompressAI's ``rans_interface.cpp`` +
ryg_rans ``rans64.h``: 64-bit state, 32-bit words, 16-bit CDFs, escapes as 4-bit groups), and refuses
what CompressAI's encoder can never write, before acting on it:

* a stream that is not a whole number of 32-bit words, or shorter than the 8-byte initial state;
* an initial state below ``L = 2**31`` (the encoder's state never is; from it on the state stays in
  ``[L, 2**64)`` whatever the bytes, so every renormalisation reads exactly one word);
* a read past the last word;
* an escape with more than 8 groups of 4 bits, or a value of 2**31 or more (the encoder codes an int32);
* at the end (``finish``): unread words, or a final state other than ``L`` (the encoder's initial state).

Every refusal is a ``RansError`` (a ``FormatError``); tables are checked once, by ``Tables``. It never reads outside the words it holds, every
loop is bounded by the number of symbols asked for (at most 9 extra 4-bit reads per symbol), and it is
plain Python integers: the same bytes always give the same outcome.
"""

from __future__ import annotations

import math
import sys
from array import array
from bisect import bisect_right
from typing import Sequence

from adapdate_codec.errors import FormatError

PRECISION = 16  # CDF precision (bits)
RANS_L = 1 << 31  # lower bound of the normalised state (RANS64_L)
BYPASS_BITS = 4
_BYPASS_MAX = (1 << BYPASS_BITS) - 1
MAX_BYPASS_GROUPS = 8  # an int32 escape value needs at most 8 groups of 4 bits
_MASK = (1 << PRECISION) - 1
# A symbol can lower log2(state) by less than its cost -log2(freq / 2**16), by at most this much: with
# q = x >> 16 >= 2**15, x' = freq * q + r (r < freq) < freq * (q + 1), and a refill (x' << 32) | word
# adds at most log2(1 + 1 / x') more than 32 bits, x' >= q.
_SLACK_BITS = 2 * math.log2(1 + 2.0 ** (PRECISION - 31))


class RansError(FormatError):
    """A rANS section that CompressAI's encoder cannot have written."""


class Tables:
    """CDF tables as the decoder uses them: per table (cdf, escape symbol, offset), checked once.

    Each CDF must have 2+ entries, start at 0, end at 2**16 and increase strictly (CompressAI's coder
    assumes this and checks it only with assert, compiled out); ValueError otherwise."""

    def __init__(self, cdfs: Sequence[Sequence[int]], lengths: Sequence[int], offsets: Sequence[int]) -> None:
        if not len(cdfs) == len(lengths) == len(offsets):
            raise ValueError("as many CDFs, lengths and offsets are needed")
        top = 1 << PRECISION
        for i, (cdf, n) in enumerate(zip(cdfs, lengths)):
            if len(cdf) != n or n < 2 or cdf[0] != 0 or cdf[-1] != top or any(b <= a for a, b in zip(cdf, cdf[1:])):
                raise ValueError(f"table {i} is not a valid {PRECISION}-bit CDF of {n} entries")
        self.entries = [(list(c), n - 2, int(o)) for c, n, o in zip(cdfs, lengths, offsets)]

    def __len__(self) -> int:
        return len(self.entries)

    def min_bits(self, i: int) -> float:
        return min_bits_per_symbol(self.entries[i][0])


def min_bits_per_symbol(cdf: Sequence[int]) -> float:
    """A lower bound on what any symbol coded with `cdf` consumes from the stream, in bits: the cost of
    its most probable symbol, less the renormalisation slack (may be 0 for near-certain symbols)."""
    top = max(b - a for a, b in zip(cdf, cdf[1:]))
    return max(0.0, PRECISION - math.log2(top) - _SLACK_BITS)


def min_stream_bytes(bits: float) -> int:
    """The fewest bytes of a stream whose symbols consume at least `bits` bits (see min_bits_per_symbol):
    with P = log2(state) + 32 * (words not read yet), P starts at most at 32 * words, ends at 31 (the final
    state is L) and only symbols lower it."""
    return 4 * max(2, math.ceil((bits + 31) / 32))


def _words(data: bytes) -> array:
    if len(data) % 4:
        raise RansError(f"corrupted payload: {len(data)} bytes is not a whole number of 32-bit words")
    if len(data) < 8:
        raise RansError(f"corrupted payload: {len(data)} bytes, the coder's state alone takes 8")
    words = array("I")
    if words.itemsize != 4:  # pragma: no cover - every platform CPython supports has a 4-byte "I"
        words = array("L")
    words.frombytes(data)
    if sys.byteorder != "little":  # pragma: no cover
        words.byteswap()
    return words


class RansDecoder:
    """Decodes symbols from one stream, in calls of any size (state and position are kept between calls)."""

    def __init__(self, data: bytes) -> None:
        self._words = _words(data)
        x = self._words[0] | (self._words[1] << 32)
        if x < RANS_L:
            raise RansError("corrupted payload: the coder's initial state is out of range")
        self._x, self._pos = x, 2

    def decode(self, indexes: Sequence[int], tables: Tables) -> list[int]:
        """One symbol per entry of `indexes` (a table number), as CompressAI's decode_stream."""
        words, n_words, entries, search = self._words, len(self._words), tables.entries, bisect_right
        x, pos = self._x, self._pos
        out = [0] * len(indexes)
        i = 0
        for c in indexes:  # the hot loop: kept flat, locals only
            cdf, escape, offset = entries[c]
            cum = x & _MASK
            s = search(cdf, cum) - 1  # cdf[s] <= cum < cdf[s + 1]: cdf[0] = 0, cdf[-1] = 2**16
            start = cdf[s]
            x = (cdf[s + 1] - start) * (x >> PRECISION) + cum - start
            if x < RANS_L:
                if pos == n_words:
                    raise RansError("corrupted payload: the coded data ends early")
                x = (x << 32) | words[pos]
                pos += 1
            if s == escape:  # the value follows in 4-bit groups
                x, pos, s = self._bypass(x, pos, escape)
            out[i] = s + offset
            i += 1
        self._x, self._pos = x, pos
        return out

    def _bypass(self, x: int, pos: int, max_value: int) -> tuple[int, int, int]:
        groups, x, pos = self._bits(x, pos)
        if groups > MAX_BYPASS_GROUPS:  # also covers CompressAI's "15 means more groups follow"
            raise RansError("corrupted payload: an escaped value is too long")
        raw = 0
        for j in range(groups):
            val, x, pos = self._bits(x, pos)
            raw |= val << (j * BYPASS_BITS)
        if raw >= 1 << 31:
            raise RansError("corrupted payload: an escaped value is out of range")
        value = -(raw >> 1) - 1 if raw & 1 else (raw >> 1) + max_value
        return x, pos, value

    def _bits(self, x: int, pos: int) -> tuple[int, int, int]:
        val = x & _BYPASS_MAX
        x >>= BYPASS_BITS
        if x < RANS_L:
            if pos == len(self._words):
                raise RansError("corrupted payload: the coded data ends early")
            x = (x << 32) | self._words[pos]
            pos += 1
        return val, x, pos

    def finish(self) -> None:
        """Every word read and the state back where the encoder started: the stream was exactly this."""
        if self._pos != len(self._words):
            raise RansError(f"corrupted payload: {4 * (len(self._words) - self._pos)} bytes left after the last symbol")
        if self._x != RANS_L:
            raise RansError("corrupted payload: the coder did not end in its initial state")


def decode_all(data: bytes, indexes: Sequence[int], tables: Tables) -> list[int]:
    """Decode a whole stream (CompressAI's decode_with_indexes), checking that it ends exactly."""
    dec = RansDecoder(data)
    out = dec.decode(indexes, tables)
    dec.finish()
    return out
