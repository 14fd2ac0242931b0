"""``qnode perf`` row ``simulator``: simulated pulses/s and detections/s of the link physics.

Measured at 1 GHz and 50 km with the ``gys`` preset (Ma et al. 2005 table: ~1.6e-3 clicks per
pulse over the three classes), after a warm-up that loads the numba kernels. One row per thread
count: 1 (the per-core figure) and all of numba's threads (the candidate sampling and the time
stamping run in ``prange``; the dead-time/afterpulse pass is sequential). The pulses are
simulated as a stream of consecutive ``simulate`` calls of ``call_slots`` = 2^30 slots (about
one second of a 1 GHz link per call, as the emulated world does in smaller pieces). Best of three
runs, wall clock; the note gives pulses per CPU-second, less disturbed by a busy machine.
"""

from __future__ import annotations

import time
from typing import Any

STAGE = "simulator"
PRESET = "gys"
DISTANCE_KM = 50.0
CLOCK_HZ = 1e9
CALL_SLOTS = 1 << 30


def _measure(pulses: int, threads: int) -> dict[str, Any]:
    import numba

    from qnode import linkmodel as lm
    from sim_hw.physics import LinkSimulator

    params = lm.preset(PRESET).with_changes(
        source={"clock_hz": CLOCK_HZ}, fibre={"length_km": DISTANCE_KM}
    )
    previous = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        sim = LinkSimulator(params, key=0x0123_4567_89AB_CDEF, seed=1)
        sim.simulate(0, 1 << 24)  # warm-up: kernels loaded, buffers sized
        best_wall, best_cpu, clicks = float("inf"), float("inf"), 0
        first = 1 << 24
        for _ in range(3):
            c0, t0 = time.process_time(), time.perf_counter()
            n_clicks, end = 0, first + pulses
            while first < end:
                n = min(CALL_SLOTS, end - first)
                n_clicks += sim.simulate(first, n).slot.size
                first += n
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            if wall < best_wall:
                best_wall, clicks = wall, n_clicks
            best_cpu = min(best_cpu, cpu)
    finally:
        numba.set_num_threads(previous)
    return {
        "stage": STAGE,
        "impl": "qnode",
        "preset": PRESET,
        "clock_hz": CLOCK_HZ,
        "distance_km": DISTANCE_KM,
        "threads": threads,
        "pulses": pulses,
        "call_slots": CALL_SLOTS,
        "pulses_per_s": pulses / best_wall,
        "detections_per_s": clicks / best_wall,
        "note": f"{pulses / best_cpu:.3g} pulses per CPU-second",
    }


def perf_rows(quick: bool = False, stages: list[str] | None = None) -> list[dict[str, Any]]:
    """The ``simulator`` rows (skipped when ``stages`` names other stages only)."""
    if stages is not None and STAGE not in stages:
        return []
    import numba

    pulses = 1_000_000_000 if quick else 10_000_000_000
    counts = sorted({1, numba.config.NUMBA_NUM_THREADS})
    return [_measure(pulses, threads) for threads in counts]
