"""Rate adaptation: pick a mother code and puncture or shorten it to a target efficiency.

For a frame of a code ``(n, m)`` with ``p`` punctured and ``s`` shortened positions, Alice puts
``k = n - p - s`` key bits in the key positions, private random bits in the punctured ones and
zeros in the shortened ones, and sends the ``m``-bit syndrome. What the syndrome discloses about
the key is ``m - p`` bits (the punctured bits are uniform and independent of the key), so the
efficiency is ``f = (m - p) / (k h(Q))``. Each blind round (Martinez-Mateo et al. 2012) reveals
``reveal_step`` more positions, punctured ones first (they become shortened), then key bits; every
revealed bit counts one more leaked bit. Positions follow a fixed pseudo-random order per code,
so Alice and Bob derive the same layout from ``(code, p, s)`` alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from .codes import QCCode, load_code
from .construct import DEFAULT_FRAME_LENGTH, FAMILY, FRAME_LENGTHS


def family_codes(frame_length: int = DEFAULT_FRAME_LENGTH) -> tuple[str, ...]:
    """Stored mother codes of one frame length, highest rate first."""
    names = tuple(name for name, _d, n_b, z, _s in FAMILY if n_b * z == frame_length)
    if not names:
        raise ValueError(f"no stored codes of length {frame_length}; have {FRAME_LENGTHS}")
    return names


FAMILY_CODES = family_codes(DEFAULT_FRAME_LENGTH)
MAX_PUNCTURED = 0.10  # fraction of n; more puncturing makes BP lose too much (Elkouss 2010)
MAX_SHORTENED = 0.6  # fraction of n; beyond this the frame carries too little key
MIN_QBER = 0.005  # below this the plan is made as if Q = 0.5 % (h(Q) -> 0 would ask for R -> 1)
# first-round target: 1.09 rather than 1.08 costs f +0.002-0.004 and saves 10-35 % of the
# iterations (fewer frames need blind rounds, each of which costs another decoding)
DEFAULT_F_TARGET = 1.09
DEFAULT_REVEAL_F_STEP = 0.02
# Blind rounds: the first PUNCTURED_REVEALS reveal punctured bits (the plan punctures that many
# steps); the last rounds reveal key bits, a last resort for the few frames still failing (each
# dropped frame loses all its key, a rescued one costs 0.02-0.04 f on that frame only). At 1 %
# QBER, 128 frames: 4 rounds f 1.118 with 2 dropped; 6 rounds f 1.119 with 0 dropped.
DEFAULT_MAX_REVEALS = 6
PUNCTURED_REVEALS = 4
# Lowest starting efficiency worth trying per code (measured with the SPA decoder at n = 2^17:
# below it nearly every frame needs every blind round). Keyed by code name prefix (any length) or
# full name (one length). None needed since the DE-designed R 0.9 code (threshold f 1.078)
# replaced qcb_r0.90 (1.126), which had to start at 1.15: at 1 %, 32 frames of 2^17 bits, start
# 1.08 -> f 1.109, start 1.10 -> f 1.118, none dropped (blind rounds of 0.02 included).
CODE_MIN_F: dict[str, float] = {}
# Short frames sit further from the threshold: start higher so that round 0 usually succeeds.
LENGTH_MIN_F = {16384: 1.14}


def start_efficiency(code_name: str, n: int, f_target: float = DEFAULT_F_TARGET) -> float:
    """Efficiency a frame of this code starts at (before blind rounds): the target or higher."""
    by_code = max(CODE_MIN_F.get(code_name.split("_n")[0], 1.0), CODE_MIN_F.get(code_name, 1.0))
    return max(f_target, by_code, LENGTH_MIN_F.get(n, 1.0))


def binary_entropy(q: float) -> float:
    """h(q) in bits."""
    if q <= 0.0 or q >= 1.0:
        return 0.0
    return -q * math.log2(q) - (1.0 - q) * math.log2(1.0 - q)


@dataclass(frozen=True)
class FramePlan:
    """Layout of one frame: code, punctured/shortened counts, blind reveal step and budget."""

    code_name: str
    punctured: int
    shortened: int
    reveal_step: int
    max_reveals: int
    code: QCCode = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        code = load_code(self.code_name)
        object.__setattr__(self, "code", code)
        if self.punctured < 0 or self.shortened < 0 or self.punctured + self.shortened >= code.n:
            raise ValueError(f"bad frame plan p={self.punctured} s={self.shortened}")
        if self.reveal_step < 0 or self.max_reveals < 0:
            raise ValueError("reveal step and count must be >= 0")

    @property
    def key_bits(self) -> int:
        """Key bits carried per frame."""
        return self.code.n - self.punctured - self.shortened

    def leaked(self, revealed: int) -> int:
        """Bits disclosed about the key: syndrome minus punctured, plus revealed bits."""
        return self.code.m - self.punctured + revealed

    def layout(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(punctured, shortened, key, reveal order) positions; key positions sorted."""
        return _layout(self.code_name, self.punctured, self.shortened)

    def shortened_columns(self) -> np.ndarray:
        """Base columns whose ``Z`` positions are all shortened: their edges carry nothing
        (known zeros) and the decoder leaves them out."""
        return _shortened_columns(self.code_name, self.shortened)

    def to_wire(self) -> dict[str, int | str]:
        return {
            "code": self.code_name,
            "punctured": self.punctured,
            "shortened": self.shortened,
            "reveal_step": self.reveal_step,
            "max_reveals": self.max_reveals,
        }

    @classmethod
    def from_wire(cls, d: dict) -> FramePlan:
        return cls(
            str(d["code"]),
            int(d["punctured"]),
            int(d["shortened"]),
            int(d["reveal_step"]),
            int(d["max_reveals"]),
        )


