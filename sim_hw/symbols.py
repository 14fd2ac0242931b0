"""Alice's symbols: a counter-based generator, the single source of truth for sim_hw.

Each slot's symbol byte (docs/contracts.md §1.1: bit 0 basis, 0 = Z, 1 = X; bit 1 bit value;
bits 2-3 intensity class, 0 signal, 1 decoy, 2 vacuum) is a pure function of the 64-bit key that
Alice's node sets (``:SOUR:RAND:KEY``), the slot index and the source probabilities. So the
emulated source can answer for any slot list without storing the stream, and the photon
simulation (``sim_hw.physics``) sees the same symbols.

Generator: two rounds of the splitmix64 finaliser (Steele, Lea, Flood, OOPSLA 2014) over
``slot * golden`` with two sub-keys derived from the key. One 64-bit word per slot: the high 32
bits choose the class, bits 1..31 the basis, bit 0 the bit value. Simulation only: a production
transmitter must use a physical random source.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_KEY_B = np.uint64(0x5851F42D4C957F2D)
MASK64 = (1 << 64) - 1


class SlotRangeError(ValueError):
    """Slots a query cannot name (a zero gap, a slot beyond the counter or below 0)."""


@njit(cache=True, inline="always")
def mix64(z: np.uint64) -> np.uint64:
    """splitmix64 finaliser: a bijective avalanche mix of 64 bits."""
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


@njit(cache=True, inline="always")
def slot_word(slot: np.uint64, ka: np.uint64, kb: np.uint64) -> np.uint64:
    """The slot's 64 random bits under sub-keys ``ka``, ``kb``."""
    return mix64(mix64((slot * GOLDEN) ^ ka) + kb)


@njit(cache=True, inline="always")
def symbol_of_word(
    z: np.uint64, t_z: np.uint64, t_signal: np.uint64, t_signal_decoy: np.uint64
) -> np.uint8:
    u_class = z >> np.uint64(32)
    u_basis = (z >> np.uint64(1)) & np.uint64(0x7FFFFFFF)
    bit = z & np.uint64(1)
    # Branch-free (comparisons as 0/1): these fields are random, branches would mispredict.
    basis = np.uint64(u_basis >= t_z)
    cls = np.uint64(u_class >= t_signal) + np.uint64(u_class >= t_signal_decoy)
    return np.uint8(basis | (bit << np.uint64(1)) | (cls << np.uint64(2)))


@njit(cache=True)
def _symbols_for_slots(slots, ka, kb, t_z, t_s, t_sd):
    out = np.empty(slots.size, np.uint8)
    for i in range(slots.size):
        out[i] = symbol_of_word(slot_word(np.uint64(slots[i]), ka, kb), t_z, t_s, t_sd)
    return out


@njit(cache=True)
def _symbols_for_gaps(first, gaps, max_slot, ka, kb, t_z, t_s, t_sd):
    """Symbols of ``first, first + g1, ...`` in one pass; slot -1 flags a zero gap, -2 a slot
    beyond ``max_slot`` (the first offending index in the second element)."""
    out = np.empty(gaps.size + 1, np.uint8)
    s = np.int64(first)
    out[0] = symbol_of_word(slot_word(np.uint64(s), ka, kb), t_z, t_s, t_sd)
    for i in range(gaps.size):
        g = np.int64(gaps[i])
        if g == 0:
            return out, -1
        s += g
        if s > max_slot:
            return out, -2
        out[i + 1] = symbol_of_word(slot_word(np.uint64(s), ka, kb), t_z, t_s, t_sd)
    return out, 0


@njit(cache=True)
def _symbols_range(first, count, ka, kb, t_z, t_s, t_sd):
    out = np.empty(count, np.uint8)
    for i in range(count):
        s = np.uint64(first + i)
        out[i] = symbol_of_word(slot_word(s, ka, kb), t_z, t_s, t_sd)
    return out


def subkeys(key: int) -> tuple[np.uint64, np.uint64]:
    """The two 64-bit sub-keys the kernels use for a key in ``[0, 2^64)``."""
    if not isinstance(key, int | np.integer) or not 0 <= int(key) <= MASK64:
        raise ValueError(f"symbol key must be an integer in [0, 2^64) (got {key!r})")
    k = np.uint64(int(key))
    return np.uint64(mix64(k)), np.uint64(mix64(k ^ _KEY_B))


