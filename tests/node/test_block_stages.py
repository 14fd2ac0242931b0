"""One block through the real stages (reconciliation, verification, estimation, PA), both sides
driven the way the post-processing process drives them, messages through the msgpack loopback."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.blocks import BlockInput
from pipeline.channel import exchange, loopback_pair

pytest.importorskip("pipeline.reconciliation")
pytest.importorskip("pipeline.amplification")
from pipeline.block_stages import AliceBlock, BobBlock, frame_key_bits  # noqa: E402

SOURCE = {"mu_signal": 0.5, "mu_decoy": 0.1, "mu_vacuum": 0.0,
          "p_signal": 0.7, "p_decoy": 0.2, "p_vacuum": 0.1}  # fmt: skip


def _inputs(qber: float, seed: int = 3) -> tuple[BlockInput, BlockInput]:
    rng = np.random.default_rng(seed)
    k = frame_key_bits(qber)
    n = 2 * k + 777  # two LDPC frames and a tail that no frame carries
    alice = rng.integers(0, 2, n, dtype=np.uint8)
    bob = alice ^ (rng.random(n) < qber).astype(np.uint8)
    n_x = np.array([round(n * 0.94), n - round(n * 0.94), 0])
    n_z = np.round(n_x / 0.01 * 0.81).astype(np.int64)
    n_z[2] = 1
    counts = np.stack([n_z, n_x]).astype(np.int64)
    errors = np.round(n_z * qber).astype(np.int64)
    common = dict(block=7, frames=[1, 2, 3], counts=counts, test_errors=errors,
                  frame_slots=1 << 24, eps_sec=1e-10, eps_cor=1e-12, qber_abort=0.11)  # fmt: skip
    return (
        BlockInput(key_bits=alice, source=dict(SOURCE), **common),
        BlockInput(key_bits=bob, **common),
    )


def _run(a_in: BlockInput, b_in: BlockInput) -> tuple[AliceBlock, BobBlock, int]:
    a_end, b_end = loopback_pair()
    alice, bob = AliceBlock(a_in), BobBlock(b_in)
    for m in alice.start():
        a_end.send(m)
    assert bob.start() == []
    exchange(alice, bob, a_end, b_end, max_rounds=200)
    return alice, bob, a_end.messages_sent + b_end.messages_sent


def test_block_gives_identical_final_keys_on_both_sides():
    alice, bob, messages = _run(*_inputs(0.01))
    assert alice.finished and bob.finished and not alice.failure and not bob.failure
    a_key, a_meta, a_fig = alice.result()
    b_key, b_meta, b_fig = bob.result()
    assert a_key == b_key and len(a_key) > 0
    assert a_meta["n_bits"] == b_meta["n_bits"] > 0
    assert a_meta["n_bits"] <= a_fig["reconciled_bits"] - 777  # the tail paid for, bit by bit
    assert 0.005 < b_fig["qber_x"] < 0.015
    assert a_fig["f"] is not None and 1.0 < a_fig["f"] < 1.5
    assert messages < 20


def test_qber_above_abort_threshold_gives_no_key_on_either_side():
    a_in, b_in = _inputs(0.01)
    a_in.test_errors = b_in.test_errors = (a_in.counts[0] * 0.2).astype(np.int64)
    alice, bob, _ = _run(a_in, b_in)
    assert alice.failure and bob.failure and "QBER" in alice.failure
    assert alice.result()[0] == b"" and bob.result()[0] == b""


def test_finite_key_bound_without_key_ends_both_without_key():
    a_in, b_in = _inputs(0.01)
    a_in.counts = b_in.counts = a_in.counts // 50  # far too few detections for any key
    a_in.test_errors = b_in.test_errors = a_in.test_errors // 50
    alice, bob, _ = _run(a_in, b_in)
    assert alice.finished and bob.finished
    assert alice.result()[0] == b"" and bob.result()[0] == b""
    assert "reason" in alice.figures and "reason" in bob.figures


def test_qber_upper_bound_is_clopper_pearson():
    """The one-sided bound against scipy's exact binomial test, and its limits."""
    from scipy.stats import binomtest

    from pipeline.block_stages import qber_upper_bound

    for errors, n in ((140, 14_000), (0, 500), (3, 40)):
        ub = qber_upper_bound(errors, n, 0.95)
        ci = binomtest(errors, n).proportion_ci(0.90, method="exact")  # two-sided 90 %
        assert ub == pytest.approx(ci.high, rel=1e-6)
        assert ub > errors / n
    assert qber_upper_bound(0, 0) == 0.5 and qber_upper_bound(5, 5) == 1.0
    assert qber_upper_bound(140, 14_000, 0.99) > qber_upper_bound(140, 14_000, 0.95)
    with pytest.raises(ValueError):
        qber_upper_bound(6, 5)


