"""Parameter estimation and finite-key length: Lim, Curty, Walenta, Xu, Zbinden, PRA 89, 022307
(2014), Eqs. (1)-(5), for decoy-state BB84 with three intensities mu1 > mu2 + mu3, mu2 > mu3 >= 0.

Key basis X (Lim's naming, also ours: see :mod:`pipeline.sifting`); Z is the test basis. Inputs
are the per-intensity counts of a block: key-basis detections ``n_x``, test-basis detections
``n_z`` and test-basis errors ``m_z``. The same core works on exact expected counts (floats,
numpy arrays broadcast elementwise) for the key-rate model in :mod:`pipeline.keyrate`; with
``finite=False`` the Hoeffding and gamma terms are dropped, which gives the asymptotic decoy
estimators (with mu3 = 0 they reduce to Ma et al. 2005's vacuum + weak decoy bounds).

``leaked_bits`` is everything disclosed about the key: the reconciliation leak (syndrome minus
punctured plus revealed bits) *and* the verification tag, which is counted as leaked
(arXiv:2507.21416). Lim's ``log2(2/eps_cor)`` term is kept on top, so the tag is paid twice:
conservative by a few dozen bits per block.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

ABORT_QBER = 0.11  # above this QBER (either basis) a block yields no key at all
_LN2 = math.log(2.0)


def binary_entropy(p: Any) -> Any:
    """h(p) = -p log2 p - (1-p) log2(1-p), with h(0) = h(1) = 0 (scalars or arrays)."""
    p = np.clip(np.asarray(p, dtype=float), 0.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -p * np.log2(p) - (1.0 - p) * np.log2(1.0 - p)
    h = np.where((p <= 0.0) | (p >= 1.0), 0.0, h)
    return float(h) if h.ndim == 0 else h


@dataclass(frozen=True)
class DecoySettings:
    """The intensities and class probabilities the block was sent with, and the security
    parameters of the finite-key statement (epsilon_sec for secrecy, epsilon_cor for
    correctness)."""

    mu: tuple[float, float, float]
    p_mu: tuple[float, float, float]
    eps_sec: float = 1e-10
    eps_cor: float = 1e-12

    def __post_init__(self) -> None:
        mu1, mu2, mu3 = (float(m) for m in self.mu)
        if len(self.mu) != 3 or len(self.p_mu) != 3:
            raise ValueError("mu and p_mu need three entries (signal, decoy, vacuum)")
        if not (mu3 >= 0.0 and mu2 > mu3 and mu1 > mu2 + mu3):
            raise ValueError(
                f"intensities must satisfy mu1 > mu2 + mu3, mu2 > mu3 >= 0 (got {self.mu})"
            )
        if any(not 0.0 < p < 1.0 for p in self.p_mu) or abs(sum(self.p_mu) - 1.0) > 1e-9:
            raise ValueError(
                f"p_mu must be three probabilities in (0, 1) summing to 1: {self.p_mu}"
            )
        for name in ("eps_sec", "eps_cor"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in (0, 1), got {getattr(self, name)}")


@dataclass(frozen=True)
class BlockCounts:
    """Per-intensity counts of one block (index 0 signal, 1 decoy, 2 vacuum)."""

    n_x: np.ndarray  # key-basis (X) detections
    n_z: np.ndarray  # test-basis (Z) detections
    m_z: np.ndarray  # test-basis errors

    def __post_init__(self) -> None:
        for name in ("n_x", "n_z", "m_z"):
            arr = np.asarray(getattr(self, name), dtype=float)
            if arr.shape != (3,):
                raise ValueError(f"{name} needs 3 per-intensity counts, got shape {arr.shape}")
            if not np.isfinite(arr).all() or (arr < 0).any():
                raise ValueError(f"{name} must be finite and non-negative, got {arr}")
            object.__setattr__(self, name, arr)
        if (self.m_z > self.n_z).any():
            raise ValueError(f"more Z errors than Z detections: m_z={self.m_z}, n_z={self.n_z}")
        if self.n_x.sum() <= 0:
            raise ValueError("empty block: no key-basis detections")
        if self.n_z.sum() <= 0:
            raise ValueError("no test-basis detections: the phase error cannot be bounded")

    @classmethod
    def from_counts(cls, counts: np.ndarray, test_errors: np.ndarray) -> BlockCounts:
        """From sifting's [basis, intensity] counts (basis 0 = Z, 1 = X) and Z errors."""
        counts = np.asarray(counts)
        if counts.shape != (2, 3):
            raise ValueError(f"counts must have shape (2, 3), got {counts.shape}")
        return cls(n_x=counts[1], n_z=counts[0], m_z=np.asarray(test_errors))

    @property
    def qber_z(self) -> float:
        """Observed test-basis error rate."""
        return float(self.m_z.sum() / self.n_z.sum())


