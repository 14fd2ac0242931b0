"""Photon-level simulation of the link: only the detections are generated.

``LinkSimulator(params, key, seed).simulate(first_slot, n_slots)`` returns Bob's clicks in those
slots, sampled from exactly the model of ``qnode.linkmodel`` (see its docstring and
``expected_stats``): Poisson photon number with the slot's intensity class (from
``sim_hw.symbols``, the same symbols the emulated source reports), channel loss, Bob's active
basis choice, per-detector efficiency, misalignment, dark counts and Raman noise, first-order
afterpulses, non-paralysable dead time per detector and Gaussian timing jitter. A double click is
reported as two detections (Bob's HAL assigns the random bit).

How it stays fast (work scales with the clicks, not the pulses): one sequential kernel walks
the slots, with dead time applied as clicks are drawn. Candidate slots come with geometric gaps
(ziggurat exponential, ``sim_hw.variates``) at ``p(L)``, the largest per-slot probability that
a detector of the live set ``L`` clicks, and are thinned to the slot's own probability; when
``L`` changes the gap follows: after a click it restarts there, and as dead times end the
hazard ``-log(1 - p(L))`` is piecewise constant, so the first success is where its sum
passes an Exp(1) draw (exact for independent per-slot trials). Clicks a dead detector would
have made are never drawn (at 1 GHz over 10 km with the snspd preset, half of all primary
clicks). Each click is stamped and inserted in time order in the same pass. The kernel takes
the ziggurat tables as module constants: passed as arguments into the inlined draws, numba
refcounts them inside the loop (measured 2x slower). Every random draw comes from a counter-based
splitmix64 stream whose position is part of the carried state (with dead time and pending
afterpulses), or for afterpulses is keyed by (seed, slot, detector), so output depends only on
the seed, the parameters in force and the calls made: contiguous calls give the same detections
however the range is split, and a rerun with the same seed and the same calls is identical.

Note: numba's on-disk cache is keyed on this file only; after editing ``sim_hw/symbols.py`` or
``sim_hw/variates.py`` (inlined here) delete ``sim_hw/__pycache__/physics.*.nb[ic]``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numba import njit

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

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_INV32 = 1.0 / 4294967296.0
_NO_SLOT = np.int64(2**62)
_MAX_GAP = 1e18  # a geometric gap beyond this: no candidate ever (the rate is ~0)
_MAX_SHIFT = 64  # a click inserted further back than this: the output is sorted at the end
# Index of the lowest set bit of a 4-bit detector mask.
_LOWEST_BIT = np.array([0, 0, 1, 0, 2, 0, 1, 0, 3, 0, 1, 0, 2, 0, 1, 0], dtype=np.int64)


class Detections(NamedTuple):
    """Bob's clicks, sorted by time: tagger channel 1..4 = Z0, Z1, X0, X1 (contracts §1.2)."""

    slot: np.ndarray  # int64
    channel: np.ndarray  # uint8
    time_ps: np.ndarray  # int64: slot * period_ps + delay_ps + jitter


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


@njit(cache=True, inline="always")
def _live_mask(dead_until, x):
    """Detectors that can click in slot ``x`` (bit d: detector d is past its dead time)."""
    mask = 0
    for d in range(4):
        mask |= np.int64(x > dead_until[d]) << d
    return mask


@njit(cache=True, inline="always")
def _next_revival(dead_until, x):
    """The first slot after ``x`` in which a detector dead at ``x`` can click again."""
    rev = _NO_SLOT
    for d in range(4):  # branch-free: which detectors are dead is random
        v = dead_until[d] + 1
        rev = min(rev, v if v > x else _NO_SLOT)
    return rev


@njit(cache=True, inline="always")
def _draw(pos, live, rev, dead_until, hazard, state):
    """The next candidate slot after ``pos`` (and the live set and next revival there): the
    first success of independent per-slot trials whose probability ``p(L)`` follows the live
    set ``L`` (``live`` up to slot ``rev`` - 1) as dead times end.

    With hazard ``h(L) = -log(1 - p(L))`` per slot, the first success is the first slot where
    the cumulative hazard from ``pos`` exceeds an Exp(1) draw (``floor(E / h)`` for constant
    ``h``); the live set is constant between revivals, so the hazard is piecewise linear.
    """
    e, state = standard_exponential(state, ZIG_W, ZIG_K, ZIG_F)
    x = pos
    while True:
        h = hazard[live]
        span = rev - 1 - x  # slots x + 1 .. rev - 1 have this live set
        if h > 0.0:
            g = e * hazard[16 + live]
            if g < span:
                if g >= _MAX_GAP:
                    return _NO_SLOT, live, rev, state
                return x + 1 + np.int64(g), live, rev, state
            e = max(0.0, e - h * span)
        if rev == _NO_SLOT:
            return _NO_SLOT, live, rev, state
        x = rev - 1
        live = _live_mask(dead_until, rev)
        rev = _next_revival(dead_until, rev)


