"""Bit packing between uint8 0/1 arrays and little-endian uint64 words.

Bit order (used everywhere in :mod:`pipeline.gf2` and by the packed privacy-amplification API):
bit ``i`` of a sequence is ``(words[i // 64] >> (i % 64)) & 1`` -- least significant bit first.
For uint8 bytes the same order is ``(bytes[i // 8] >> (i % 8)) & 1``, i.e.
``numpy.packbits(bits, bitorder="little")``; viewing such bytes as little-endian uint64 gives the
word form, so the two packed forms are the same memory.
"""

from __future__ import annotations

import numpy as np

_ONE = np.uint64(1)


def words_for(n_bits: int) -> int:
    """Number of 64-bit words that hold ``n_bits`` bits."""
    return -(-n_bits // 64)


def pack_bits(bits: np.ndarray) -> np.ndarray:
    """uint8 0/1 array -> uint64 words, LSB first, padding bits zero."""
    packed = np.packbits(bits, bitorder="little")
    out = np.zeros(words_for(bits.size) * 8, dtype=np.uint8)
    out[: packed.size] = packed
    return out.view("<u8").astype(np.uint64, copy=False)


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
