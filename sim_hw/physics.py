"""Photon-level simulation of the link: only the detections are generated.

``LinkSimulator(params, key, seed).simulate(first_slot, n_slots)`` returns Bob's clicks in those
slots, sampled from exactly the model of ``qnode.linkmodel`` (see its docstring and
``expected_stats``): Poisson photon number with the slot's intensity class (from
``sim_hw.symbols``, the same symbols the emulated source reports), channel loss, Bob's active
basis choice, per-detector efficiency, misalignment, dark counts and Raman noise, first-order
afterpulses, non-paralysable dead time per detector and Gaussian timing jitter. A double click is
reported as two detections (Bob's HAL assigns the random bit).

How it stays fast (aim: 1e10 pulses/s per core at ~1e-3 clicks per pulse): slots are grouped in
fixed blocks of 2^16. In each block (numba ``prange`` over blocks) candidate slots are drawn with
geometric gaps (ziggurat exponential, ``sim_hw.variates``) at the largest per-slot click
probability ``p_max`` over all (class, Alice basis, bit, Bob basis) and thinned to the slot's own
probability, so work scales with the number of clicks, not pulses. A sequential pass then applies afterpulses and dead time in slot order. Every random
draw comes from a counter-based generator keyed by (seed, block) or (seed, slot, detector), so
output depends only on the seed, the parameters in force and the slots asked for: contiguous
calls give the same detections however the range is split, and a rerun with the same seed and
the same calls is identical.

Note: numba's on-disk cache is keyed on this file only; after editing ``sim_hw/symbols.py`` or
``sim_hw/variates.py`` (inlined here) delete ``sim_hw/__pycache__/physics.*.nb[ic]``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numba import njit, prange

from qnode import linkmodel as lm
from sim_hw.symbols import mix64, slot_word, subkeys, symbol_of_word, thresholds
from sim_hw.variates import (
    NZIG_F,
    NZIG_K,
    NZIG_W,
    ZIG_F,
    ZIG_K,
    ZIG_W,
    standard_exponential,
    standard_normal,
)
from sim_hw.variates import uniform53 as _uniform53

BLOCK_SLOTS = 1 << 16
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_INV32 = 1.0 / 4294967296.0
_NO_SLOT = np.int64(2**62)
_MAX_CHUNK_ENTRIES = 1 << 20  # bounds the candidate buffers of one parallel pass
# Index of the lowest set bit of a 4-bit detector mask.
_LOWEST_BIT = np.array([0, 0, 1, 0, 2, 0, 1, 0, 3, 0, 1, 0, 2, 0, 1, 0], dtype=np.int64)


class Detections(NamedTuple):
    """Bob's clicks, sorted by time: tagger channel 1..4 = Z0, Z1, X0, X1 (contracts §1.2)."""

    slot: np.ndarray  # int64
    channel: np.ndarray  # uint8
    time_ps: np.ndarray  # int64: slot * period_ps + delay_ps + jitter


@njit(cache=True, parallel=True, nogil=True)
def _candidates(
    first_block, n_blocks, first_slot, end_slot, block_key, sym_ka, sym_kb, t_z, t_s, t_sd,
    p_bob_z, p_max, accept, split1, split2, zig_w, zig_k, zig_f, out_slot, out_mask, counts,
):  # fmt: skip
    """Per block: primary clicks (slot, detector mask) by geometric gaps + thinning.

    Tables are indexed by ``symbol * 2 + bob_basis`` (24 configurations): ``accept`` = the
    configuration's P(any click) / p_max, ``split1``/``split2`` the conditional probabilities
    that only the bit-0 detector / at most one detector clicked. The hot loop is branch-free
    apart from the loop exit (random branches would mispredict).
    """
    cap = out_slot.shape[1]
    inv_rate = -1.0 / math.log1p(-p_max) if p_max < 1.0 else 0.0  # gap = floor(Exp(1)/rate)
    for j in prange(n_blocks):
        block = np.uint64(first_block + j)
        start = (first_block + j) * BLOCK_SLOTS
        stop = min(start + BLOCK_SLOTS, end_slot)
        state = mix64(block_key ^ (block * _GOLDEN))
        pos = start - 1
        n = 0
        while True:
            e, state = standard_exponential(state, zig_w, zig_k, zig_f)
            pos += 1 + int(min(e * inv_rate, 2.0 * BLOCK_SLOTS))  # clamp: tiny p_max
            if pos >= stop:
                break
            state += _GOLDEN
            r_accept = mix64(state)
            state += _GOLDEN
            r_pattern = mix64(state)
            if pos < first_slot:
                continue
            sym = symbol_of_word(slot_word(np.uint64(pos), sym_ka, sym_kb), t_z, t_s, t_sd)
            b_basis = np.int64((r_accept >> np.uint64(32)) * _INV32 >= p_bob_z)
            idx = np.int64(sym) * 2 + b_basis
            ok = np.int64((r_accept & np.uint64(0xFFFFFFFF)) * _INV32 < accept[idx])
            u = _uniform53(r_pattern)
            mask = 1 + np.int64(u >= split1[idx]) + np.int64(u >= split2[idx])
            if n >= cap:
                n = -1
                break
            out_slot[j, n] = pos
            out_mask[j, n] = np.uint8(mask << (2 * b_basis))
            n += ok
        counts[j] = n


