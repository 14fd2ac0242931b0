"""Density evolution on the BSC by population dynamics (Monte Carlo DE), for BP thresholds.

The all-zero word is sent (BP on a BSC is symmetric, so this is no loss). A population of
``pop`` variable-to-check LLRs starts at the channel values ``+-ln((1-p)/p)``; each iteration
draws every check-to-variable message from ``d - 1`` random members (``d`` drawn from the
edge-perspective rho) by the tanh rule, and every variable-to-check message as the channel value
plus ``i - 1`` random check messages (``i`` drawn from lambda). Messages are clipped at
``+-clip`` as a float decoder saturates. A channel ``p`` is decoded when the fraction of
negative messages falls below ``1 / pop``; it fails when that fraction stops improving.

``threshold(lam, rho)`` bisects ``p``. ``python -m pipeline.ldpc.design.density NAME...`` prints
the thresholds of stored distributions (:mod:`pipeline.ldpc.distributions`).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit


def _table(dist: dict[int, float]) -> tuple[np.ndarray, np.ndarray]:
    degs = np.array(sorted(dist), dtype=np.int64)
    w = np.array([dist[d] for d in degs], dtype=np.float64)
    return degs, np.cumsum(w / w.sum())


@njit(cache=True)
def _draw(degs, cum, u):
    for j in range(degs.size):
        if u <= cum[j]:
            return degs[j]
    return degs[-1]


@njit(cache=True)
def _evolve(p, vdeg, vcum, cdeg, ccum, pop, max_iter, clip, seed):
    np.random.seed(seed)
    lc = math.log((1.0 - p) / p)
    v = np.empty(pop)
    for k in range(pop):
        v[k] = -lc if np.random.random() < p else lc
    t = np.empty(pop)
    c = np.empty(pop)
    best = 1.0
    best_it = 0
    for it in range(1, max_iter + 1):
        for k in range(pop):
            t[k] = math.tanh(0.5 * v[k])
        for k in range(pop):
            d = _draw(cdeg, ccum, np.random.random())
            prod = 1.0
            for _ in range(d - 1):
                prod *= t[np.random.randint(pop)]
            prod = min(max(prod, -1.0 + 1e-15), 1.0 - 1e-15)
            c[k] = min(max(2.0 * math.atanh(prod), -clip), clip)
        errors = 0
        for k in range(pop):
            i = _draw(vdeg, vcum, np.random.random())
            s = -lc if np.random.random() < p else lc
            for _ in range(i - 1):
                s += c[np.random.randint(pop)]
            v[k] = min(max(s, -clip), clip)
            errors += v[k] <= 0.0
        frac = errors / pop
        if errors == 0:
            return True, it, 0.0
        if frac < best * 0.98:
            best, best_it = frac, it
        elif it - best_it > 60:
            return False, it, frac
    return False, max_iter, best


def decodes(
    lam: dict[int, float],
    rho: dict[int, float],
    p: float,
    pop: int = 100_000,
    max_iter: int = 600,
    clip: float = 30.0,
    seed: int = 1,
) -> tuple[bool, int, float]:
    """(converged, iterations, final error fraction) of BP at BSC(p) for edge-perspective lam/rho."""
    vd, vc = _table(lam)
    cd, cc = _table(rho)
    ok, it, frac = _evolve(float(p), vd, vc, cd, cc, int(pop), int(max_iter), float(clip), seed)
    return bool(ok), int(it), float(frac)


def threshold(
    lam: dict[int, float],
    rho: dict[int, float],
    lo: float = 0.002,
    hi: float = 0.12,
    tol: float = 2e-4,
    **kw: float,
) -> float:
    """Largest BSC crossover probability at which BP converges (bisection to ``tol``)."""
    while hi - lo > tol:
        mid = 0.5 * (lo + hi)
        if decodes(lam, rho, mid, **kw)[0]:
            lo = mid
        else:
            hi = mid
    return lo


def design_rate(lam: dict[int, float], rho: dict[int, float]) -> float:
    a = sum(v / i for i, v in lam.items()) / sum(lam.values())
    b = sum(v / i for i, v in rho.items()) / sum(rho.values())
    return 1.0 - b / a


def h2(p: float) -> float:
    return -p * math.log2(p) - (1 - p) * math.log2(1 - p)


def main(names: list[str]) -> None:
    from pipeline.ldpc.distributions import DISTRIBUTIONS

    for name in names or sorted(DISTRIBUTIONS):
        d = DISTRIBUTIONS[name]
        r = design_rate(d.lam, d.rho)
        p = threshold(d.lam, d.rho)
        print(f"{name}: R={r:.4f} p*={p:.5f} f_thr={(1 - r) / h2(p):.4f} (stated {d.threshold})")


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])


@njit(cache=True)
def _evolve_record(p, vdeg, vcum, cdeg, ccum, pop, max_iter, clip, bins, seed):
    """Like :func:`_evolve`, recording a histogram of the check-to-variable messages per iteration
    (``bins`` equal bins over [-clip, clip]) and the variable-side error fraction."""
    np.random.seed(seed)
    lc = math.log((1.0 - p) / p)
    v = np.empty(pop)
    for k in range(pop):
        v[k] = -lc if np.random.random() < p else lc
    t = np.empty(pop)
    c = np.empty(pop)
    hist = np.zeros((max_iter, bins))
    err = np.zeros(max_iter)
    width = 2.0 * clip / bins
    last = 0
    for it in range(max_iter):
        for k in range(pop):
            t[k] = math.tanh(0.5 * v[k])
        for k in range(pop):
            d = _draw(cdeg, ccum, np.random.random())
            prod = 1.0
            for _ in range(d - 1):
                prod *= t[np.random.randint(pop)]
            prod = min(max(prod, -1.0 + 1e-15), 1.0 - 1e-15)
            c[k] = min(max(2.0 * math.atanh(prod), -clip), clip)
            b = min(int((c[k] + clip) / width), bins - 1)
            hist[it, b] += 1.0
        errors = 0
        for k in range(pop):
            i = _draw(vdeg, vcum, np.random.random())
            s = -lc if np.random.random() < p else lc
            for _ in range(i - 1):
                s += c[np.random.randint(pop)]
            v[k] = min(max(s, -clip), clip)
            errors += v[k] <= 0.0
        err[it] = errors / pop
        last = it + 1
        if errors == 0:
            break
    return hist[:last] / pop, err[:last]
