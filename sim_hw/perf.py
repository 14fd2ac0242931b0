"""``qnode perf`` rows of the simulated world: ``simulator`` and ``world``.

``simulator``: simulated pulses/s and detections/s of the link physics alone, after a warm-up
that loads the numba kernels, at 1 GHz: ``gys`` at 50 km (~1.6e-3 clicks per pulse over the
three classes) and ``snspd`` at 10 km at ``qnode link``'s operating point
(``qnode.link.OPERATING_POINTS``: the ``link`` row's link, ~0.05 clicks per pulse, dead-time
limited). One thread (the kernel is sequential). The pulses are simulated as a stream of
consecutive ``simulate`` calls of ``call_slots`` = 2^30 slots. Best of three runs, wall clock;
the note gives pulses per CPU-second, less disturbed by a busy machine.

``world``: the ``link`` row's world end to end: a ``qnode sim serve`` subprocess (``snspd``,
10 km, 1 GHz, the link's operating point set through the source driver) streams time tags to
``drivers.time_tagger`` over loopback TCP in fetches of at most 2^22 tags (Bob's
``hal.acquisition.FETCH_TAGS``; a fetch answers with what is buffered) for 0.5 s of simulated
time (0.1 s with ``--quick``). The figure the link needs is the world process's CPU time
(``/proc/<pid>/stat``) per simulated second (``cpu_s_per_sim_s``; the span of the tags
fetched), split in the note into the event loop's thread and the rest (the read-ahead worker's
physics); ``tags_per_s`` is wall clock through the one client. Alice's symbol queries, which
the world also answers in a link, are not part of it.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from typing import Any

STAGE = "simulator"
WORLD_STAGE = "world"
CLOCK_HZ = 1e9
CALL_SLOTS = 1 << 30
SIM_CASES = (("gys", 50.0), ("snspd", 10.0))
WORLD_PRESET, WORLD_KM = "snspd", 10.0
FETCH_TAGS = 1 << 22


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


def _cpu_s(pid: int, tid: int | None = None) -> float:
    """User + system CPU seconds of a process (all its threads), or of one of its threads."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    with open(path) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _serve() -> subprocess.Popen:
    args = ["-m", "qnode", "sim", "serve", "--preset", WORLD_PRESET,
            "--distance", str(WORLD_KM), "--json"]  # fmt: skip
    return subprocess.Popen(
        [sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )


def _ready_line(proc: subprocess.Popen, timeout_s: float = 90.0) -> dict:
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    ready = sel.select(timeout_s)
    sel.close()
    line = proc.stdout.readline() if ready else ""
    if not line:
        raise RuntimeError(f"qnode sim serve: no ready line within {timeout_s} s")
    return json.loads(line)


def _world_row(quick: bool) -> dict[str, Any]:
    from drivers.pulse_source import PulseSource
    from drivers.time_tagger import TimeTagger

    target_s = 0.1 if quick else 0.5  # simulated seconds streamed
    proc = _serve()
    try:
        res = _ready_line(proc)["instruments"]
        with (
            PulseSource(res["source"]) as src,
            TimeTagger(res["timetagger"], timeout_s=30) as tagger,
        ):
            for name, value in _operating_point(WORLD_PRESET).items():
                setattr(src, name, value)
            src.output = True
            tagger.start()
            t_first = tagger.fetch_tags(FETCH_TAGS)[0][-1]  # warm-up: connection, read-ahead
            c0, w0 = _cpu_s(proc.pid), time.perf_counter()
            loop0 = _cpu_s(proc.pid, proc.pid)  # the main thread: event loop, tagger, sends
            n_tags, t_last = 0, t_first
            while (int(t_last) - int(t_first)) * 1e-12 < target_s:
                time_ps, _channel = tagger.fetch_tags(FETCH_TAGS)
                n_tags += time_ps.size
                t_last = time_ps[-1] if time_ps.size else t_last
            wall, cpu = time.perf_counter() - w0, _cpu_s(proc.pid) - c0
            loop = _cpu_s(proc.pid, proc.pid) - loop0
            sim_s = (int(t_last) - int(t_first)) * 1e-12
            tagger.stop()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return {
        "stage": WORLD_STAGE,
        "impl": "qnode",
        "preset": WORLD_PRESET,
        "clock_hz": CLOCK_HZ,
        "distance_km": WORLD_KM,
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
    """The ``simulator`` and ``world`` rows (each skipped when ``stages`` names it not)."""
    rows: list[dict[str, Any]] = []
    if stages is None or STAGE in stages:
        pulses = 1_000_000_000 if quick else 4_000_000_000
        rows.extend(_measure(pulses, preset, km) for preset, km in SIM_CASES)
    if stages is None or WORLD_STAGE in stages:
        rows.append(_world_row(quick))
    return rows