def test_plan_covers_the_true_qber_when_the_test_sample_runs_low():
    """Blocks whose ~1.4e4 Z events say 0.85 % while the key basis has 1.05 % (what lost blocks
    on the link with the point estimate, a 2.3 sd low sample): the plan is on the 0.05 % grid
    within one step of the truth (the blind rounds cover that), and drops to the point
    estimate's grid value as the Z sample grows."""
    from pipeline.block_stages import QBER_PLAN_STEP, plan_qber, plan_qber_counts

    low = plan_qber_counts(119, 14_000)
    assert plan_qber(119 / 14_000) == 0.0085 < 0.0105 - QBER_PLAN_STEP <= low
    assert round(low / QBER_PLAN_STEP, 9) == round(low / QBER_PLAN_STEP)
    # with 1e8 test events the bound is within one grid step of the estimate
    assert plan_qber_counts(850_000, 100_000_000) <= plan_qber(0.0085) + QBER_PLAN_STEP
    # among simulated blocks at a true 1.05 %, the plan is below the truth in < 5 % of them
    rng = np.random.default_rng(11)
    errors = rng.binomial(14_000, 0.0105, 400)
    below = sum(plan_qber_counts(int(e), 14_000) < 0.0105 for e in errors)
    assert below < 20
    point_below = sum(plan_qber(e / 14_000) < 0.0105 for e in errors)
    assert point_below > 100  # what the point estimate did: about half the blocks


def test_alice_plans_the_ldpc_rate_at_the_upper_bound():
    """Alice's reconciler is planned at the bound from the block's test counts, not at the
    point estimate, and the block figures report both."""
    from pipeline.block_stages import frame_key_bits_counts, plan_qber_counts

    a_in, b_in = _inputs(0.01)
    n_z = 14_000
    a_in.counts[0] = [n_z - 2000, 2000, 0]
    a_in.test_errors[:] = [119, 21, 0]
    b_in.counts[0] = a_in.counts[0]
    b_in.test_errors[:] = a_in.test_errors
    alice = AliceBlock(a_in)
    alice.start()
    assert alice.qber_z == pytest.approx(140 / n_z)
    assert alice.qber_plan == plan_qber_counts(140, n_z) > 0.0105
    assert alice.qber_z < alice.qber_start < alice.qber_plan  # syndrome sized lower, same reach
    assert alice.rec.plan.key_bits == frame_key_bits_counts(140, n_z, a_in.f_target)


def test_no_decoded_frame_reports_the_qber_as_unknown_not_as_a_number():
    """Every LDPC frame fails (the bits carry 20 % errors, the test counts say 1 %): no key, and
    the block's figures carry qber null with the reason, never a placeholder 0.5."""
    from pipeline.block_stages import NO_FRAME_DECODED

    a_in, b_in = _inputs(0.01)
    rng = np.random.default_rng(9)
    b_in.key_bits = a_in.key_bits ^ (rng.random(a_in.key_bits.size) < 0.2).astype(np.uint8)
    alice, bob, _ = _run(a_in, b_in)
    assert alice.finished and bob.finished
    for side in (alice, bob):
        key, _, fig = side.result()
        assert key == b""
        assert fig["ldpc_frames"] == fig["ldpc_frames_failed"] > 0
        assert fig["qber"] is None and fig["qber_x"] is None and fig["f"] is None
        assert fig["qber_unknown"] == NO_FRAME_DECODED
        assert fig["qber_z"] == pytest.approx(a_in.test_errors.sum() / a_in.counts[0].sum())


def test_no_test_basis_detection_is_refused_at_the_start_not_given_a_qber():
    """No Z detection: the block cannot start (the post-processing fails it on both sides with
    this reason), so no QBER, placeholder or not, is ever reported for it."""
    a_in, b_in = _inputs(0.01)
    a_in.counts = b_in.counts = a_in.counts * np.array([[0], [1]])  # no Z detection at all
    a_in.test_errors = b_in.test_errors = np.zeros(3, np.int64)
    for side, data in ((AliceBlock, a_in), (BobBlock, b_in)):
        with pytest.raises(ValueError, match="no test-basis detections"):
            side(data)
