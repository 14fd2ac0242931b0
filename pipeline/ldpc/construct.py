"""Deterministic construction of quasi-cyclic mother codes: PEG base graph, circulant lifting.

A code is a base matrix of circulant shifts (``-1`` = zero block) of shape ``(m_b, n_b)`` lifted
by circulants of size ``Z``: block ``(r, j)`` with shift ``s`` connects check ``r*Z + k`` to
variable ``j*Z + (k + s) % Z``. Construction (run once, results stored in ``data/*.npz``):

1. node degrees from the published degree distribution (:mod:`.distributions`), quantised to
   ``n_b`` columns; check degrees as equal as possible (the published rho are concentrated);
2. degree-2 columns laid as a dual-diagonal chain (no cycles among degree-2 nodes, the
   low-error-floor "zig-zag" arrangement), the rest placed by progressive edge growth (PEG, Hu,
   Eleftheriou, Arnold 2005) on the base graph, highest remaining check capacity first;
3. circulant shifts chosen greedily so that the lifted graph has no 4-cycles (or, where the
   circulant is too small for that, as few as possible) and as few 6-cycles as possible.

Everything is driven by ``numpy.random.default_rng(seed)`` so ``build_code`` regenerates a stored
code bit for bit. ``python -m pipeline.ldpc.construct [--rebuild]`` builds the missing (all)
codes of the stored family.
"""

from __future__ import annotations

from collections import deque
from pathlib import Path

import numpy as np
from numba import njit

from .distributions import DISTRIBUTIONS, DegreeDistribution

DATA_DIR = Path(__file__).with_name("data")

