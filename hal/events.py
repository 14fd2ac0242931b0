"""Bob's time tags -> detection events (docs/contracts.md §1.2, §1.3), vectorised with numpy.

A detection at time ``t`` on channel 1-4 belongs to slot ``s`` when
``t = s * period_ps + delay_ps + jitter``. The slot is counted from the latest sync tag (channel
0, emitted at ``slot * period_ps + sync_delay_ps`` for slots that are multiples of
``sync_period_slots``), so a slow drift between the source's and the tagger's clocks never
accumulates over more than one sync period. Clicks whose arrival phase is farther than
``gate_ps / 2`` from the expected arrival are dropped and counted. Several clicks in one slot
make one event: two detectors of one basis give a random bit (``double``, ``detector`` = lower
channel); clicks in both bases give a random basis first (the squashing map of passive-basis
receivers), also flagged ``double``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numba import njit

SYNC_CHANNEL = 0
DETECTOR_CHANNELS = (1, 2, 3, 4)  # Z0, Z1, X0, X1


@dataclass
class Events:
    """Detection events, one entry per slot (sorted, unique)."""

    slot: np.ndarray  # int64
    basis: np.ndarray  # uint8, 0 = Z, 1 = X
    bit: np.ndarray  # uint8
    detector: np.ndarray  # uint8, 1-4
    double: np.ndarray  # bool

    def __len__(self) -> int:
        return len(self.slot)

    @classmethod
    def empty(cls) -> Events:
        return cls(
            np.empty(0, np.int64),
            np.empty(0, np.uint8),
            np.empty(0, np.uint8),
            np.empty(0, np.uint8),
            np.empty(0, bool),
        )

    def select(self, mask: np.ndarray) -> Events:
        return Events(
            self.slot[mask],
            self.basis[mask],
            self.bit[mask],
            self.detector[mask],
            self.double[mask],
        )

    @classmethod
    def concat(cls, parts: list[Events]) -> Events:
        if not parts:
            return cls.empty()
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in _FIELDS))

    def as_dict(self) -> dict[str, np.ndarray]:
        return {f: getattr(self, f) for f in _FIELDS}


_FIELDS = ("slot", "basis", "bit", "detector", "double")


@dataclass
class Frame:
    """Events of slots ``[index * frame_slots, (index + 1) * frame_slots)``."""

    index: int
    frame_slots: int
    events: Events
    dropped_outside_gate: int = 0


@dataclass
class TimingConfig:
    """Clock and gating of Bob's receiver."""

    period_ps: float
    delay_ps: float = 0.0
    gate_ps: float = 400.0
    sync_period_slots: int = 1 << 20
    sync_delay_ps: float = 0.0
    frame_slots: int = 1 << 24