@njit(cache=True, nogil=True)
def _heap_push(heap, size, value):
    i = size
    heap[i] = value
    while i > 0:
        parent = (i - 1) >> 1
        if heap[parent] <= heap[i]:
            break
        heap[parent], heap[i] = heap[i], heap[parent]
        i = parent
    return size + 1


@njit(cache=True, nogil=True)
def _heap_pop(heap, size):
    top = heap[0]
    size -= 1
    heap[0] = heap[size]
    i = 0
    while True:
        left = 2 * i + 1
        if left >= size:
            break
        child = left
        if left + 1 < size and heap[left + 1] < heap[left]:
            child = left + 1
        if heap[i] <= heap[child]:
            break
        heap[i], heap[child] = heap[child], heap[i]
        i = child
    return top, size


@njit(cache=True, nogil=True)
def _detector_pass(
    cand_slot, cand_mask, counts, first_slot, end_slot, dead_until, heap, heap_size,
    n_dead, p_ap, ap_window, ap_ka, ap_kb, out_slot, out_chan, n_out,
):  # fmt: skip
    """Slot-ordered pass: merge pending afterpulses, apply dead time, spawn afterpulses;
    writes from ``out_*[n_out]`` on and returns the new end and the heap size."""
    # Afterpulses scheduled before this range belong to slots never simulated: drop them.
    while heap_size > 0 and heap[0] >> 2 < first_slot:
        _, heap_size = _heap_pop(heap, heap_size)
    blk = 0
    i = 0
    n_blocks = counts.size
    while True:
        while blk < n_blocks and i >= counts[blk]:
            blk += 1
            i = 0
        next_c = cand_slot[blk, i] if blk < n_blocks else _NO_SLOT
        next_a = heap[0] >> 2 if heap_size > 0 else _NO_SLOT
        s = min(next_c, next_a)
        if s >= end_slot:
            break
        prim = 0
        if next_c == s:
            prim = np.int64(cand_mask[blk, i])
            i += 1
        mask = prim
        while heap_size > 0 and heap[0] >> 2 == s:
            top, heap_size = _heap_pop(heap, heap_size)
            mask |= 1 << (top & 3)
        while mask:  # set bits in order; usually one (a branch per bit would mispredict)
            d = _LOWEST_BIT[mask]
            mask &= mask - 1
            if s <= dead_until[d]:
                continue
            dead_until[d] = s + n_dead
            if p_ap > 0.0 and (prim >> d) & 1:
                r = slot_word(np.uint64(s * 4 + d), ap_ka, ap_kb)
                if (r >> np.uint64(32)) * _INV32 < p_ap:
                    delay = n_dead + 1 + int((r & np.uint64(0xFFFFFFFF)) * _INV32 * ap_window)
                    heap_size = _heap_push(heap, heap_size, (s + delay) * 4 + d)
            out_slot[n_out] = s
            out_chan[n_out] = d + 1
            n_out += 1
    return n_out, heap_size


