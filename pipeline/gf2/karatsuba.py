"""GF(2)[x] multiplication on 64-bit words: PCLMULQDQ schoolbook base case, Karatsuba on top.

Polynomials are little-endian uint64 word arrays: coefficient ``i`` is bit ``i % 64`` of word
``i // 64``. Two products, both with the ``N^1.58`` word count of Karatsuba (as gf2x does below its
FFT range):

* :func:`mul_karatsuba`: the full product ``a * b`` (``2N`` words).
* :func:`sdp_karatsuba`: sliding dot products ``c_r = sum_j u[r + j] * b[j]`` for ``r < N`` (``u``
  of ``2N - 1`` words, each ``c_r`` a 128-bit value stored as words ``2r`` (low) and ``2r + 1``
  (high)). This is a word-level Toeplitz matrix-vector product -- the transposed Karatsuba
  "middle product" of Hanrot, Quercia and Zimmermann (2004) -- and costs one ``N x N`` product
  instead of ``2N x N``; privacy amplification is built on it.

Recursions split even sizes only; callers pad sizes to ``b * 2^k`` (:func:`padded_size`). They run
depth-first on an explicit stack (numba cannot cache recursive functions, numba#6061) inside one
arena array addressed by offsets, so no level slices or allocates (slices would cost
reference-count traffic at every one of the ~3^k leaves).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
from numba import njit, uintp

from .intrinsics import clmul, clmul_dot, clmul_rows2, clmul_rows8

#: Below this many words a product is done by schoolbook on (V)PCLMULQDQ.
BASE_WORDS = 128


def padded_size(n_words: int, base: int = BASE_WORDS) -> int:
    """``b * 2^k >= n_words`` with ``b <= base`` (a multiple of 8 once above 8, so the 8-row base
    case has no tail), so Karatsuba halves cleanly down to the base case."""
    k = 0
    while -(-n_words // (1 << k)) > base:
        k += 1
    b = -(-n_words // (1 << k))
    if b > 8:
        b = -(-b // 8) * 8
    return b << k


@njit(cache=True)
def _xor(mem, dst, a, b, n):  # pragma: no cover - numba
    """mem[dst:dst+n] = mem[a:a+n] ^ mem[b:b+n]; unsigned indices let LLVM vectorise the loop
    (signed ones carry numba's negative-index wraparound, which keeps it scalar, ~5x slower)."""
    for i in range(n):
        mem[uintp(dst + i)] = mem[uintp(a + i)] ^ mem[uintp(b + i)]


@njit(cache=True)
def _push(stack, top, first, second, out, n, work):  # pragma: no cover - numba
    """Frame of the explicit recursion stack: operand, operand, output, size, scratch, stage 0."""
    stack[top, 0] = first
    stack[top, 1] = second
    stack[top, 2] = out
    stack[top, 3] = n
    stack[top, 4] = work
    stack[top, 5] = 0


@njit(cache=True)
def mul_school(a, b):  # pragma: no cover - numba
    """Full product by schoolbook, one PCLMULQDQ per word pair (the reference for tests)."""
    out = np.zeros(a.size + b.size, dtype=np.uint64)
    for i in range(a.size):
        for j in range(b.size):
            lo, hi = clmul(a[i], b[j])
            out[i + j] ^= lo
            out[i + j + 1] ^= hi
    return out


@njit(cache=True)
def _mul_iter(mem, ao, bo, oo, n, wo):  # pragma: no cover - numba
    """mem[oo:oo+2n] = a * b (a, b at ao, bo, n words each) by Karatsuba with an explicit stack.

    a b = a0 b0 + [(a0 + a1)(b0 + b1) + a0 b0 + a1 b1] z^h + a1 b1 z^2h; ``mem[wo:]`` holds >= 4n
    words of scratch. Iterative because numba cannot cache recursive functions (numba#6061).
    """
    stack = np.zeros((64, 6), dtype=np.int64)
    _push(stack, 0, ao, bo, oo, n, wo)
    top = 0
    while top >= 0:
        a0, b0, o0, size, w0, stage = stack[top]
        if size <= BASE_WORDS or size % 2 == 1:
            for k in range(2 * size):
                mem[o0 + k] = 0
            for i in range(size):
                for j in range(size):
                    lo, hi = clmul(mem[a0 + i], mem[b0 + j])
                    mem[o0 + i + j] ^= lo
                    mem[o0 + i + j + 1] ^= hi
            top -= 1
            continue
        h = size // 2
        asum, bsum, mid, rest = w0, w0 + h, w0 + 2 * h, w0 + 4 * h
        stack[top, 5] = stage + 1
        if stage == 0:
            child = (a0, b0, o0)
        elif stage == 1:
            child = (a0 + h, b0 + h, o0 + 2 * h)
        elif stage == 2:
            _xor(mem, asum, a0, a0 + h, h)
            _xor(mem, bsum, b0, b0 + h, h)
            child = (asum, bsum, mid)
        else:
            _xor(mem, mid, mid, o0, 2 * h)
            _xor(mem, mid, mid, o0 + 2 * h, 2 * h)
            _xor(mem, o0 + h, o0 + h, mid, 2 * h)
            top -= 1
            continue
        top += 1
        _push(stack, top, child[0], child[1], child[2], h, rest)


@njit(cache=True)
def mul_karatsuba(a, b):  # pragma: no cover - numba
    """Full product of two equal-length word arrays by Karatsuba (2N words out)."""
    n = a.size
    mem = np.empty(n + n + 2 * n + 4 * n + 64, dtype=np.uint64)
    mem[:n] = a
    mem[n : 2 * n] = b
    _mul_iter(mem, 0, n, 2 * n, n, 4 * n)
    return mem[2 * n : 4 * n].copy()


@njit(cache=True)
def sdp_school(u, b, wide):  # pragma: no cover - numba
    """Sliding dot products by schoolbook (the reference for tests): 2N words, lo/hi per row."""
    n = b.size
    out = np.empty(2 * n, dtype=np.uint64)
    for r in range(n):
        lo, hi = clmul_dot(u, r, b, 0, n, wide)
        out[2 * r] = lo
        out[2 * r + 1] = hi
    return out


@njit(cache=True)
def _sdp_base(u, uo, b, bo, out, oo, n, wide):  # pragma: no cover - numba
    """Schoolbook base case: 8 rows per 512-bit pass (``wide``), then pairs, then one row."""
    r = 0
    if wide:
        while r + 8 <= n:
            clmul_rows8(u, uo + r, b, bo, n, out, oo + 2 * r)
            r += 8
    while r + 2 <= n:
        clmul_rows2(u, uo + r, b, bo, n, out, oo + 2 * r)
        r += 2
    if r < n:
        lo, hi = clmul_dot(u, uo + r, b, bo, n, wide)
        out[oo + 2 * r] = lo
        out[oo + 2 * r + 1] = hi


@njit(cache=True)
def _sdp_iter(mem, uo, bo, oo, n, wo, wide):  # pragma: no cover - numba
    """Transposed Karatsuba: mem[oo + 2r : oo + 2r + 2] = sum_j mem[uo + r + j] mem[bo + j].

    With U0 = u[0:2h-1], U1 = u[h:3h-1], U2 = u[2h:4h-1] and b = (b0, b1):
    top = U0.b0 + U1.b1 = P + (U0 + U1).b0 and bottom = U1.b0 + U2.b1 = P + (U1 + U2).b1 with
    P = U1.(b0 + b1): three half-size problems. Depth-first with an explicit stack (numba cannot
    cache recursive functions, numba#6061); everything lives in one array ``mem`` addressed by
    offsets, ``mem[wo:]`` holding >= 5n words of scratch.
    """
    stack = np.zeros((64, 6), dtype=np.int64)
    _push(stack, 0, uo, bo, oo, n, wo)
    top = 0
    while top >= 0:
        u0, b0, o0, size, w0, stage = stack[top]
        if size <= BASE_WORDS or size % 2 == 1:
            _sdp_base(mem, u0, mem, b0, mem, o0, size, wide)
            top -= 1
            continue
        h = size // 2
        usum, bsum, p, rest = w0, w0 + 2 * h - 1, w0 + 3 * h - 1, w0 + 5 * h - 1
        stack[top, 5] = stage + 1
        if stage == 0:
            _xor(mem, usum, u0, u0 + h, 2 * h - 1)
            child = (usum, b0, o0)
        elif stage == 1:
            _xor(mem, usum, u0 + h, u0 + 2 * h, 2 * h - 1)
            child = (usum, b0 + h, o0 + 2 * h)
        elif stage == 2:
            _xor(mem, bsum, b0, b0 + h, h)
            child = (u0 + h, bsum, p)
        else:
            _xor(mem, o0, o0, p, 2 * h)
            _xor(mem, o0 + 2 * h, o0 + 2 * h, p, 2 * h)
            top -= 1
            continue
        top += 1
        _push(stack, top, child[0], child[1], child[2], h, rest)


@njit(cache=True, nogil=True)
def _sdp_task(u, b, wide):  # pragma: no cover - numba
    """One sliding-dot-product problem in a private arena: [u | b | out | scratch]."""
    n = b.size
    mem = np.empty(2 * n - 1 + n + 2 * n + 5 * n + 64, dtype=np.uint64)
    mem[: 2 * n - 1] = u
    mem[2 * n - 1 : 3 * n - 1] = b
    _sdp_iter(mem, 0, 2 * n - 1, 3 * n - 1, n, 5 * n - 1, wide)
    return mem[3 * n - 1 : 5 * n - 1]


@njit(cache=True)
def sdp_karatsuba(u, b, wide):  # pragma: no cover - numba
    """Sliding dot products of a (2N-1)-word ``u`` and N-word ``b`` by Karatsuba (2N words)."""
    return _sdp_task(u, b, wide).copy()


@njit(cache=True, nogil=True)
def _sdp_range(u_rows, b_rows, out_rows, start, stop, wide):  # pragma: no cover - numba
    """Tasks start .. stop - 1 of a batch, one after the other (one thread's share)."""
    for t in range(start, stop):
        out_rows[t] = _sdp_task(u_rows[t], b_rows[t], wide)


def sdp_batch(u_rows: np.ndarray, b_rows: np.ndarray, wide: bool) -> np.ndarray:
    """Independent sliding-dot-product problems, one per row, spread over the cores.

    The rows are cut into one contiguous share per worker of a thread pool sized by
    ``numba.get_num_threads()``; the kernel releases the GIL (``nogil``) and each task works in a
    private arena, so threads share no array. Threads rather than a ``prange`` kernel: the same
    speed-up, half the cold compile time, and no idle-spinning OpenMP workers on a loaded machine.
    """
    u_rows = np.ascontiguousarray(u_rows, dtype=np.uint64)
    b_rows = np.ascontiguousarray(b_rows, dtype=np.uint64)
    t_count, n = b_rows.shape
    out_rows = np.empty((t_count, 2 * n), dtype=np.uint64)
    workers = max(1, min(t_count, numba.get_num_threads()))
    bounds = [t_count * k // workers for k in range(workers + 1)]
    if workers == 1:
        _sdp_range(u_rows, b_rows, out_rows, 0, t_count, wide)
        return out_rows
    shares = [
        _pool(workers).submit(_sdp_range, u_rows, b_rows, out_rows, lo, hi, wide)
        for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)
    ]
    for share in shares:
        share.result()
    return out_rows


_POOLS: dict[tuple[int, int], ThreadPoolExecutor] = {}


def _pool(workers: int) -> ThreadPoolExecutor:
    """A per-process pool (keyed by pid: a forked child must not reuse its parent's dead threads)."""
    key = (os.getpid(), workers)
    if key not in _POOLS:
        _POOLS[key] = ThreadPoolExecutor(workers, thread_name_prefix="gf2")
    return _POOLS[key]
