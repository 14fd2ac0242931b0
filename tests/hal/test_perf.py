"""hal.perf: the ``events`` row converts its synthetic tags correctly and skips other stages."""

import numpy as np

from hal import perf
from hal.events import EventBuilder, TimingConfig


def test_synthetic_tags_become_one_event_per_clicked_slot():
    time_ps, channel = perf.synthetic_tags(20_000, seed=3)
    assert np.all(np.diff(time_ps) >= 0)
    det = channel > 0
    period = 1e12 / perf.CLOCK_HZ
    truth = np.unique(np.rint((time_ps[det] - perf.DELAY_PS) / period).astype(np.int64))
    builder = EventBuilder(
        TimingConfig(period, perf.DELAY_PS, sync_period_slots=perf.SYNC_PERIOD_SLOTS), seed=1
    )
    events = builder.convert(time_ps, channel)
    assert np.isin(events.slot, truth).all()
    # Only clicks beyond the +/-200 ps gate (4 sigma of the 50 ps jitter) are lost.
    assert len(truth) - builder.dropped_outside_gate <= len(events) <= len(truth)
    assert builder.dropped_outside_gate < 20
    assert 0.005 < events.double.mean() < 0.05  # the injected twins, minus cross-basis ones


def test_perf_rows_skip_other_stages():
    assert perf.perf_rows(stages=["scpi"]) == []
