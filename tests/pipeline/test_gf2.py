"""GF(2)[x] arithmetic in pipeline.gf2 against Python-integer carry-less products."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numba import njit

from pipeline.gf2 import has_pclmul, mask_tail, pack_bits, unpack_bits, words_for
from pipeline.gf2.bits import shift_up
from pipeline.gf2.intrinsics import clmul_dot, clmul_rows2, clmul_rows8, clmul_rows8_by_pairs
from pipeline.gf2.karatsuba import (
    BASE_WORDS,
    mul_karatsuba,
    mul_school,
    padded_size,
    sdp_batch,
    sdp_karatsuba,
    sdp_school,
)
from pipeline.gf2.ntt import toeplitz_ntt
from pipeline.gf2.toeplitz import sdp_parallel

needs_pclmul = pytest.mark.skipif(not has_pclmul(), reason="CPU without PCLMULQDQ")
U64 = st.integers(min_value=0, max_value=2**64 - 1)


def clmul_int(a: int, b: int) -> int:
    """Carry-less product of two Python integers (bit-serial reference)."""
    out = 0
    while b:
        if b & 1:
            out ^= a
        a <<= 1
        b >>= 1
    return out


def to_int(words: np.ndarray) -> int:
    return int.from_bytes(np.asarray(words, dtype="<u8").tobytes(), "little")


def from_int(value: int, n_words: int) -> np.ndarray:
    return np.frombuffer(value.to_bytes(8 * n_words, "little"), dtype="<u8").astype(np.uint64)


def random_poly(rng: np.random.Generator, n_bits: int, n_words: int) -> np.ndarray:
    """Random polynomial of degree < n_bits stored in n_words words (zero above n_bits)."""
    words = np.zeros(n_words, dtype=np.uint64)
    words[: words_for(n_bits)] = mask_tail(
        rng.integers(0, 2**64, words_for(n_bits), dtype=np.uint64), n_bits
    )
    return words


def test_cpu_detection_matches_proc_cpuinfo():
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        pytest.skip("no /proc/cpuinfo")
    assert has_pclmul() == (" pclmulqdq" in flags)


@needs_pclmul
@settings(max_examples=200, deadline=None)
@given(U64, U64)
def test_single_word_clmul_matches_bit_serial_product(a, b):
    product = mul_school(np.array([a], dtype=np.uint64), np.array([b], dtype=np.uint64))
    assert to_int(product) == clmul_int(a, b)


@njit(cache=True)
def _row_kernels(u, uo, b, count):  # pragma: no cover - numba
    """Rows uo .. uo + 7 by each base-case kernel, and row by row with clmul_dot (reference)."""
    out = np.zeros((5, 16), dtype=np.uint64)
    clmul_rows8(u, uo, b, 0, count, out[0], 0)
    clmul_rows8_by_pairs(u, uo, b, 0, count, out[1], 0)
    for pair in range(4):
        clmul_rows2(u, uo + 2 * pair, b, 0, count, out[2], 4 * pair)
    for r in range(8):
        out[3, 2 * r], out[3, 2 * r + 1] = clmul_dot(u, uo + r, b, 0, count, True)
        out[4, 2 * r], out[4, 2 * r + 1] = clmul_dot(u, uo + r, b, 0, count, False)
    return out


@needs_pclmul
@settings(max_examples=40, deadline=None)
@given(
    count=st.integers(min_value=0, max_value=70), uo=st.integers(0, 9), seed=st.integers(0, 2**32)
)
def test_base_case_kernels_agree_including_the_no_vpclmul_path(count, uo, seed):
    rng = np.random.default_rng(seed)
    u = rng.integers(0, 2**64, 100, dtype=np.uint64)
    b = rng.integers(0, 2**64, 80, dtype=np.uint64)
    out = _row_kernels(u, uo, b, count)
    expected = np.zeros(16, dtype=np.uint64)
    for r in range(8):
        acc = 0
        for j in range(count):
            acc ^= clmul_int(int(u[uo + r + j]), int(b[j]))
        expected[2 * r], expected[2 * r + 1] = acc & (2**64 - 1), acc >> 64
    for k, name in enumerate(["rows8", "rows8 by pairs", "rows2", "dot 512", "dot 128"]):
        assert np.array_equal(out[k], expected), name


@needs_pclmul
@settings(max_examples=25, deadline=None)
@given(
    a_bits=st.integers(min_value=1, max_value=40_000),
    b_bits=st.integers(min_value=1, max_value=40_000),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_karatsuba_product_matches_schoolbook_on_awkward_lengths(a_bits, b_bits, seed):
    rng = np.random.default_rng(seed)
    size = padded_size(max(words_for(a_bits), words_for(b_bits)))
    a = random_poly(rng, a_bits, size)
    b = random_poly(rng, b_bits, size)
    product = mul_karatsuba(a, b)
    assert np.array_equal(product, mul_school(a, b)), (a_bits, b_bits)
    if a_bits + b_bits < 12_000:  # the bit-serial reference is slow on long inputs
        assert to_int(product) == clmul_int(to_int(a), to_int(b))


@needs_pclmul
def test_karatsuba_recursion_is_exercised_on_non_power_of_two_sizes():
    rng = np.random.default_rng(7)
    for size in (BASE_WORDS + 2, 3 * BASE_WORDS - 2, padded_size(1000), 2 * BASE_WORDS + 1):
        a = rng.integers(0, 2**64, size, dtype=np.uint64)
        b = rng.integers(0, 2**64, size, dtype=np.uint64)
        assert to_int(mul_karatsuba(a, b)) == clmul_int(to_int(a), to_int(b)), size


@needs_pclmul
@settings(max_examples=30, deadline=None)
@given(
    n_rows=st.integers(min_value=1, max_value=1200),
    seed=st.integers(min_value=0, max_value=2**32),
    wide=st.booleans(),
)
def test_transposed_karatsuba_matches_schoolbook_middle_product(n_rows, seed, wide):
    rng = np.random.default_rng(seed)
    size = padded_size(n_rows) if n_rows % 3 else n_rows  # padded and raw (odd) sizes
    u = rng.integers(0, 2**64, 2 * size - 1, dtype=np.uint64)
    b = rng.integers(0, 2**64, size, dtype=np.uint64)
    assert np.array_equal(sdp_karatsuba(u, b, wide), sdp_school(u, b, False)), size


@needs_pclmul
def test_sliding_dot_products_agree_with_integer_product():
    # Row r is word-level coefficient c_k = sum_j u[r + j] b[j]: check one row against integers.
    rng = np.random.default_rng(3)
    size = 2 * BASE_WORDS
    u = rng.integers(0, 2**64, 2 * size - 1, dtype=np.uint64)
    b = rng.integers(0, 2**64, size, dtype=np.uint64)
    out = sdp_karatsuba(u, b, True)
    for r in (0, 5, size - 1):
        expected = 0
        for j in range(size):
            expected ^= clmul_int(int(u[r + j]), int(b[j]))
        assert out[2 * r] == expected & (2**64 - 1) and out[2 * r + 1] == expected >> 64, r


@needs_pclmul
def test_parallel_batch_equals_one_task_at_a_time():
    rng = np.random.default_rng(11)
    size = padded_size(700)
    u_rows = rng.integers(0, 2**64, (5, 2 * size - 1), dtype=np.uint64)
    b_rows = rng.integers(0, 2**64, (5, size), dtype=np.uint64)
    batch = sdp_batch(u_rows, b_rows, True)
    for t in range(5):
        assert np.array_equal(batch[t], sdp_karatsuba(u_rows[t], b_rows[t], False)), t


@needs_pclmul
@pytest.mark.parametrize("threads", [1, 2, 3, 5])
def test_top_level_split_and_merge_preserve_the_result(threads):
    rng = np.random.default_rng(threads)
    size = 8 * BASE_WORDS  # splits up to three times before reaching the base size
    for blocks in (1, 2, 3):
        u_rows = rng.integers(0, 2**64, (blocks, 2 * size - 1), dtype=np.uint64)
        b_rows = rng.integers(0, 2**64, (blocks, size), dtype=np.uint64)
        got = sdp_parallel(u_rows, b_rows, True, threads=threads)
        for t in range(blocks):
            assert np.array_equal(got[t], sdp_karatsuba(u_rows[t], b_rows[t], True)), (threads, t)


@settings(max_examples=50, deadline=None)
@given(st.binary(min_size=0, max_size=300), st.integers(min_value=0, max_value=63))
def test_bit_packing_round_trip_and_shift(raw, shift):
    bits = np.unpackbits(np.frombuffer(raw, dtype=np.uint8), bitorder="little")[
        : max(0, len(raw) * 8 - 3)
    ]
    words = pack_bits(bits)
    assert words.size == words_for(bits.size)
    assert np.array_equal(unpack_bits(words, bits.size), bits)
    value = sum(1 << i for i in np.flatnonzero(bits).tolist())
    assert to_int(words) == value  # bit i is word i // 64, bit i % 64 (LSB first)
    assert to_int(shift_up(words, shift)) == value << shift
    assert to_int(mask_tail(words, max(1, bits.size // 2))) == value & (
        (1 << max(1, bits.size // 2)) - 1
    )


def test_ntt_fallback_matches_explicit_matrix_on_block_sizes():
    rng = np.random.default_rng(5)
    for n, m in ((1, 1), (64, 64), (65, 1), (777, 333), (4096, 2048)):
        x = rng.integers(0, 2, n, dtype=np.uint8)
        s = rng.integers(0, 2, n + m - 1, dtype=np.uint8)
        i, j = np.arange(m)[:, None], np.arange(n)[None, :]
        expected = (s[i - j + n - 1].astype(np.int64) @ x % 2).astype(np.uint8)
        assert np.array_equal(toeplitz_ntt(x, s, m), expected), (n, m)