@njit(cache=True, nogil=True)
def _simulate_kernel(
    end_slot, st, rng, dead_until, heap, heap_size, sym_ka, sym_kb, t_z, t_s, t_sd,
    hazard, acc0, acc, split1, split2, n_dead, p_ap, ap_window, ap_ka, ap_kb,
    jitter_ps, period_int, period_frac, delay_ps,
    out_slot, out_chan, out_time, n_out,
):  # fmt: skip
    """Bob's clicks up to ``end_slot``, in slot order, dead time applied as they are drawn.

    Loop state (resumable, so any split of a range gives the same clicks): ``st = [pos,
    cand]``, the candidate slot ``cand`` drawn after ``pos`` (``_draw``); ``rng[0]`` the
    splitmix64 state. Candidates are Bernoulli trials per slot at ``p(L)``, the largest
    probability over the 12 symbols that a detector of the live set ``L`` clicks; a candidate
    is accepted with the slot's own probability over ``p(L)`` (table ``acc``, ``acc0`` for
    Bob's Z basis) and gets its pattern on the live detectors of the chosen basis
    (``split1``/``split2``). After a click (or a used candidate) the next candidate is drawn
    afresh from there: the trials are independent, so restarting at any slot is exact.
    Clicks swallowed by dead time are never drawn. Pending afterpulses (heap of ``slot * 4 + detector``) click if the detector
    is live. Each click is stamped ``slot * period + delay + round(N(0, jitter))`` (jitter from
    the stream) and inserted in time order.

    Returns ``(n_out, heap_size, full, unsorted)``: ``full`` when the output arrays ran out
    of room (grow them and call again), ``unsorted`` when a click landed more than
    ``_MAX_SHIFT`` places before its slot order (sort the output by time).
    """
    pos = st[0]
    cand = st[1]
    state = rng[0]
    cap = out_slot.size
    full = False
    unsorted = False
    while heap_size > 0 and heap[0] >> 2 <= pos:  # afterpulses of skipped slots: dropped
        _, heap_size = _heap_pop(heap, heap_size)
    need = cand <= pos  # a fresh start, a skip or new parameters: draw from pos
    at = pos + 1 if need or cand == _NO_SLOT else cand
    live = _live_mask(dead_until, at)
    rev = _next_revival(dead_until, at)
    top = heap[0] >> 2 if heap_size > 0 else _NO_SLOT
    while True:
        if n_out + 4 > cap:
            full = True
            break
        # Candidates until one is accepted (most are not: the rate bound is the brightest
        # symbol's), an afterpulse comes first, or the range ends; the live set is constant.
        accepted = False
        u = 0.0
        i = 0
        while True:
            if need:
                cand, live, rev, state = _draw(pos, live, rev, dead_until, hazard, state)
                need = False
            if cand >= top or cand >= end_slot:
                break
            sym = symbol_of_word(slot_word(np.uint64(cand), sym_ka, sym_kb), t_z, t_s, t_sd)
            i = live * 12 + np.int64(sym)
            state += _GOLDEN
            u = _uniform53(mix64(state))
            if u < acc[i]:
                accepted = True
                break
            pos = cand
            need = True
        s = min(cand, top)
        if s >= end_slot:
            break
        prim = 0
        consumed = accepted
        if accepted:  # cand == s: Bob's basis and the pattern on its live pair
            state += _GOLDEN
            v = _uniform53(mix64(state))
            b = np.int64(u >= acc0[i])
            j = 2 * i + b
            prim = (1 + np.int64(v >= split1[j]) + np.int64(v >= split2[j])) << (2 * b)
        mask = prim
        pulsed = top == s
        while heap_size > 0 and heap[0] >> 2 == s:
            entry, heap_size = _heap_pop(heap, heap_size)
            mask |= 1 << (entry & 3)
        clicked = 0
        while mask:  # set bits in order; usually one
            d = _LOWEST_BIT[mask]
            mask &= mask - 1
            if s <= dead_until[d]:  # an afterpulse on a dead detector
                continue
            dead_until[d] = s + n_dead
            clicked |= 1 << d
            if p_ap > 0.0 and (prim >> d) & 1:
                r = slot_word(np.uint64(s * 4 + d), ap_ka, ap_kb)
                if (r >> np.uint64(32)) * _INV32 < p_ap:
                    delay = n_dead + 1 + int((r & np.uint64(0xFFFFFFFF)) * _INV32 * ap_window)
                    heap_size = _heap_push(heap, heap_size, (s + delay) * 4 + d)
            t = s * period_int + delay_ps + int(math.floor(s * period_frac + 0.5))
            if jitter_ps > 0.0:
                g, state = standard_normal(state, NZIG_W, NZIG_K, NZIG_F)
                t += int(math.floor(jitter_ps * g + 0.5))
            k = n_out
            while k > 0 and out_time[k - 1] > t and n_out - k < _MAX_SHIFT:
                out_time[k] = out_time[k - 1]
                out_slot[k] = out_slot[k - 1]
                out_chan[k] = out_chan[k - 1]
                k -= 1
            if k > 0 and out_time[k - 1] > t:
                unsorted = True
            out_time[k] = t
            out_slot[k] = s
            out_chan[k] = d + 1
            n_out += 1
        top = heap[0] >> 2 if heap_size > 0 else _NO_SLOT
        if consumed or clicked:  # the candidate used, or new dead times: draw from here
            if pulsed:  # afterpulses: the live set at s + 1 afresh
                live = _live_mask(dead_until, s + 1)
                rev = _next_revival(dead_until, s + 1)
            elif n_dead > 0:
                live &= ~clicked
                rev = min(rev, s + n_dead + 1)
            pos = s
            need = True
    st[0] = pos
    st[1] = cand
    rng[0] = state
    return n_out, heap_size, full, unsorted


