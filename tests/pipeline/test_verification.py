"""Polynomial-hash verification (pipeline.verification)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.channel import loopback_pair
from pipeline.verification import (
    MERSENNE61,
    VerifierAlice,
    VerifierBob,
    _mulmod,
    hash_repetitions,
    poly_hash,
    tag_bits,
)

P = MERSENNE61


def reference_hash(bits: np.ndarray, key: int) -> int:
    """Plain-Python Horner over GF(2^61 - 1) on little-endian 32-bit words, length first."""
    packed = np.packbits(bits, bitorder="little").tobytes()
    packed += b"\0" * (-len(packed) % 4)
    acc = bits.size % P
    for i in range(0, len(packed), 4):
        acc = (acc * key + int.from_bytes(packed[i : i + 4], "little")) % P
    return acc


@settings(deadline=None)
@given(st.integers(0, P - 1), st.integers(0, P - 1))
def test_mulmod_matches_big_integers(a, b):
    assert int(_mulmod(np.uint64(a), np.uint64(b))) == a * b % P


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 1), max_size=300), st.integers(0, P - 1))
def test_poly_hash_matches_reference(bits, key):
    arr = np.array(bits, dtype=np.uint8)
    assert int(poly_hash(arr, np.array([key], np.uint64))[0]) == reference_hash(arr, key)


def test_hash_separates_length_and_content():
    k = np.array([987654321987], np.uint64)
    a = np.zeros(64, np.uint8)
    assert poly_hash(a, k)[0] != poly_hash(np.zeros(65, np.uint8), k)[0]
    b = a.copy()
    b[17] = 1
    assert poly_hash(a, k)[0] != poly_hash(b, k)[0]


def test_tag_length_follows_eps_cor():
    n = 131_072
    words = n // 32 + 1
    for eps in (1e-6, 1e-12, 1e-20, 1e-40):
        r = hash_repetitions(n, eps)
        assert (words / P) ** r <= eps < (words / P) ** (r - 1) or r == 1
        assert tag_bits(n, eps) == 61 * r + 1
    assert hash_repetitions(n, 1e-12) == 1 and hash_repetitions(n, 1e-20) == 2
    assert math.isclose(hash_repetitions(10**9, 1e-12), 2)
    for bad in (0.0, 1.0, -1e-3):
        with pytest.raises(ValueError):
            hash_repetitions(n, bad)


def test_mismatching_frame_is_dropped_on_both_sides():
    rng = np.random.default_rng(5)
    keys = [rng.integers(0, 2, 5000, dtype=np.uint8) for _ in range(4)]
    bob_keys = [k.copy() for k in keys]
    bob_keys[2][1234] ^= 1  # an undetected decoding error in frame 2
    alice, bob = VerifierAlice(1e-12, np.random.default_rng(1)), VerifierBob()
    a_end, b_end = loopback_pair()
    a_end.send(alice.tags(7, [10, 11, 12, 13], keys))
    reply, bob_out = bob.handle_tags(b_end.recv(), bob_keys)
    b_end.send(reply)
    alice_out = alice.handle_result(a_end.recv())
    assert bob_out.ok.tolist() == alice_out.ok.tolist() == [True, True, False, True]
    assert alice_out.frames == [10, 11, 12, 13]
    assert alice_out.public_bits == bob_out.public_bits == 4 * (61 + 1)


def test_fresh_keys_per_frame_and_call():
    alice = VerifierAlice(1e-12, np.random.default_rng(2))
    keys = [np.ones(100, np.uint8)] * 3
    m1, m2 = alice.tags(0, [0, 1, 2], keys), alice.tags(1, [0, 1, 2], keys)
    pts = np.concatenate([m1["points"].ravel(), m2["points"].ravel()])
    assert np.unique(pts).size == pts.size and (pts < P).all()


def test_bad_messages_raise():
    alice = VerifierAlice(1e-12, np.random.default_rng(3))
    with pytest.raises(ValueError):
        alice.handle_result({"type": "verify_result", "block": 0, "frames": [0], "ok": [1]})
    msg = alice.tags(0, [0, 1], [np.zeros(10, np.uint8)] * 2)
    with pytest.raises(ValueError):
        VerifierBob().handle_tags(msg, [np.zeros(10, np.uint8)])
    with pytest.raises(ValueError):
        alice.tags(0, [0], [])
    with pytest.raises(ValueError):
        poly_hash(np.array([0, 2], np.uint8), np.array([1], np.uint64))


def test_bob_refuses_tags_weaker_than_eps_cor():
    keys = [np.zeros(1000, np.uint8)]
    weak = {"type": "verify_tags", "block": 0, "frames": [0],
            "points": np.zeros((1, 0), np.uint64), "tags": np.zeros((1, 0), np.uint64)}  # fmt: skip
    with pytest.raises(ValueError):
        VerifierBob().handle_tags(weak, keys)
    one = VerifierAlice(1e-12, np.random.default_rng(0)).tags(0, [0], keys)
    with pytest.raises(ValueError):
        VerifierBob(eps_cor=1e-20).handle_tags(one, keys)  # needs two evaluations
    reply, out = VerifierBob(eps_cor=1e-12).handle_tags(one, keys)
    assert out.ok.tolist() == [True] and reply["ok"].tolist() == [1]
