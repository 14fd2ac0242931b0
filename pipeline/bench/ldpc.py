"""``qnode perf`` rows for LDPC reconciliation: qnode beside the ``ldpc`` package's BpDecoder.

qnode row: the whole reconciliation of a block through the loopback channel (Alice's syndromes,
Bob's batched decoding on all cores, blind reveal rounds, verification), timed after a warm-up
call so compile time is excluded. ``f`` = leaked / (key bits * h(QBER)) with everything disclosed
by reconciliation counted (syndrome - punctured + revealed; the verification tag is reported in
``note`` and counted by the finite-key formula). ``fer`` = frames dropped / frames. ``mbps`` =
sifted key bits of the block / wall time; ``note`` adds them per CPU-second (all threads), the
figure that stays meaningful on a loaded machine, and ``cpu_ms_per_frame`` is the CPU time of both
sides per LDPC frame. Frames of 2^17 bits (the default); the full run adds
rows with 2^20-bit frames.

Peer rows: ``ldpc.BpDecoder`` (product-sum ``ldpc-ps`` and min-sum ``ldpc-ms`` scaled 0.8,
flooding, 100 iterations (30 when quick), one thread: the package has no OpenMP in its BP) on the same mother
code and the first frames of the same block, with the leak qnode ended at (its measured f, as one
fixed plan without blind rounds: punctured bits as erasures, shortened bits known). Their ``fer``
says whether they decode at qnode's efficiency; ``ratio`` compares ``mbps``.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from pipeline.ldpc.construct import DEFAULT_FRAME_LENGTH
from pipeline.ldpc.rate import binary_entropy, plan_frame
from pipeline.reconciliation import reconcile_loopback

STAGE = "ldpc"
QBERS = (0.01, 0.02, 0.04, 0.06, 0.08)
LONG_FRAME = 1 << 20


def _block(
    q: float, frames: int, seed: int, frame_length: int = DEFAULT_FRAME_LENGTH
) -> tuple[np.ndarray, np.ndarray, int]:
    plan = plan_frame(q, frame_length=frame_length)
    n = frames * plan.key_bits
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 2, n, dtype=np.uint8)
    b = a ^ (rng.random(n) < q).astype(np.uint8)
    return a, b, plan.key_bits


def _qnode_row(
    q: float, frames: int, frame_length: int = DEFAULT_FRAME_LENGTH
) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    a, b, _ = _block(q, frames, seed=int(q * 1e5), frame_length=frame_length)
    t0, c0 = time.perf_counter(), time.process_time()
    r = reconcile_loopback(a, b, q, seed=1, frame_length=frame_length)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    key = r.alice_key.size
    h = binary_entropy(q)
    row = {
        "stage": STAGE,
        "impl": "qnode",
        "qber": q,
        "n": frame_length,
        "code": r.code,
        "f": round(r.leaked_bits / (key * h), 4) if key else None,
        "fer": round(r.frames_failed / r.frames, 4),
        "mbps": round(a.size / dt / 1e6, 3),
        "cpu_ms_per_frame": round(cpu / r.frames * 1e3, 1),
        "note": (
            f"{r.frames} frames, {r.messages} msgs, {a.size / cpu / 1e6:.2f} Mbit per CPU-s "
            f"({cpu / r.frames * 1e3:.0f} CPU-ms per frame, both sides); "
            "with tag bits "
            f"f={(r.leaked_bits + r.verification_bits) / (key * h):.4f}"
            if key
            else f"{r.frames} frames, all dropped, {a.size / cpu / 1e6:.2f} Mbit per CPU-s"
        ),
    }
    return row, a, b


def _peer_rows(
    q: float, a: np.ndarray, b: np.ndarray, frames: int, qnode_row: dict[str, Any], max_iter: int
) -> list[dict[str, Any]]:
    try:
        from ldpc import BpDecoder
    except ImportError as exc:  # optional extra [bench]
        return [
            {"stage": STAGE, "impl": impl, "qber": q, "missing": f"ldpc not installed ({exc})"}
            for impl in ("ldpc-ps", "ldpc-ms")
        ]
    f_qnode = qnode_row.get("f") or 1.2
    plan = plan_frame(q, max(f_qnode, 1.0), max_reveals=0, codes=(qnode_row["code"],))
    code = plan.code
    punct, short, key_pos, _ = plan.layout()
    h_csr = code.to_scipy()
    probs = np.full(code.n, q)
    probs[punct] = 0.5  # erasure: LLR 0
    probs[short] = 1e-9  # known zeros
    k = plan.key_bits
    rng = np.random.default_rng(3)
    rows = []
    for impl, method in (("ldpc-ps", "product_sum"), ("ldpc-ms", "minimum_sum")):
        kw = {"ms_scaling_factor": 0.8} if method == "minimum_sum" else {}
        dec = BpDecoder(h_csr, error_channel=list(probs), max_iter=max_iter, bp_method=method, **kw)
        ok = 0
        elapsed = 0.0
        for i in range(frames):
            x = np.zeros(code.n, np.uint8)
            x[key_pos] = a[i * k : (i + 1) * k]
            x[punct] = rng.integers(0, 2, punct.size, dtype=np.uint8)
            y = np.zeros(code.n, np.uint8)
            y[key_pos] = b[i * k : (i + 1) * k]
            s = ((h_csr @ (x ^ y)) % 2).astype(np.uint8)  # s_A xor H y, outside the timer
            t0 = time.perf_counter()
            e = dec.decode(s)
            elapsed += time.perf_counter() - t0
            ok += bool(np.array_equal(y ^ e, x))
        rows.append(
            {
                "stage": STAGE,
                "impl": impl,
                "qber": q,
                "n": code.n,
                "code": plan.code_name,
                "f": round(plan.leaked(0) / (k * binary_entropy(q)), 4),
                "fer": round(1 - ok / frames, 4),
                "mbps": round(frames * k / elapsed / 1e6, 3),
                "note": f"{frames} frame(s), {max_iter} iterations max, 1 thread, fixed plan "
                "at qnode's f",
            }
        )
    return rows


def perf_rows(quick: bool = False, stages: list[str] | None = None) -> list[dict[str, Any]]:
    """One qnode row per QBER plus the ``ldpc`` package's BpDecoder rows beside it."""
    if stages and STAGE not in stages:
        return []
    frames = 4 if quick else 64
    # the peers take 10-40 s per failing frame here: one frame each, fewer iterations when quick
    peer_frames, peer_iter = 1, (30 if quick else 100)
    peer_qbers = (0.02,) if quick else QBERS
    warm_a, warm_b, _ = _block(0.03, 1, seed=0)
    reconcile_loopback(warm_a, warm_b, 0.03)  # compile the kernels outside every timer
    rows: list[dict[str, Any]] = []
    for q in QBERS:
        row, a, b = _qnode_row(q, frames)
        rows.append(row)
        if q in peer_qbers and row["f"]:
            rows.extend(_peer_rows(q, a, b, peer_frames, row, peer_iter))
    if not quick:  # 2^20-bit frames: closer to the codes' thresholds, same decoder
        for q in QBERS:
            rows.append(_qnode_row(q, 8, frame_length=LONG_FRAME)[0])
    return rows
