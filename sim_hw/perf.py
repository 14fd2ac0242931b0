"""``qnode perf`` row of the simulated world's physics: ``simulator``.

``simulator``: simulated pulses/s and detections/s of the link physics alone, after a warm-up
that loads the numba kernels, at 1 GHz: ``gys`` at 50 km (~1.6e-3 clicks per pulse over the
three classes) and ``snspd`` at 10 km at ``qnode link``'s operating point
(``qnode.link.OPERATING_POINTS``: the ``link`` row's link, ~0.05 clicks per pulse, dead-time
limited). One thread (the kernel is sequential). The pulses are simulated as a stream of
consecutive ``simulate`` calls of ``call_slots`` = 2^30 slots. Best of three runs, wall clock;
the note gives pulses per CPU-second, less disturbed by a busy machine.

The ``world`` row (the world process end to end, through the drivers) is in
:mod:`qnode.world_perf`: it drives the world with the drivers, which sim_hw must not import.
"""

from __future__ import annotations

import time
from typing import Any

STAGE = "simulator"
CLOCK_HZ = 1e9
CALL_SLOTS = 1 << 30
SIM_CASES = (("gys", 50.0), ("snspd", 10.0))


def _operating_point(preset: str) -> dict[str, float]:
    """The source settings ``qnode link`` runs this preset with (none: the preset's own)."""
    from qnode.link import OPERATING_POINTS

    return dict(OPERATING_POINTS.get(preset, {}))


def _measure(pulses: int, preset: str, km: float) -> dict[str, Any]:
    import numba

    from qnode import linkmodel as lm
    from sim_hw.physics import LinkSimulator

    source = {"clock_hz": CLOCK_HZ, **(_operating_point(preset) if preset == "snspd" else {})}
    params = lm.preset(preset).with_changes(source=source, fibre={"length_km": km})
    previous = numba.get_num_threads()
    numba.set_num_threads(1)
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
        "preset": preset,
        "clock_hz": CLOCK_HZ,
        "distance_km": km,
        "threads": 1,
        "pulses": pulses,
        "call_slots": CALL_SLOTS,
        "pulses_per_s": pulses / best_wall,
        "detections_per_s": clicks / best_wall,
        "note": f"{pulses / best_cpu:.3g} pulses per CPU-second",
    }


def perf_rows(quick: bool = False, stages: list[str] | None = None) -> list[dict[str, Any]]:
    """The ``simulator`` rows (skipped when ``stages`` names another stage)."""
    rows: list[dict[str, Any]] = []
    if stages is None or STAGE in stages:
        pulses = 1_000_000_000 if quick else 4_000_000_000
        rows.extend(_measure(pulses, preset, km) for preset, km in SIM_CASES)
    return rows
