"""``qnode perf`` row ``link``: both nodes end to end on this machine (1 GHz, 10 km, SNSPD).

Figures: ``mbps`` = sifted key bits processed end to end per wall-clock second, ``skr_mbps`` =
committed secret bits per wall-clock second, ``skr_sim_mbps`` = secret bits per *simulated*
second (slots processed / clock rate), which is what ``predicted_skr_mbps``
(:func:`pipeline.keyrate.expected_key_rate` for the same link, intensities and block size)
predicts; ``sim_speed`` = simulated seconds per wall second (the emulated instruments' transport
bounds it); ``rss_mb`` = the larger node's resident memory (supervisor + its processes), both
nodes given as ``rss_mb_alice`` / ``rss_mb_bob``, and ``rss_growth_mb`` from 15 s into the run
to its end (a full run lasts 10 minutes so that a leak shows; ``--quick`` 45 s), and
``rss_growth_2nd_half_mb`` over the run's second half (bounded caches fill early; a leak keeps
growing).
``cpu_s_per_sim_s`` = CPU seconds (user + system, all processes of the world and both nodes)
per simulated second over the same span, also per part as ``cpu_world`` / ``cpu_alice`` /
``cpu_bob``: unlike the wall-clock figures it hardly depends on what else runs on the machine,
and ``cores / cpu_s_per_sim_s`` bounds ``sim_speed``.
"""

from __future__ import annotations

import time
from typing import Any

STAGE = "link"
PRESET = "snspd"
DISTANCE_KM = 10.0
BLOCK_BITS = 200_000


def _rss_mb(pid: int) -> float:
    import psutil

    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0.0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total / 2**20


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of a process and its children so far."""
    import psutil

    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0.0
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def _sim_s(link: Any) -> float:
    """Simulated seconds Bob's acquisition has framed so far (from its telemetry)."""
    acq = link.latest["bob"].get("qfs/telemetry/bob/acquisition/", {})
    return int(acq.get("frames", 0)) * int(acq.get("frame_slots", 0)) / 1e9


def _predicted(params: Any, n_x: int) -> float | None:
    """Expected secret bits per simulated second of this run's blocks (Mbit/s).

    :func:`pipeline.keyrate_node.expected_node_key_rate` on the node's settings: the link model's
    per-class, per-basis counts (what the simulator samples, dead time included), blocks that
    close at whole LDPC frames above ``BLOCK_BITS`` (mean ``n_X`` from the event frame size;
    the measured ``n_x`` of one block varies by +-3 % and is not used), the pipeline's planned
    leak (the rate planned at the 95 % upper bound of the test-basis QBER, plus the
    verification tags) and the unreconciled tail dropped. Blind-round reveals are not counted.
    The link runs at the preset's operating point (``qnode.link.OPERATING_POINTS``).
    """
    del n_x  # one block's size; the expected size is computed from the configuration
    try:
        from pipeline.keyrate_node import expected_node_key_rate
    except ModuleNotFoundError:
        return None
    from qnode.config import PipelineConfig
    from qnode.link import auto_frame_slots

    cfg = PipelineConfig()  # the node's security parameters and reconciliation target
    result = expected_node_key_rate(
        params, BLOCK_BITS, auto_frame_slots(params),
        f_target=cfg.f_target, eps_sec=cfg.eps_sec, eps_cor=cfg.eps_cor,
    )  # fmt: skip
    return result.rate_bps / 1e6


