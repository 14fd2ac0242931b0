"""Delay calibration of Bob's receiver: arrival phase, then whole slots by correlation.

1. The arrival phase of detections on the sync grid peaks at ``delay mod period``
   (``hal.events.calibrate_phase``).
2. With that phase, Bob's provisional slots are off by a whole number of slots; correlating his
   Z-basis bits with Alice's Z-basis symbols over a contiguous window finds it
   (``hal.events.find_slot_offset``). Alice's symbols come from her transmitter role (in a
   two-node set-up, over the classical channel).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from hal.events import EventBuilder, TimingConfig, calibrate_phase, find_slot_offset
from hal.interfaces import TimeTagger, Transmitter


@dataclass
class DelayCalibration:
    """Result: the total delay and its two parts, with the correlation peak's significance."""

    delay_ps: float
    phase_ps: float
    offset_slots: int
    peak_over_noise: float
    detections: int


def collect_tags(
    tagger: TimeTagger, min_detections: int, max_fetches: int = 200, fetch_max: int = 1 << 20
) -> tuple[np.ndarray, np.ndarray]:
    """Fetch until ``min_detections`` detector tags (channels 1-4) have arrived."""
    times, chans, n_det = [], [], 0
    for _ in range(max_fetches):
        t, ch = tagger.fetch(fetch_max)
        times.append(t)
        chans.append(ch)
        n_det += int(np.count_nonzero(ch != 0))
        if n_det >= min_detections:
            break
    return np.concatenate(times), np.concatenate(chans)


def calibrate_delay(
    tagger: TimeTagger,
    transmitter: Transmitter,
    timing: TimingConfig,
    max_delay_ps: float,
    min_detections: int = 5_000,
    min_significance: float = 8.0,
) -> DelayCalibration:
    """Measure the detection delay (ps) of a running link; the tagger must be acquiring."""
    time_ps, channel = collect_tags(tagger, min_detections, fetch_max=4 * min_detections)
    phase = calibrate_phase(time_ps, channel, timing)
    events = EventBuilder(replace(timing, delay_ps=phase), seed=0).convert(time_ps, channel)
    if len(events) == 0:
        raise ValueError("no detections inside the gate: cannot calibrate")
    # Keep the window of Alice's symbols (and the FFT) no longer than needed.
    events = events.select(np.arange(len(events)) < min_detections)
    max_offset = int(math.ceil(max_delay_ps / timing.period_ps))
    first = max(0, int(events.slot[0]) - max_offset)
    count = int(events.slot[-1]) - first + 1
    symbols = transmitter.symbol_range(first, count)
    offset, significance = find_slot_offset(events, symbols, first, max_offset)
    if significance < min_significance:
        raise ValueError(
            f"no clear correlation peak (best offset {offset} slots at {significance:.1f} sigma)"
        )
    return DelayCalibration(
        phase + offset * timing.period_ps, phase, offset, significance, len(events)
    )
