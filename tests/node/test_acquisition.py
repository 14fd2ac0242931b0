"""Acquisition helpers: frame splitting equals hal's FrameAssembler; the PUSH wire format."""

from __future__ import annotations

import numpy as np
import pytest

from hal.acquisition import FrameSplitter, decode_frame, encode_frame
from hal.events import EventBuilder, FrameAssembler, TimingConfig


def _events(seed: int, n: int = 200_000, span: int = 3_000_000):
    rng = np.random.default_rng(seed)
    slots = np.sort(rng.choice(span, n, replace=False)).astype(np.int64) + 123_457
    channel = rng.integers(1, 5, n).astype(np.uint8)
    time_ps = slots * 1000 + rng.integers(-30, 30, n)
    return EventBuilder(TimingConfig(period_ps=1000.0), seed=seed).convert(time_ps, channel)


@pytest.mark.parametrize("frame_slots", [1 << 14, 1 << 17, 1 << 20])
@pytest.mark.parametrize("cuts", [1, 3, 7])
def test_splitter_gives_the_assembler_s_frames(frame_slots, cuts):
    ev = _events(frame_slots + cuts)
    bounds = np.linspace(0, len(ev), cuts + 1).astype(int)
    assembler, splitter = FrameAssembler(frame_slots), FrameSplitter(frame_slots)
    got_a, got_s = [], []
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        part = ev.select(slice(lo, hi))
        horizon = int(part.slot[-1]) - 4
        got_a += [(f.index, f.events) for f in assembler.add(part, horizon)]
        got_s += splitter.add(part, horizon)
    assert [i for i, _ in got_a] == [i for i, _ in got_s]
    for (_, a), (_, s) in zip(got_a, got_s, strict=True):
        for field in ("slot", "basis", "bit", "detector", "double"):
            assert np.array_equal(getattr(a, field), getattr(s, field))


def test_event_frame_wire_format_round_trips_and_refuses_bad_parts():
    ev = _events(1, n=1000)
    parts = encode_frame(42, 1 << 20, ev, dropped=3)
    header, arrays = decode_frame([bytes(p) if isinstance(p, bytes) else p.tobytes()
                                   for p in parts])  # fmt: skip
    assert header["frame"] == 42 and header["n"] == len(ev) and header["dropped_outside_gate"] == 3
    assert np.array_equal(arrays["slot"], ev.slot) and arrays["double"].dtype == bool
    with pytest.raises(ValueError):
        decode_frame(parts[:3])
    with pytest.raises(ValueError):
        decode_frame([parts[0], *[p[:-1] for p in parts[1:]]])
    with pytest.raises(ValueError):
        decode_frame([b"\xc1", *parts[1:]])
