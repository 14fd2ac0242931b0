"""Exact Toeplitz hashing by a number-theoretic transform, for CPUs without PCLMULQDQ.

Over Z_p with p = 3 * 2^30 + 1 (primitive root 5) the cyclic convolution of the 0/1 seed and input
is exact as long as every coefficient (at most n) stays below p, i.e. n < 3.2e9; its parity is the
GF(2) product. A cyclic length L >= n + m - 1 suffices: wrapped terms land only below index n - 1,
outside the slice [n - 1, n - 1 + m) that the hash keeps. Transforms up to 2^30 points; p^2 < 2^64
so products fit uint64.
"""

from __future__ import annotations

import numpy as np
from numba import njit

P = np.uint64(3 * 2**30 + 1)
GENERATOR = 5
MAX_LOG2 = 30


@njit(cache=True)
def _bit_reverse(a):  # pragma: no cover - numba
    n = a.size
    j = 0
    for i in range(1, n):
        bit = n >> 1
        while j & bit:
            j ^= bit
            bit >>= 1
        j ^= bit
        if i < j:
            a[i], a[j] = a[j], a[i]


@njit(cache=True)
def _ntt(a, twiddles):  # pragma: no cover - numba
    """In-place iterative radix-2 NTT; twiddles[h + j] = w_{2h}^j for each stage half-length h."""
    n = a.size
    _bit_reverse(a)
    half = 1
    while half < n:
        for i in range(0, n, 2 * half):
            for j in range(half):
                u = a[i + j]
                v = a[i + j + half] * twiddles[half + j] % P
                s = u + v
                a[i + j] = s - P if s >= P else s
                a[i + j + half] = u - v if u >= v else u + P - v
        half *= 2


@njit(cache=True)
def _twiddles(n, w):  # pragma: no cover - numba
    """Stage tables laid out contiguously (twiddles[h:2h] serve the stage of half-length h)."""
    out = np.zeros(max(n, 2), dtype=np.uint64)
    half = n // 2
    w_stage = w  # order 2 * half = n
    while half >= 1:
        acc = np.uint64(1)
        for j in range(half):
            out[half + j] = acc
            acc = acc * w_stage % P
        w_stage = w_stage * w_stage % P
        half //= 2
    return out


@njit(cache=True)
def _cyclic_parity(x, s, w, w_inv, n_inv):  # pragma: no cover - numba
    """Parity of the cyclic convolution of two equal-length (power of two) 0/1 uint64 vectors."""
    n = x.size
    twiddles = _twiddles(n, w)
    _ntt(x, twiddles)
    _ntt(s, twiddles)
    for i in range(n):
        x[i] = x[i] * s[i] % P
    _ntt(x, _twiddles(n, w_inv))
    out = np.empty(n, dtype=np.uint8)
    for i in range(n):
        out[i] = np.uint8((x[i] * n_inv % P) & np.uint64(1))
    return out


def toeplitz_ntt(bits: np.ndarray, seed: np.ndarray, m: int) -> np.ndarray:
    """y = T x mod 2 with T[i, j] = seed[i - j + n - 1]; uint8 0/1 in and out (inputs validated)."""
    n = bits.size
    log2 = max(1, (n + m - 2).bit_length())
    if log2 > MAX_LOG2:
        raise ValueError(f"NTT fallback handles n + m - 1 <= 2^{MAX_LOG2} bits")
    size = 1 << log2
    p = int(P)
    w = pow(GENERATOR, (p - 1) >> log2, p)
    x = np.zeros(size, dtype=np.uint64)
    x[:n] = bits
    s = np.zeros(size, dtype=np.uint64)
    s[: seed.size] = seed
    parity = _cyclic_parity(
        x, s, np.uint64(w), np.uint64(pow(w, p - 2, p)), np.uint64(pow(size, p - 2, p))
    )
    return parity[n - 1 : n - 1 + m].copy()
