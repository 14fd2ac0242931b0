"""numba kernels of the layered QC decoder (see :mod:`.decoder` for the algorithm and API).

Buffers are flat 1-D float32 arrays addressed by ``block * Z + lane``. A circulant with shift
``s`` pairs check lane ``k`` with variable lane ``(k + s) % Z``: its ``Z`` posteriors are copied
into check order (two contiguous copies), so that every arithmetic loop runs over all ``Z`` lanes
from one offset: SIMD with no gathers, no wrap-around or division checks (``error_model="numpy"``)
and no scalar remainder (``Z`` is a multiple of 64). Signs are carried as int32 sign bits (xor),
not as selects on float comparisons.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .fastmath import atanh2_ratio, bits_f32, f32_bits, tanh_half, wide_vectors_fast_division

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
    wide_vectors_fast_division()
    m_b = row_ptr.size - 1
    d_max = 0
    for r in range(m_b):
        d_max = max(d_max, row_ptr[r + 1] - row_ptr[r])
    # lane buffers in check order: the circulant's posteriors rotated into place (then
    # t = posterior - old message, then the new posterior), and SPA's tanh(|t| / 2)
    ext = np.empty(d_max * z, dtype=np.float32)
    aux = np.empty(d_max * z, dtype=np.float32)
    acc1 = np.empty(z, dtype=np.float32)  # SPA: product of tanh; OMS: smallest |t|
    acc2 = np.empty(z, dtype=np.float32)  # OMS: second smallest |t|
    arg = np.empty(z, dtype=np.int32)  # OMS: edge of the smallest
    sgn = np.empty(z, dtype=np.int32)  # sign bit: xor of the edges' sign bits and the syndrome
    par = np.empty(z, dtype=np.int32)  # sign bit: syndrome parity of the hard decisions
    one = np.float32(1.0)
    best_unsat = row_ptr.size * z
    best_it = 0
    zu = np.uint64(z)
    for it in range(1, max_iter + 1):
        unsat = 0
        for r in range(m_b):
            e0 = row_ptr[r]
            d = row_ptr[r + 1] - e0
            for k in range(z):
                acc1[k] = one if spa else BIG
                acc2[k] = BIG
                arg[k] = 0
                sgn[k] = np.int32(syn[r * z + k]) << np.int32(31)
                par[k] = sgn[k]
            # Circulant shift s: check lane k meets variable lane (k + s) % z. Gather the
            # z posteriors into check order with two contiguous copies, then every lane loop
            # runs over all z lanes from one offset (no scalar remainders for z % 64 == 0).
            for t in range(d):
                po = np.uint64(edge_col[e0 + t] * z)
                mo = np.uint64((e0 + t) * z)
                to = np.uint64(t * z)
                s = np.uint64(edge_shift[e0 + t])
                _copy(post, po + s, ext, to, zu - s)
                _copy(post, po, ext, to + zu - s, s)
                if spa:
                    _spa_in(ext, msg, mo, aux, to, acc1, sgn, par, zu)
                else:
                    _oms_in(ext, msg, mo, to, acc1, acc2, arg, t, sgn, par, zu)
            for k in range(z):
                unsat += par[k] < 0
            if not spa:
                for k in range(z):
                    acc1[k] = max(alpha * acc1[k] - beta, np.float32(0.0))
                    acc2[k] = max(alpha * acc2[k] - beta, np.float32(0.0))
            for t in range(d):
                po = np.uint64(edge_col[e0 + t] * z)
                mo = np.uint64((e0 + t) * z)
                to = np.uint64(t * z)
                s = np.uint64(edge_shift[e0 + t])
                if spa:
                    _spa_out(ext, aux, to, acc1, sgn, msg, mo, zu)
                else:
                    _oms_out(ext, to, acc1, acc2, arg, t, sgn, msg, mo, zu)
                _copy(ext, to, post, po + s, zu - s)
                _copy(ext, to + zu - s, post, po, s)
        # The per-layer parity count lags: a layer's checks are counted before its update, so a
        # frame that converged during this iteration only counts 0 in the next. The exact
        # check at the end of the iteration saves that iteration (~1 of 12 at f 1.3); it stops
        # at the first unsatisfied row, so it is cheap on frames far from converging.
        if unsat * 64 <= m_b * z and _satisfied(post, syn, row_ptr, edge_col, edge_shift, z):
            _hard(post, out)
            return it, True
        if unsat < best_unsat:
            best_unsat, best_it = unsat, it
        elif stall > 0 and it - best_it >= stall:
            break
    _hard(post, out)
    return it, _satisfied(post, syn, row_ptr, edge_col, edge_shift, z)


@njit(inline="always", **_FAST)
def _with_sign(mag, sign_bits):
    """``mag`` (>= 0) with the sign bit of the int32 ``sign_bits``: two bit operations."""
    return bits_f32(f32_bits(mag) | (sign_bits & np.int32(-(2**31))))


@njit(inline="always", **_FAST)
def _copy(src, sp, dst, dp, n):
    for k in range(n):
        dst[dp + k] = src[sp + k]


@njit(inline="always", **_FAST)
def _spa_in(ext, msg, mp, aux, tp, prod, sgn, par, n):
    """Sum-product pass 1 over the z lanes: t, tanh(|t|/2), running product, signs, parity."""
    for k in range(n):
        p = ext[tp + k]
        par[k] ^= f32_bits(p)
        v = p - msg[mp + k]
        ext[tp + k] = v
        y = tanh_half(min(max(abs(v), np.float32(1e-5)), np.float32(40.0)))
        aux[tp + k] = y
        # never denormal (slow); the true value is ~0 whenever the floor matters
        prod[k] = max(prod[k] * y, np.float32(1e-30))
        sgn[k] ^= f32_bits(v)


@njit(inline="always", **_FAST)
def _spa_out(ext, aux, tp, prod, sgn, msg, mp, n):
    """Sum-product pass 2: |new| = 2 atanh(product of the other edges); posterior = t + new."""
    for k in range(n):
        mag = max(atanh2_ratio(prod[k], aux[tp + k]), np.float32(0.0))
        v = ext[tp + k]
        new = _with_sign(mag, sgn[k] ^ f32_bits(v))
        msg[mp + k] = new
        ext[tp + k] = v + new


@njit(inline="always", **_FAST)
def _oms_in(ext, msg, mp, tp, min1, min2, arg, t, sgn, par, n):
    """Min-sum pass 1 over the z lanes: t, two smallest magnitudes, argmin, signs, parity."""
    for k in range(n):
        p = ext[tp + k]
        par[k] ^= f32_bits(p)
        v = p - msg[mp + k]
        ext[tp + k] = v
        a = abs(v)
        m1 = min1[k]
        min2[k] = min(min2[k], max(a, m1))
        arg[k] = t if a < m1 else arg[k]
        min1[k] = min(m1, a)
        sgn[k] ^= f32_bits(v)


@njit(inline="always", **_FAST)
def _oms_out(ext, tp, min1, min2, arg, t, sgn, msg, mp, n):
    """Min-sum pass 2: the other edges' scaled/offset minimum; posterior = t + new."""
    for k in range(n):
        mag = min2[k] if arg[k] == t else min1[k]
        v = ext[tp + k]
        new = _with_sign(mag, sgn[k] ^ f32_bits(v))
        msg[mp + k] = new
        ext[tp + k] = v + new


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
