"""Privacy amplification: toeplitz_hash against the explicit matrix, every backend, bad input, messages."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.amplification import (
    BACKENDS,
    MESSAGE_TYPE,
    PaMessageError,
    PrivacyAmplificationAlice,
    PrivacyAmplificationBob,
    default_backend,
    random_seed,
    toeplitz_hash,
    toeplitz_hash_packed,
)
from pipeline.channel import loopback_pair
from pipeline.gf2 import has_pclmul

AVAILABLE = [b for b in BACKENDS if has_pclmul() or b == "ntt"]


def explicit(bits: np.ndarray, seed: np.ndarray, m: int) -> np.ndarray:
    """y = T x mod 2 with T[i, j] = seed[i - j + n - 1], built as a dense matrix."""
    n = bits.size
    i, j = np.arange(m)[:, None], np.arange(n)[None, :]
    matrix = seed[i - j + n - 1].astype(np.int64)
    assert matrix.shape == (m, n)
    return (matrix @ bits.astype(np.int64) % 2).astype(np.uint8)


def random_case(n: int, m: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 2, n, dtype=np.uint8), rng.integers(0, 2, n + m - 1, dtype=np.uint8)


@st.composite
def sizes(draw, max_n: int = 700):
    n = draw(st.integers(min_value=1, max_value=max_n))
    m = draw(st.integers(min_value=1, max_value=n))
    return n, m, draw(st.integers(min_value=0, max_value=2**32))


@pytest.mark.parametrize("backend", AVAILABLE)
@settings(max_examples=60, deadline=None)
@given(case=sizes())
def test_hash_equals_explicit_matrix_product(backend, case):
    n, m, seed = case
    bits, key_seed = random_case(n, m, seed)
    y = toeplitz_hash(bits, key_seed, m, backend=backend)
    assert y.dtype == np.uint8 and y.shape == (m,)
    assert np.array_equal(y, explicit(bits, key_seed, m)), f"{backend} n={n} m={m}"


@pytest.mark.parametrize("backend", AVAILABLE)
def test_word_boundaries_and_extreme_output_lengths(backend):
    for n in (1, 63, 64, 65, 127, 128, 129, 4095, 4097):
        for m in {min(2, n), 1, n // 2 or 1, n - 1 or 1, n}:
            bits, key_seed = random_case(n, m, n * 1000 + m)
            assert np.array_equal(
                toeplitz_hash(bits, key_seed, m, backend=backend), explicit(bits, key_seed, m)
            ), f"{backend} n={n} m={m}"


def test_matrix_convention_on_unit_vectors():
    # x = e_j picks column j of T: y_i = seed[i - j + n - 1].
    n, m = 9, 4
    key_seed = np.random.default_rng(1).integers(0, 2, n + m - 1, dtype=np.uint8)
    for j in range(n):
        bits = np.zeros(n, dtype=np.uint8)
        bits[j] = 1
        expected = np.array([key_seed[i - j + n - 1] for i in range(m)], dtype=np.uint8)
        for backend in AVAILABLE:
            assert np.array_equal(toeplitz_hash(bits, key_seed, m, backend=backend), expected)


def test_large_block_all_backends_agree_with_blocked_explicit_product():
    # Several column blocks and the parallel split of the clmul path; check rows of T x directly.
    n, m = 300_007, 100_003
    bits, key_seed = random_case(n, m, 42)
    outputs = {b: toeplitz_hash(bits, key_seed, m, backend=b) for b in AVAILABLE}
    first = outputs[AVAILABLE[0]]
    for backend, y in outputs.items():
        assert np.array_equal(y, first), f"{backend} differs from {AVAILABLE[0]}"
    rows = np.array([0, 1, 63, 64, 65, 4096, m // 2, m - 2, m - 1])
    x_rev = bits[::-1].astype(np.int64)
    for i in rows:
        # y_i = sum_j seed[i + n - 1 - j] x_j = seed[i : i + n] . reversed(x)
        assert first[i] == int(key_seed[i : i + n].astype(np.int64) @ x_rev) % 2, f"row {i}"


@pytest.mark.parametrize("backend", AVAILABLE)
@settings(max_examples=30, deadline=None)
@given(case=sizes(max_n=3000))
def test_packed_variants_agree_with_unpacked(backend, case):
    n, m, seed = case
    bits, key_seed = random_case(n, m, seed)
    expected = toeplitz_hash(bits, key_seed, m, backend=backend)
    x8 = np.packbits(bits, bitorder="little")
    s8 = np.packbits(key_seed, bitorder="little")
    y8 = toeplitz_hash_packed(x8, n, s8, m, backend=backend)
    assert y8.dtype == np.uint8 and y8.size == -(-m // 8)
    assert np.array_equal(np.unpackbits(y8, count=m, bitorder="little"), expected)
    assert np.unpackbits(y8, bitorder="little")[m:].sum() == 0, "padding bits must be zero"

    def to_u64(packed: np.ndarray, n_bits: int) -> np.ndarray:
        buf = np.zeros(-(-n_bits // 64) * 8, dtype=np.uint8)
        buf[: packed.size] = packed
        return buf.view("<u8").astype(np.uint64)

    y64 = toeplitz_hash_packed(to_u64(x8, n), n, to_u64(s8, n + m - 1), m, backend=backend)
    assert y64.dtype == np.uint64 and y64.size == -(-m // 64)
    assert np.array_equal(y64.astype("<u8").view(np.uint8)[: y8.size], y8)


GOOD_BITS = np.array([1, 0, 1, 1], dtype=np.uint8)
GOOD_SEED = np.array([0, 1, 1, 0, 1], dtype=np.uint8)  # n = 4, m = 2


@pytest.mark.parametrize(
    ("bits", "seed", "m", "match"),
    [
        (GOOD_BITS.astype(np.int64), GOOD_SEED, 2, "uint8"),
        (GOOD_BITS.astype(bool), GOOD_SEED, 2, "uint8"),
        (GOOD_BITS.astype(float), GOOD_SEED, 2, "uint8"),
        (list(GOOD_BITS), GOOD_SEED, 2, "uint8"),
        (GOOD_BITS, GOOD_SEED.astype(np.int32), 2, "uint8"),
        (np.array([1, 2, 0, 1], dtype=np.uint8), GOOD_SEED, 2, "other than 0 and 1"),
        (GOOD_BITS, np.array([0, 1, 255, 0, 1], dtype=np.uint8), 2, "other than 0 and 1"),
        (GOOD_BITS, GOOD_SEED[:-1], 2, "n \\+ m - 1"),
        (GOOD_BITS, np.append(GOOD_SEED, 1).astype(np.uint8), 2, "n \\+ m - 1"),
        (GOOD_BITS, GOOD_SEED, 0, "0 < m <= n"),
        (GOOD_BITS, GOOD_SEED, -3, "0 < m <= n"),
        (GOOD_BITS, GOOD_SEED, 5, "0 < m <= n"),
        (GOOD_BITS, GOOD_SEED, 2.0, "integer"),
        (GOOD_BITS, GOOD_SEED, True, "integer"),
        (np.zeros(0, dtype=np.uint8), np.zeros(0, dtype=np.uint8), 1, "empty"),
        (GOOD_BITS.reshape(2, 2), GOOD_SEED, 2, "one-dimensional"),
    ],
)
def test_bad_input_is_a_clear_value_error(bits, seed, m, match):
    with pytest.raises(ValueError, match=match):
        toeplitz_hash(bits, seed, m)


def test_bad_packed_input_and_backend():
    x8 = np.packbits(GOOD_BITS, bitorder="little")
    s8 = np.packbits(GOOD_SEED, bitorder="little")
    assert np.array_equal(
        np.unpackbits(toeplitz_hash_packed(x8, 4, s8, 2), count=2, bitorder="little"),
        explicit(GOOD_BITS, GOOD_SEED, 2),
    )
    with pytest.raises(ValueError, match="bits set beyond"):
        toeplitz_hash_packed(x8 | np.uint8(0x80), 4, s8, 2)
    with pytest.raises(ValueError, match="words"):
        toeplitz_hash_packed(np.append(x8, 0).astype(np.uint8), 4, s8, 2)
    with pytest.raises(ValueError, match="uint8 or uint64"):
        toeplitz_hash_packed(x8.astype(np.int64), 4, s8, 2)
    with pytest.raises(ValueError, match="empty"):
        toeplitz_hash_packed(np.zeros(0, dtype=np.uint8), 0, s8, 1)
    with pytest.raises(ValueError, match="unknown Toeplitz backend"):
        toeplitz_hash(GOOD_BITS, GOOD_SEED, 2, backend="fft")


def test_backend_selection_and_override(monkeypatch):
    assert default_backend() == ("clmul" if has_pclmul() else "ntt")
    monkeypatch.setenv("QNODE_TOEPLITZ_BACKEND", "ntt")
    assert default_backend() == "ntt"
    monkeypatch.setenv("QNODE_TOEPLITZ_BACKEND", "bogus")
    with pytest.raises(ValueError, match="unknown Toeplitz backend"):
        default_backend()


def test_alice_and_bob_get_the_same_key_through_the_codec():
    alice_end, bob_end = loopback_pair()
    rng = np.random.default_rng(9)
    block = rng.integers(0, 2, 10_001, dtype=np.uint8)
    message, seed = PrivacyAmplificationAlice().make("blk-17", block.size, 4_000)
    assert message["type"] == MESSAGE_TYPE and message["block"] == "blk-17"
    alice_end.send(message)
    received = bob_end.recv()
    bob_key = PrivacyAmplificationBob().apply(received, block)
    alice_key = seed.hash(block)
    assert bob_key.size == 4_000 and np.array_equal(alice_key, bob_key)
    unpacked_seed = np.unpackbits(seed.packed, count=block.size + 4_000 - 1, bitorder="little")
    assert np.array_equal(alice_key, explicit(block, unpacked_seed, 4_000))


def test_seeds_are_fresh_and_padding_is_clear():
    a, b = random_seed(1001, 500), random_seed(1001, 500)
    assert a.packed.size == -(-1500 // 8)
    assert not np.array_equal(a.packed, b.packed), "two CSPRNG seeds of 1500 bits collided"
    assert int(a.packed[-1]) >> (1500 % 8) == 0
    assert 0.3 < np.unpackbits(a.packed).mean() < 0.7


def _valid_message() -> dict:
    message, _ = PrivacyAmplificationAlice().make(3, 100, 40)
    return message


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda msg: msg.update(type="pa_sead"), "expected"),
        (lambda msg: msg.pop("seed"), "lacks"),
        (lambda msg: msg.pop("block"), "lacks"),
        (lambda msg: msg.update(n="100"), "integers"),
        (lambda msg: msg.update(m=True), "integers"),
        (lambda msg: msg.update(m=101), "0 < m <= n"),
        (lambda msg: msg.update(seed=msg["seed"][:-1]), "words"),
        (lambda msg: msg.update(seed=msg["seed"].astype(np.uint16)), "uint8 or uint64"),
        (lambda msg: msg.update(seed=b"\x00" * 18), "uint8 or uint64"),
        (lambda msg: msg["seed"].__setitem__(-1, 0xFF), "bits set beyond"),
    ],
)
def test_malformed_messages_raise_pa_message_error(mutate, match):
    message = _valid_message()
    message["seed"] = message["seed"].copy()
    mutate(message)
    with pytest.raises(PaMessageError, match=match):
        PrivacyAmplificationBob().accept(message)


def test_bob_refuses_a_block_of_the_wrong_length_or_values():
    message = _valid_message()
    with pytest.raises(ValueError, match="n=100"):
        PrivacyAmplificationBob().apply(message, np.zeros(99, dtype=np.uint8))
    block = np.zeros(100, dtype=np.uint8)
    block[77] = 2
    with pytest.raises(ValueError, match="other than 0 and 1"):
        PrivacyAmplificationBob().apply(message, block)


def test_cryptomite_convention_mapping():
    cryptomite = pytest.importorskip("cryptomite")
    from pipeline.bench.toeplitz import cryptomite_seed, numpy_fft_toeplitz

    for n, m in ((50, 20), (257, 257), (1000, 333)):
        bits, key_seed = random_case(n, m, n + m)
        ours = toeplitz_hash(bits, key_seed, m)
        theirs = cryptomite.Toeplitz(n, m).extract(
            bits.tolist(), cryptomite_seed(key_seed, n).tolist()
        )
        assert np.array_equal(np.asarray(theirs, dtype=np.uint8), ours), (n, m)
        assert np.array_equal(numpy_fft_toeplitz(bits, key_seed, m), ours), (n, m)


def test_a_target_without_pclmul_selects_the_ntt_with_the_same_output(tmp_path):
    # NUMBA_CPU_NAME=generic makes numba compile for a CPU without PCLMULQDQ: the run-time
    # selection must pick the NTT, and the key must be the one the clmul path gives here.
    bits, key_seed = random_case(5000, 1700, 77)
    np.save(tmp_path / "bits.npy", bits)
    np.save(tmp_path / "seed.npy", key_seed)
    script = (
        "import sys, numpy as np\n"
        "from pipeline.amplification import default_backend, toeplitz_hash\n"
        "d = sys.argv[1]\n"
        "y = toeplitz_hash(np.load(d + '/bits.npy'), np.load(d + '/seed.npy'), 1700)\n"
        "np.save(d + '/y.npy', y)\n"
        "print(default_backend())\n"
    )
    env = {**os.environ, "NUMBA_CPU_NAME": "generic", "NUMBA_CACHE_DIR": str(tmp_path / "cache")}
    env.pop("QNODE_TOEPLITZ_BACKEND", None)
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ntt"
    assert np.array_equal(np.load(tmp_path / "y.npy"), toeplitz_hash(bits, key_seed, 1700))


def test_perf_rows_compare_every_impl_on_the_same_input(monkeypatch):
    from pipeline.bench import toeplitz as bench

    assert bench.perf_rows(quick=True, stages=["sifting"]) == []
    rows = bench._rows_for(20_000, reps=1, peer_reps=1)
    impls = [(r["impl"], r["io"]) for r in rows]
    assert impls[:3] == [("qnode", "bits"), ("qnode", "packed"), ("numpy", "bits")]
    assert all(r["stage"] == "toeplitz" and r["n"] == 20_000 and r["m"] == 10_000 for r in rows)
    assert all(r["mbps"] > 0 for r in rows if "missing" not in r)
    assert all(r["agree"] for r in rows if "agree" in r), rows
    assert rows[2]["ratio"] == pytest.approx(rows[0]["mbps"] / rows[2]["mbps"], rel=0.01)
    # without the optional peer the row says so instead of failing
    monkeypatch.setitem(sys.modules, "cryptomite", None)
    peer = bench._rows_for(2_000, reps=1, peer_reps=1)[-1]
    assert peer["impl"] == "cryptomite" and "pip install .[bench]" in peer["missing"]
    assert "mbps" not in peer