def measure(duration_s: float) -> dict[str, Any]:
    """Run the link for ``duration_s`` after start-up; return the row."""
    from qnode.link import Link, LinkOptions

    opts = LinkOptions(preset=PRESET, distance_km=DISTANCE_KM, duration_s=duration_s,
                       block_bits=BLOCK_BITS)  # fmt: skip
    link = Link(opts)
    row: dict[str, Any] = {"stage": STAGE, "impl": "qnode", "preset": PRESET,
                           "distance_km": DISTANCE_KM, "clock_hz": 1e9,
                           "block_bits": BLOCK_BITS}  # fmt: skip
    try:
        link.start()
        pids = {r: link.procs[r].pid for r in ("alice", "bob")}
        parts = {**pids, "world": link.procs["world"].pid}
        rss_peak = {r: 0.0 for r in pids}
        rss_start: dict[str, float] = {}
        rss_series: list[tuple[float, dict[str, float]]] = []  # (s into the run, rss per node)
        cpu_start: dict[str, float] = {}
        sim_start = 0.0
        while not link.done():
            link.poll(1.0)
            now = {r: _rss_mb(pids[r]) for r in pids}
            for r in pids:
                rss_peak[r] = max(rss_peak[r], now[r])
            rss_series.append((time.monotonic() - link.t0, now))
            if not rss_start and time.monotonic() - link.t0 > 15:  # after warm-up
                rss_start = {r: _rss_mb(pids[r]) for r in pids}
                cpu_start = {r: _cpu_s(pid) for r, pid in parts.items()}
                sim_start = _sim_s(link)
        rss_start = rss_start or {r: 0.0 for r in pids}
        rss_end = {r: _rss_mb(pids[r]) for r in pids}
        half = time.monotonic() - link.t0
        rss_mid = next((m for t, m in rss_series if t >= half / 2), rss_end)
        cpu = {r: _cpu_s(pid) - cpu_start.get(r, 0.0) for r, pid in parts.items()}
        sim_span = _sim_s(link) - sim_start
        wall = time.monotonic() - link.t0
        bob = link.link_payload("bob")
        last_block = link.latest["bob"].get("qfs/telemetry/bob/block/", {})
        n_x = int(last_block.get("n_x") or BLOCK_BITS)
        acq = link.latest["bob"].get("qfs/telemetry/bob/acquisition/", {})
        link.settle(10)
        result = link.result()
        frame_slots = int(acq.get("frame_slots", 0))
        sim_s = int(acq.get("frames", 0)) * frame_slots / 1e9
        sifted = int(bob.get("sifted_bits", 0))
        key_bits = int(result["bob"]["key_bits"])
        row.update({
            "duration_s": round(wall, 1),
            "mbps": sifted / wall / 1e6,
            "skr_mbps": key_bits / wall / 1e6,
            "skr_sim_mbps": key_bits / sim_s / 1e6 if sim_s else 0.0,
            "sim_speed": sim_s / wall,
            "predicted_skr_mbps": _predicted(link.params, n_x),
            "n_x": n_x,
            "p_basis_z": link.params.source.p_basis_z,
            "rss_mb": round(max(rss_peak.values()), 1),
            "rss_mb_alice": round(rss_peak["alice"], 1),
            "rss_mb_bob": round(rss_peak["bob"], 1),
            "rss_growth_mb": round(max(rss_end[r] - rss_start[r] for r in pids), 1),
            # growth over the run's second half: bounded caches fill early, a leak keeps going
            "rss_growth_2nd_half_mb": round(max(rss_end[r] - rss_mid[r] for r in pids), 1),
            "qber": result["qber"],
            "f": result["f"],
            "keys_match": result["keys_match"],
            "key_blocks": result["bob"]["key_blocks"],
            "blocks_done": bob.get("blocks_done"),  # blocks Bob finished, with or without key
            "blocks_failed": bob.get("blocks_failed"),
            "fer": bob.get("fer"),  # LDPC frames failed / frames
        })  # fmt: skip
        if sim_span > 0:
            row["cpu_s_per_sim_s"] = round(sum(cpu.values()) / sim_span, 1)
            row.update({f"cpu_{r}": round(c / sim_span, 1) for r, c in cpu.items()})
    except Exception as exc:  # a perf run reports what went wrong instead of failing the table
        row["missing"] = f"link did not run: {type(exc).__name__}: {exc}"
    finally:
        link.stop()
    return row


def perf_rows(quick: bool = False, stages: list[str] | None = None) -> list[dict]:
    if stages is not None and STAGE not in stages:
        return []
    return [measure(45.0 if quick else 600.0)]
