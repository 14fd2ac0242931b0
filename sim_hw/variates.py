"""Random variates for the photon simulation, from 64-bit counter-based words (numba).

Kept exact (not approximations of the distribution) because the simulation is tested against
closed forms at the 5-sigma level over ~1e6 clicks:

* ``uniform53``: a 53-bit uniform in (0, 1) from one word.
* ``standard_exponential``: the ziggurat of Marsaglia & Tsang (J. Stat. Softw. 5(8), 2000), 256
  layers, with the layer index and the abscissa taken from disjoint bits of one word (Doornik
  2005's remedy for the original's correlation). ~99 % of draws cost one word, a table look-up
  and a multiply; the geometric gaps of ``sim_hw.physics`` are ``floor(E / -log(1-p))``.
* ``standard_normal``: the same ziggurat for the normal density (sign from a separate bit, the
  tail by Marsaglia's method); Gaussian timing jitter keyed by (slot, detector).
* ``inverse_normal_cdf`` / ``normal_quantile``: Acklam's inverse normal CDF (with one Halley step
  on the tails) and a tabulated version on [0.05, 0.95]; kept for callers that need quantiles.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from sim_hw.symbols import mix64

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_INV53 = 1.0 / 9007199254740992.0  # 2^-53


@njit(cache=True, inline="always")
def uniform53(z: np.uint64) -> float:
    """Uniform in (0, 1) from the top 53 bits of ``z`` (never 0 or 1)."""
    return (np.int64(z >> np.uint64(11)) + 0.5) * _INV53


# --- exponential ziggurat ------------------------------------------------------------------
_ZIG_R = 7.69711747013104972  # right edge of the base layer
_ZIG_V = 0.0039496598225815571993  # area of each of the 256 layers


def _exp_ziggurat_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Layer widths b_i (b_0 virtual base width, b_1 = r, b_256 = 0): returns
    ``w = b_i / 2^53``, ``k = floor(2^53 b_{i+1} / b_i)`` and ``f = exp(-b_i)`` (f_256 = 1)."""
    b = np.empty(257)
    b[0] = _ZIG_V / math.exp(-_ZIG_R)
    b[1] = _ZIG_R
    for i in range(1, 255):
        b[i + 1] = -math.log(math.exp(-b[i]) + _ZIG_V / b[i])
    b[256] = 0.0
    w = b[:256] / 2.0**53
    k = np.floor(2.0**53 * b[1:] / b[:256]).astype(np.int64)
    f = np.exp(-b)
    f[256] = 1.0
    return w, k, f


ZIG_W, ZIG_K, ZIG_F = _exp_ziggurat_tables()


@njit(cache=True, inline="always")
def standard_exponential(state: np.uint64, w, k, f) -> tuple[float, np.uint64]:
    """An Exp(1) draw from the splitmix64 stream at ``state``; returns (value, new state)."""
    while True:
        state += _GOLDEN
        z = mix64(state)
        i = np.int64(z & np.uint64(0xFF))
        m = np.int64(z >> np.uint64(11))
        x = m * w[i]
        if m < k[i]:
            return x, state  # inside the layer's rectangle under the curve
        state += _GOLDEN
        u = uniform53(mix64(state))
        if i == 0:
            return _ZIG_R - math.log(u), state  # tail beyond r: memoryless
        if f[i] + u * (f[i + 1] - f[i]) < math.exp(-x):
            return x, state  # the wedge


# --- normal ziggurat ------------------------------------------------------------------------
_NZIG_R = 3.6541528853610088  # Marsaglia & Tsang's 256-layer normal ziggurat


def _normal_ziggurat_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """As ``_exp_ziggurat_tables`` for the half-normal density exp(-x^2/2); the layer area is
    ``r f(r) + sqrt(pi/2) erfc(r/sqrt 2)`` (base rectangle plus tail), closing at f = 1."""
    r = _NZIG_R
    area = r * math.exp(-r * r / 2) + math.sqrt(math.pi / 2) * math.erfc(r / math.sqrt(2))
    b = np.empty(257)
    b[0] = area / math.exp(-r * r / 2)
    b[1] = r
    for i in range(1, 255):
        b[i + 1] = math.sqrt(-2.0 * math.log(math.exp(-b[i] * b[i] / 2) + area / b[i]))
    b[256] = 0.0
    w = b[:256] / 2.0**53
    k = np.floor(2.0**53 * b[1:] / b[:256]).astype(np.int64)
    f = np.exp(-b * b / 2)
    f[256] = 1.0
    return w, k, f


