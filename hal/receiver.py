"""Bob's data path (tagger -> events -> frames) and Alice's symbol look-up, over the roles.

The node runtime calls ``BobReceiver.poll()`` (or ``next_frame``) in its acquisition loop and
``alice_symbols(transmitter, slots)`` on Alice's side for the slots Bob reported.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from hal.bench import BenchConfig
from hal.events import EventBuilder, Frame, FrameAssembler, TimingConfig
from hal.interfaces import TimeTagger, Transmitter


def timing_from_config(config: BenchConfig) -> TimingConfig:
    """Bob's timing from a bench file (clock from ``[timing]`` or the source's settings)."""
    t = config.timing
    clock = config.clock_hz
    if clock is None:
        raise ValueError("the bench gives no clock rate (timing.clock_hz)")
    return TimingConfig(
        period_ps=1e12 / clock,
        delay_ps=t.delay_ps,
        gate_ps=t.gate_ps,
        sync_period_slots=t.sync_period_slots,
        sync_delay_ps=t.sync_delay_ps,
        frame_slots=t.frame_slots,
    )


@dataclass
class BobReceiver:
    """Fetch tags, turn them into events, hand out complete frames (contracts §1.3)."""

    tagger: TimeTagger
    timing: TimingConfig
    seed: int | None = None
    fetch_max: int = 1 << 20
    tags_seen: int = 0
    builder: EventBuilder = field(init=False)
    assembler: FrameAssembler = field(init=False)

    def __post_init__(self) -> None:
        self.builder = EventBuilder(self.timing, seed=self.seed)
        self.assembler = FrameAssembler(self.timing.frame_slots)
        self._horizon = -1
        self._ready: deque[Frame] = deque()

    def poll(self) -> list[Frame]:
        """One fetch from the tagger; the frames completed by it (possibly none)."""
        time_ps, channel = self.tagger.fetch(self.fetch_max)
        return self.add_tags(time_ps, channel)

    def add_tags(self, time_ps: np.ndarray, channel: np.ndarray) -> list[Frame]:
        """Feed one batch of tags (time order) from any source; return completed frames."""
        if len(time_ps) == 0:
            return []
        self.tags_seen += len(time_ps)
        dropped_before = self.builder.dropped_outside_gate
        events = self.builder.convert(time_ps, channel)
        tm = self.timing
        # Every tag of an earlier slot has arrived once a later tag is seen; keep one slot of
        # margin for timing jitter.
        self._horizon = max(
            self._horizon, int((int(time_ps[-1]) - tm.delay_ps) // tm.period_ps) - 1
        )
        return self.assembler.add(
            events, self._horizon, self.builder.dropped_outside_gate - dropped_before
        )

    def next_frame(self, timeout_s: float = 10.0, idle_sleep_s: float = 0.001) -> Frame:
        """The next complete frame, polling the tagger; TimeoutError after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while not self._ready:
            self._ready.extend(self.poll())
            if not self._ready:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no complete frame within {timeout_s} s")
                time.sleep(idle_sleep_s)
        return self._ready.popleft()

    def frames(self, timeout_s: float = 10.0) -> Iterator[Frame]:
        """Iterate complete frames in order, forever (each within ``timeout_s``)."""
        while True:
            yield self.next_frame(timeout_s)


def alice_symbols(transmitter: Transmitter, slots: np.ndarray) -> dict[str, np.ndarray]:
    """Alice's ``basis``, ``bit``, ``intensity`` for the slots Bob reported (contracts §1.3)."""
    return transmitter.symbols(np.asarray(slots, dtype=np.int64))