class SimState(NamedTuple):
    """Detector state between calls of one :class:`LinkSimulator` (see ``snapshot``)."""

    next_slot: int
    dead_until: np.ndarray  # int64 (4,): last dead slot per detector
    heap: np.ndarray  # int64: pending afterpulses, (slot * 4 + detector), heap-ordered
    rng: int = 0  # the click stream's splitmix64 state ...
    pos: int = -1  # ... and its pending candidate slot ``cand``, drawn after ``pos`` ...
    cand: int = -1
    table: int = -1  # ... with the rate table of this generation (else drawn again)
    density: float = -1.0  # clicks per slot of the call that ended here (-1: none yet)


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
        self._rng_key = _stream_keys(self._seed, 1)[0]
        self._table_id = 0
        self._ap_keys = _stream_keys(self._seed, 2)
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
        """Sampling tables per live-detector set ``L`` (bit d: detector d can click) and symbol,
        from ``qnode.linkmodel``'s primary click probabilities so the model and the sampler
        agree: per slot, Bob's basis b (Z with ``p_bob_z``) gates detectors 2b, 2b+1, which
        click independently; only clicks of live detectors are drawn (a dead one's would be
        swallowed). ``hazard[L]`` = -log(1 - p(L)) (then its inverse) for the candidate
        rate ``p(L)`` = the largest P(a live detector clicks) over the symbols; ``acc0``/``acc`` the cumulative P(click in Z), P(any
        click) over ``p(L)``; per basis, ``split1``/``split2`` the conditional probabilities that
        only the bit-0 detector / at most one detector of the live pair clicked."""
        c = np.zeros((12, 2, 2))  # symbol, Bob's basis, bit: the detector's click probability
        for sym in range(12):
            a_basis, a_bit, cls = sym & 1, (sym >> 1) & 1, sym >> 2
            for b in (0, 1):
                if self._light_on:
                    probs = lm.click_probs(self._params, cls, a_basis, a_bit, b)
                else:
                    probs = lm.dark_click_probs(self._params, b)
                c[sym, b] = probs[2 * b], probs[2 * b + 1]
        p_b = np.array([self._params.p_bob_z, 1.0 - self._params.p_bob_z])
        live = (np.arange(16)[:, None] >> np.arange(4)[None, :]) & 1  # (L, detector)
        gate = live.reshape(16, 1, 2, 2) * c[None]  # (L, symbol, basis, bit): live clicks
        c0, c1 = gate[..., 0], gate[..., 1]
        p_pair = 1.0 - (1.0 - c0) * (1.0 - c1)  # P(a live detector of the pair clicks)
        q = p_b[None, None, :] * p_pair  # (L, symbol, basis)
        total = q.sum(axis=2)
        rate = total.max(axis=1)  # (L,)
        self._p_max = float(rate.max())
        safe_rate = np.where(rate > 0, rate, 1.0)[:, None]
        self._acc0 = (q[..., 0] / safe_rate).ravel()
        self._acc = (total / safe_rate).ravel()
        with np.errstate(divide="ignore"):
            h = -np.log1p(-np.minimum(rate, 1.0))  # p = 1: inf (every slot)
            self._hazard = np.concatenate([h, 1.0 / h])  # hazard, then its inverse
        safe = np.where(p_pair > 0, p_pair, 1.0)
        self._split1 = (c0 * (1.0 - c1) / safe).ravel()
        self._split2 = ((c0 * (1.0 - c1) + c1 * (1.0 - c0)) / safe).ravel()
        self._table_id += 1

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
        self._rng = np.array([self._rng_key], dtype=np.uint64)
        self._loop = np.array([-1, -1], dtype=np.int64)  # pos, cand (see _simulate_kernel)
        self._drawn_with = -1  # table generation the pending candidate was drawn with
        self._density = -1.0

    def snapshot(self) -> SimState:
        """The state carried between calls (dead time, pending afterpulses, next slot, the
        click stream's position).

        ``restore`` of it makes the next call continue from exactly this point, so a caller can
        simulate ahead and later rewind (e.g. the world's read-ahead after a settings change).
        """
        size = self._heap_size
        pos, cand = (int(v) for v in self._loop)
        return SimState(self._next_slot, self._dead_until.copy(), self._heap[:size].copy(),
                        int(self._rng[0]), pos, cand, self._drawn_with,
                        self._density)  # fmt: skip

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
        self._rng = np.array([state.rng], dtype=np.uint64)
        self._loop = np.array([state.pos, state.cand], dtype=np.int64)
        self._drawn_with = int(state.table)
        self._density = float(state.density)

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
        if first_slot != self._next_slot or self._drawn_with != self._table_id:
            # Slots skipped, or new rates: the pending candidate is drawn again from here.
            self._loop[:] = first_slot - 1, -1
        end = first_slot + n_slots
        self._next_slot = end
        self._drawn_with = self._table_id
        if n_slots == 0:
            return _empty()
        # Output written in place and shrunk at the end (realloc): pages beyond what is
        # filled are never touched. A detector clicks at most once per n_dead + 1 slots.
        bound = 4 * (n_slots // (self._n_dead + 1) + 1) + self._heap_size
        size = min(bound, int(2.0 * n_slots * self._p_max) + 1024) + 16
        slot, chan, time_ps = (
            np.empty(size, np.int64),
            np.empty(size, np.uint8),
            np.empty(size, np.int64),
        )
        n_out, unsorted = 0, False
        rx = self._params.receiver
        while True:
            n_out, self._heap_size, full, late = _simulate_kernel(
                end, self._loop, self._rng, self._dead_until, self._heap, self._heap_size,
                *self._sym_keys, *self._thresholds, self._hazard, self._acc0, self._acc,
                self._split1, self._split2, self._n_dead, rx.afterpulse_prob, self._ap_window,
                *self._ap_keys, rx.jitter_ps, self._period_int,
                self._period_frac, self._delay_ps,
                slot, chan, time_ps, n_out,
            )  # fmt: skip
            unsorted |= late
            if not full:
                break
            for a in (slot, chan, time_ps):  # more clicks than sized for: grow and go on
                a.resize(2 * a.size, refcheck=False)
        for a in (slot, chan, time_ps):
            a.resize(n_out, refcheck=False)
        self._density = n_out / n_slots
        if unsorted:  # jitter far larger than the gap between neighbours
            order = np.argsort(time_ps, kind="stable")
            slot, chan, time_ps = slot[order], chan[order], time_ps[order]
        return Detections(slot, chan, time_ps)


def _empty() -> Detections:
    return Detections(np.empty(0, np.int64), np.empty(0, np.uint8), np.empty(0, np.int64))
