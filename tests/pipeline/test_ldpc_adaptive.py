"""Starting frames below the QBER bound: plans with a start QBER, whole-column shortening that the
decoder leaves out, Bob's syndrome estimate of the QBER and his reveals before decoding."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.channel import exchange, loopback_pair
from pipeline.ldpc.decoder import SHORTENED_LLR, BatchDecoder, channel_llr
from pipeline.ldpc.estimate import expected_sd, syndrome_qber
from pipeline.ldpc.rate import FramePlan, binary_entropy, plan_frame
from pipeline.reconciliation import ReconcilerAlice, ReconcilerBob, _pre_reveals


def _frames(plan, q: float, frames: int, seed: int):
    """Alice's words, Bob's words (his bits at the key positions, 0 elsewhere), his LLRs."""
    code = plan.code
    punct, short, key, _ = plan.layout()
    rng = np.random.default_rng(seed)
    x = np.zeros((frames, code.n), np.uint8)
    x[:, key] = rng.integers(0, 2, (frames, key.size))
    x[:, punct] = rng.integers(0, 2, (frames, punct.size))
    y = np.zeros_like(x)
    y[:, key] = x[:, key] ^ (rng.random((frames, key.size)) < q)
    llr = np.empty((frames, code.n), np.float32)
    llr[:, key] = channel_llr(y[:, key], q)
    llr[:, punct] = 0.0
    llr[:, short] = SHORTENED_LLR
    return x, y, llr


def test_start_qber_sizes_the_syndrome_lower_and_keeps_the_reach():
    hi, lo = 0.0125, 0.0105
    base, low = plan_frame(hi, 1.12), plan_frame(hi, 1.12, start_qber=lo)
    assert plan_frame(hi, 1.12, start_qber=hi) == base  # no start: the plan at the bound
    f_start = low.leaked(0) / (low.key_bits * binary_entropy(lo))
    assert f_start == pytest.approx(1.12, abs=0.002)
    # the punctured rounds reach at least what the plan at the bound reaches (per key bit)
    reach_low = (low.leaked(0) + low.punctured) / low.key_bits
    reach_base = (base.leaked(0) + base.punctured) / base.key_bits
    assert reach_low >= reach_base and low.max_reveals > base.max_reveals
    assert low.punctured >= (low.max_reveals - 2) * low.reveal_step  # 2 last-resort key rounds
    with pytest.raises(ValueError):
        plan_frame(0.01, start_qber=0.02)


def test_shortened_positions_fill_whole_columns_and_the_decoder_drops_them_exactly():
    plan = plan_frame(0.013, 1.12, codes=("qcd_r0.90_n131072",))
    code = plan.code
    punct, short, key, _ = plan.layout()
    cols = plan.shortened_columns()
    assert cols.size == plan.shortened // code.z > 0
    full = (cols[:, None] * code.z + np.arange(code.z)[None, :]).ravel()
    assert np.isin(full, short).all() and np.intersect1d(short, punct).size == 0
    x, _, llr = _frames(plan, 0.011, 2, seed=4)
    syn = code.syndrome(x)
    whole = BatchDecoder(code, llr, syn)
    part = BatchDecoder(code, llr, syn, skip_columns=cols)
    assert part.msg.shape[1] < whole.msg.shape[1]
    b1, ok1, it1 = whole.run(max_iter=4)
    b2, ok2, it2 = part.run(max_iter=4)
    # the same iterations on every other edge: the other posteriors agree to float rounding
    rest = np.setdiff1d(np.arange(code.n), full)
    np.testing.assert_allclose(part.post[:, rest], whole.post[:, rest], rtol=1e-3, atol=1e-3)
    assert (part.post[:, full] == SHORTENED_LLR).all()  # left alone: known zeros
    bits, ok, _ = part.run(max_iter=100)
    assert ok.all() and np.array_equal(bits, x)
    with pytest.raises(ValueError):
        BatchDecoder(code, llr, syn, skip_columns=np.array([code.shifts.shape[1]]))


@pytest.mark.parametrize("q", [0.009, 0.0125])
def test_syndrome_estimate_of_the_frame_qber(q):
    """Within 4 predicted sd of each frame's actual error rate; the predicted sd matches the
    spread (a few % of q on the rate-0.9 code, far below the test-basis sample's ~12 %)."""
    plan = plan_frame(0.0135, 1.12, start_qber=0.011)
    x, y, _ = _frames(plan, q, 12, seed=int(q * 1e5))
    est, sd = syndrome_qber(plan, plan.code.syndrome(x), y)
    _, _, key, _ = plan.layout()
    actual = (x[:, key] != y[:, key]).mean(axis=1)
    assert (np.abs(est - actual) < 4 * sd).all(), (est, actual, sd)
    assert 0.5 < np.std(est - actual) / sd.mean() < 2.0
    assert sd.mean() < 0.08 * q
    assert expected_sd(plan, q) == pytest.approx(sd.mean(), rel=0.2)


def test_no_estimate_when_punctured_bits_touch_nearly_every_check():
    plan = FramePlan("qcd_r0.90_n131072", 10_000, 0, 200, 6)  # 7.6 % punctured, degree ~61
    x, y, _ = _frames(plan, 0.02, 2, seed=1)
    est, sd = syndrome_qber(plan, plan.code.syndrome(x), y)
    assert np.isnan(est).all() and np.isnan(sd).all()
    assert (_pre_reveals(plan, plan.code.syndrome(x), y, 1.12) == 0).all()


def test_bob_reveals_before_decoding_a_frame_planned_below_its_qber():
    """Planned for 0.8 % with reach to 1.3 %, the bits carry 1.05 %: Bob asks for punctured
    reveals before any decoding, the keys agree, every revealed bit is counted, and f ends far
    below the plan at the bound."""
    import pipeline.reconciliation as rec

    q = 0.0105
    alice = ReconcilerAlice(0, 0.013, f_target=1.12, start_qber=0.008, batch_frames=2,
                            rng=np.random.default_rng(1))  # fmt: skip
    bob = ReconcilerBob(0, pre_reveal_f=1.12)
    k = alice.plan.key_bits
    rng = np.random.default_rng(8)
    a = rng.integers(0, 2, 2 * k, dtype=np.uint8)
    b = a ^ (rng.random(a.size) < q).astype(np.uint8)
    bob.start(b, k)
    a_end, b_end = loopback_pair()
    for m in alice.start(a):
        a_end.send(m)
    runs: list[np.ndarray] = []
    original = rec.BatchDecoder.run

    def run(self, frames=None, max_iter=60, stall=0):  # records what each decoding starts from
        runs.append(bob.batches[0].revealed.copy())
        return original(self, frames, max_iter, stall)

    rec.BatchDecoder.run = run
    try:
        exchange(alice, bob, a_end, b_end)
    finally:
        rec.BatchDecoder.run = original
    assert runs and runs[0].min() > 0  # the first decoding already had reveals
    ra, rb = alice.result(), bob.result()
    assert ra.kept_frames == rb.kept_frames == [0, 1]
    np.testing.assert_array_equal(ra.key, a)
    np.testing.assert_array_equal(rb.key, a)
    revealed = alice.batches[0].revealed
    assert np.array_equal(revealed, bob.batches[0].revealed)
    assert ra.leaked_bits == rb.leaked_bits == sum(alice.plan.leaked(int(r)) for r in revealed)
    f = ra.leaked_bits / (ra.key.size * binary_entropy(q))
    f_bound = plan_frame(0.013, 1.12).leaked(0) / (
        plan_frame(0.013, 1.12).key_bits * binary_entropy(q)
    )
    assert f < f_bound - 0.05, (f, f_bound)
