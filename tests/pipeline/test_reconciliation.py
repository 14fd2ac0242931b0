"""Reconciliation through the loopback channel: Alice's and Bob's real objects and messages."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.channel import exchange, loopback_pair
from pipeline.ldpc.rate import binary_entropy, plan_frame
from pipeline.reconciliation import ReconcilerAlice, ReconcilerBob, reconcile_loopback


def noisy_pair(n: int, q: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 2, n, dtype=np.uint8)
    return a, a ^ (rng.random(n) < q).astype(np.uint8)


def pump(alice, bob, a_end, b_end, on_bob_message=None):
    """Deliver messages until both queues are empty; optional hook sees Bob's outgoing ones."""
    exchange(alice, bob, a_end, b_end, on_bob_message=on_bob_message)


@pytest.mark.parametrize("q", [0.02, 0.05, 0.09])
def test_loopback_keys_identical_and_leak_exact(q):
    plan = plan_frame(q)
    n = 2 * plan.key_bits + 777
    a, b = noisy_pair(n, q, seed=int(q * 1e4))
    r = reconcile_loopback(a, b, q, seed=1)
    assert r.frames == 2 and r.code == plan.code_name
    np.testing.assert_array_equal(r.alice_key, r.bob_key)
    kept = r.frames - r.frames_failed
    assert kept >= 1, f"every frame failed at q={q}"
    assert r.alice_key.size == kept * plan.key_bits
    # every kept frame's bits are Alice's original bits, in order, with no frame skipped silently
    starts = [i * plan.key_bits for i in range(r.frames)]
    chunks = [a[s : s + plan.key_bits] for s in starts]
    assert any(np.array_equal(r.alice_key[: plan.key_bits], c) for c in chunks)
    # leak: syndrome minus punctured, plus whatever blind rounds revealed (multiples of the step)
    base = kept * plan.leaked(0)
    extra = r.leaked_bits - base
    assert extra >= 0 and extra % plan.reveal_step == 0
    # one 61-bit tag + 1 verdict bit per frame Bob decoded (eps_cor = 1e-12 over the block)
    assert r.verification_bits % 62 == 0 and kept * 62 <= r.verification_bits <= r.frames * 62
    np.testing.assert_array_equal(r.alice_remainder, a[-777:])
    np.testing.assert_array_equal(r.bob_remainder, b[-777:])
    f = r.leaked_bits / (r.alice_key.size * binary_entropy(q))
    assert 1.0 < f < 1.2


def test_undetected_decoding_error_is_caught_by_verification():
    q = 0.03
    alice = ReconcilerAlice(3, q, f_target=1.15, batch_frames=3, rng=np.random.default_rng(9))
    bob = ReconcilerBob(3)
    a, b = noisy_pair(3 * alice.plan.key_bits, q, seed=11)
    bob.start(b, alice.plan.key_bits)
    a_end, b_end = loopback_pair()
    for m in alice.start(a):
        a_end.send(m)

    def corrupt(msg):
        if msg["type"] == "ldpc_status":
            assert list(msg["decoded"]) == [1, 1, 1]
            _, _, key_pos, _ = bob.plan_layout = bob.batches[0].plan.layout()
            bob.batches[0].words[1, key_pos[100]] ^= 1  # decoder "converged" to a wrong word

    pump(alice, bob, a_end, b_end, corrupt)
    ra, rb = alice.result(), bob.result()
    assert ra.kept_frames == rb.kept_frames == [0, 2]
    assert ra.failed_frames == rb.failed_frames == [1]
    np.testing.assert_array_equal(ra.key, rb.key)
    k = alice.plan.key_bits
    np.testing.assert_array_equal(ra.key, np.concatenate([a[:k], a[2 * k :]]))
    assert ra.leaked_bits == 2 * alice.plan.leaked(0)
    assert ra.verification_bits == rb.verification_bits == 3 * 62


def test_blind_reveals_rescue_frames_and_are_counted():
    q = 0.03
    alice = ReconcilerAlice(0, q, f_target=1.0, max_reveals=4, rng=np.random.default_rng(2))
    bob = ReconcilerBob(0)
    a, b = noisy_pair(2 * alice.plan.key_bits, q, seed=5)
    bob.start(b, alice.plan.key_bits)
    a_end, b_end = loopback_pair()
    for m in alice.start(a):
        a_end.send(m)
    kinds = []
    pump(alice, bob, a_end, b_end, lambda m: kinds.append(m["type"]))
    assert "ldpc_reveal_request" in kinds, "f = 1.0 should need at least one blind round"
    ra, rb = alice.result(), bob.result()
    assert ra.kept_frames == rb.kept_frames == [0, 1]
    np.testing.assert_array_equal(ra.key, rb.key)
    np.testing.assert_array_equal(ra.key, a)
    batch = alice.batches[0]
    revealed = batch.revealed
    assert revealed.max() > 0 and np.array_equal(revealed, bob.batches[0].revealed)
    assert ra.leaked_bits == rb.leaked_bits == sum(alice.plan.leaked(int(r)) for r in revealed)


@pytest.mark.parametrize("q", [0.03, 0.07])
def test_short_frames(q):
    """16384-bit frames: the same protocol on the short code family."""
    plan = plan_frame(q, frame_length=16384)
    assert plan.code.n == 16384
    a, b = noisy_pair(6 * plan.key_bits, q, seed=21)
    r = reconcile_loopback(a, b, q, frame_length=16384, seed=5)
    assert r.frames == 6 and r.frames_failed <= 1
    np.testing.assert_array_equal(r.alice_key, r.bob_key)
    assert r.leaked_bits / (r.alice_key.size * binary_entropy(q)) < 1.3
    with pytest.raises(ValueError):
        reconcile_loopback(a, b, q, frame_length=12345)