# Each layout is ~2 MB (four position arrays of a 1.3e5-bit code); plans change with the QBER
# estimate, so an unbounded cache grows over a long run. 16 recent plans cover the few a link
# alternates between.
LAYOUT_CACHE_SIZE = 16


@lru_cache(maxsize=LAYOUT_CACHE_SIZE)
def _layout(name: str, p: int, s: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Shortened positions fill whole base columns (:func:`shortened_order`), so the decoder
    can drop those columns' edges (12 % of the work of a frame shortened by 15 %); punctured and
    key positions follow :func:`position_order` among the rest."""
    code = load_code(name)
    short = np.sort(shortened_order(code)[:s])
    free = np.ones(code.n, bool)
    free[short] = False
    order = position_order(code)
    order = order[free[order]]
    punct = np.sort(order[:p])
    rest = order[p:]
    key = np.sort(rest)
    reveal = np.concatenate([order[:p], rest])  # punctured first, then key bits
    for a in (punct, short, key, reveal):
        a.setflags(write=False)
    return punct, short, key, reveal


def shortened_order(code: QCCode) -> np.ndarray:
    """Order in which positions are shortened: whole base columns, stratified by degree (every
    prefix of the column order holds each column degree in about its share of the code, as
    shortening random positions does on average: a random column order shortened too many
    high-degree columns of the R 0.65 code, f +0.01 at 6 %), ties broken in a fixed
    pseudo-random order; each column's lanes in a fixed pseudo-random order (which only matters
    for the last, partly shortened column). The same on both sides."""
    seed = (int.from_bytes(code.name.encode(), "little") + 1) % (2**63)
    rng = np.random.default_rng(seed)
    n_b = code.shifts.shape[1]
    deg = (code.shifts >= 0).sum(axis=0)
    shuffled = rng.permutation(n_b)
    # the j-th column of a degree class (in shuffled order) sits at (j + u) / class size
    rank = np.empty(n_b)
    for d in np.unique(deg):
        cols = shuffled[deg[shuffled] == d]
        rank[cols] = (np.arange(cols.size) + rng.random(cols.size)) / cols.size
    cols = np.argsort(rank, kind="stable")
    lanes = rng.permutation(code.z)
    return (cols[:, None] * code.z + lanes[None, :]).ravel()


@lru_cache(maxsize=LAYOUT_CACHE_SIZE)
def _shortened_columns(name: str, s: int) -> np.ndarray:
    code = load_code(name)
    cols = np.sort(shortened_order(code)[: (s // code.z) * code.z : code.z] // code.z)
    cols.setflags(write=False)
    return cols


def position_order(code: QCCode) -> np.ndarray:
    """Fixed pseudo-random order of the code's positions (same on both sides)."""
    seed = int.from_bytes(code.name.encode(), "little") % (2**63)
    return np.random.default_rng(seed).permutation(code.n)


