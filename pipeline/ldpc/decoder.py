"""Layered belief-propagation decoder for quasi-cyclic codes, batched over frames (numba).

Syndrome decoding for one-way reconciliation: Bob knows the channel LLRs of Alice's bits
(from his own bits and the QBER) and Alice's syndrome; each check ``c`` enforces
``sum_v x_v = s_c``. The schedule is layered (one base row = ``Z`` independent checks per layer,
Hocevar 2004), so a layer is processed as ``Z`` contiguous lanes that numba vectorises (512-bit
where the CPU has them); each circulant's posteriors are rotated into check order by two contiguous
copies (:mod:`.kernels`). Check updates are sum-product by the tanh
rule (product of tanh(|t|/2), one division per edge for the extrinsic product) with
vectorisable exp/log approximations (:mod:`.fastmath`) on float32 messages, or offset min-sum
as a faster option; frames run in parallel with ``prange``; each frame stops as soon
as its hard decision satisfies the syndrome (exact check at the end of an iteration, run when
the cheap per-layer parity count is small) or, optionally, when it is stuck. :class:`BatchDecoder` keeps the messages
so that a frame resumes after a blind round instead of starting over.
"""

from __future__ import annotations

import math

import numpy as np

from .codes import QCCode
from .kernels import decode_batch_kernel

SHORTENED_LLR = np.float32(1.0e4)


def channel_llr(bob_bits: np.ndarray, qber: float) -> np.ndarray:
    """LLR of Alice's bit given Bob's bit on a BSC(qber): +L for Bob's 0, -L for Bob's 1."""
    q = min(max(float(qber), 1e-6), 0.49)
    mag = np.float32(math.log((1.0 - q) / q))
    return (mag * (1.0 - 2.0 * bob_bits.astype(np.float32))).astype(np.float32)


class BatchDecoder:
    """Decoder state of a batch of frames, resumable after a blind round changed some LLRs.

    ``method`` is ``"spa"`` (sum-product, tanh rule with fast exp/log: the default, which keeps
    f near 1.1) or ``"oms"`` (scaled ``alpha``, offset ``beta`` min-sum: faster, collapses near
    f = 1.2 on these high-check-degree codes).
    """

    def __init__(
        self,
        code: QCCode,
        llr: np.ndarray,
        syndromes: np.ndarray,
        method: str = "spa",
        alpha: float = 1.0,
        beta: float = 1.0,
        skip_columns: np.ndarray | None = None,
    ) -> None:
        llr = np.array(llr, dtype=np.float32, order="C")  # own copy
        syn = np.ascontiguousarray(syndromes, dtype=np.uint8)
        if llr.ndim != 2 or llr.shape[1] != code.n:
            raise ValueError(f"llr must be (frames, {code.n}), got {llr.shape}")
        if method not in ("spa", "oms"):
            raise ValueError(f"method must be 'spa' or 'oms', not {method!r}")
        if syn.shape != (llr.shape[0], code.m):
            raise ValueError(f"syndromes must be ({llr.shape[0]}, {code.m}), got {syn.shape}")
        self.code, self.llr, self.syn = code, llr, syn
        self.post = llr.copy()
        self._tables = _tables(code, skip_columns)
        n_edges = self._tables[1].size * code.z
        self.msg = np.zeros((llr.shape[0], n_edges), dtype=np.float32)
        self._args = (method == "spa", np.float32(alpha), np.float32(beta))

    def set_llr(self, frame: int, positions: np.ndarray, values: np.ndarray) -> None:
        """Replace channel LLRs of one frame (e.g. revealed bits); posteriors follow."""
        self.post[frame, positions] += values - self.llr[frame, positions]
        self.llr[frame, positions] = values

    def run(
        self, frames: np.ndarray | None = None, max_iter: int = 60, stall: int = 0
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Iterate the selected frames (all by default) from where they stopped.

        ``stall`` > 0 stops a frame whose unsatisfied-check count made no new minimum for that
        many iterations (it is stuck; a blind round helps it more than more iterations).

        Returns ``(bits, converged, iterations)`` for those frames: hard decisions uint8,
        whether each decision satisfies its syndrome, and the iterations of this call.
        """
        sel = np.arange(self.llr.shape[0]) if frames is None else np.asarray(frames, np.int64)
        row_ptr, edge_col, edge_shift = self._tables
        return decode_batch_kernel(
            self.post, self.msg, self.syn, sel.astype(np.int64), row_ptr, edge_col, edge_shift,
            self.code.z, int(max_iter), int(stall), *self._args,
        )  # fmt: skip


def _tables(
    code: QCCode, skip_columns: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The code's edge tables without the edges of ``skip_columns`` (base columns whose bits
    are all shortened, i.e. known zeros: their edges add nothing to a check's syndrome sum and
    their messages would stay at the known value, so leaving them out is exact)."""
    if skip_columns is None or len(skip_columns) == 0:
        return code.row_ptr, code.edge_col, code.edge_shift
    skip = np.asarray(skip_columns, np.int64)
    if skip.min() < 0 or skip.max() >= code.shifts.shape[1]:
        raise ValueError(f"skip_columns outside the {code.shifts.shape[1]} base columns")
    keep = ~np.isin(code.edge_col, skip)
    rows = np.repeat(np.arange(code.row_ptr.size - 1), np.diff(code.row_ptr))[keep]
    row_ptr = np.zeros(code.row_ptr.size, np.int64)
    np.cumsum(np.bincount(rows, minlength=code.row_ptr.size - 1), out=row_ptr[1:])
    return row_ptr, code.edge_col[keep].copy(), code.edge_shift[keep].copy()


def decode_batch(
    code: QCCode,
    llr: np.ndarray,
    syndromes: np.ndarray,
    max_iter: int = 60,
    method: str = "spa",
    alpha: float = 1.0,
    beta: float = 1.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decode frames ``llr`` (frames, n) float32 against ``syndromes`` (frames, m) uint8.

    One-shot form of :class:`BatchDecoder`; returns ``(bits, converged, iterations)``.
    """
    return BatchDecoder(code, llr, syndromes, method, alpha, beta).run(max_iter=max_iter)