# The stored family: (code name, distribution, n_b, Z, seed), n = n_b * Z. One rate ladder per
# frame length; R 0.9 needs 512 base columns (its degree-28 columns need >= 28 base rows, and 256
# columns would leave only 25). The R 0.9 code is the DE-optimised ``delp_r0.90`` (threshold
# f 1.10); it replaced ``qcb_r0.90`` (blind R 0.8 variable side, check degree raised: f 1.126).
_LADDER = [
    ("qcd_r0.90", "delp_r0.90", 512),
    ("qcb_r0.85", "blindvar_r0.85", 256),
    ("qc_r0.80", "blind_r0.8", 256),
    ("qc_r0.75", "elkouss_r0.75", 256),
    ("qc_r0.70", "blind_r0.7", 256),
    ("qc_r0.65", "elkouss_r0.65", 256),
    ("qc_r0.60", "blind_r0.6", 256),
    ("qc_r0.55", "elkouss_r0.55", 256),
    ("qc_r0.50", "blind_r0.5", 256),
]
FRAME_LENGTHS = (16384, 131072, 1048576)
DEFAULT_FRAME_LENGTH = 131072
FAMILY: list[tuple[str, str, int, int, int]] = [
    (f"{tag}_n{n}", dist, n_b, n // n_b, 1)
    for n in FRAME_LENGTHS
    for tag, dist, n_b in _LADDER
    if n // n_b >= 64
]


def variable_degrees(dist: DegreeDistribution, n_b: int) -> np.ndarray:
    """Per-column degrees (ascending) whose node fractions follow ``dist`` as closely as n_b allows."""
    fr = dist.variable_node_fractions()
    degs = np.array(sorted(fr))
    want = np.array([fr[d] for d in degs]) * n_b
    cnt = np.floor(want).astype(int)
    # largest remainders first, so the edge count stays close to the design
    for i in np.argsort(-(want - cnt))[: n_b - cnt.sum()]:
        cnt[i] += 1
    return np.repeat(degs, cnt)


def base_graph(dist: DegreeDistribution, n_b: int, rng: np.random.Generator) -> np.ndarray:
    """0/1 base matrix (m_b x n_b): zig-zag degree-2 columns + PEG for the rest."""
    vdeg = variable_degrees(dist, n_b)
    m_b = int(round(n_b * (1.0 - dist.design_rate)))
    if vdeg.max() > m_b:
        raise ValueError(f"{dist.name}: degree {vdeg.max()} needs at least that many base rows")
    n_edges = int(vdeg.sum())
    cap = np.full(m_b, n_edges // m_b)
    cap[: n_edges - cap.sum()] += 1
    rng.shuffle(cap)
    base = np.zeros((m_b, n_b), dtype=np.uint8)
    cdeg = np.zeros(m_b, dtype=int)
    order = np.argsort(vdeg, kind="stable")
    n_chain = min(int((vdeg == 2).sum()), m_b - 1)
    for c in range(n_chain):
        v = order[c]
        base[c, v] = base[c + 1, v] = 1
        cdeg[c] += 1
        cdeg[c + 1] += 1
    for v in order[n_chain:]:
        for _ in range(vdeg[v]):
            candidates = _peg_candidates(base, v)
            room = cap[candidates] - cdeg[candidates]
            best = candidates[room == room.max()]
            c = int(best[rng.integers(best.size)])
            base[c, v] = 1
            cdeg[c] += 1
    return base


def _peg_candidates(base: np.ndarray, v: int) -> np.ndarray:
    """Checks farthest from variable ``v`` in the current base graph (unreachable ones first)."""
    m_b, _ = base.shape
    own = np.flatnonzero(base[:, v])
    if own.size == 0:
        return np.arange(m_b)
    depth = np.full(m_b, -1)
    depth[own] = 0
    queue = deque(int(c) for c in own)
    seen_vars = {v}
    while queue:
        c = queue.popleft()
        for u in np.flatnonzero(base[c]):
            if u in seen_vars:
                continue
            seen_vars.add(int(u))
            for c2 in np.flatnonzero(base[:, u]):
                if depth[c2] < 0:
                    depth[c2] = depth[c] + 1
                    queue.append(int(c2))
    free = np.flatnonzero(depth < 0)
    if free.size:
        return free
    far = depth.max()
    cand = np.flatnonzero(depth == far)
    cand = cand[base[cand, v] == 0]
    return cand if cand.size else np.flatnonzero(base[:, v] == 0)


def lift_shifts(base: np.ndarray, z: int, rng: np.random.Generator) -> np.ndarray:
    """Circulant shifts for a 0/1 base matrix, greedy and seeded: fewest 4-cycles (none when Z
    allows, as for every n >= 2^17 code), then fewest 6-cycles."""
    # ties between equally good shifts are broken by a seeded affine permutation per edge
    mul = 2 * rng.integers(0, z // 2, size=base.shape) + 1
    add = rng.integers(0, z, size=base.shape)
    return _lift(base.astype(np.int64), z, mul, add)


@njit(cache=True)
def _lift(base: np.ndarray, z: int, mul: np.ndarray, add: np.ndarray) -> np.ndarray:
    m_b, n_b = base.shape
    sh = np.full((m_b, n_b), -1, dtype=np.int64)
    for j in range(n_b):
        for r in range(m_b):
            if base[r, j] == 0:
                continue
            bad4 = np.zeros(z, dtype=np.int64)
            six = np.zeros(z, dtype=np.int64)
            for r1 in range(m_b):
                if r1 == r or sh[r1, j] < 0:
                    continue
                for j1 in range(n_b):
                    if j1 == j or sh[r1, j1] < 0:
                        continue
                    # 4-cycle r-j-r1-j1: s(r,j) = s(r1,j) - s(r1,j1) + s(r,j1)
                    if sh[r, j1] >= 0:
                        bad4[(sh[r1, j] - sh[r1, j1] + sh[r, j1]) % z] += 1
                    base_val = sh[r1, j] - sh[r1, j1]
                    for r2 in range(m_b):
                        if r2 == r1 or r2 == r or sh[r2, j1] < 0:
                            continue
                        for j2 in range(n_b):
                            if j2 == j or j2 == j1 or sh[r2, j2] < 0 or sh[r, j2] < 0:
                                continue
                            # 6-cycle r-j-r1-j1-r2-j2-r
                            six[(base_val + sh[r2, j1] - sh[r2, j2] + sh[r, j2]) % z] += 1
            best = 0
            best_score = 1e300
            for s in range(z):
                # 4-cycles dominate (1e9 each), then 6-cycles, then the seeded tie-break
                score = bad4[s] * 1e9 + six[s] + ((s * mul[r, j] + add[r, j]) % z) / z
                if score < best_score:
                    best_score = score
                    best = s
            sh[r, j] = best
    return sh


def build_code(name: str) -> dict[str, np.ndarray | str | int]:
    """Build one code of :data:`FAMILY` from scratch (deterministic)."""
    spec = {f[0]: f for f in FAMILY}[name]
    _, dist_name, n_b, z, seed = spec
    dist = DISTRIBUTIONS[dist_name]
    rng = np.random.default_rng(seed)
    base = base_graph(dist, n_b, rng)
    shifts = lift_shifts(base, z, rng)
    return {
        "name": name,
        "distribution": dist_name,
        "z": z,
        "seed": seed,
        "shifts": shifts.astype(np.int16),
    }


def main(rebuild: bool = False) -> None:
    """Build and store the family's codes (all of them with ``rebuild``, else the missing ones)."""
    DATA_DIR.mkdir(exist_ok=True)
    for name, *_ in FAMILY:
        path = DATA_DIR / f"{name}.npz"
        if path.exists() and not rebuild:
            continue
        code = build_code(name)
        np.savez_compressed(path, **code)
        sh = code["shifts"]
        print(name, "base", sh.shape, "edges", int((sh >= 0).sum()), flush=True)


if __name__ == "__main__":
    import sys

    main(rebuild="--rebuild" in sys.argv)
