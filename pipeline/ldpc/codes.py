"""Stored quasi-cyclic mother codes: loading, syndromes, and the tables the decoder walks.

A :class:`QCCode` is a base matrix of circulant shifts (``-1`` = zero block) and the circulant size
``Z``; block ``(r, j)`` with shift ``s`` connects check ``r*Z + k`` to variable ``j*Z + (k+s) % Z``.
Loading reads a few kilobytes from ``data/*.npz``; nothing is constructed at start-up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np
from numba import njit, prange

DATA_DIR = Path(__file__).with_name("data")


@dataclass(frozen=True, eq=False)
class QCCode:
    """A quasi-cyclic LDPC code given by its base shift matrix and circulant size."""

    name: str
    z: int
    shifts: np.ndarray  # (m_b, n_b) int16, -1 = zero block
    distribution: str = ""
    row_ptr: np.ndarray = field(init=False, repr=False)
    edge_col: np.ndarray = field(init=False, repr=False)
    edge_shift: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        sh = np.asarray(self.shifts, dtype=np.int64)
        if sh.ndim != 2 or sh.min() < -1 or sh.max() >= self.z:
            raise ValueError(f"{self.name}: bad shift matrix for Z={self.z}")
        rows, cols = np.nonzero(sh >= 0)  # row-major: edges grouped by layer
        row_ptr = np.zeros(sh.shape[0] + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=sh.shape[0]), out=row_ptr[1:])
        object.__setattr__(self, "row_ptr", row_ptr)
        object.__setattr__(self, "edge_col", cols.astype(np.int64))
        object.__setattr__(self, "edge_shift", sh[rows, cols].astype(np.int64))

    @property
    def n(self) -> int:
        """Frame length in bits."""
        return int(self.shifts.shape[1]) * self.z

    @property
    def m(self) -> int:
        """Number of parity checks (syndrome bits)."""
        return int(self.shifts.shape[0]) * self.z

    @property
    def rate(self) -> float:
        return 1.0 - self.m / self.n

    @property
    def n_edges(self) -> int:
        return int(self.edge_col.size) * self.z

    def syndrome(self, bits: np.ndarray) -> np.ndarray:
        """H x mod 2 for one frame (n,) or a batch (frames, n) of uint8 0/1; uint8 result."""
        x = np.ascontiguousarray(bits, dtype=np.uint8)
        single = x.ndim == 1
        x2 = x.reshape(1, -1) if single else x
        if x2.shape[1] != self.n:
            raise ValueError(f"{self.name}: frame length {x2.shape[1]} != n = {self.n}")
        out = _syndrome_batch(x2, self.row_ptr, self.edge_col, self.edge_shift, self.z)
        return out[0] if single else out

    def to_scipy(self):  # -> scipy.sparse.csr_matrix
        """The full parity-check matrix as a scipy CSR matrix (for peers and tests)."""
        import scipy.sparse as sp

        k = np.arange(self.z)
        rows, cols = np.nonzero(self.shifts >= 0)
        s = self.shifts[rows, cols].astype(np.int64)
        r = (rows[:, None] * self.z + k[None, :]).ravel()
        c = (cols[:, None] * self.z + (k[None, :] + s[:, None]) % self.z).ravel()
        data = np.ones(r.size, dtype=np.uint8)
        return sp.csr_matrix((data, (r, c)), shape=(self.m, self.n))


@njit(cache=True, parallel=True)
def _syndrome_batch(x, row_ptr, edge_col, edge_shift, z):
    frames = x.shape[0]
    m_b = row_ptr.size - 1
    out = np.zeros((frames, m_b * z), dtype=np.uint8)
    for f in prange(frames):
        for r in range(m_b):
            acc = out[f, r * z : (r + 1) * z]
            for e in range(row_ptr[r], row_ptr[r + 1]):
                base = edge_col[e] * z
                s = edge_shift[e]
                for k in range(z - s):
                    acc[k] ^= x[f, base + k + s]
                for k in range(z - s, z):
                    acc[k] ^= x[f, base + k + s - z]
    return out


def available_codes() -> list[str]:
    """Names of the stored codes."""
    return sorted(p.stem for p in DATA_DIR.glob("*.npz"))


@cache
def load_code(name: str) -> QCCode:
    """Load a stored code by name (cached)."""
    path = DATA_DIR / f"{name}.npz"
    if not path.is_file():
        raise ValueError(f"unknown LDPC code {name!r}; stored: {available_codes()}")
    with np.load(path) as d:
        return QCCode(str(d["name"]), int(d["z"]), d["shifts"].copy(), str(d["distribution"]))
