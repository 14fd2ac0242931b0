"""Tags -> events against a plain Python reference; delay calibration by phase and correlation."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hal.events import (
    EventBuilder,
    Events,
    FrameAssembler,
    TimingConfig,
    calibrate_phase,
    find_slot_offset,
)

PERIOD = 1000.0


def reference(times, chans, timing):
    """Loop over tags one by one: the slow, obvious version of EventBuilder.convert."""
    per_slot: dict[int, set[int]] = {}
    dropped = 0
    last_sync = None
    for t, ch in zip(times, chans, strict=True):
        if ch == 0:
            span = timing.sync_period_slots * timing.period_ps
            last_sync = (t, round((t - timing.sync_delay_ps) / span) * timing.sync_period_slots)
            continue
        ref_t, ref_slot = last_sync if last_sync else (timing.sync_delay_ps, 0)
        rel = t - ref_t - (timing.delay_ps - timing.sync_delay_ps)
        k = int(np.floor(rel / timing.period_ps + 0.5))
        phase = rel - k * timing.period_ps
        if abs(phase) > timing.gate_ps / 2:
            dropped += 1
            continue
        per_slot.setdefault(ref_slot + k, set()).add(int(ch))
    return dict(sorted(per_slot.items())), dropped


@st.composite
def tag_streams(draw):
    n_sync = draw(st.integers(0, 4))
    sync_period = draw(st.sampled_from([8, 16, 64]))
    delay = draw(st.integers(0, 5000))
    timing = TimingConfig(
        period_ps=PERIOD, delay_ps=delay, gate_ps=300, sync_period_slots=sync_period
    )
    n = draw(st.integers(0, 40))
    slots = draw(st.lists(st.integers(0, 4 * sync_period), min_size=n, max_size=n))
    chans = draw(st.lists(st.integers(1, 4), min_size=n, max_size=n))
    jit = draw(st.lists(st.integers(-400, 400), min_size=n, max_size=n))
    times = [s * PERIOD + delay + j for s, j in zip(slots, jit, strict=True)]
    times += [k * sync_period * PERIOD for k in range(n_sync)]
    chans += [0] * n_sync
    order = np.argsort(np.array(times, dtype=np.int64), kind="stable")
    return (
        np.array(times, dtype=np.int64)[order],
        np.array(chans, dtype=np.uint8)[order],
        timing,
    )


@settings(max_examples=150, deadline=None)
@given(tag_streams())
def test_convert_matches_reference(stream):
    times, chans, timing = stream
    builder = EventBuilder(timing, seed=1)
    ev = builder.convert(times, chans)
    expect, dropped = reference(times.tolist(), chans.tolist(), timing)
    assert builder.dropped_outside_gate == dropped
    assert ev.slot.tolist() == list(expect)
    assert np.all(np.diff(ev.slot) > 0)
    for i, (slot, clicked) in enumerate(expect.items()):
        bases = {(c - 1) // 2 for c in clicked}
        assert ev.slot[i] == slot
        if len(bases) == 2:
            assert ev.double[i], f"cross-basis clicks in slot {slot} must be flagged"
            continue
        (basis,) = bases
        assert ev.basis[i] == basis
        if len(clicked) == 2:
            assert ev.double[i] and ev.detector[i] == 1 + 2 * basis and ev.bit[i] in (0, 1)
        else:
            (c,) = clicked
            assert not ev.double[i]
            assert (ev.detector[i], ev.bit[i]) == (c, (c - 1) % 2)


def test_double_click_bits_are_random_and_balanced():
    timing = TimingConfig(period_ps=PERIOD, gate_ps=200)
    slots = np.repeat(np.arange(4000), 2)
    chans = np.tile(np.array([1, 2], np.uint8), 4000)
    ev = EventBuilder(timing, seed=3).convert((slots * PERIOD).astype(np.int64), chans)
    assert len(ev) == 4000 and ev.double.all() and (ev.detector == 1).all()
    assert 0.45 < ev.bit.mean() < 0.55


def test_sync_state_carries_across_batches():
    timing = TimingConfig(period_ps=PERIOD, sync_period_slots=100, delay_ps=50)
    builder = EventBuilder(timing)
    builder.convert(np.array([100_000], np.int64), np.array([0], np.uint8))  # sync of slot 100
    ev = builder.convert(np.array([150 * 1000 + 50 + 30], np.int64), np.array([3], np.uint8))
    assert ev.slot.tolist() == [150] and builder.unanchored == 0


def test_frames_are_complete_in_order_and_empty_frames_count():
    asm = FrameAssembler(frame_slots=100)
    ev = Events(
        np.array([120, 150, 390], np.int64),
        np.zeros(3, np.uint8),
        np.array([0, 1, 0], np.uint8),
        np.array([1, 2, 1], np.uint8),
        np.zeros(3, bool),
    )
    frames = asm.add(ev, horizon_slot=399, dropped=2)
    assert [f.index for f in frames] == [2]  # frame 1 began before the first event: skipped
    frames = asm.add(Events.empty(), horizon_slot=450)
    assert [f.index for f in frames] == [3] and len(frames[0].events) == 1


def test_frames_skip_partial_first_frame():
    asm = FrameAssembler(frame_slots=100)
    ev = Events(
        np.array([0, 99, 100, 250], np.int64),
        *(np.zeros(4, t) for t in (np.uint8,) * 3),
        np.zeros(4, bool),
    )
    frames = asm.add(ev, horizon_slot=300)
    assert [(f.index, len(f.events)) for f in frames] == [(0, 2), (1, 1), (2, 1)]


def test_calibration_recovers_phase_and_slot_offset():
    rng = np.random.default_rng(7)
    period, true_delay = 800.0, 37 * 800.0 + 312.0
    n_slots = 1 << 16
    symbols = rng.integers(0, 16, n_slots + 64, dtype=np.uint8) & 0b0111
    det_slots = np.sort(rng.choice(np.arange(64, n_slots), 3000, replace=False))
    basis = symbols[det_slots] & 1
    bit = (symbols[det_slots] >> 1) & 1
    flip = rng.random(len(det_slots)) < 0.03
    bit = bit ^ flip
    times = (det_slots * period + true_delay + rng.normal(0, 30, len(det_slots))).astype(np.int64)
    chans = (1 + 2 * basis + bit).astype(np.uint8)
    timing = TimingConfig(period_ps=period, gate_ps=300)
    phase = calibrate_phase(times, chans, timing)
    assert phase == pytest.approx(312.0, abs=5)
    # With only the phase known, provisional slots are 37 too large.
    ev = EventBuilder(TimingConfig(period_ps=period, gate_ps=300, delay_ps=phase)).convert(
        times, chans
    )
    offset, snr = find_slot_offset(ev, symbols, first_slot=0, max_offset=60)
    assert offset == 37 and snr > 10


def test_out_of_order_tags_still_give_sorted_unique_slots():
    timing = TimingConfig(period_ps=PERIOD, gate_ps=300)
    times = np.array([5000, 3000, 5010, 3000], np.int64)  # slots 5, 3, 5, 3 (not time-ordered)
    chans = np.array([1, 3, 2, 3], np.uint8)
    ev = EventBuilder(timing, seed=0).convert(times, chans)
    assert ev.slot.tolist() == [3, 5]
    assert (ev.basis[0], ev.bit[0], ev.detector[0], ev.double[0]) == (1, 0, 3, False)
    assert ev.double[1] and ev.basis[1] == 0 and ev.detector[1] == 1
