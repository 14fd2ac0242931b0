"""``qnode perf`` rows for sifting: qnode's numba stage beside a plain vectorised numpy version.

Both sift the same frame (both sides: Bob's announcement, Alice's symbol request and answer from
her symbol bytes, Bob's finish) and their key bits, counts and test errors must agree before a
figure is reported. Transport (msgpack) and the source's lookup are excluded: the rows measure
the stage's computation on Bob's arrays and Alice's symbol bytes.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from pipeline.sifting import SiftingAlice, SiftingBob, symbol_bytes

STAGE = "sifting"


def make_frame(n: int, seed: int = 0, qber: float = 0.03) -> dict[str, np.ndarray]:
    """A synthetic frame: n events on sorted unique slots with random bases, bits and classes."""
    rng = np.random.default_rng(seed)
    slot = np.cumsum(rng.integers(1, 64, n, dtype=np.int64))
    bob_basis = (rng.random(n) < 0.8).astype(np.uint8)  # q_x = 0.8
    alice_basis = (rng.random(n) < 0.8).astype(np.uint8)
    bob_bit = rng.integers(0, 2, n, dtype=np.uint8)
    alice_bit = bob_bit ^ (rng.random(n) < qber).astype(np.uint8)
    intensity = rng.choice(np.array([0, 1, 2], np.uint8), n, p=[0.7, 0.2, 0.1])
    return {
        "slot": slot,
        "bob_basis": bob_basis,
        "bob_bit": bob_bit,
        "alice_basis": alice_basis,
        "alice_bit": alice_bit,
        "intensity": intensity,
        "alice_symbols": symbol_bytes(alice_basis, alice_bit, intensity),  # as her source sends
    }


def sift_qnode(f: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Both sides through qnode's stage objects (no channel); returns keys, counts, errors."""
    bob, alice = SiftingBob(), SiftingAlice()
    announce = bob.announce(0, f["slot"], f["bob_basis"], f["bob_bit"])
    alice.symbol_request(announce)  # validated; the gaps would go to her source as they came
    reply, a = alice.on_announce(announce, f["alice_symbols"])
    b = bob.on_reply(reply)
    return a.key_bits, b.key_bits, a.counts, a.test_errors


def sift_numpy(f: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The same protocol (bit planes on the wire) written as straightforward vectorised numpy."""
    bb, sym = f["bob_basis"], f["alice_symbols"]
    ab, av, k = sym & 1, (sym >> 1) & 1, (sym >> 2) & 3
    n = bb.size
    # Bob announces
    basis_plane = np.packbits(bb, bitorder="little")
    test_plane = np.packbits(f["bob_bit"] & (bb == 0), bitorder="little")
    # Alice answers
    bob_basis_seen = np.unpackbits(basis_plane, count=n, bitorder="little")
    bob_test_seen = np.unpackbits(test_plane, count=n, bitorder="little")
    match = ab == bob_basis_seen
    match_plane = np.packbits(match, bitorder="little")
    lo_plane = np.packbits(match & (k & 1).astype(bool), bitorder="little")
    hi_plane = np.packbits(match & (k >> 1).astype(bool), bitorder="little")
    counts = np.bincount(ab[match] * 3 + k[match], minlength=6).reshape(2, 3)
    z = match & (ab == 0)
    errors = np.bincount(k[z], weights=av[z] ^ bob_test_seen[z], minlength=3)
    alice_key = av[match & (ab == 1)]
    # Bob finishes
    m = np.unpackbits(match_plane, count=n, bitorder="little").astype(bool)
    kb = np.unpackbits(lo_plane, count=n, bitorder="little") | (
        np.unpackbits(hi_plane, count=n, bitorder="little") << 1
    )
    bob_counts = np.bincount(bb[m] * 3 + kb[m], minlength=6).reshape(2, 3)
    assert np.array_equal(bob_counts, counts)
    bob_key = f["bob_bit"][m & (bb == 1)]
    return alice_key, bob_key, counts, errors.astype(np.int64)


def _best_time(fn, frame, reps: int) -> tuple[float, Any]:
    best, out = float("inf"), None
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn(frame)
        best = min(best, time.perf_counter() - t0)
    return best, out


def perf_rows(quick: bool = False, stages: list[str] | None = None) -> list[dict]:
    """One qnode row and one numpy row on the same frame (compile time excluded)."""
    if stages is not None and STAGE not in stages:
        return []
    n = 2_000_000 if quick else 20_000_000
    frame = make_frame(n)
    sift_qnode(make_frame(1000, seed=1))  # warm up: numba compile / cache load
    reps = 5 if quick else 3  # a quick frame takes milliseconds: best of more runs
    t_q, out_q = _best_time(sift_qnode, frame, reps)
    t_n, out_n = _best_time(sift_numpy, frame, reps)
    agree = all(np.array_equal(x, y) for x, y in zip(out_q, out_n, strict=True))
    rows = [
        {"stage": STAGE, "impl": "qnode", "n": n, "events_per_s": n / t_q, "agree": agree},
        {"stage": STAGE, "impl": "numpy", "n": n, "events_per_s": n / t_n, "agree": agree},
    ]
    if not agree:
        for row in rows:
            row["note"] = "OUTPUTS DIFFER"
    return rows
