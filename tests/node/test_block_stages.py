"""One block through the real stages (reconciliation, verification, estimation, PA), both sides
driven the way the post-processing process drives them, messages through the msgpack loopback."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.blocks import BlockInput
from pipeline.channel import loopback_pair

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
    rounds = 0
    while (a_end.pending() or b_end.pending()) and rounds < 200:
        rounds += 1
        while b_end.pending():
            for m in bob.handle(b_end.recv()):
                b_end.send(m)
        while a_end.pending():
            for m in alice.handle(a_end.recv()):
                a_end.send(m)
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
