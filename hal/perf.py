"""``qnode perf`` row ``events``: Bob's time tags -> detection events through ``hal.events``.

Synthetic tags shaped like the emulated tagger's stream at 1 GHz (``gys`` at 50 km: ~1.6e-3
clicks per slot, 50 ps jitter, a sync tag every 2^20 slots, a few percent double clicks) are fed
to ``EventBuilder.convert`` in batches of ``BATCH`` tags (one driver fetch), after a warm-up that
loads the numba kernel. hal never imports sim_hw, so the tags are drawn here with numpy; their
content does not change the work per tag (one pass, then numpy for the rare ambiguities).
Best of three runs, wall clock; ``tags_per_s`` counts tags in, ``events_per_s`` events out.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

STAGE = "events"
CLOCK_HZ = 1e9
CLICK_PROB = 1.6e-3
JITTER_PS = 50.0
DOUBLE_FRACTION = 0.02
SYNC_PERIOD_SLOTS = 1 << 20
DELAY_PS = 244_850_000  # 50 km of fibre
BATCH = 1 << 20


def synthetic_tags(n_clicks: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """About ``n_clicks`` detector tags plus the sync tags of their span, in time order."""
    rng = np.random.default_rng(seed)
    period = 1e12 / CLOCK_HZ
    slots = np.cumsum(rng.geometric(CLICK_PROB, n_clicks)).astype(np.int64)
    twins = rng.random(n_clicks) < DOUBLE_FRACTION  # a second detector clicks in the same slot
    slots = np.concatenate((slots, slots[twins]))
    chan = rng.integers(1, 5, slots.size, dtype=np.uint8)
    t = (
        slots * int(period)
        + DELAY_PS
        + np.rint(rng.normal(0, JITTER_PS, slots.size)).astype(np.int64)
    )
    sync_slots = np.arange(0, int(slots.max()) + 1, SYNC_PERIOD_SLOTS, dtype=np.int64)
    t = np.concatenate((t, sync_slots * int(period)))
    chan = np.concatenate((chan, np.zeros(sync_slots.size, np.uint8)))
    order = np.argsort(t, kind="stable")
    return t[order], chan[order]


def _run(time_ps: np.ndarray, channel: np.ndarray) -> tuple[int, float]:
    """Convert all tags batch by batch with a fresh builder; ``(events, seconds)``."""
    from hal.events import EventBuilder, TimingConfig

    timing = TimingConfig(
        period_ps=1e12 / CLOCK_HZ, delay_ps=DELAY_PS, sync_period_slots=SYNC_PERIOD_SLOTS
    )
    builder = EventBuilder(timing, seed=1)
    n_events = 0
    t0 = time.perf_counter()
    for lo in range(0, time_ps.size, BATCH):
        n_events += len(builder.convert(time_ps[lo : lo + BATCH], channel[lo : lo + BATCH]))
    return n_events, time.perf_counter() - t0


def perf_rows(quick: bool = False, stages: list[str] | None = None) -> list[dict[str, Any]]:
    """The ``events`` row (skipped when ``stages`` names other stages only)."""
    if stages is not None and STAGE not in stages:
        return []
    n_clicks = 1_000_000 if quick else 10_000_000
    time_ps, channel = synthetic_tags(n_clicks)
    _run(time_ps[:BATCH], channel[:BATCH])  # warm-up: numba kernel loaded from its cache
    best, n_events = float("inf"), 0
    for _ in range(3):
        events, seconds = _run(time_ps, channel)
        if seconds < best:
            best, n_events = seconds, events
    return [
        {
            "stage": STAGE,
            "impl": "qnode",
            "n": int(time_ps.size),
            "clock_hz": CLOCK_HZ,
            "batch": BATCH,
            "tags_per_s": time_ps.size / best,
            "events_per_s": n_events / best,
        }
    ]