def plan_frame(
    qber_estimate: float,
    f_target: float = DEFAULT_F_TARGET,
    reveal_f_step: float = DEFAULT_REVEAL_F_STEP,
    max_reveals: int = DEFAULT_MAX_REVEALS,
    codes: tuple[str, ...] | None = None,
    frame_length: int = DEFAULT_FRAME_LENGTH,
    start_qber: float | None = None,
) -> FramePlan:
    """Choose the code and ``(p, s)`` so that ``(m - p) / (k h(Q)) = f_target``.

    At least ``min(max_reveals, PUNCTURED_REVEALS) * reveal_step`` positions are punctured, so
    that every blind round but the last-resort ones reveals punctured bits (each worth a full
    bit to the decoder; a revealed key bit is worth only h(Q)); the rest of the adaptation is
    shortening. Among the codes whose puncturing and shortening stay within ``MAX_PUNCTURED`` /
    ``MAX_SHORTENED`` the one with the least adaptation wins (Elkouss et al. 2010: small
    ``d = p + s`` keeps f low), puncturing beyond the reveal budget counting five-fold because
    it costs BP far more than shortening (which counts half: whole shortened columns leave
    the decoder's graph).

    ``start_qber`` (<= ``qber_estimate``) starts the frame lower: the syndrome is sized for
    ``f_target`` at ``start_qber`` and enough extra punctured rounds (``reveal_step`` each, at
    ``start_qber``'s entropy) are added that the punctured reveals still reach what the plan at
    ``qber_estimate`` alone reaches. A frame whose QBER is near ``start_qber`` then leaks that
    much less, one that is near ``qber_estimate`` pays a few more blind rounds; no frame has
    less reach. Plans are cached (they are pure functions of the arguments).
    """
    if not 0.0 <= qber_estimate <= 0.5:
        raise ValueError(f"QBER estimate must be in [0, 0.5], got {qber_estimate}")
    if f_target < 1.0:
        raise ValueError(f"target efficiency must be >= 1, got {f_target}")
    if start_qber is not None and not 0.0 <= start_qber <= qber_estimate:
        raise ValueError(f"start QBER must be in [0, {qber_estimate}], got {start_qber}")
    return _plan_frame(
        float(qber_estimate),
        float(f_target),
        float(reveal_f_step),
        int(max_reveals),
        None if codes is None else tuple(codes),
        int(frame_length),
        float(qber_estimate if start_qber is None else start_qber),
    )


@lru_cache(maxsize=256)
def _plan_frame(
    qber: float,
    f_target: float,
    reveal_f_step: float,
    max_reveals: int,
    codes: tuple[str, ...] | None,
    frame_length: int,
    start_qber: float,
) -> FramePlan:
    h_hi = binary_entropy(max(qber, MIN_QBER))
    h = binary_entropy(max(start_qber, MIN_QBER))
    best: tuple[float, str, int, int, int, int] | None = None
    for name in codes if codes is not None else family_codes(frame_length):
        code = load_code(name)
        n, m = code.n, code.m
        f_start = start_efficiency(name, n, f_target)
        lam = f_start * h  # leaked bits per key bit at the start
        if f_start * h_hi >= 1.0:
            continue
        # the reveal step is a fixed efficiency increment on a nominal full frame
        step = max(1, math.ceil(reveal_f_step * n * h)) if max_reveals else 0
        rounds = min(max_reveals, PUNCTURED_REVEALS)
        extra = 0
        if h_hi > h and step:
            # leak from f_start at start_qber to f_start at qber, on the most key bits a frame
            # can carry (m / lam), plus the usual punctured rounds counted at qber's entropy
            reach = f_start * (h_hi - h) * min(n, m / lam) + rounds * reveal_f_step * n * h_hi
            extra = max(0, math.ceil(reach / step) - rounds)
        budget = step * (rounds + extra)
        s = math.floor(n - budget - (m - budget) / lam)
        if s >= 0:
            p = budget
        else:  # too much syndrome even with the reveal budget punctured: puncture more
            p, s = math.ceil((m - lam * n) / (1.0 - lam)), 0
        if p > MAX_PUNCTURED * n or s > MAX_SHORTENED * n or n - p - s <= 0:
            continue
        # puncturing beyond the reveal budget weighs 5x; shortening half (whole shortened
        # columns leave the decoder's graph, so it costs no CPU; at 1.3-1.4 % this picks the
        # R 0.9 code shortened by ~20 % over the R 0.85 code punctured by ~4 %: less decoder
        # CPU per key bit at the same f, and Bob's syndrome estimate keeps more checks)
        cost = (5 * p - 4 * budget + 0.5 * s) / n
        if best is None or cost < best[0]:
            best = (cost, name, p, s, step, extra)
    if best is None:
        raise ValueError(f"QBER estimate {qber} is outside what the stored codes can reconcile")
    _, name, p, s, step, extra = best
    return FramePlan(name, p, s, step, max_reveals + extra)
