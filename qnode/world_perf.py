"""``qnode perf`` row ``world``: the ``link`` row's world end to end.

A ``qnode sim serve`` subprocess (``snspd``, 10 km, 1 GHz, the link's operating point set
through the source driver) streams time tags to ``drivers.time_tagger`` over loopback TCP in
fetches of at most 2^22 tags (Bob's ``hal.acquisition.FETCH_TAGS``; a fetch answers with what
is buffered) for 0.5 s of simulated time (0.1 s with ``--quick``). The figure the link needs is
the world process's CPU time (``/proc/<pid>/stat``) per simulated second (``cpu_s_per_sim_s``;
the span of the tags fetched), split in the note into the event loop's thread and the rest (the
read-ahead worker's physics); ``tags_per_s`` is wall clock through the one client. Alice's
symbol queries, which the world also answers in a link, are not part of it.

It lives in the CLI layer because it drives the world with the drivers (sim_hw must not import
them) and starts it with :func:`sim_hw.testing.running_world`.
"""

from __future__ import annotations

import os
import time
from typing import Any

STAGE = "world"
PRESET, DISTANCE_KM = "snspd", 10.0
CLOCK_HZ = 1e9
FETCH_TAGS = 1 << 22


def _cpu_s(pid: int, tid: int | None = None) -> float:
    """User + system CPU seconds of a process (all its threads), or of one of its threads."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    with open(path) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _world_row(quick: bool) -> dict[str, Any]:
    from drivers.pulse_source import PulseSource
    from drivers.time_tagger import TimeTagger
    from qnode.link import OPERATING_POINTS
    from sim_hw.testing import running_world

    target_s = 0.1 if quick else 0.5  # simulated seconds streamed
    with (
        running_world(preset=PRESET, distance_km=DISTANCE_KM) as world,
        PulseSource(world.resources["source"]) as src,
        TimeTagger(world.resources["timetagger"], timeout_s=30) as tagger,
    ):
        pid = world.process.pid
        for name, value in OPERATING_POINTS.get(PRESET, {}).items():
            setattr(src, name, value)
        src.output = True
        tagger.start()
        t_first = tagger.fetch_tags(FETCH_TAGS)[0][-1]  # warm-up: connection, read-ahead
        c0, w0 = _cpu_s(pid), time.perf_counter()
        loop0 = _cpu_s(pid, pid)  # the main thread: event loop, tagger, sends
        n_tags, t_last = 0, t_first
        while (int(t_last) - int(t_first)) * 1e-12 < target_s:
            time_ps, _channel = tagger.fetch_tags(FETCH_TAGS)
            n_tags += time_ps.size
            t_last = time_ps[-1] if time_ps.size else t_last
        wall, cpu = time.perf_counter() - w0, _cpu_s(pid) - c0
        loop = _cpu_s(pid, pid) - loop0
        sim_s = (int(t_last) - int(t_first)) * 1e-12
        tagger.stop()
    return {
        "stage": STAGE,
        "impl": "qnode",
        "preset": PRESET,
        "clock_hz": CLOCK_HZ,
        "distance_km": DISTANCE_KM,
        "fetch_tags": FETCH_TAGS,
        "sim_s": round(sim_s, 4),
        "cpu_s_per_sim_s": round(cpu / sim_s, 3),
        "tags_per_s": n_tags / wall,
        "pulses_per_s": sim_s * CLOCK_HZ / wall,
        "note": f"world {cpu / sim_s:.3g} CPU-s per simulated second ({loop / sim_s:.2g} on the "
        f"event loop, the rest mostly the read-ahead's physics), {cpu * 1e9 / n_tags:.0f} ns "
        "CPU per tag",
    }


def perf_rows(quick: bool = False, stages: list[str] | None = None) -> list[dict[str, Any]]:
    """The ``world`` row (skipped when ``stages`` names another stage)."""
    return [_world_row(quick)] if stages is None or STAGE in stages else []
