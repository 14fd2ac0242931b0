"""numba kernels of the layered QC decoder (see :mod:`.decoder` for the algorithm and API).

Buffers are flat 1-D float32 arrays addressed by ``block * Z + lane``. A circulant with shift
``s`` pairs check lane ``k`` with variable lane ``(k + s) % Z``: two contiguous segments, each
processed by an inlined loop over bare counters so that LLVM emits SIMD with no gathers and no
wrap-around or division checks (``error_model="numpy"``).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .fastmath import atanh2_ratio, tanh_half

_FAST = {"cache": True, "fastmath": True, "error_model": "numpy"}
BIG = np.float32(3.0e38)


@njit(parallel=True, **_FAST)
def decode_batch_kernel(post, msg, syn, sel, row_ptr, edge_col, edge_shift, z, max_iter, stall,
                        spa, alpha, beta):  # fmt: skip
    """Decode frames ``sel`` of the batch in parallel, continuing from ``post``/``msg`` in place.

    ``post`` (frames, n) holds posterior LLRs (the channel LLRs for a fresh start) and ``msg``
    (frames, edges) the check-to-variable messages (zeros for a fresh start), so a frame can be
    resumed after a blind round changed some channel LLRs. A frame whose count of unsatisfied
    checks has not reached a new minimum for ``stall`` iterations stops early (0: never): such
    frames are stuck, and a blind round helps them more than further iterations. Returns (bits,
    ok, iterations) for the selected frames.
    """
    n = post.shape[1]
    bits = np.zeros((sel.size, n), dtype=np.uint8)
    ok = np.zeros(sel.size, dtype=np.bool_)
    iters = np.zeros(sel.size, dtype=np.int32)
    for i in prange(sel.size):
        f = sel[i]
        it, good = _decode_frame(post[f], msg[f], syn[f], bits[i], row_ptr, edge_col, edge_shift,
                                 z, max_iter, stall, spa, alpha, beta)  # fmt: skip
        ok[i] = good
        iters[i] = it
    return bits, ok, iters


@njit(**_FAST)
def _decode_frame(post, msg, syn, out, row_ptr, edge_col, edge_shift, z, max_iter, stall, spa,
                  alpha, beta):  # fmt: skip
    m_b = row_ptr.size - 1
    d_max = 0
    for r in range(m_b):
        d_max = max(d_max, row_ptr[r + 1] - row_ptr[r])
    ext = np.empty(d_max * z, dtype=np.float32)  # t = posterior - old message, check order
    aux = np.empty(d_max * z, dtype=np.float32)  # SPA: tanh(|t| / 2)
    acc1 = np.empty(z, dtype=np.float32)  # SPA: product of tanh; OMS: smallest |t|
    acc2 = np.empty(z, dtype=np.float32)  # OMS: second smallest |t|
    arg = np.empty(z, dtype=np.int32)  # OMS: edge of the smallest
    sgn = np.empty(z, dtype=np.float32)  # product of signs times (-1)^syndrome
    par = np.empty(z, dtype=np.int32)  # syndrome parity of the hard decisions (cheap test)
    one = np.float32(1.0)
    best_unsat = row_ptr.size * z
    best_it = 0
    zu = np.uint64(z)
    u0 = np.uint64(0)
    for it in range(1, max_iter + 1):
        unsat = 0
        for r in range(m_b):
            e0 = row_ptr[r]
            d = row_ptr[r + 1] - e0
            for k in range(z):
                acc1[k] = one if spa else BIG
                acc2[k] = BIG
                arg[k] = 0
                sgn[k] = one - np.float32(2.0) * syn[r * z + k]
                par[k] = syn[r * z + k]
            # Circulant shift s: lanes [0, c) meet post[po + s :], lanes [c, z) meet post[po :]
            # (c = z - s). Helpers take base arrays and unsigned offsets: no array views (whose
            # shared refcounts would bounce between cores), no wrap-around checks, plain SIMD.
            for t in range(d):
                po = np.uint64(edge_col[e0 + t] * z)
                mo = np.uint64((e0 + t) * z)
                to = np.uint64(t * z)
                c = np.uint64(z - edge_shift[e0 + t])
                rest = zu - c
                if spa:
                    _spa_in(post, po + rest, msg, mo, ext, aux, to, acc1, sgn, par, u0, c)
                    _spa_in(post, po, msg, mo + c, ext, aux, to + c, acc1, sgn, par, c, rest)
                else:
                    _oms_in(post, po + rest, msg, mo, ext, to, acc1, acc2, arg, t, sgn, par, u0, c)
                    _oms_in(post, po, msg, mo + c, ext, to + c, acc1, acc2, arg, t, sgn, par, c,
                            rest)  # fmt: skip
            for k in range(z):
                unsat += par[k]
            if not spa:
                for k in range(z):
                    acc1[k] = max(alpha * acc1[k] - beta, np.float32(0.0))
                    acc2[k] = max(alpha * acc2[k] - beta, np.float32(0.0))
            for t in range(d):
                po = np.uint64(edge_col[e0 + t] * z)
                mo = np.uint64((e0 + t) * z)
                to = np.uint64(t * z)
                c = np.uint64(z - edge_shift[e0 + t])
                rest = zu - c
                if spa:
                    _spa_out(ext, aux, to, acc1, sgn, msg, mo, post, po + rest, u0, c)
                    _spa_out(ext, aux, to + c, acc1, sgn, msg, mo + c, post, po, c, rest)
                else:
                    _oms_out(ext, to, acc1, acc2, arg, t, sgn, msg, mo, post, po + rest, u0, c)
                    _oms_out(ext, to + c, acc1, acc2, arg, t, sgn, msg, mo + c, post, po, c, rest)
        if unsat == 0 and _satisfied(post, syn, row_ptr, edge_col, edge_shift, z):
            _hard(post, out)
            return it, True
        if unsat < best_unsat:
            best_unsat, best_it = unsat, it
        elif stall > 0 and it - best_it >= stall:
            break
    _hard(post, out)
    return it, _satisfied(post, syn, row_ptr, edge_col, edge_shift, z)


@njit(inline="always", **_FAST)
def _spa_in(post, pp, msg, mp, ext, aux, tp, prod, sgn, par, lane, n):
    """Sum-product pass 1 on one segment: t, tanh(|t|/2), running product, signs, parity."""
    for k in range(n):
        p = post[pp + k]
        par[lane + k] ^= p < 0
        v = p - msg[mp + k]
        ext[tp + k] = v
        y = tanh_half(min(max(abs(v), np.float32(1e-5)), np.float32(40.0)))
        aux[tp + k] = y
        # never denormal (slow); the true value is ~0 whenever the floor matters
        prod[lane + k] = max(prod[lane + k] * y, np.float32(1e-30))
        sgn[lane + k] = -sgn[lane + k] if v < 0 else sgn[lane + k]


@njit(inline="always", **_FAST)
def _spa_out(ext, aux, tp, prod, sgn, msg, mp, post, pp, lane, n):
    """Sum-product pass 2: |new| = 2 atanh(product of the other edges); posterior = t + new."""
    for k in range(n):
        mag = atanh2_ratio(prod[lane + k], aux[tp + k])
        v = ext[tp + k]
        new = -mag if (v < 0) != (sgn[lane + k] < 0) else mag
        msg[mp + k] = new
        post[pp + k] = v + new


@njit(inline="always", **_FAST)
def _oms_in(post, pp, msg, mp, ext, tp, min1, min2, arg, t, sgn, par, lane, n):
    """Min-sum pass 1 on one segment: t, two smallest magnitudes, argmin, signs, parity."""
    for k in range(n):
        p = post[pp + k]
        par[lane + k] ^= p < 0
        v = p - msg[mp + k]
        ext[tp + k] = v
        a = abs(v)
        m1 = min1[lane + k]
        min2[lane + k] = min(min2[lane + k], max(a, m1))
        arg[lane + k] = t if a < m1 else arg[lane + k]
        min1[lane + k] = min(m1, a)
        sgn[lane + k] = -sgn[lane + k] if v < 0 else sgn[lane + k]


@njit(inline="always", **_FAST)
def _oms_out(ext, tp, min1, min2, arg, t, sgn, msg, mp, post, pp, lane, n):
    """Min-sum pass 2: the other edges' scaled/offset minimum; posterior = t + new."""
    for k in range(n):
        mag = min2[lane + k] if arg[lane + k] == t else min1[lane + k]
        v = ext[tp + k]
        new = -mag if (v < 0) != (sgn[lane + k] < 0) else mag
        msg[mp + k] = new
        post[pp + k] = v + new


@njit(cache=True)
def _hard(post, out):
    for i in range(post.size):
        out[i] = post[i] < 0


@njit(cache=True)
def _satisfied(post, syn, row_ptr, edge_col, edge_shift, z):
    """Exact syndrome check of the hard decisions."""
    acc = np.empty(z, dtype=np.uint8)
    for r in range(row_ptr.size - 1):
        for k in range(z):
            acc[k] = syn[r * z + k]
        for e in range(row_ptr[r], row_ptr[r + 1]):
            po = edge_col[e] * z
            c = z - edge_shift[e]
            _xor_signs(post[po + z - c : po + z], acc[:c])
            _xor_signs(post[po : po + z - c], acc[c:])
        for k in range(z):
            if acc[k]:
                return False
    return True


@njit(cache=True, inline="always")
def _xor_signs(src, acc):
    for k in range(src.size):
        acc[k] ^= src[k] < 0
