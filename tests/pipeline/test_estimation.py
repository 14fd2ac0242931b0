"""Decoy bounds and finite-key length (Lim et al. 2014) against published and textbook figures."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.estimation import (
    ABORT_QBER,
    BlockCounts,
    DecoySettings,
    binary_entropy,
    decoy_bounds,
    key_length,
)
from qnode import linkmodel

# standards-and-physics.md §4.1, GYS with mu = 0.48: (L km, Y_1, e_1, R infinite decoy, R vac+0.1)
GYS_TABLE = [
    (0, 4.500e-02, 0.0330, 2.555e-03, 2.270e-03),
    (25, 1.344e-02, 0.0331, 7.544e-04, 6.670e-04),
    (50, 4.012e-03, 0.0332, 2.226e-04, 1.963e-04),
    (75, 1.199e-03, 0.0337, 6.435e-05, 5.646e-05),
    (100, 3.591e-04, 0.0352, 1.718e-05, 1.482e-05),
    (125, 1.084e-04, 0.0403, 3.206e-06, 2.493e-06),
    (140, 5.337e-05, 0.0479, 2.465e-07, None),  # vac + weak decoy: no key
]


def gys_counts(distance_km: float, mu=(0.48, 0.1, 0.0), pulses: float = 1e12):
    """Exact expected counts (Ma 2005 closed forms), the same statistics in both bases."""
    eta = 0.045 * 10 ** (-0.21 * distance_km / 10)
    p = (1 / 3, 1 / 3, 1 / 3)
    q = [linkmodel.gain_poisson(m, eta, 1.7e-6) for m in mu]
    e = [linkmodel.qber_poisson(m, eta, 1.7e-6, 0.033) for m in mu]
    n = np.array([pulses * pk * qk for pk, qk in zip(p, q, strict=True)])
    m = np.array([pulses * pk * qk * ek for pk, qk, ek in zip(p, q, e, strict=True)])
    return BlockCounts(n_x=n, n_z=n, m_z=m), DecoySettings(mu=mu, p_mu=p), q[0], e[0]


@pytest.mark.parametrize("row", GYS_TABLE, ids=lambda r: f"{r[0]}km")
def test_asymptotic_decoy_bounds_reproduce_gys_table(row) -> None:
    distance, y1_true, e1_true, _, r_vac_weak = row
    counts, cfg, q_mu, e_mu = gys_counts(distance)
    b = decoy_bounds(counts, cfg, finite=False)
    pulses = 1e12
    tau1 = sum(pk * mk * math.exp(-mk) for pk, mk in zip(cfg.p_mu, cfg.mu, strict=True))
    y1_low = b.s_x1 / (pulses * tau1)
    e1_up = b.v_z1 / b.s_z1
    assert y1_low <= y1_true * 1.001, "the single-photon yield bound must stay below the truth"
    assert e1_up >= e1_true * 0.999, "the single-photon error bound must stay above the truth"
    mu = cfg.mu[0]
    rate = 0.5 * (
        y1_low * mu * math.exp(-mu) * (1 - binary_entropy(e1_up))
        - 1.22 * q_mu * binary_entropy(e_mu)
    )
    if r_vac_weak is None:
        assert rate < 0
    else:
        assert rate == pytest.approx(r_vac_weak, rel=3e-3)


def test_finite_bounds_tend_to_asymptotic_ones() -> None:
    gaps = []
    for pulses in (1e8, 1e10, 1e12, 1e14):
        counts, cfg, _, _ = gys_counts(25, pulses=pulses)
        fin = decoy_bounds(counts, cfg, finite=True)
        asy = decoy_bounds(counts, cfg, finite=False)
        assert fin.s_x1 <= asy.s_x1 and fin.phi_x >= asy.phi_x
        gaps.append(1 - fin.s_x1 / asy.s_x1)
    assert all(a > b for a, b in zip(gaps, gaps[1:], strict=False)), gaps
    assert gaps[-1] < 1e-3


def lim_counts(n_x: float, distance_km: float, e_mis: float = 0.005):
    """Expected counts of a block of n_X key-basis detections, Lim 2014's system model."""
    eta = 0.1 * 10 ** (-0.2 * distance_km / 10)
    mu, p, q_x = (0.41, 0.22, 2e-4), (0.38, 0.44, 0.18), 0.86  # near the n_X = 1e7 optimum
    r = np.array([linkmodel.lim_detection_prob(m, eta, 6e-7, 0.04) for m in mu])
    e = np.array([linkmodel.lim_error_prob(m, eta, 6e-7, 0.04, e_mis) for m in mu])
    pulses = n_x / (q_x**2 * np.dot(p, r))
    counts = BlockCounts(
        n_x=pulses * q_x**2 * np.array(p) * r,
        n_z=pulses * (1 - q_x) ** 2 * np.array(p) * r,
        m_z=pulses * (1 - q_x) ** 2 * np.array(p) * e,
    )
    qber = float(np.dot(p, e) / np.dot(p, r))
    return counts, DecoySettings(mu=mu, p_mu=p, eps_sec=1e-10, eps_cor=1e-15), qber