def test_short_block_is_returned_whole():
    a, b = noisy_pair(5000, 0.03, seed=1)
    r = reconcile_loopback(a, b, 0.03)
    assert r.frames == 0 and r.alice_key.size == 0 and r.leaked_bits == 0
    np.testing.assert_array_equal(r.alice_remainder, a)
    np.testing.assert_array_equal(r.bob_remainder, b)


@pytest.mark.parametrize(
    "alice,bob,q",
    [
        (np.zeros(10, np.int64), np.zeros(10, np.uint8), 0.02),  # wrong dtype
        (np.zeros(10, np.uint8), np.zeros(10, bool), 0.02),
        (np.zeros(10, np.uint8), np.zeros(11, np.uint8), 0.02),  # lengths differ
        (np.zeros(0, np.uint8), np.zeros(0, np.uint8), 0.02),  # empty
        (np.zeros(10, np.uint8), np.zeros(10, np.uint8), -0.01),  # QBER outside [0, 0.5]
        (np.zeros(10, np.uint8), np.zeros(10, np.uint8), 0.6),
        (np.zeros(10, np.uint8), np.zeros(10, np.uint8), math.nan),
        (np.full(10, 2, np.uint8), np.zeros(10, np.uint8), 0.02),  # not bits
        (np.zeros((2, 5), np.uint8), np.zeros((2, 5), np.uint8), 0.02),
    ],
)
def test_bad_input_raises_value_error(alice, bob, q):
    with pytest.raises(ValueError):
        reconcile_loopback(alice, bob, q)


def test_malformed_or_foreign_messages_raise_value_error():
    q = 0.03
    # f = 1.0 for the first round: frame 0 surely needs a blind round (the reveal paths run)
    alice = ReconcilerAlice(1, q, f_target=1.0, rng=np.random.default_rng(0))
    bob = ReconcilerBob(1)
    a, b = noisy_pair(alice.plan.key_bits, q, seed=2)
    bob.start(b)
    plan_msg, syn = alice.start(a)
    assert plan_msg["type"] == "ldpc_plan" and not bob.done
    with pytest.raises(ValueError):
        bob.handle({**plan_msg, "bits": plan_msg["bits"] + 1})  # not the same block
    assert bob.handle(plan_msg) == [] and not bob.done
    with pytest.raises(ValueError):
        bob.handle({**syn, "block": 2})
    with pytest.raises(ValueError):
        bob.handle({**syn, "syndromes": syn["syndromes"][:, :-1]})
    replies = bob.handle(syn)
    with pytest.raises(ValueError):
        bob.handle(syn)  # replayed syndrome for frames already received
    with pytest.raises(ValueError):
        alice.handle({"type": "ldpc_status", "block": 1, "frames": [5], "decoded": [1]})
    with pytest.raises(ValueError):
        alice.handle({"type": "nonsense", "block": 1, "frames": [0]})
    assert replies[0]["type"] == "ldpc_reveal_request"
    with pytest.raises(ValueError):  # a required field is missing
        alice.handle({"type": "ldpc_reveal_request", "block": 1, "frames": [0]})
    with pytest.raises(ValueError):  # Bob has not decoded frame 0 yet / never will from this
        bob.handle({"type": "verify_tags", "block": 1, "frames": [0],
                    "points": np.ones((1, 1), np.uint64), "tags": np.ones((1, 1), np.uint64)})  # fmt: skip
    (reveal,) = alice.handle(replies[0])
    with pytest.raises(ValueError):
        bob.handle({**reveal, "values": reveal["values"] * 2})  # not bits
    bob.handle(reveal)
    with pytest.raises(ValueError):
        bob.handle(reveal)  # replay of a reveal already applied


def test_full_exchange_rejects_replays():
    q = 0.03
    alice = ReconcilerAlice(2, q, f_target=1.2, rng=np.random.default_rng(4))
    bob = ReconcilerBob(2)
    a, b = noisy_pair(alice.plan.key_bits, q, seed=3)
    bob.start(b, alice.plan.key_bits)
    plan_msg, syn = alice.start(a)
    assert bob.handle(plan_msg) == []
    (status,) = bob.handle(syn)
    assert status["type"] == "ldpc_status" and list(status["decoded"]) == [1]
    (tags,) = alice.handle(status)
    with pytest.raises(ValueError):
        alice.handle(status)
    (verdict,) = bob.handle(tags)
    with pytest.raises(ValueError):
        bob.handle(tags)
    assert alice.handle(verdict) == []
    with pytest.raises(ValueError):
        alice.handle(verdict)
    assert alice.done and bob.done
    np.testing.assert_array_equal(alice.result().key, bob.result().key)
    assert bob.result().verification_bits == alice.result().verification_bits == 62


@settings(max_examples=6, deadline=None)
@given(q_true=st.floats(0.01, 0.12), ratio=st.floats(0.6, 1.4), seed=st.integers(0, 2**31))
def test_wrong_qber_estimate_never_yields_different_keys(q_true, ratio, seed):
    """Whatever the estimate, Alice and Bob emit the same bits, and only Alice's real bits."""
    q_est = min(0.5, q_true * ratio)
    plan = plan_frame(q_est, frame_length=16384)
    a, b = noisy_pair(3 * plan.key_bits, q_true, seed)
    r = reconcile_loopback(a, b, q_est, frame_length=16384, seed=seed)
    np.testing.assert_array_equal(r.alice_key, r.bob_key)
    k = plan.key_bits
    frames = {a[i * k : (i + 1) * k].tobytes() for i in range(r.frames)}
    kept = r.frames - r.frames_failed
    assert r.alice_key.size == kept * k
    for i in range(kept):
        assert r.alice_key[i * k : (i + 1) * k].tobytes() in frames