NZIG_W, NZIG_K, NZIG_F = _normal_ziggurat_tables()


@njit(cache=True, inline="always")
def standard_normal(state: np.uint64, w, k, f) -> tuple[float, np.uint64]:
    """An N(0, 1) draw from the splitmix64 stream at ``state``; returns (value, new state).
    Bits 0-7 pick the layer, bit 8 the sign, bits 11-63 the abscissa."""
    while True:
        state += _GOLDEN
        z = mix64(state)
        i = np.int64(z & np.uint64(0xFF))
        sign = 1.0 - 2.0 * np.float64((z >> np.uint64(8)) & np.uint64(1))
        m = np.int64(z >> np.uint64(11))
        x = m * w[i]
        if m < k[i]:
            return sign * x, state
        if i == 0:  # tail beyond r (Marsaglia 1964)
            while True:
                state += _GOLDEN
                xx = -math.log(uniform53(mix64(state))) / _NZIG_R
                state += _GOLDEN
                yy = -math.log(uniform53(mix64(state)))
                if 2.0 * yy > xx * xx:
                    return sign * (_NZIG_R + xx), state
        state += _GOLDEN
        u = uniform53(mix64(state))
        if f[i] + u * (f[i + 1] - f[i]) < math.exp(-0.5 * x * x):
            return sign * x, state


# --- normal quantiles ----------------------------------------------------------------------
# Acklam's coefficients (relative error ~1e-9 before the Halley step).
_A = (
    -3.969683028665376e01,
    2.209460984245205e02,
    -2.759285104469687e02,
    1.383577518672690e02,
    -3.066479806614716e01,
    2.506628277459239e00,
)
_B = (
    -5.447609879822406e01,
    1.615858368580409e02,
    -1.556989798598866e02,
    6.680131188771972e01,
    -1.328068155288572e01,
)
_C = (
    -7.784894002430293e-03,
    -3.223964580411365e-01,
    -2.400758277161838e00,
    -2.549671058254315e00,
    4.374664141464968e00,
    2.938163982698783e00,
)
_D = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e00, 3.754408661907416e00)
_P_LOW = 0.02425  # fmt: skip


@njit(cache=True)
def inverse_normal_cdf(p: float) -> float:
    """Standard normal quantile of ``p`` in (0, 1), to ~1e-9 (tested against scipy)."""
    if p < _P_LOW or p > 1.0 - _P_LOW:
        q = math.sqrt(-2.0 * math.log(p if p < 0.5 else 1.0 - p))
        x = (((((_C[0] * q + _C[1]) * q + _C[2]) * q + _C[3]) * q + _C[4]) * q + _C[5]) / (
            (((_D[0] * q + _D[1]) * q + _D[2]) * q + _D[3]) * q + 1.0
        )
        x = x if p < 0.5 else -x
        # One Halley step (Acklam's refinement) to full double precision on the tails.
        e = 0.5 * math.erfc(-x / math.sqrt(2.0)) - p
        u = e * math.sqrt(2.0 * math.pi) * math.exp(x * x / 2.0)
        return x - u / (1.0 + x * u / 2.0)
    q = p - 0.5
    r = q * q
    num = (((((_A[0] * r + _A[1]) * r + _A[2]) * r + _A[3]) * r + _A[4]) * r + _A[5]) * q
    return num / (((((_B[0] * r + _B[1]) * r + _B[2]) * r + _B[3]) * r + _B[4]) * r + 1.0)


QUANTILE_TABLE_SIZE = 2048
_TABLE_LO, _TABLE_HI = 0.05, 0.95


def quantile_table() -> np.ndarray:
    """Normal quantiles at ``i / 2048``, i = 0..2048 (ends unused: only [0.05, 0.95] is read)."""
    grid = np.arange(QUANTILE_TABLE_SIZE + 1) / QUANTILE_TABLE_SIZE
    grid[0], grid[-1] = 0.5, 0.5  # never read; keeps the table finite
    return np.array([inverse_normal_cdf(p) for p in grid])


@njit(cache=True, inline="always")
def normal_quantile(u: float, table: np.ndarray) -> float:
    """Standard normal quantile: table interpolation on [0.05, 0.95], Acklam elsewhere."""
    if u >= _TABLE_LO and u <= _TABLE_HI:  # (a chained comparison compiles badly in numba)
        x = u * QUANTILE_TABLE_SIZE
        i = int(x)
        return table[i] + (x - i) * (table[i + 1] - table[i])
    return inverse_normal_cdf(u)