@dataclass(frozen=True)
class DecoyBounds:
    """Lim 2014 Eqs. (2)-(5): vacuum and single-photon detections in X and Z (lower bounds),
    single-photon errors in Z (upper bound) and the phase-error rate of X's single photons."""

    s_x0: Any
    s_x1: Any
    s_z0: Any
    s_z1: Any
    v_z1: Any
    phi_x: Any


@dataclass(frozen=True)
class KeyLength:
    """Outcome of the finite-key formula for one block."""

    length: int  # bits of secret key to extract (0: none)
    value: float  # the bracket of Eq. (1) before flooring (may be negative)
    bounds: DecoyBounds
    leaked_bits: float
    qber_z: float
    qber_x: float | None
    aborted: bool  # QBER above the abort threshold: no key at all
    reason: str = field(default="")


def _tau(n: int, mu: tuple, p: tuple) -> Any:
    """Probability that Alice sends n photons: sum_k p_k e^-mu_k mu_k^n / n!."""
    return sum(pk * np.exp(-mk) * mk**n / math.factorial(n) for mk, pk in zip(mu, p, strict=True))


def _hoeffding(counts: tuple, mu: tuple, p: tuple, delta: Any) -> tuple[list, list]:
    """n-+_k = (e^mu_k / p_k) (n_k -+ delta): Eq. (2)'s finite-size corrected counts."""
    lo = [np.exp(mk) / pk * (nk - delta) for nk, mk, pk in zip(counts, mu, p, strict=True)]
    hi = [np.exp(mk) / pk * (nk + delta) for nk, mk, pk in zip(counts, mu, p, strict=True)]
    return lo, hi


def _vacuum_and_single(counts: tuple, mu: tuple, p: tuple, delta: Any) -> tuple[Any, Any]:
    """Eqs. (2)-(3): lower bounds on vacuum and single-photon detections in one basis."""
    mu1, mu2, mu3 = mu
    lo, hi = _hoeffding(counts, mu, p, delta)
    tau0, tau1 = _tau(0, mu, p), _tau(1, mu, p)
    s0 = np.maximum(tau0 * (mu2 * lo[2] - mu3 * hi[1]) / (mu2 - mu3), 0.0)
    s1 = (
        tau1
        * mu1
        * (lo[1] - hi[2] - (mu2**2 - mu3**2) / mu1**2 * (hi[0] - s0 / tau0))
        / (mu1 * (mu2 - mu3) - mu2**2 + mu3**2)
    )
    return s0, np.maximum(s1, 0.0)


def gamma(a: Any, b: Any, c: Any, d: Any) -> Any:
    """Lim 2014 Eq. (5)'s random-sampling term gamma(eps_sec, phi, s_Z1, s_X1)."""
    b = np.clip(b, 1e-15, 0.5)
    cd = c * d
    arg = (c + d) / (cd * (1.0 - b) * b) * (21.0**2 / a**2)
    return np.sqrt(np.maximum((c + d) * (1.0 - b) * b / (cd * _LN2) * np.log2(arg), 0.0))


