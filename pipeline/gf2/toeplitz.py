"""Toeplitz matrix-vector product over GF(2) on packed words, by carry-less Karatsuba.

With ``T[i, j] = seed[i - j + n - 1]``, ``y_i = sum_j seed[i + n - 1 - j] x_j`` is bit ``n - 1 + i``
of the polynomial product ``S(t) X(t)``: privacy amplification is a slice of one GF(2)[t] product,
and only that slice is computed (a word-level middle product, see :mod:`.karatsuba`). The input is
shifted so the slice starts on a word boundary, cut in column blocks of ``N`` words (``N`` = the
output words, padded to ``b * 2^k``), and the first Karatsuba levels are expanded here so the
independent sub-products run in parallel over the cores.
"""

from __future__ import annotations

import numba
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .bits import mask_tail, shift_up, words_for
from .karatsuba import BASE_WORDS, padded_size, sdp_batch


def _split(u_rows: np.ndarray, b_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One transposed-Karatsuba level on every task: T tasks of size N -> 3T of size N/2."""
    h = b_rows.shape[1] // 2
    u0, u1, u2 = u_rows[:, : 2 * h - 1], u_rows[:, h : 3 * h - 1], u_rows[:, 2 * h : 4 * h - 1]
    b0, b1 = b_rows[:, :h], b_rows[:, h:]
    return np.concatenate([u1, u0 ^ u1, u1 ^ u2]), np.concatenate([b0 ^ b1, b0, b1])


def _merge(out_rows: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_split` on the results: top = P + P_top, bottom = P + P_bottom."""
    t = out_rows.shape[0] // 3
    p, top, bottom = out_rows[:t], out_rows[t : 2 * t], out_rows[2 * t :]
    return np.concatenate([p ^ top, p ^ bottom], axis=1)


def sdp_parallel(
    u_rows: np.ndarray, b_rows: np.ndarray, wide: bool = True, threads: int | None = None
) -> np.ndarray:
    """Row-wise sliding dot products (see karatsuba.sdp_batch), top levels split for the cores.

    Karatsuba levels are expanded here until the tasks share out evenly over ``threads``
    (default ``numba.get_num_threads()``), then merged back after the batch.
    """
    levels = 0
    threads = threads or numba.get_num_threads()
    n = b_rows.shape[1]

    def unbalanced(tasks: int) -> bool:
        return tasks < threads or (tasks % threads != 0 and tasks < 4 * threads)

    while unbalanced(u_rows.shape[0]) and n % 2 == 0 and n // 2 >= BASE_WORDS:
        u_rows, b_rows = _split(u_rows, b_rows)
        n //= 2
        levels += 1
    out = sdp_batch(u_rows, b_rows, wide)
    for _ in range(levels):
        out = _merge(out)
    return out


def toeplitz_words(
    x_words: np.ndarray, n: int, seed_words: np.ndarray, m: int, *, wide: bool = True
) -> np.ndarray:
    """Packed y = T x mod 2 (bit order of :mod:`.bits`); bits past n / n+m-1 are ignored."""
    seed_bits = n + m - 1
    shift = (-(n - 1)) % 64
    # x * t^shift moves the wanted slice to start at bit n - 1 + shift, a word boundary.
    xs = shift_up(mask_tail(x_words, n), shift)[: words_for(n + shift)]
    q = (n - 1 + shift) // 64
    s = mask_tail(seed_words, seed_bits)
    out_words = words_for(m)
    # Rows cover the word-level coefficients c_{q-1} .. c_{q+W-1} (word k = lo c_k ^ hi c_{k-1}).
    size = padded_size(out_words + 1)
    blocks = -(-xs.size // size)
    # Row r of block beta is c_k with k = q - 1 + (size - 1 - r); with s reversed,
    # s[k - j] = s_rev[s.size - 1 - k + j] turns each block into sliding dot products.
    start = s.size - q - size + 1
    stop = start + (blocks - 1) * size + 2 * size - 1
    lo = min(0, start)
    ext = np.zeros(max(s.size, stop) - lo, dtype=np.uint64)
    ext[-lo : -lo + s.size] = s[::-1]
    u_rows = sliding_window_view(ext, 2 * size - 1)[start - lo :: size][:blocks]
    b_rows = np.zeros((blocks, size), dtype=np.uint64)
    b_rows.reshape(-1)[: xs.size] = xs
    rows = np.bitwise_xor.reduce(sdp_parallel(u_rows, b_rows, wide), axis=0)
    w = np.arange(out_words)
    y = rows[2 * (size - 2 - w)] ^ rows[2 * (size - 1 - w) + 1]
    return mask_tail(y, m)
