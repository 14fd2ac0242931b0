"""Bit packing between uint8 0/1 arrays and little-endian uint64 words.

Bit order (used everywhere in :mod:`pipeline.gf2` and by the packed privacy-amplification API):
bit ``i`` of a sequence is ``(words[i // 64] >> (i % 64)) & 1`` -- least significant bit first.
For uint8 bytes the same order is ``(bytes[i // 8] >> (i % 8)) & 1``, i.e.
``numpy.packbits(bits, bitorder="little")``; viewing such bytes as little-endian uint64 gives the
word form, so the two packed forms are the same memory.
"""

from __future__ import annotations

import sys

import numpy as np
from numba import njit

_ONE = np.uint64(1)
# v * GATHER >> 56 moves the low bit of each of the 8 bytes of v to bits 0..7 of the top byte;
# all partial products are distinct powers of two, so no carries disturb it.
_GATHER = np.uint64(0x0102040810204080)
_LOW_BITS = np.uint64(0x0101010101010101)


def words_for(n_bits: int) -> int:
    """Number of 64-bit words that hold ``n_bits`` bits."""
    return -(-n_bits // 64)


@njit(cache=True, nogil=True)
def _pack_checked(eight_bytes, tail, out):  # pragma: no cover - numba
    """Pack 0/1 bytes (64 per word, read 8 at a time) into ``out``; False if any byte is > 1."""
    stray = np.uint64(0)
    for w in range(eight_bytes.size // 8):
        acc = np.uint64(0)
        for i in range(8):
            v = eight_bytes[8 * w + i]
            stray |= v
            acc |= ((v * _GATHER) >> np.uint64(56)) << np.uint64(8 * i)
        out[w] = acc
    if tail.size:
        acc = np.uint64(0)
        for i in range(tail.size):
            stray |= np.uint64(tail[i])
            acc |= np.uint64(tail[i] & 1) << np.uint64(i)
        out[out.size - 1] = acc
    return (stray & ~_LOW_BITS) == 0


def pack_bits(bits: np.ndarray, *, check: bool = False) -> np.ndarray:
    """uint8 0/1 array -> uint64 words, LSB first, padding bits zero.

    With ``check``, raise ValueError if a byte is not 0 or 1 (checked in the same pass).
    """
    if sys.byteorder != "little":  # pragma: no cover - the fast path reads bytes as LE words
        if check and bits.size and int(bits.max()) > 1:
            raise ValueError("bits hold values other than 0 and 1")
        packed = np.packbits(bits, bitorder="little")
        out = np.zeros(words_for(bits.size) * 8, dtype=np.uint8)
        out[: packed.size] = packed
        return out.view("<u8").astype(np.uint64)
    bits = np.ascontiguousarray(bits, dtype=np.uint8)
    full = bits.size // 64 * 64
    out = np.empty(words_for(bits.size), dtype=np.uint64)
    ok = _pack_checked(bits[:full].view(np.uint64), bits[full:], out)
    if check and not ok:
        raise ValueError("bits hold values other than 0 and 1")
    return out


def unpack_bits(words: np.ndarray, n_bits: int) -> np.ndarray:
    """uint64 words (LSB first) -> the first ``n_bits`` bits as a uint8 0/1 array."""
    raw = np.ascontiguousarray(words, dtype="<u8").view(np.uint8)
    return np.unpackbits(raw, count=n_bits, bitorder="little")


def mask_tail(words: np.ndarray, n_bits: int) -> np.ndarray:
    """``words_for(n_bits)`` words: a copy (zero-extended) with bits at and beyond n_bits cleared."""
    out = np.zeros(words_for(n_bits), dtype=np.uint64)
    kept = words[: out.size]
    out[: kept.size] = kept
    if n_bits % 64:
        out[-1] &= (_ONE << np.uint64(n_bits % 64)) - _ONE
    return out


def shift_up(words: np.ndarray, shift: int) -> np.ndarray:
    """Multiply by x^shift (0 <= shift < 64): one extra word, bits move toward higher indices."""
    out = np.zeros(words.size + 1, dtype=np.uint64)
    out[:-1] = words << np.uint64(shift)
    if shift:
        out[1:] |= words >> np.uint64(64 - shift)
    return out