@njit(cache=True, parallel=True, nogil=True)
def _stamp_times(
    slots, chans, jit_ka, jit_kb, jitter_ps, zig_w, zig_k, zig_f, period_int, period_frac,
    delay_ps, out,
):  # fmt: skip
    """``slot * period + delay + round(N(0, jitter))``; the jitter is keyed by (slot, detector).
    Returns whether the times came out in order."""
    n = slots.size
    n_chunks = (n + 65535) >> 16
    disorder = np.zeros(max(n_chunks, 1), dtype=np.int64)
    for c in prange(n_chunks):
        lo = c << 16
        hi = min(n, lo + 65536)
        for i in range(lo, hi):
            s = slots[i]
            t = s * period_int + delay_ps + int(math.floor(s * period_frac + 0.5))
            if jitter_ps > 0.0:
                r = slot_word(np.uint64(s * 4 + chans[i] - 1), jit_ka, jit_kb)
                g, _ = standard_normal(r, zig_w, zig_k, zig_f)
                t += int(math.floor(jitter_ps * g + 0.5))
            out[i] = t
        for i in range(max(lo, 1), hi):
            disorder[c] += out[i] < out[i - 1]
    # Chunk boundaries: compare the first of each chunk with the last of the previous.
    bad = disorder.sum()
    for c in range(1, n_chunks):
        bad += out[c << 16] < out[(c << 16) - 1]
    return bad == 0


class SimState(NamedTuple):
    """Detector state between calls of one :class:`LinkSimulator` (see ``snapshot``)."""

    next_slot: int
    dead_until: np.ndarray  # int64 (4,): last dead slot per detector
    heap: np.ndarray  # int64: pending afterpulses, (slot * 4 + detector), heap-ordered


def _stream_keys(seed: int, tag: int) -> tuple[np.uint64, np.uint64]:
    """Independent sub-keys per random stream (tag) of one seed."""
    return subkeys((seed ^ (tag * 0x632BE59BD9B4E019)) & ((1 << 64) - 1))