def decoy_core(
    n_x: tuple, n_z: tuple, m_z: tuple, mu: tuple, p: tuple, eps_sec: Any, finite: bool = True
) -> DecoyBounds:
    """Eqs. (2)-(5) on counts given per intensity (floats or broadcastable arrays), unchecked."""
    ln_term = np.log(21.0 / eps_sec)
    if finite:
        d_x = np.sqrt(sum(n_x) / 2.0 * ln_term)
        d_z = np.sqrt(sum(n_z) / 2.0 * ln_term)
        d_m = np.sqrt(sum(m_z) / 2.0 * ln_term)
    else:
        d_x = d_z = d_m = 0.0
    s_x0, s_x1 = _vacuum_and_single(n_x, mu, p, d_x)
    s_z0, s_z1 = _vacuum_and_single(n_z, mu, p, d_z)
    m_lo, m_hi = _hoeffding(m_z, mu, p, d_m)
    mu1, mu2, mu3 = mu
    v_z1 = np.maximum(_tau(1, mu, p) * (m_hi[1] - m_lo[2]) / (mu2 - mu3), 0.0)
    ok = (s_z1 > 0) & (s_x1 > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(ok, v_z1 / np.where(ok, s_z1, 1.0), 0.5)
        phi = ratio
        if finite:
            g = gamma(eps_sec, ratio, np.where(ok, s_z1, 1.0), np.where(ok, s_x1, 1.0))
            phi = ratio + g
    phi = np.where(ok, np.minimum(phi, 0.5), 0.5)
    return DecoyBounds(s_x0, s_x1, s_z0, s_z1, v_z1, phi)


def key_length_core(bounds: DecoyBounds, leaked_bits: Any, eps_sec: Any, eps_cor: Any) -> Any:
    """The bracket of Eq. (1) before flooring (may be negative)."""
    return (
        bounds.s_x0
        + bounds.s_x1 * (1.0 - binary_entropy(bounds.phi_x))
        - leaked_bits
        - 6.0 * np.log2(21.0 / eps_sec)
        - np.log2(2.0 / eps_cor)
    )


def decoy_bounds(counts: BlockCounts, settings: DecoySettings, finite: bool = True) -> DecoyBounds:
    """Lim 2014 Eqs. (2)-(5) for a block's counts (``finite=False``: asymptotic estimators)."""
    b = decoy_core(
        tuple(counts.n_x), tuple(counts.n_z), tuple(counts.m_z),
        tuple(settings.mu), tuple(settings.p_mu), settings.eps_sec, finite,
    )  # fmt: skip
    return DecoyBounds(*(float(getattr(b, f)) for f in DecoyBounds.__dataclass_fields__))


def key_length(
    counts: BlockCounts,
    settings: DecoySettings,
    leaked_bits: float,
    *,
    qber_x: float | None = None,
    abort_qber: float = ABORT_QBER,
) -> KeyLength:
    """Secret key length of a block, Lim 2014 Eq. (1); never negative.

    ``leaked_bits``: reconciliation leak plus the verification tag. ``qber_x``: the key-basis
    error rate found by reconciliation, if known. A QBER above ``abort_qber`` in either basis
    aborts the block (length 0, ``aborted``), whatever the formula would say.
    """
    if not isinstance(counts, BlockCounts) or not isinstance(settings, DecoySettings):
        raise ValueError("key_length needs BlockCounts and DecoySettings")
    if not math.isfinite(leaked_bits) or leaked_bits < 0:
        raise ValueError(f"leaked_bits must be finite and non-negative, got {leaked_bits}")
    if qber_x is not None and not 0.0 <= qber_x <= 0.5:
        raise ValueError(f"qber_x must be in [0, 0.5], got {qber_x}")
    if not 0.0 < abort_qber <= 0.5:
        raise ValueError(f"abort_qber must be in (0, 0.5], got {abort_qber}")
    bounds = decoy_bounds(counts, settings)
    value = float(key_length_core(bounds, leaked_bits, settings.eps_sec, settings.eps_cor))
    qz = counts.qber_z
    common = dict(value=value, bounds=bounds, leaked_bits=leaked_bits, qber_z=qz, qber_x=qber_x)
    if qz > abort_qber or (qber_x is not None and qber_x > abort_qber):
        worst = max(qz, qber_x or 0.0)
        return KeyLength(0, aborted=True, reason=f"QBER {worst:.4f} > {abort_qber}", **common)
    if value < 1.0:
        return KeyLength(0, aborted=False, reason="finite-key bound gives no key", **common)
    return KeyLength(int(math.floor(value)), aborted=False, **common)
