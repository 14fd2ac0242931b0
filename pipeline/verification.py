"""Error verification: polynomial universal hashing over GF(2^61 - 1), one fresh key per frame.

Alice draws a random evaluation point ``k`` per frame (and per repetition), hashes her corrected
frame ``x`` as the polynomial ``h_k(x) = len * k^L + w_0 k^(L-1) + ... + w_(L-1)`` (mod p, the
32-bit words ``w_i`` of the packed bits) and sends ``(k, h_k(x))``. Bob hashes his decoded frame
with the same ``k``; a frame whose tags differ is dropped on both sides. For ``x != y`` of ``L``
words, ``P[h_k(x) = h_k(y)] <= L / p`` (a non-zero polynomial of degree <= L has <= L roots), so
``r`` independent evaluations give ``(L / p)^r``; ``r`` is the smallest count reaching ``eps_cor``
per frame (``eps_cor`` is split over the frames of a block by the caller if it wants a block-wide
bound). Every tag bit and the one-bit verdict per frame are public and counted in
``verification_bits`` (arXiv:2507.21416: the verification outcome leaks).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit

from .channel import Message

MERSENNE61 = (1 << 61) - 1
WORD_BITS = 32
DEFAULT_EPS_COR = 1e-12


def hash_repetitions(n_bits: int, eps_cor: float = DEFAULT_EPS_COR) -> int:
    """Number of independent 61-bit evaluations so that the collision probability <= eps_cor."""
    if not 0.0 < eps_cor < 1.0:
        raise ValueError(f"eps_cor must be in (0, 1), got {eps_cor}")
    words = max(1, -(-n_bits // WORD_BITS)) + 1
    per = words / MERSENNE61
    return max(1, math.ceil(math.log(eps_cor) / math.log(per)))


def tag_bits(n_bits: int, eps_cor: float = DEFAULT_EPS_COR) -> int:
    """Public bits per frame: 61 per evaluation plus the 1-bit verdict."""
    return 61 * hash_repetitions(n_bits, eps_cor) + 1


def poly_hash(bits: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Hash a uint8 0/1 array at each evaluation point in ``keys`` (uint64, each < 2^61 - 1)."""
    b = np.ascontiguousarray(bits, dtype=np.uint8)
    if b.ndim != 1 or (b.size and b.max() > 1):
        raise ValueError("bits must be a 1-D uint8 array of 0/1")
    k = np.ascontiguousarray(keys, dtype=np.uint64)
    if k.size and int(k.max()) >= MERSENNE61:
        raise ValueError("hash keys must be < 2^61 - 1")
    packed = np.packbits(b, bitorder="little")
    pad = (-packed.size) % 4
    words = np.concatenate([packed, np.zeros(pad, np.uint8)]).view("<u4").astype(np.uint64)
    return np.array([_horner(words, np.uint64(b.size), key) for key in k], dtype=np.uint64)


@njit(cache=True)
def _mulmod(a, b):
    """a * b mod 2^61 - 1 for a, b < 2^61 with 64-bit arithmetic only."""
    m32 = np.uint64(0xFFFFFFFF)
    p = np.uint64(MERSENNE61)
    a1 = a >> np.uint64(32)
    a0 = a & m32
    b1 = b >> np.uint64(32)
    b0 = b & m32
    hi = (a1 * b1) << np.uint64(3)  # 2^64 = 8 (mod p); a1*b1 < 2^58
    mid = a1 * b0 + a0 * b1  # < 2^62
    mid = (mid >> np.uint64(29)) + ((mid & np.uint64(0x1FFFFFFF)) << np.uint64(32))
    lo = a0 * b0
    lo = (lo & p) + (lo >> np.uint64(61))
    s = (hi & p) + (hi >> np.uint64(61)) + (mid & p) + (mid >> np.uint64(61)) + lo
    s = (s & p) + (s >> np.uint64(61))
    s = (s & p) + (s >> np.uint64(61))
    return s - p if s >= p else s


