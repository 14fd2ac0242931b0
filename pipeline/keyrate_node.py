"""Expected secret key rate of the node runtime's blocks: :mod:`pipeline.keyrate` plus what the
runtime does to a block (``pipeline.postprocess`` closes it at whole LDPC frames, Alice's
reconciler leaks the planned syndromes, the unreconciled tail is dropped). This is the
``predicted_skr_mbps`` of the ``link`` perf row.
"""

from __future__ import annotations

import math

import numpy as np

from pipeline.block_stages import plan_counts, plan_qber_counts, plan_start_counts
from pipeline.estimation import DecoySettings, binary_entropy, decoy_core, key_length_core
from pipeline.keyrate import KeyRateResult, LinkCounts
from pipeline.ldpc.estimate import expected_sd
from pipeline.reconciliation import PRE_REVEAL_SD
from pipeline.verification import hash_repetitions
from qnode.linkmodel import LinkParams


def expected_frames_to_fill(target: float, mean: float, var: float) -> float:
    """E[N], N the first n with S_n >= target, S_n a sum of n i.i.d. per-frame counts of the
    given mean and variance (normal approximation per n): ``sum_n P(S_n < target)``."""
    if mean <= 0:
        raise ValueError(f"per-frame mean must be > 0, got {mean}")
    if target > 1e4 * mean:  # many frames per block: the renewal limit (mean overshoot)
        return (target + (var + mean**2) / (2.0 * mean)) / mean
    # Below n_lo frames the sum is short of the target with certainty (> 12 sd).
    spread = 12.0 * math.sqrt(max(var, 0.0) * max(target, 0.0) / mean)
    n_lo = max(1, math.floor((target - spread) / mean))
    total, n = float(n_lo), n_lo  # S_0 .. S_{n_lo - 1} < target
    while True:
        sd = math.sqrt(max(var * n, 1e-12))
        p_short = 0.5 * math.erfc((n * mean - target) / (sd * math.sqrt(2.0)))
        if p_short < 1e-12 and n * mean > target:
            return total
        total += p_short
        n += 1


def expected_node_key_rate(
    params: LinkParams,
    block_bits: int,
    frame_slots: int,
    *,
    f_target: float = 1.12,
    eps_sec: float = 1e-10,
    eps_cor: float = 1e-12,
) -> KeyRateResult:
    """Expected secret key rate of the node runtime's blocks on the link's own settings.

    :func:`expected_key_rate` answers for a block of ``n_X`` key-basis bits all reconciled at an
    assumed ``f``. The runtime's block differs in three ways, all a-priori known:

    * it closes at the first event frame (``frame_slots`` slots) that brings the key-basis count
      to ``target = ceil(block_bits / k) k``, ``k`` the key bits of the LDPC frame planned for
      the test-basis QBER (``pipeline.postprocess`` ``_close_target``); so ``n_X`` is ``target``
      plus the overshoot of the last event frame (Wald: ``E[n_X] = E[N] * bits per frame``);
    * only ``target`` bits are reconciled, the rest are dropped and paid one bit each;
    * the leak is the planned syndrome (``m - p`` per LDPC frame, sized for a confidence bound
      of the test-basis QBER of a block's expected Z counts, rounded up,
      ``pipeline.block_stages.plan_counts``), plus the punctured rounds Bob asks for before
      decoding (``pipeline.reconciliation._pre_reveals`` at the key-basis QBER and his
      estimate's expected spread), plus the verification tags; reveals after failed decodings
      (a few per cent of frames) are not counted.

    The counts are :class:`LinkCounts` (the simulator's model); ``extra`` carries the figures.
    """
    if block_bits < 1 or frame_slots < 1:
        raise ValueError(f"block_bits and frame_slots must be >= 1: {block_bits}, {frame_slots}")
    src = params.source
    mu = (src.mu_signal, src.mu_decoy, src.mu_vacuum)
    p = (src.p_signal, src.p_decoy, src.p_vacuum)
    DecoySettings(mu, p, eps_sec, eps_cor)
    counts = LinkCounts.from_link(params)
    qber_x, qber_z = counts.qber_x, counts.qber_z
    # The plan: reach to the upper confidence bound on the test-basis QBER from a block's
    # expected Z counts, start at a lower bound (pipeline.block_stages.plan_counts; the counts
    # at close, ~block_bits of X).
    z_per_block = block_bits / counts.sifted_x * sum(counts.z)
    qber_plan = plan_qber_counts(z_per_block * qber_z, z_per_block)
    plan = plan_counts(z_per_block * qber_z, z_per_block, f_target)
    start_qber = plan_start_counts(z_per_block * qber_z, z_per_block)
    k = plan.key_bits
    sd = expected_sd(plan, qber_x)
    rounds = min(plan.punctured // max(plan.reveal_step, 1), plan.max_reveals)
    pre = 0
    if rounds and math.isfinite(sd) and start_qber < qber_plan:
        need = f_target * k * binary_entropy(min(qber_x + PRE_REVEAL_SD * sd, 0.5))
        pre = min(max(math.ceil((need - plan.leaked(0)) / plan.reveal_step), 0), rounds - 1)
    frame_leak = plan.leaked(pre * plan.reveal_step)
    ldpc_frames = -(-block_bits // k)
    target = ldpc_frames * k
    per_frame = frame_slots * counts.sifted_x  # key-basis bits per event frame (~Poisson)
    n_x = per_frame * expected_frames_to_fill(target, per_frame, per_frame)
    reps = hash_repetitions(k, eps_cor / ldpc_frames)
    leak = ldpc_frames * (frame_leak + 61 * reps + 1)
    dropped = n_x - target
    pulses = n_x / counts.sifted_x
    arr = lambda xs: tuple(np.array([pulses * c]) for c in xs)  # noqa: E731
    bounds = decoy_core(arr(counts.x), arr(counts.z), arr(counts.errors_z),
                        tuple(np.array([m]) for m in mu), tuple(np.array([x]) for x in p),
                        eps_sec)  # fmt: skip
    ell = float(key_length_core(bounds, leak, eps_sec, eps_cor)[0]) - dropped
    ell = min(max(ell, 0.0), float(target))
    rate = ell / pulses
    f_ec = frame_leak / (k * binary_entropy(qber_x)) if qber_x > 0 else float("nan")
    return KeyRateResult(
        rate_per_pulse=rate, rate_bps=rate * src.clock_hz, distance_km=params.fibre.length_km,
        block=round(n_x), qber=qber_x, mu=mu, p_mu=p, q_x=1.0 - src.p_basis_z, f_ec=f_ec,
        eps_sec=eps_sec, eps_cor=eps_cor, key_length=math.floor(ell), pulses_per_block=pulses,
        extra={"reconciled_bits": target, "ldpc_frame_bits": k, "dropped_bits": dropped,
               "leak_bits": leak, "qber_plan": qber_plan,
               "qber_start": start_qber,
               "pre_reveal_rounds": pre, "sifted_x_per_pulse": counts.sifted_x, "qber_z": qber_z,
               "p_bob_z": params.p_bob_z},
    )  # fmt: skip
