"""``qnode perf`` row ``link``: both nodes end to end on this machine (1 GHz, 10 km, SNSPD).

Figures: ``mbps`` = sifted key bits processed end to end per wall-clock second, ``skr_mbps`` =
committed secret bits per wall-clock second, ``skr_sim_mbps`` = secret bits per *simulated*
second (slots processed / clock rate), which is what ``predicted_skr_mbps``
(:func:`pipeline.keyrate.expected_key_rate` for the same link, intensities and block size)
predicts; ``sim_speed`` = simulated seconds per wall second (the emulated instruments' transport
bounds it); ``rss_mb`` = the larger node's resident memory (supervisor + its processes), both
nodes given as ``rss_mb_alice`` / ``rss_mb_bob``, and ``rss_growth_mb`` from 15 s into the run
to its end (a full run lasts 10 minutes so that a leak shows; ``--quick`` 45 s).
"""

from __future__ import annotations

import time
from typing import Any

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


def _predicted(params: Any, n_x: int) -> float | None:
    try:
        from pipeline.keyrate import expected_key_rate
    except ModuleNotFoundError:
        return None
    # the node's security parameters (qnode/config.py PipelineConfig defaults)
    result = expected_key_rate(params, block=n_x, optimise=False, eps_sec=1e-10, eps_cor=1e-12)
    return result.rate_bps / 1e6


def measure(duration_s: float) -> dict[str, Any]:
    """Run the link for ``duration_s`` after start-up; return the row."""
    from qnode.link import Link, LinkOptions

    opts = LinkOptions(preset=PRESET, distance_km=DISTANCE_KM, duration_s=duration_s,
                       block_bits=BLOCK_BITS)  # fmt: skip
    link = Link(opts)
    row: dict[str, Any] = {"stage": "link", "impl": "qnode", "preset": PRESET,
                           "distance_km": DISTANCE_KM, "clock_hz": 1e9,
                           "block_bits": BLOCK_BITS}  # fmt: skip
    try:
        link.start()
        pids = {r: link.procs[r].pid for r in ("alice", "bob")}
        rss_peak = {r: 0.0 for r in pids}
        rss_start: dict[str, float] = {}
        while not link.done():
            link.poll(1.0)
            for r in pids:
                rss_peak[r] = max(rss_peak[r], _rss_mb(pids[r]))
            if not rss_start and time.monotonic() - link.t0 > 15:  # after warm-up
                rss_start = {r: _rss_mb(pids[r]) for r in pids}
        rss_start = rss_start or {r: 0.0 for r in pids}
        rss_end = {r: _rss_mb(pids[r]) for r in pids}
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
            "qber": result["qber"],
            "f": result["f"],
            "keys_match": result["keys_match"],
            "key_blocks": result["bob"]["key_blocks"],
        })  # fmt: skip
    except Exception as exc:  # a perf run reports what went wrong instead of failing the table
        row["missing"] = f"link did not run: {type(exc).__name__}: {exc}"
    finally:
        link.stop()
    return row


def perf_rows(quick: bool = False, stages: list[str] | None = None) -> list[dict]:
    if stages is not None and "link" not in stages:
        return []
    return [measure(45.0 if quick else 600.0)]