class LinkSimulator:
    """Samples Bob's detections for slot ranges of one link.

    ``key`` is the symbol generator key (the source's ``:SOUR:RAND:KEY``), ``seed`` seeds
    everything else (Bob's basis choice, clicks, afterpulses, jitter). Dead time and pending
    afterpulses carry across calls; a call starting before the end of the previous one starts a
    new run (detector state cleared), a call starting later skips the slots in between.
    """

    def __init__(self, params: lm.LinkParams, key: int, seed: int) -> None:
        if not isinstance(seed, int | np.integer) or not 0 <= int(seed) < 2**64:
            raise ValueError(f"seed must be an integer in [0, 2^64) (got {seed!r})")
        self._seed = int(seed)
        self._block_key = _stream_keys(self._seed, 1)[0]
        self._ap_keys = _stream_keys(self._seed, 2)
        self._jit_keys = _stream_keys(self._seed, 3)
        self._light_on = True
        self.set_key(key)
        self.update(params)
        self.reset()

    # --- configuration -------------------------------------------------------------------
    def update(self, params: lm.LinkParams) -> None:
        """Use new parameters from the next call on (attenuator, detector, source changes)."""
        if not isinstance(params, lm.LinkParams):
            raise TypeError("params must be a qnode.linkmodel.LinkParams")
        if getattr(self, "_params", None) == params:
            return  # the world calls this before every chunk; nothing changed
        self._params = params
        src = params.source
        self._thresholds = thresholds(src.p_basis_z, src.p_signal, src.p_decoy)
        self._n_dead = lm.dead_slots(params)
        self._ap_window = lm.afterpulse_window_slots(params)
        self._ensure_heap_capacity()
        period = params.period_ps
        self._period_int = int(math.floor(period))
        self._period_frac = period - self._period_int
        self._delay_ps = int(round(params.fibre.length_km * lm.FIBRE_DELAY_PS_PER_KM
                                   + params.receiver.cable_delay_ps))  # fmt: skip
        self._build_table()

    def _build_table(self) -> None:
        """Per configuration (symbol byte * 2 + Bob's basis) the two gated detectors' primary
        click probabilities, from ``qnode.linkmodel`` so the model and the sampler agree."""
        c = np.zeros((24, 2))
        for sym in range(12):
            a_basis, a_bit, cls = sym & 1, (sym >> 1) & 1, sym >> 2
            for b in (0, 1):
                if self._light_on:
                    probs = lm.click_probs(self._params, cls, a_basis, a_bit, b)
                else:
                    probs = lm.dark_click_probs(self._params, b)
                c[2 * sym + b] = probs[2 * b], probs[2 * b + 1]
        c0, c1 = c[:, 0], c[:, 1]
        p_any = 1.0 - (1.0 - c0) * (1.0 - c1)
        self._p_max = float(p_any.max())
        safe = np.where(p_any > 0, p_any, 1.0)
        self._accept = p_any / self._p_max if self._p_max > 0 else np.zeros(24)
        self._split1 = c0 * (1.0 - c1) / safe
        self._split2 = (c0 * (1.0 - c1) + c1 * (1.0 - c0)) / safe

    def set_key(self, key: int) -> None:
        """Change the symbol generator key (the source's ``:SOUR:RAND:KEY``)."""
        self._sym_keys = subkeys(key)
        self._key = int(key)

    def _ensure_heap_capacity(self) -> None:
        """Pending afterpulses per detector <= W + 1 (clicks are > n_dead slots apart); the
        kernels do not bounds-check, so keep room for the current window plus what is queued."""
        heap = getattr(self, "_heap", None)
        size = getattr(self, "_heap_size", 0)
        need = 4 * (self._ap_window + 2) + 16 + size
        if heap is None or heap.size < need:
            new = np.empty(need, dtype=np.int64)
            if heap is not None:
                new[:size] = heap[:size]
            self._heap = new

    def reset(self) -> None:
        """Forget dead time and pending afterpulses (a new run)."""
        self._dead_until = np.full(4, -(2**62), dtype=np.int64)
        self._heap_size = 0
        self._ensure_heap_capacity()
        self._next_slot = 0
        self._buffers: dict[str, np.ndarray] = {}

    def snapshot(self) -> SimState:
        """The detector state carried between calls (dead time, pending afterpulses, next slot).

        ``restore`` of it makes the next call continue from exactly this point, so a caller can
        simulate ahead and later rewind (e.g. the world's read-ahead after a settings change).
        """
        size = self._heap_size
        return SimState(self._next_slot, self._dead_until.copy(), self._heap[:size].copy())

    def restore(self, state: SimState | None) -> None:
        """Continue from ``state`` (None: a fresh run, as after ``reset``)."""
        if state is None:
            self.reset()
            return
        self._next_slot = int(state.next_slot)
        self._dead_until = state.dead_until.copy()
        self._heap_size = int(state.heap.size)
        self._ensure_heap_capacity()
        self._heap[: self._heap_size] = state.heap

    @property
    def params(self) -> lm.LinkParams:
        return self._params

    @property
    def key(self) -> int:
        return self._key

    @property
    def period_ps(self) -> float:
        """Slot period in ps (1e12 / clock_hz)."""
        return self._params.period_ps

    @property
    def delay_ps(self) -> int:
        """Fibre delay (4.897 us/km, group index 1.468) plus ``receiver.cable_delay_ps``."""
        return self._delay_ps

    @property
    def light_on(self) -> bool:
        """Source output and shutter open; off means dark counts only (no signal, no Raman)."""
        return self._light_on

    @light_on.setter
    def light_on(self, on: bool) -> None:
        if bool(on) != self._light_on:
            self._light_on = bool(on)
            self._build_table()

    @property
    def p_max(self) -> float:
        """Largest per-slot click probability (the gap-sampling rate)."""
        return self._p_max

    # --- simulation --------------------------------------------------------------------------
    def simulate(self, first_slot: int, n_slots: int) -> Detections:
        """Detections in slots ``first_slot .. first_slot + n_slots - 1``, sorted by time."""
        first_slot, n_slots = int(first_slot), int(n_slots)
        if first_slot < 0 or n_slots < 0:
            raise ValueError(f"first_slot and n_slots must be >= 0 (got {first_slot}, {n_slots})")
        if first_slot < self._next_slot:
            self.reset()
        end = first_slot + n_slots
        self._next_slot = end
        if n_slots == 0:
            return _empty()
        first_block = first_slot // BLOCK_SLOTS
        last_block = (end - 1) // BLOCK_SLOTS
        cap = self._block_capacity()
        blocks_per_chunk = max(1, _MAX_CHUNK_ENTRIES // cap)
        # Output written in place and shrunk at the end (realloc): no copy, and pages beyond
        # what is filled are never touched. Sized for ~2x the expected clicks; grows if needed.
        size = (
            int(2.0 * n_slots * self._p_max)
            + 4 * min(blocks_per_chunk, 1 + n_slots // BLOCK_SLOTS) * cap
            + 1024
        )
        out = [np.empty(size, np.int64), np.empty(size, np.uint8)]
        n_out = 0
        b = first_block
        while b <= last_block:
            nb = min(blocks_per_chunk, last_block - b + 1)
            lo = max(first_slot, b * BLOCK_SLOTS)
            hi = min(end, (b + nb) * BLOCK_SLOTS)
            n_out = self._run_chunk(b, nb, lo, hi, cap, out, n_out)
            b += nb
        slot, chan = out
        slot.resize(n_out, refcheck=False)
        chan.resize(n_out, refcheck=False)
        time_ps = np.empty(n_out, dtype=np.int64)
        rx = self._params.receiver
        in_order = _stamp_times(
            slot, chan, *self._jit_keys, rx.jitter_ps, NZIG_W, NZIG_K, NZIG_F,
            self._period_int, self._period_frac, self._delay_ps, time_ps,
        )  # fmt: skip
        if not in_order:  # jitter larger than the gap between neighbours
            order = np.argsort(time_ps, kind="stable")
            slot, chan, time_ps = slot[order], chan[order], time_ps[order]
        return Detections(slot, chan, time_ps)

    def _block_capacity(self) -> int:
        mean = BLOCK_SLOTS * self._p_max
        return int(min(BLOCK_SLOTS, mean + 12.0 * math.sqrt(mean + 1.0) + 32))

    def _scratch(self, name: str, shape, dtype) -> np.ndarray:
        """A reused work buffer (fresh allocations cost page faults at these sizes)."""
        buf = self._buffers.get(name)
        if buf is None or buf.shape != shape:
            buf = self._buffers[name] = np.empty(shape, dtype=dtype)
        return buf

    def _run_chunk(
        self, first_block: int, n_blocks: int, lo: int, hi: int, cap: int, out: list, n_out: int
    ) -> int:
        """Candidates of ``n_blocks`` blocks, then the detector pass appending to ``out`` (slot,
        channel arrays, grown in place when needed) at ``n_out``; returns the new count."""
        while True:
            cand_slot = self._scratch("cand_slot", (n_blocks, cap), np.int64)
            cand_mask = self._scratch("cand_mask", (n_blocks, cap), np.uint8)
            counts = self._scratch("counts", (n_blocks,), np.int64)
            if self._p_max > 0.0:
                _candidates(
                    first_block, n_blocks, lo, hi, self._block_key, *self._sym_keys,
                    *self._thresholds, self._params.p_bob_z, self._p_max, self._accept,
                    self._split1, self._split2, ZIG_W, ZIG_K, ZIG_F, cand_slot, cand_mask, counts,
                )  # fmt: skip
            else:
                counts[:] = 0
            if counts.min() >= 0:
                break
            cap = min(BLOCK_SLOTS, 2 * cap)  # a block overflowed (very unlikely): redo, larger
        need = n_out + 4 * int(counts.sum()) + self._heap_size + 16  # a hard bound
        if need > out[0].size:
            size = max(need, 2 * out[0].size)
            out[0].resize(size, refcheck=False)
            out[1].resize(size, refcheck=False)
        rx = self._params.receiver
        n_out, self._heap_size = _detector_pass(
            cand_slot, cand_mask, counts, lo, hi, self._dead_until, self._heap, self._heap_size,
            self._n_dead, rx.afterpulse_prob, self._ap_window, *self._ap_keys,
            out[0], out[1], n_out,
        )  # fmt: skip
        return n_out


def _empty() -> Detections:
    return Detections(np.empty(0, np.int64), np.empty(0, np.uint8), np.empty(0, np.int64))