@njit(cache=True)
def _horner(words, length, key):
    p = np.uint64(MERSENNE61)
    acc = length % p
    for i in range(words.size):
        acc = _mulmod(acc, key) + words[i]
        acc = acc - p if acc >= p else acc
    return acc


@dataclass
class VerificationOutcome:
    """Per-frame verdicts of one verification exchange."""

    frames: list[int]
    ok: np.ndarray  # bool per frame
    public_bits: int  # tag bits + verdict bits disclosed for these frames


class VerifierAlice:
    """Alice's side: picks fresh random keys, sends tags, learns Bob's verdicts."""

    def __init__(self, eps_cor: float = DEFAULT_EPS_COR, rng: np.random.Generator | None = None):
        self.eps_cor = eps_cor
        self.rng = rng if rng is not None else np.random.default_rng()
        self._pending: dict[tuple[int, tuple[int, ...]], int] = {}

    def tags(self, block: int, frames: list[int], keys: list[np.ndarray]) -> Message:
        """The ``verify_tags`` message for Alice's frames (one key bit array per frame id)."""
        if len(frames) != len(keys):
            raise ValueError("one key per frame id")
        n_bits = max((k.size for k in keys), default=0)
        reps = hash_repetitions(n_bits, self.eps_cor)
        points = self.rng.integers(0, MERSENNE61, size=(len(frames), reps), dtype=np.uint64)
        tags = np.stack([poly_hash(k, points[i]) for i, k in enumerate(keys)]) if keys else points
        self._pending[(block, tuple(frames))] = reps
        return {
            "type": "verify_tags",
            "block": block,
            "frames": list(frames),
            "points": points,
            "tags": tags,
        }

    def handle_result(self, msg: Message) -> VerificationOutcome:
        """Bob's ``verify_result``: which frames both sides keep."""
        key = (int(msg["block"]), tuple(int(f) for f in msg["frames"]))
        reps = self._pending.pop(key, None)
        if reps is None:
            raise ValueError(f"verify_result for frames never tagged: block {key[0]}")
        ok = np.asarray(msg["ok"], dtype=bool)
        if ok.size != len(key[1]):
            raise ValueError("verify_result has the wrong number of verdicts")
        return VerificationOutcome(list(key[1]), ok, (61 * reps + 1) * ok.size)


class VerifierBob:
    """Bob's side: recomputes the tags on his decoded frames and returns the verdicts.

    Bob refuses tags weaker than ``eps_cor`` asks for (too few evaluations), so a faulty or
    hostile peer cannot switch verification off.
    """

    def __init__(self, eps_cor: float = DEFAULT_EPS_COR) -> None:
        self.eps_cor = eps_cor

    def handle_tags(
        self, msg: Message, keys: list[np.ndarray]
    ) -> tuple[Message, VerificationOutcome]:
        """Compare Alice's tags with Bob's frames (same order as ``msg['frames']``)."""
        frames = [int(f) for f in msg["frames"]]
        points = np.asarray(msg["points"])
        tags = np.asarray(msg["tags"])
        if points.dtype != np.uint64 or tags.dtype != np.uint64 or points.ndim != 2:
            raise ValueError("verify_tags: points and tags must be uint64 (frames, evaluations)")
        if points.shape != tags.shape or points.shape[0] != len(frames):
            raise ValueError("verify_tags: frames, points and tags do not match")
        if len(keys) != len(frames):
            raise ValueError("verify_tags: one key per frame id")
        n_bits = max((k.size for k in keys), default=0)
        if points.shape[1] < hash_repetitions(n_bits, self.eps_cor):
            raise ValueError("verify_tags: fewer hash evaluations than eps_cor requires")
        ok = np.array(
            [np.array_equal(poly_hash(k, points[i]), tags[i]) for i, k in enumerate(keys)],
            dtype=bool,
        )
        reply = {
            "type": "verify_result",
            "block": msg["block"],
            "frames": frames,
            "ok": ok.astype(np.uint8),
        }
        reps = points.shape[1]
        return reply, VerificationOutcome(frames, ok, (61 * reps + 1) * ok.size)
