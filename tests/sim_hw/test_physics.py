"""The photon simulation against the closed forms, and its mechanics (reproducibility, dead
time, afterpulses, jitter, light off, parameter updates)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from numba import njit

from qnode import linkmodel as lm
from sim_hw.physics import LinkSimulator
from sim_hw.stats import simulate_stats
from sim_hw.symbols import decode, symbols_for_slots
from sim_hw.variates import (
    NZIG_F,
    NZIG_K,
    NZIG_W,
    ZIG_F,
    ZIG_K,
    ZIG_W,
    inverse_normal_cdf,
    normal_quantile,
    quantile_table,
    standard_exponential,
    standard_normal,
)

SIGMAS = 5.0


def _check(observed: int, n: int, p: float, what: str, rel_model: float = 0.0) -> None:
    """Binomial tolerance around the model (plus ``rel_model`` for first-order models)."""
    expected = n * p
    tol = SIGMAS * math.sqrt(max(n * p * (1 - p), 1.0)) + rel_model * expected
    assert abs(observed - expected) <= tol, (
        f"{what}: observed {observed}, model {expected:.1f} (tolerance {tol:.1f})"
    )


# (preset, distance km, pulses): ~1e4..1e5 signal clicks each, the file in a few seconds.
CASES = [
    ("gys", 0, 5_000_000),
    ("gys", 50, 50_000_000),
    ("gys", 100, 200_000_000),
    ("gys", 140, 400_000_000),
    ("lim2014", 0, 5_000_000),
    ("lim2014", 75, 100_000_000),
    ("lim2014", 140, 400_000_000),
    ("snspd", 0, 2_000_000),
    ("snspd", 50, 4_000_000),
    ("snspd", 140, 100_000_000),
    ("lim2014+raman", 25, 20_000_000),
    ("snspd+raman", 80, 20_000_000),
]
# Co-propagating classical channel (reference §4.4): -10 dBm launch forward, -20 dBm backward.
RAMAN = {
    "lim2014+raman": {"classical_power_dbm": -10.0},
    "snspd+raman": {"classical_power_dbm": -20.0, "raman_direction": "backward"},
}


@pytest.mark.parametrize(("name", "km", "pulses"), CASES, ids=lambda v: str(v))
def test_simulation_matches_closed_forms(name: str, km: float, pulses: int) -> None:
    fibre = {"length_km": km, **RAMAN.get(name, {})}
    params = lm.preset(name.split("+")[0]).with_changes(fibre=fibre)
    if name in RAMAN:  # the noise must matter for the case to test anything
        assert lm.noise_probs(params)[0] > 10 * params.receiver.dark_count_prob
    stats = simulate_stats(params, pulses, seed=11)
    model = lm.expected_stats(params)
    # Dead time and afterpulses are modelled to first order (renewal argument).
    rel = 0.0 if params.receiver.dead_time_ns == 0 else 0.003
    for cls, got in stats["classes"].items():
        m, n = model[cls], got["pulses"]
        where = f"{name} {km} km {cls}"
        _check(got["detections"], n, m.gain, f"{where} detections", rel)
        _check(got["sifted"], n, m.sifted, f"{where} sifted", rel)
        _check(got["errors"], n, m.errors, f"{where} errors", rel)


def test_gys_signal_gain_and_qber_match_table_at_50km() -> None:
    """Reference §4.1: Q_mu = 1.925e-3 and E_mu = 3.34 % at 50 km, mu = 0.48."""
    params = lm.preset("gys").with_changes(
        source={"p_signal": 1.0, "p_decoy": 0.0, "p_vacuum": 0.0}, fibre={"length_km": 50}
    )
    got = simulate_stats(params, 100_000_000, seed=5)["classes"]["signal"]
    n = got["pulses"]
    assert n == 100_000_000
    _check(got["detections"], n, 1.925e-3, "Q_mu at 50 km", rel_model=0.0003)
    sifted = got["sifted"]
    _check(got["errors"], sifted, 0.0334, "E_mu at 50 km", rel_model=0.0015)


def test_reproducible_and_independent_of_call_split() -> None:
    params = lm.preset("lim2014").with_distance(5)  # afterpulses on
    whole = LinkSimulator(params, key=3, seed=9).simulate(1000, 2_000_000)
    sim = LinkSimulator(params, key=3, seed=9)
    pieces, pos = [], 1000
    for n in (1, 65_535, 70_000, 1_000_000, 864_464):
        pieces.append(sim.simulate(pos, n))
        pos += n
    split = [np.concatenate(x) for x in zip(*pieces, strict=True)]
    assert whole.slot.size > 10_000
    for a, b in zip(whole, split, strict=True):
        assert np.array_equal(a, b)
    again = LinkSimulator(params, key=3, seed=9).simulate(1000, 2_000_000)
    assert all(np.array_equal(a, b) for a, b in zip(whole, again, strict=True))
    other = LinkSimulator(params, key=3, seed=10).simulate(1000, 2_000_000)
    assert not np.array_equal(whole.slot[:100], other.slot[:100])


def test_output_format_sorted_and_stamped() -> None:
    params = lm.preset("snspd").with_changes(
        fibre={"length_km": 20}, receiver={"cable_delay_ps": 1234}
    )
    sim = LinkSimulator(params, key=1, seed=2)
    det = sim.simulate(10_000, 1_000_000)
    assert det.slot.dtype == np.int64 and det.time_ps.dtype == np.int64
    assert det.channel.dtype == np.uint8
    assert set(np.unique(det.channel)) == {1, 2, 3, 4}
    assert det.slot.min() >= 10_000 and det.slot.max() < 1_010_000
    assert np.all(np.diff(det.time_ps) >= 0)
    assert sim.period_ps == 1000.0
    assert sim.delay_ps == round(20 * lm.FIBRE_DELAY_PS_PER_KM) + 1234
    jitter = det.time_ps - det.slot * 1000 - sim.delay_ps
    assert abs(jitter.mean()) < 5 * 30 / math.sqrt(jitter.size)
    assert jitter.std() == pytest.approx(30.0, rel=0.02)
    # Alice's symbols come from sim_hw.symbols: Z clicks mostly agree with Z symbols' bits.
    src = params.source
    basis, bit, _ = decode(symbols_for_slots(1, det.slot, src.p_basis_z, src.p_signal, src.p_decoy))
    z = (det.channel <= 2) & (basis == 0)
    assert np.mean((det.channel[z] - 1) != bit[z]) < 0.03


def test_dead_time_and_afterpulse_timing() -> None:
    """Light off, many dark counts, strong afterpulsing: check the per-detector sequence."""
    params = lm.preset("snspd").with_changes(
        receiver={"dark_count_prob": 2e-3, "afterpulse_prob": 0.3, "dead_time_ns": 20,
                  "afterpulse_window_ns": 5},
    )  # fmt: skip
    sim = LinkSimulator(params, key=1, seed=4)
    sim.light_on = False
    det = sim.simulate(0, 20_000_000)
    n_dead, window = lm.dead_slots(params), lm.afterpulse_window_slots(params)
    assert (n_dead, window) == (19, 5)
    after = []
    for ch in range(1, 5):
        s = np.sort(det.slot[det.channel == ch])
        gaps = np.diff(s)
        assert gaps.min() > n_dead, f"channel {ch} clicked inside its dead time"
        after.append(gaps)
    gaps = np.concatenate(after)
    # Afterpulses pile up right after the dead time: gaps n_dead+1 .. n_dead+window.
    in_window = np.count_nonzero(gaps <= n_dead + window)
    m = lm.expected_stats(params, light_on=False)
    total = sum(params.source.p_class(k) * m[c].gain for k, c in enumerate(lm.CLASSES))
    assert det.slot.size == pytest.approx(total * 20_000_000, rel=0.03)
    # Dark counts per gated slot 2e-3 with Bob's basis 0.9/0.1: most gaps come from dark counts
    # (geometric), the afterpulse share is about p_ap of all clicks.
    assert in_window / gaps.size == pytest.approx(0.3 / 1.3, rel=0.15)


def test_light_off_gives_dark_counts_only() -> None:
    params = lm.preset("lim2014").with_changes(
        fibre={"length_km": 0, "classical_power_dbm": 0.0},
        receiver={"afterpulse_prob": 0.0, "dark_count_prob": 1e-4},
    )
    sim = LinkSimulator(params, key=1, seed=1)
    sim.light_on = False
    n = 20_000_000
    dark = sim.simulate(0, n)
    # Exactly two gated detectors per slot, each 1e-4.
    _check(dark.slot.size, n, 1 - (1 - 1e-4) ** 2, "dark clicks", rel_model=1e-3)
    sim.light_on = True
    lit = sim.simulate(n, 1_000_000)
    assert lit.slot.size > 50 * dark.slot.size / 20


def test_update_changes_rates_between_calls() -> None:
    params = lm.preset("gys").with_distance(0)
    sim = LinkSimulator(params, key=2, seed=2)
    before = sim.simulate(0, 2_000_000).slot.size
    sim.update(params.with_changes(fibre={"extra_loss_db": 10.0}))
    after = sim.simulate(2_000_000, 2_000_000).slot.size
    assert after == pytest.approx(before / 10, rel=0.1)
    with pytest.raises(TypeError):
        sim.update({"fibre": {}})


def test_new_run_and_bad_arguments() -> None:
    params = lm.preset("snspd")
    sim = LinkSimulator(params, key=2, seed=2)
    first = sim.simulate(0, 500_000)
    again = sim.simulate(0, 500_000)  # starting over: a new run, same detections
    assert np.array_equal(first.time_ps, again.time_ps)
    with pytest.raises(ValueError, match="first_slot"):
        sim.simulate(-1, 10)
    with pytest.raises(ValueError, match="seed"):
        LinkSimulator(params, key=2, seed=-3)
    with pytest.raises(ValueError, match="key"):
        LinkSimulator(params, key=2**64, seed=1)
    assert sim.simulate(10**6, 0).slot.size == 0


def test_inverse_normal_cdf_accuracy() -> None:
    from scipy.special import ndtri

    p = np.concatenate([np.linspace(1e-9, 1 - 1e-9, 20001), np.logspace(-15, -2, 200)])
    got = np.array([inverse_normal_cdf(v) for v in p])
    assert np.max(np.abs(got - ndtri(p))) < 1e-8


def test_tabulated_normal_quantile_accuracy() -> None:
    from scipy.special import ndtri

    table = quantile_table()
    p = np.concatenate([np.linspace(1e-9, 1 - 1e-9, 50001), [0.05, 0.95, 0.5]])
    got = np.array([normal_quantile(v, table) for v in p])
    assert np.max(np.abs(got - ndtri(p))) < 1e-5


@njit(cache=True)
def _exponentials(n, seed):
    out = np.empty(n)
    state = np.uint64(seed)
    for i in range(n):
        out[i], state = standard_exponential(state, ZIG_W, ZIG_K, ZIG_F)
    return out


def test_ziggurat_exponential_is_exp1() -> None:
    """Bins (including the base layer's tail beyond r = 7.697) against exp(-x) within 5 sigma."""
    x = _exponentials(4_000_000, 77)
    edges = np.array([0, 0.01, 0.1, 0.5, 1, 2, 3, 5, 7.697, 9, np.inf])
    observed, _ = np.histogram(x, edges)
    expected = np.diff(1 - np.exp(-edges)) * x.size
    z = (observed - expected) / np.sqrt(expected)
    assert np.all(np.abs(z) < 5), z
    assert abs(x.mean() - 1) < 5 / np.sqrt(x.size)


def test_update_widening_afterpulse_window_keeps_state_consistent() -> None:
    base = lm.preset("lim2014").with_changes(
        fibre={"length_km": 0},
        receiver={"afterpulse_prob": 0.5, "afterpulse_window_ns": 1, "dead_time_ns": 0},
    )
    sim = LinkSimulator(base, key=1, seed=1)
    first = sim.simulate(0, 200_000)
    wide = base.with_changes(receiver={"afterpulse_window_ns": 2000})
    sim.update(wide)
    second = sim.simulate(200_000, 2_000_000)
    # No afterpulse lost or duplicated: the clicks follow the model of the new parameters.
    m = lm.expected_stats(wide)
    per_slot = sum(wide.source.p_class(k) * m[c].gain for k, c in enumerate(lm.CLASSES))
    assert first.slot.size > 1000
    assert second.slot.size == pytest.approx(per_slot * 2_000_000 * 1.0, rel=0.03)


@njit(cache=True)
def _normals(n, seed):
    out = np.empty(n)
    state = np.uint64(seed)
    for i in range(n):
        out[i], state = standard_normal(state, NZIG_W, NZIG_K, NZIG_F)
    return out


def test_ziggurat_normal_is_n01() -> None:
    """Bins (including the tail beyond r = 3.654) against the normal CDF within 5 sigma."""
    from scipy.special import ndtr

    x = _normals(4_000_000, 91)
    edges = np.array(
        [-np.inf, -4.5, -3.6542, -3, -2, -1, -0.3, 0, 0.3, 1, 2, 3, 3.6542, 4.5, np.inf]
    )
    observed, _ = np.histogram(x, edges)
    expected = np.diff(ndtr(edges)) * x.size
    z = (observed - expected) / np.sqrt(expected)
    assert np.all(np.abs(z) < 5), z
    assert abs(x.mean()) < 5 / np.sqrt(x.size)
    assert abs(x.var() - 1) < 5 * np.sqrt(2 / x.size)