def thresholds(p_z: float, p_signal: float, p_decoy: float) -> tuple[np.uint64, ...]:
    """Integer thresholds (basis on 31 bits, class on 32 bits) for the given probabilities."""
    for name, v in (("p_z", p_z), ("p_signal", p_signal), ("p_decoy", p_decoy)):
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"{name} must be in [0, 1] (got {v})")
    if p_signal + p_decoy > 1.0 + 1e-9:
        raise ValueError(f"p_signal + p_decoy must be <= 1 (got {p_signal + p_decoy})")
    t_z = np.uint64(round(p_z * 2**31))
    t_s = np.uint64(round(p_signal * 2**32))
    t_sd = np.uint64(min(2**32, round((p_signal + p_decoy) * 2**32)))
    return t_z, t_s, t_sd


def symbols_for_slots(
    key: int, slots: np.ndarray, p_z: float, p_signal: float, p_decoy: float
) -> np.ndarray:
    """Symbol bytes (contracts §1.1) of the given slots (int64, >= 0, any order)."""
    slots = np.ascontiguousarray(slots, dtype=np.int64)
    if slots.ndim != 1:
        raise ValueError("slots must be a 1-D array")
    if slots.size and slots.min() < 0:
        raise ValueError("slots must be >= 0")
    return _symbols_for_slots(slots, *subkeys(key), *thresholds(p_z, p_signal, p_decoy))


def symbols_for_gaps(
    key: int,
    first: int,
    gaps: np.ndarray,
    p_z: float,
    p_signal: float,
    p_decoy: float,
    max_slot: int = (1 << 62) - 1,
) -> np.ndarray:
    """Symbol bytes of the strictly increasing slots ``first, first + g1, first + g1 + g2, ...``
    (uint16 gaps, each >= 1): what ``SYMB:GAPS?`` answers, without building the slot list."""
    gaps = np.asarray(gaps)
    if gaps.dtype != np.uint16 or gaps.ndim != 1:
        raise ValueError("gaps must be a 1-D uint16 array")
    if not 0 <= first <= max_slot:
        raise SlotRangeError(f"first slot {first} outside [0, {max_slot}]")
    out, flag = _symbols_for_gaps(
        np.int64(first), gaps, np.int64(max_slot), *subkeys(key),
        *thresholds(p_z, p_signal, p_decoy),
    )  # fmt: skip
    if flag == -1:
        raise SlotRangeError("gaps must be at least 1 (strictly increasing slots)")
    if flag == -2:
        raise SlotRangeError("slot range beyond the counter")
    return out


def symbols_range(
    key: int, first_slot: int, count: int, p_z: float, p_signal: float, p_decoy: float
) -> np.ndarray:
    """Symbol bytes of slots ``first_slot .. first_slot + count - 1``."""
    if first_slot < 0 or count < 0:
        raise ValueError(f"first_slot and count must be >= 0 (got {first_slot}, {count})")
    return _symbols_range(
        np.int64(first_slot), count, *subkeys(key), *thresholds(p_z, p_signal, p_decoy)
    )


def decode(symbols: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split symbol bytes into ``(basis, bit, intensity)`` uint8 arrays."""
    s = np.asarray(symbols, dtype=np.uint8)
    return s & 1, (s >> 1) & 1, (s >> 2) & 3


@njit(cache=True, parallel=True)
def _class_counts(first, count, ka, kb, t_s, t_sd):
    chunk = 1 << 20
    n_chunks = (count + chunk - 1) // chunk
    per = np.zeros((n_chunks, 3), dtype=np.int64)
    for c in prange(n_chunks):
        lo = first + c * chunk
        hi = min(first + count, lo + chunk)
        n_signal = 0
        n_decoy = 0
        for s in range(lo, hi):
            u_class = slot_word(np.uint64(s), ka, kb) >> np.uint64(32)
            n_signal += u_class < t_s
            n_decoy += (u_class >= t_s) & (u_class < t_sd)
        per[c, 0] = n_signal
        per[c, 1] = n_decoy
        per[c, 2] = (hi - lo) - n_signal - n_decoy
    return per.sum(axis=0)


def class_counts(
    key: int, first_slot: int, count: int, p_signal: float, p_decoy: float
) -> np.ndarray:
    """Exact number of signal, decoy and vacuum slots in a range, without storing symbols."""
    if first_slot < 0 or count < 0:
        raise ValueError(f"first_slot and count must be >= 0 (got {first_slot}, {count})")
    _, t_s, t_sd = thresholds(0.5, p_signal, p_decoy)
    return _class_counts(np.int64(first_slot), np.int64(count), *subkeys(key), t_s, t_sd)