@dataclass
class EventBuilder:
    """Stateful tags -> events converter (keeps the last sync reference between batches)."""

    timing: TimingConfig
    seed: int | None = None
    dropped_outside_gate: int = 0
    unanchored: int = 0  # detections converted with absolute time (no sync seen yet)
    cross_basis: int = 0
    _rng: np.random.Generator = field(init=False, repr=False)
    _last_sync_t: int | None = field(default=None, init=False)
    _last_sync_slot: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self._rng = np.random.default_rng(self.seed)

    def sync_slot(self, sync_t: np.ndarray) -> np.ndarray:
        """Slot number of each sync tag (the nearest multiple of the sync period)."""
        tm = self.timing
        span = tm.sync_period_slots * tm.period_ps
        return np.rint((sync_t - tm.sync_delay_ps) / span).astype(np.int64) * tm.sync_period_slots

    def slots_and_phase(
        self, time_ps: np.ndarray, channel: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For detector tags: ``(slot, phase_ps, channel)``; phase = arrival minus expected."""
        tm = self.timing
        is_sync = channel == SYNC_CHANNEL
        sync_t = time_ps[is_sync]
        det = (channel >= 1) & (channel <= 4)
        t = time_ps[det]
        ch = channel[det]
        sync_slot = self.sync_slot(sync_t)
        if self._last_sync_t is not None:
            sync_t = np.concatenate(([self._last_sync_t], sync_t))
            sync_slot = np.concatenate(([self._last_sync_slot], sync_slot))
        if len(sync_t):
            idx = np.searchsorted(sync_t, t, side="right") - 1
            anchored = idx >= 0
            idx = np.maximum(idx, 0)
            ref_t = np.where(anchored, sync_t[idx], tm.sync_delay_ps).astype(np.float64)
            ref_slot = np.where(anchored, sync_slot[idx], 0)
            self._last_sync_t = int(sync_t[-1])
            self._last_sync_slot = int(sync_slot[-1])
            self.unanchored += int(np.count_nonzero(~anchored))
        else:
            ref_t = np.full(len(t), tm.sync_delay_ps, dtype=np.float64)
            ref_slot = np.zeros(len(t), dtype=np.int64)
            self.unanchored += len(t)
        rel = (t - ref_t) - (tm.delay_ps - tm.sync_delay_ps)
        k = np.floor(rel / tm.period_ps + 0.5)
        phase = rel - k * tm.period_ps
        return ref_slot + k.astype(np.int64), phase, ch

    def convert(self, time_ps: np.ndarray, channel: np.ndarray) -> Events:
        """Turn one time-ordered batch of tags into events (sorted, one per slot).

        One numba pass over the tags (``_clicks_per_slot``): sync reference, slot, gate, and
        the OR of the channels that clicked in each slot; ambiguities are resolved with numpy.
        """
        time_ps = np.ascontiguousarray(time_ps, dtype=np.int64)
        channel = np.ascontiguousarray(channel, dtype=np.uint8)
        if time_ps.shape != channel.shape or time_ps.ndim != 1:
            raise ValueError("time_ps and channel must be 1-d arrays of one length")
        tm = self.timing
        out_slot = np.empty(len(time_ps), np.int64)
        out_mask = np.empty(len(time_ps), np.uint8)
        has_ref = self._last_sync_t is not None
        n, dropped, unanchored, ordered, has_ref, ref_t, ref_slot = _clicks_per_slot(
            time_ps, channel, float(tm.period_ps), float(tm.delay_ps - tm.sync_delay_ps),
            float(tm.gate_ps) / 2, float(tm.sync_period_slots * tm.period_ps),
            int(tm.sync_period_slots), float(tm.sync_delay_ps), has_ref,
            int(self._last_sync_t or 0), int(self._last_sync_slot), out_slot, out_mask,
        )  # fmt: skip
        if has_ref:
            self._last_sync_t, self._last_sync_slot = int(ref_t), int(ref_slot)
        self.dropped_outside_gate += int(dropped)
        self.unanchored += int(unanchored)
        slot, mask = out_slot[:n], out_mask[:n]
        if not ordered:  # clicks of neighbouring slots swapped (gate wider than the period)
            order = np.argsort(slot, kind="stable")
            slot, mask = slot[order], mask[order]
            starts = np.flatnonzero(np.concatenate(([True], slot[1:] != slot[:-1])))
            slot, mask = slot[starts], np.bitwise_or.reduceat(mask, starts)
        return self.resolve(slot, mask)

    def resolve(self, slot: np.ndarray, mask: np.ndarray) -> Events:
        """Events from unique sorted slots and the channel mask (bit c-1 = channel c clicked):
        random basis for clicks in both bases, random bit for both detectors of one basis."""
        if len(slot) == 0:
            return Events.empty()
        mask = np.ascontiguousarray(mask, dtype=np.uint8)
        n = len(mask)
        basis, bit, detector = (np.empty(n, np.uint8) for _ in range(3))
        double = np.empty(n, bool)
        picks = np.empty(n, np.int64)
        # Two numba passes, the random choices in between drawn as before (same events for a
        # seed): a random basis for clicks in both bases, then a random bit for twin clicks.
        n_both = _bases(mask, basis, double, picks)
        self.cross_basis += int(n_both)
        if n_both:
            basis[picks[:n_both]] = self._rng.integers(0, 2, int(n_both), dtype=np.uint8)
        n_twin = _bits(mask, basis, bit, detector, double, picks)
        if n_twin:
            bit[picks[:n_twin]] = self._rng.integers(0, 2, int(n_twin), dtype=np.uint8)
        return Events(slot, basis, bit, detector, double)


@njit(cache=True)
def _bases(mask, basis, double, both_at):  # pragma: no cover - numba
    """basis = X clicked; double = clicks in both bases (their indices in ``both_at``)."""
    n_both = 0
    for i in range(mask.size):
        m = mask[i]
        x = (m >> 2) & 3
        both = (m & 3) != 0 and x != 0
        basis[i] = x != 0
        double[i] = both
        both_at[n_both] = i
        n_both += both
    return n_both


@njit(cache=True)
def _bits(mask, basis, bit, detector, double, twin_at):  # pragma: no cover - numba
    """bit = the "1" detector of the basis clicked; a twin (both detectors of the basis) gets
    detector = the lower one, is flagged double and listed in ``twin_at`` for a random bit."""
    n_twin = 0
    for i in range(mask.size):
        b = basis[i]
        pair = (mask[i] >> (2 * b)) & 3  # bit 0: detector "0" clicked, bit 1: detector "1"
        twin = pair == 3
        v = pair >> 1
        bit[i] = v
        detector[i] = 1 + 2 * b + (0 if twin else v)
        double[i] = double[i] or twin
        twin_at[n_twin] = i
        n_twin += twin
    return n_twin


@njit(cache=True)
def _clicks_per_slot(
    time_ps, channel, period, delay_rel, half_gate, sync_span, sync_period_slots, sync_delay,
    has_ref, ref_t, ref_slot, out_slot, out_mask,
):  # fmt: skip
    """One pass over time-ordered tags: (slot, channel mask) per slot with a click in the gate.

    Times are subtracted as integers before going to float, so picosecond precision holds
    at any run length. Returns the count written, the clicks dropped outside the gate, those
    without a sync reference, whether the slots came out sorted, and the sync state.
    """
    n = 0
    dropped = 0
    unanchored = 0
    ordered = True
    for i in range(time_ps.shape[0]):
        c = channel[i]
        t = time_ps[i]
        if c == 0:
            has_ref = True
            ref_t = t
            ref_slot = np.int64(np.floor((t - sync_delay) / sync_span + 0.5)) * sync_period_slots
            continue
        if c > 4:
            continue
        if has_ref:
            rel = float(t - ref_t) - delay_rel
            base = ref_slot
        else:
            rel = (float(t) - sync_delay) - delay_rel
            base = 0
            unanchored += 1
        k = np.floor(rel / period + 0.5)
        if abs(rel - k * period) > half_gate:
            dropped += 1
            continue
        s = base + np.int64(k)
        bit = np.uint8(1) << np.uint8(c - 1)
        if n > 0 and out_slot[n - 1] == s:
            out_mask[n - 1] |= bit
        else:
            if n > 0 and s < out_slot[n - 1]:
                ordered = False
            out_slot[n] = s
            out_mask[n] = bit
            n += 1
    return n, dropped, unanchored, ordered, has_ref, ref_t, ref_slot


@dataclass
class FrameAssembler:
    """Collect events from successive batches and hand out complete frames in order.

    A frame is complete when the tag stream has moved past its last slot (``horizon_slot``,
    the slot of the latest tag seen). Frames without events are still handed out, so Alice and
    Bob count frames identically; the frame in progress when acquisition started is skipped.
    """

    frame_slots: int
    _pending: list[Events] = field(default_factory=list)
    _next: int | None = None
    _dropped: int = 0

    def add(self, events: Events, horizon_slot: int, dropped: int = 0) -> list[Frame]:
        """Add one batch; return the frames that are now complete."""
        self._dropped += dropped
        if self._next is None:
            first = int(events.slot[0]) if len(events) else horizon_slot
            self._next = -(-first // self.frame_slots)  # first frame starting at or after
        if len(events):
            self._pending.append(events)
        done: list[Frame] = []
        while (self._next + 1) * self.frame_slots <= horizon_slot:
            lo, hi = self._next * self.frame_slots, (self._next + 1) * self.frame_slots
            allev = Events.concat(self._pending)
            frame_ev = allev.select((allev.slot >= lo) & (allev.slot < hi))
            rest = allev.select(allev.slot >= hi)
            self._pending = [rest] if len(rest) else []
            done.append(Frame(self._next, self.frame_slots, frame_ev, self._dropped))
            self._dropped = 0
            self._next += 1
        return done


def arrival_phase_histogram(
    phase_ps: np.ndarray, period_ps: float, bin_ps: float = 5.0
) -> tuple[np.ndarray, np.ndarray]:
    """Histogram of arrival phase modulo the clock period: ``(counts, bin_left_edges_ps)``."""
    nbins = max(1, int(round(period_ps / bin_ps)))
    counts, edges = np.histogram(np.mod(phase_ps, period_ps), bins=nbins, range=(0.0, period_ps))
    return counts, edges[:-1]


def calibrate_phase(
    time_ps: np.ndarray, channel: np.ndarray, timing: TimingConfig, bin_ps: float = 5.0
) -> float:
    """Sub-period part of the detection delay (ps, in ``[0, period)``) from the phase peak.

    The arrival phase of detections relative to the sync grid peaks at ``delay_ps mod
    period_ps``. The circular mean of the histogram above its median (the flat floor of dark
    counts) locates the peak without bias, also when it straddles the period boundary.
    """
    probe = EventBuilder(TimingConfig(**{**timing.__dict__, "delay_ps": 0.0}))
    _slot, phase, _ch = probe.slots_and_phase(
        np.asarray(time_ps, np.int64), np.asarray(channel, np.uint8)
    )
    if len(phase) == 0:
        raise ValueError("no detections to calibrate the delay with")
    period = timing.period_ps
    counts, left = arrival_phase_histogram(phase, period, bin_ps)
    weights = np.maximum(counts - np.median(counts), 0.0)
    if not weights.any():
        raise ValueError("the arrival phase shows no peak above the dark-count floor")
    angle = 2 * np.pi * (left + period / len(counts) / 2) / period
    mean = np.arctan2(np.sum(weights * np.sin(angle)), np.sum(weights * np.cos(angle)))
    return float(np.mod(mean * period / (2 * np.pi), period))


def find_slot_offset(
    bob: Events, alice_symbols: np.ndarray, first_slot: int, max_offset: int
) -> tuple[int, float]:
    """Whole-slot delay by cross-correlating Bob's Z-basis bits with Alice's Z-basis symbols.

    ``alice_symbols`` are Alice's symbol bytes (§1.1) of the contiguous slots
    ``first_slot ...``; Bob's events are stamped with a provisional slot that is ``offset``
    too large. The correlation of +/-1 bit signs (zero where the basis is X) peaks at the true
    offset with height ~ N_z (1 - 2 QBER) over a noise floor ~ sqrt(N_z). Returns
    ``(offset_slots, peak_over_noise)``.
    """
    a_basis = alice_symbols & 1
    a_sign = np.where(a_basis == 0, 1.0 - 2.0 * ((alice_symbols >> 1) & 1), 0.0)
    z = bob.basis == 0
    rel = bob.slot[z] - first_slot
    keep = (rel >= max_offset) & (rel < len(alice_symbols))
    rel = rel[keep]
    if len(rel) == 0:
        raise ValueError("no Z-basis detections inside Alice's symbol window")
    b_sign = 1.0 - 2.0 * bob.bit[z][keep]
    n = len(alice_symbols)
    b = np.zeros(n)
    np.add.at(b, rel, b_sign)
    size = 1 << int(np.ceil(np.log2(2 * n)))
    # c[d] = sum_i b[r_i] * a[r_i - d]  -> correlation of b with a
    corr = np.fft.irfft(np.fft.rfft(b, size) * np.conj(np.fft.rfft(a_sign, size)), size)
    window = corr[: max_offset + 1]
    best = int(np.argmax(window))
    rest = np.delete(window, best)
    noise = float(np.sqrt(np.mean(rest**2))) if len(rest) else 1.0
    noise = noise or 1.0
    return best, float(window[best] / noise)
