"""Counter-based symbol generator: determinism, statistics, independence (contracts §1.1)."""

from __future__ import annotations

import numpy as np
import pytest

from sim_hw.symbols import decode, symbols_for_slots, symbols_range

N = 2_000_000
P = dict(p_z=0.8, p_signal=0.6, p_decoy=0.25)  # vacuum 0.15


def _within(count: int, n: int, p: float, sigmas: float = 5.0) -> bool:
    return abs(count - n * p) <= sigmas * np.sqrt(n * p * (1 - p)) + 1


def test_deterministic_and_slot_addressed() -> None:
    a = symbols_range(0xDEADBEEF, 1000, 5000, **P)
    b = symbols_range(0xDEADBEEF, 1000, 5000, **P)
    assert np.array_equal(a, b)
    slots = np.array([1000, 5999, 3000, 1000], dtype=np.int64)
    assert np.array_equal(symbols_for_slots(0xDEADBEEF, slots, **P), a[slots - 1000])
    # Contiguous ranges agree with one long range (no hidden stream state).
    assert np.array_equal(
        np.concatenate([symbols_range(7, 0, 300, **P), symbols_range(7, 300, 700, **P)]),
        symbols_range(7, 0, 1000, **P),
    )


def test_keys_give_unrelated_streams() -> None:
    a = symbols_range(1, 0, 100_000, **P)
    for other in (2, 1 + 0x9E3779B97F4A7C15, 2**64 - 1):
        b = symbols_range(other, 0, 100_000, **P)
        # Bit values of unrelated streams agree about half the time.
        agree = np.count_nonzero((a >> 1 & 1) == (b >> 1 & 1))
        assert _within(agree, a.size, 0.5), f"key {other:#x} correlates with key 1"
    # A shifted key must not give a shifted stream.
    shifted = symbols_range(1 + 0x9E3779B97F4A7C15, 0, 1000, **P)
    assert not np.array_equal(shifted[:-1], a[1:1000])


def test_probabilities_within_binomial_tolerance() -> None:
    basis, bit, cls = decode(symbols_range(0x1234_5678_9ABC_DEF0, 10**12, N, **P))
    assert _within(np.count_nonzero(basis == 0), N, P["p_z"])
    assert _within(np.count_nonzero(bit == 1), N, 0.5)
    counts = np.bincount(cls, minlength=4)
    assert counts[3] == 0
    for k, p in enumerate((0.6, 0.25, 0.15)):
        assert _within(counts[k], N, p), f"class {k}: {counts[k]} of {N}"


def test_basis_bit_class_independent() -> None:
    basis, bit, cls = decode(symbols_range(99, 0, N, **P))
    joint = np.bincount((basis * 2 + bit) * 3 + cls, minlength=12)
    for b in (0, 1):
        for x in (0, 1):
            for k, pk in enumerate((0.6, 0.25, 0.15)):
                p = (P["p_z"] if b == 0 else 1 - P["p_z"]) * 0.5 * pk
                n = joint[(b * 2 + x) * 3 + k]
                assert _within(n, N, p), f"basis {b} bit {x} class {k}: {n} vs {N * p:.0f}"
    # No serial correlation between neighbouring slots' bits.
    same = np.count_nonzero(bit[1:] == bit[:-1])
    assert _within(same, N - 1, 0.5)


def test_extreme_probabilities() -> None:
    s = symbols_range(5, 0, 10_000, p_z=1.0, p_signal=1.0, p_decoy=0.0)
    basis, _, cls = decode(s)
    assert basis.max() == 0 and cls.max() == 0
    s = symbols_range(5, 0, 10_000, p_z=0.0, p_signal=0.0, p_decoy=0.0)
    basis, _, cls = decode(s)
    assert basis.min() == 1 and cls.min() == 2


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: symbols_range(-1, 0, 10, **P), "key"),
        (lambda: symbols_range(2**64, 0, 10, **P), "key"),
        (lambda: symbols_range(1, -5, 10, **P), "first_slot"),
        (lambda: symbols_for_slots(1, np.array([3, -1]), **P), "slots"),
        (lambda: symbols_range(1, 0, 10, p_z=1.5, p_signal=0.5, p_decoy=0.1), "p_z"),
        (lambda: symbols_range(1, 0, 10, p_z=0.5, p_signal=0.9, p_decoy=0.2), "p_signal"),
    ],
)
def test_bad_input_refused(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()
