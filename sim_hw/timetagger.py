"""Emulated time tagger (contracts §2.4, records §1.2), SCPI over TCP.

Tags are made on demand: ``TAGS:FETCh? <max>`` takes the chunks the world simulated ahead while
acquiring, and only when no tag waits at all asks it to simulate (until ``max`` tags wait or a
per-fetch budget is spent), so simulated time advances as tags are fetched and a fetch answers
with what is buffered, as a real tagger does (with ``realtime`` the world never runs ahead of
wall clock x clock rate).
Channel 0 is the sync input (one tag every ``SYNC:PERiod`` slots), channels 1-4 the detectors.

Ordering: a tag's time includes jitter and the per-input delay, so the tags of one chunk can
land after those of the next. Tags later than a horizon (chunk end + smallest delay - a guard of
20 jitter sigmas) are held back and merged with the next chunk; fetched tags are in time order.
Records are ``uint64 = (time_ps << 8) | channel`` packed with numpy; a fetch copies the buffered
pieces straight into its block (one copy) and sends it in one write.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import TYPE_CHECKING

import numpy as np
from numba import njit

from sim_hw.scpi import CommandTree, ScpiDevice, ScpiError
from sim_hw.scpi_params import PICOSECOND, VOLT, Integer, Number

if TYPE_CHECKING:
    from sim_hw.world import World

N_INPUTS = 5  # 0 = sync, 1-4 = detectors Z0, Z1, X0, X1
MAX_FETCH = 1 << 24  # tags per fetch: 128 MiB of records
MAX_PENDING = 1 << 25  # buffered tags (256 MiB); beyond, the oldest are dropped
FETCH_BUDGET_S = 0.25  # wall time one fetch may spend simulating before it answers
HOLD_POLL_S = 0.002  # a fetch waiting for the read-ahead looks this often
PULSE_HEIGHT_V = 1.0  # the detectors' output pulses; a threshold above it sees nothing
RATE_WINDOW_S = 1.0

THRESHOLD = Number(-2.5, 2.5, 0.5, VOLT)
DELAY = Number(-1e6, 1e9, 0.0, PICOSECOND)
SYNC_PERIOD = Integer(1, 1 << 40, 1 << 20)


class RateMeter:
    """Counts per input over the last second of simulated time (chunk granularity)."""

    def __init__(self) -> None:
        self._chunks: deque[tuple[float, np.ndarray]] = deque()
        self._covered_s = 0.0

    def record(self, duration_s: float, counts: np.ndarray) -> None:
        self._chunks.append((duration_s, counts))
        self._covered_s += duration_s
        while self._chunks and self._covered_s - self._chunks[0][0] >= RATE_WINDOW_S:
            self._covered_s -= self._chunks.popleft()[0]

    @property
    def covered_s(self) -> float:
        return self._covered_s

    def rate(self, channel: int) -> float:
        if self._covered_s <= 0:
            return 0.0
        return sum(int(c[channel]) for _, c in self._chunks) / self._covered_s

    def clear(self) -> None:
        self._chunks.clear()
        self._covered_s = 0.0


class TimeTagger(ScpiDevice):
    """Five inputs, a tag buffer and count rates, fed by the world's simulation."""

    idn = "QNODE,TIME-TAGGER,SIM0001,1.0"

    def __init__(self, world: World) -> None:
        self._world = world
        self.acquiring = False
        self.threshold_v = [0.5] * N_INPUTS
        self.delay_ps = [0.0] * N_INPUTS
        self.sync_period_slots = 1 << 20
        self.meter = RateMeter()
        self.overflows = 0  # buffer chunks dropped because nobody fetched them
        self._pending: deque[np.ndarray] = deque()
        self._n_pending = 0
        self._held = np.empty(0, np.uint64)
        super().__init__("timetagger")

    def reset(self) -> None:
        self.acquiring = False
        self._world.read_ahead(False)
        self.threshold_v[:] = [0.5] * N_INPUTS  # in place: the command handlers hold the lists
        self.delay_ps[:] = [0.0] * N_INPUTS
        self.sync_period_slots = 1 << 20
        self.new_run()

    def new_run(self) -> None:
        """The source started a new run (slot 0): drop buffered tags and rate history."""
        self._pending.clear()
        self._n_pending = 0
        self._held = np.empty(0, np.uint64)
        self.meter.clear()

    def build(self, tree: CommandTree) -> None:
        tree.add(":ACQuire:STARt", self._start)
        tree.add(":ACQuire:STOP", self._stop)
        tree.add(":ACQuire:STATe?", lambda: self.acquiring)
        tree.add(":TAGS:FETCh?", self._fetch, [Integer(0, MAX_FETCH)])
        tree.add(":TAGS:COUNt?", self._count)
        tree.add(":COUNter:RATE?", self._rate, [Integer(0, N_INPUTS - 1)])
        tree.setting(":INPut<n>:THReshold", THRESHOLD, self._input_get(self.threshold_v),
                     self._input_set(self.threshold_v))  # fmt: skip
        tree.setting(":INPut<n>:DELay", DELAY, self._input_get(self.delay_ps),
                     self._input_set(self.delay_ps))  # fmt: skip
        tree.setting(":SYNC:PERiod", SYNC_PERIOD, lambda: self.sync_period_slots,
                     lambda v: setattr(self, "sync_period_slots", v))  # fmt: skip

    def _input_get(self, values: list[float]):
        def get(n: int) -> float:
            return values[_input(n)]

        return get

    def _input_set(self, values: list[float]):
        def set_(n: int, value: float) -> None:
            values[_input(n)] = value
            self.meter.clear()  # rates restart with the new input setting

        return set_

    # --- acquisition -----------------------------------------------------------------------
    def _start(self) -> None:
        self._pending.clear()
        self._n_pending = 0
        self._held = np.empty(0, np.uint64)
        self.acquiring = True
        self._world.read_ahead(True)

    def _stop(self) -> None:
        """Stop: nothing more is simulated into the buffer, so held-back tags are final."""
        self.acquiring = False
        self._world.read_ahead(False)
        if self._held.size:
            self._pending.append(self._held)
            self._n_pending += self._held.size
            self._held = np.empty(0, np.uint64)

    def _count(self) -> int:
        if self.acquiring and self._world.realtime:
            self._generate_until(None, time.monotonic() + FETCH_BUDGET_S)
        return self._n_pending

    async def hold(self, msg: bytes) -> None:
        """Before a fetch that finds no tag buffered, wait (yielding the event loop to the
        other instruments) for the chunk the world's read-ahead is simulating."""
        if not self.acquiring or self._n_pending or b"FETC" not in msg.upper():
            return
        deadline = time.monotonic() + FETCH_BUDGET_S
        while self._world.ahead_busy() and not self._world.available():
            if time.monotonic() > deadline:
                return
            await asyncio.sleep(HOLD_POLL_S)

    def _fetch(self, max_tags: int) -> bytes:
        if self.acquiring:
            self._generate_until(max_tags, time.monotonic() + FETCH_BUDGET_S)
        # The block built in one copy from the buffered pieces (no concatenation first).
        parts = [memoryview(p).cast("B") for p in self._take_parts(max_tags)]
        return definite_block_of(parts)

    def take(self, max_tags: int) -> np.ndarray:
        """Remove and return up to ``max_tags`` waiting records, oldest first."""
        parts = self._take_parts(max_tags)
        return parts[0] if len(parts) == 1 else np.concatenate(parts or [np.empty(0, np.uint64)])

    def _take_parts(self, max_tags: int) -> list[np.ndarray]:
        """Remove up to ``max_tags`` waiting records, oldest first, as the buffered pieces."""
        parts = []
        need = max_tags
        while need > 0 and self._pending:
            head = self._pending[0]
            if head.size <= need:
                parts.append(self._pending.popleft())
                need -= head.size
            else:
                parts.append(head[:need])
                self._pending[0] = head[need:]
                need = 0
        self._n_pending -= max_tags - need
        return parts

    def _generate_until(self, max_tags: int | None, deadline: float) -> None:
        """Take chunks until ``max_tags`` wait, the world can go no further, or time is up; once
        some tags wait, only chunks already simulated ahead (the caller is waiting)."""
        while max_tags is None or self._n_pending < max_tags:
            if self._n_pending and not self._world.available():
                break
            if not self._world.advance_chunk():
                break
            if time.monotonic() > deadline:
                break

    def _rate(self, channel: int) -> float:
        # The counters run whether or not anyone streams the tags, so filling the window
        # advances the world (and, while acquiring, buffers the tags of that window).
        self._world.fill_meter(self.meter)
        return self.meter.rate(channel)

    # --- the world calls this with each simulated chunk ------------------------------------
    def ingest(
        self,
        first_slot: int,
        n_slots: int,
        period_ps: float,
        channel: np.ndarray,
        time_ps: np.ndarray,
        jitter_ps: float,
        base_delay_ps: float,
    ) -> None:
        """Turn one chunk's detections into tags: add sync, apply inputs, order, buffer, count."""
        seen = np.array([0 < th < PULSE_HEIGHT_V for th in self.threshold_v])
        delays = np.rint(np.asarray(self.delay_ps)).astype(np.int64)
        sync = self._sync_records(first_slot, n_slots, period_ps, int(delays[0]), bool(seen[0]))
        small = np.concatenate([self._held, sync])  # few: held-back tags and sync tags
        small.sort()
        merged = _merged_records(channel, time_ps, delays, seen, small) if self.acquiring else None
        if merged is not None:  # the common case: records, counts and the merge in one pass
            det, counts = merged
        else:
            det, counts = _detection_records(channel, time_ps, delays, seen)
            if self.acquiring and small.size:
                det = np.insert(det, np.searchsorted(det, small), small)
        counts[0] = sync.size
        self.meter.record(n_slots * period_ps * 1e-12, counts)
        if not self.acquiring:
            return
        horizon_ps = (
            (first_slot + n_slots) * period_ps
            + min(base_delay_ps + min(self.delay_ps[1:]), self.delay_ps[0])
            - 20 * jitter_ps
            - period_ps
        )
        cut = int(np.searchsorted(det, np.uint64(max(0, int(horizon_ps))) << np.uint64(8)))
        self._held = det[cut:].copy()
        if cut:
            self._pending.append(det[:cut])
            self._n_pending += cut
        while self._n_pending > MAX_PENDING:  # nobody fetches: the oldest tags overflow
            self._n_pending -= self._pending.popleft().size
            self.overflows += 1

    def _sync_records(
        self, first_slot: int, n_slots: int, period_ps: float, delay_ps: int, seen: bool
    ) -> np.ndarray:
        """Sync tags (input 0) of the slots in the chunk that are multiples of the period."""
        if not seen:
            return np.empty(0, np.uint64)
        step = self.sync_period_slots
        slots = np.arange(-(-first_slot // step) * step, first_slot + n_slots, step)
        t = np.rint(slots * period_ps).astype(np.int64) + delay_ps
        return (t[t >= 0].astype(np.uint64) << np.uint64(8)) | np.uint64(0)


def _merged_records(
    channel: np.ndarray,
    time_ps: np.ndarray,
    delays: np.ndarray,
    seen: np.ndarray,
    small: np.ndarray,
) -> tuple[np.ndarray, np.ndarray] | None:
    """The common case of ``_detection_records`` (every detector input sees pulses, one delay,
    detections in time order) with the sorted ``small`` records merged in; None otherwise."""
    d = delays[1:]
    if not (seen[1:].all() and (d == d[0]).all() and d[0] >= 0):
        return None
    out = np.empty(time_ps.size + small.size, np.uint64)
    counts = np.zeros(N_INPUTS, np.int64)
    channel = np.ascontiguousarray(channel, dtype=np.uint8)
    time_ps = np.ascontiguousarray(time_ps, dtype=np.int64)
    if not _merge_kernel(time_ps, channel, np.uint64(d[0]), small, out, counts):
        return None
    return out, counts


@njit(cache=True, nogil=True)
def _merge_kernel(time_ps, channel, delay, small, out, counts):  # pragma: no cover - numba
    """out = the records ``(time + delay) << 8 | channel`` merged with ``small`` (sorted, each
    placed before equal records, as ``np.insert`` at ``searchsorted`` does); counts per channel.
    False (out unusable) when the detections are not in time order."""
    j = 0
    k = 0
    prev = np.uint64(0)
    for i in range(time_ps.size):
        c = channel[i]
        r = ((np.uint64(time_ps[i]) + delay) << np.uint64(8)) | np.uint64(c)
        if r < prev:
            return False
        prev = r
        while j < small.size and small[j] <= r:
            out[k] = small[j]
            k += 1
            j += 1
        out[k] = r
        k += 1
        if c < counts.size:
            counts[c] += 1
    while j < small.size:
        out[k] = small[j]
        k += 1
        j += 1
    return True


def warm_up() -> None:
    """Compile (or load) the merge kernel with the types ``_merged_records`` passes."""
    small = np.array([5 << 8], np.uint64)
    out = np.empty(3, np.uint64)
    counts = np.zeros(N_INPUTS, np.int64)
    time_ps = np.array([1, 9], np.int64)
    _merge_kernel(time_ps, np.array([1, 2], np.uint8), np.uint64(0), small, out, counts)


def _detection_records(
    channel: np.ndarray, time_ps: np.ndarray, delays: np.ndarray, seen: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted ``(time << 8) | channel`` records of the detections an input sees, and counts.

    The common case (one delay for all detector inputs, all of them seeing pulses) keeps the
    physics' time order and costs a few in-place passes; otherwise mask and sort.
    """
    channel = channel.astype(np.uint8, copy=False)
    d = delays[1:]
    if seen[1:].all() and (d == d[0]).all() and d[0] >= 0:
        raw = time_ps.astype(np.uint64)
        raw += np.uint64(d[0])
        raw <<= np.uint64(8)
        raw |= channel
        counts = np.bincount(channel, minlength=N_INPUTS)
    else:
        times = time_ps.astype(np.int64) + delays[channel]
        keep = seen[channel] & (times >= 0)
        channel = channel[keep]
        raw = (times[keep].astype(np.uint64) << np.uint64(8)) | channel
        counts = np.bincount(channel, minlength=N_INPUTS)
    if raw.size > 1 and not (raw[1:] >= raw[:-1]).all():
        raw.sort()
    return raw, counts


def definite_block_of(parts: list[memoryview]) -> bytes:
    """``definite_block`` of the concatenated byte ``parts``, in one copy."""
    n = str(sum(p.nbytes for p in parts)).encode()
    return b"".join([b"#", str(len(n)).encode(), n, *parts])


def _input(n: int) -> int:
    if not 0 <= n < N_INPUTS:
        raise ScpiError(-113, f"input {n}: inputs are 0 (sync) to {N_INPUTS - 1}")
    return n