@settings(max_examples=40, deadline=None)
@given(
    distance=st.floats(0, 150),
    e_mis=st.floats(0, 0.06),
    exponents=st.lists(st.floats(3.5, 10), min_size=2, max_size=5),
)
def test_key_length_is_monotonic_in_block_size(distance, e_mis, exponents) -> None:
    lengths = []
    for n_x in sorted(10**x for x in exponents):
        counts, cfg, qber = lim_counts(n_x, distance, e_mis)
        result = key_length(counts, cfg, 1.16 * n_x * binary_entropy(qber))
        assert result.length >= 0
        lengths.append(result.length)
    assert lengths == sorted(lengths), f"key length not monotonic in n_X: {lengths}"


def test_key_length_positive_for_good_links_and_zero_when_qber_too_high() -> None:
    counts, cfg, qber = lim_counts(1e7, 50)
    good = key_length(counts, cfg, 1.16 * 1e7 * binary_entropy(qber))
    assert good.length > 1e6 and not good.aborted
    for n_x in (1e4, 1e6, 1e9):  # QBER ~ 10 %: below the abort threshold, but no key
        counts, cfg, qber = lim_counts(n_x, 20, e_mis=0.085)
        assert 0.09 < qber < ABORT_QBER
        res = key_length(counts, cfg, 1.16 * n_x * binary_entropy(qber))
        assert res.length == 0 and not res.aborted and res.value < 0


def test_qber_above_threshold_aborts_whatever_the_formula_says() -> None:
    counts, cfg, qber = lim_counts(1e9, 10, e_mis=0.125)
    assert qber > ABORT_QBER
    res = key_length(counts, cfg, leaked_bits=0.0)  # formula alone would give key
    assert res.value > 0 and res.length == 0 and res.aborted and "QBER" in res.reason
    counts, cfg, _ = lim_counts(1e9, 10)
    res = key_length(counts, cfg, leaked_bits=0.0, qber_x=0.12)  # reconciliation saw it
    assert res.aborted and res.length == 0


def test_leak_is_paid_bit_for_bit() -> None:
    counts, cfg, _ = lim_counts(1e8, 30)
    a = key_length(counts, cfg, 1_000_000)
    b = key_length(counts, cfg, 1_000_000 + 4096)
    assert a.value - b.value == pytest.approx(4096)


@settings(max_examples=60, deadline=None)
@given(
    n=st.lists(st.integers(0, 10**7), min_size=6, max_size=6),
    err=st.lists(st.floats(0, 1), min_size=3, max_size=3),
    leak=st.floats(0, 1e7),
)
def test_key_length_never_negative(n, err, leak) -> None:
    n_z = np.array(n[3:])
    m_z = np.floor(n_z * np.array(err))
    if sum(n[:3]) == 0 or n_z.sum() == 0:
        return
    counts = BlockCounts(n_x=np.array(n[:3]), n_z=n_z, m_z=m_z)
    res = key_length(counts, DecoySettings(mu=(0.5, 0.1, 0.0), p_mu=(0.8, 0.1, 0.1)), leak)
    assert res.length >= 0 and isinstance(res.length, int)
    assert res.length <= max(res.value, 0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n_x=[1, 2], n_z=[1, 1, 1], m_z=[0, 0, 0]), "3 per-intensity"),
        (dict(n_x=[1, -2, 3], n_z=[1, 1, 1], m_z=[0, 0, 0]), "non-negative"),
        (dict(n_x=[1, 2, 3], n_z=[1, 1, 1], m_z=[0, 2, 0]), "more Z errors"),
        (dict(n_x=[0, 0, 0], n_z=[1, 1, 1], m_z=[0, 0, 0]), "empty block"),
        (dict(n_x=[1, 1, 1], n_z=[0, 0, 0], m_z=[0, 0, 0]), "no test-basis"),
        (dict(n_x=[1, np.nan, 1], n_z=[1, 1, 1], m_z=[0, 0, 0]), "finite"),
    ],
)
def test_bad_counts_raise(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        BlockCounts(**kwargs)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(mu=(0.5, 0.45, 0.1), p_mu=(0.8, 0.1, 0.1)), "mu1 > mu2 \\+ mu3"),
        (dict(mu=(0.5, 0.1, 0.1), p_mu=(0.8, 0.1, 0.1)), "mu2 > mu3"),
        (dict(mu=(0.5, 0.1, 0.0), p_mu=(0.8, 0.1, 0.2)), "summing to 1"),
        (dict(mu=(0.5, 0.1, 0.0), p_mu=(1.0, 0.0, 0.0)), "in \\(0, 1\\)"),
        (dict(mu=(0.5, 0.1, 0.0), p_mu=(0.8, 0.1, 0.1), eps_sec=0.0), "eps_sec"),
    ],
)
def test_bad_settings_raise(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        DecoySettings(**kwargs)


def test_bad_key_length_arguments_raise() -> None:
    counts, cfg, _ = lim_counts(1e6, 10)
    for kwargs, match in (
        (dict(leaked_bits=-1.0), "leaked_bits"),
        (dict(leaked_bits=math.inf), "leaked_bits"),
        (dict(leaked_bits=0.0, qber_x=0.7), "qber_x"),
        (dict(leaked_bits=0.0, qber_x=-0.1), "qber_x"),
    ):
        with pytest.raises(ValueError, match=match):
            key_length(counts, cfg, **kwargs)
