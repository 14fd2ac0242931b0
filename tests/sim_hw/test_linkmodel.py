"""Link parameters and closed forms: validation, presets, the GYS table (reference §4.1)."""

from __future__ import annotations

import math

import pytest

from qnode import linkmodel as lm

# Reference §4.1 validation table, GYS, mu = 0.48: L, eta, Q_mu, E_mu %, Y_1, e_1 %, Q_1.
GYS_TABLE = [
    (0, 4.500e-02, 2.137e-02, 3.30, 4.500e-02, 3.30, 1.337e-02),
    (25, 1.343e-02, 6.429e-03, 3.31, 1.344e-02, 3.31, 3.991e-03),
    (50, 4.011e-03, 1.925e-03, 3.34, 4.012e-03, 3.32, 1.192e-03),
    (75, 1.197e-03, 5.763e-04, 3.44, 1.199e-03, 3.37, 3.561e-04),
    (100, 3.574e-04, 1.733e-04, 3.76, 3.591e-04, 3.52, 1.067e-04),
    (125, 1.067e-04, 5.292e-05, 4.80, 1.084e-04, 4.03, 3.220e-05),
    (140, 5.167e-05, 2.650e-05, 6.30, 5.337e-05, 4.79, 1.585e-05),
]
Y0, E_DET, MU = 1.7e-6, 0.033, 0.48


def _sig(x: float, digits: int = 4) -> float:
    return float(f"{x:.{digits - 1}e}")


@pytest.mark.parametrize("row", GYS_TABLE, ids=lambda r: f"{r[0]}km")
def test_textbook_forms_reproduce_gys_table(row: tuple) -> None:
    length, eta_t, q_t, e_t, y1_t, e1_t, q1_t = row
    p = lm.preset("gys").with_distance(length)
    eta = lm.total_transmittance(p)
    assert _sig(eta) == eta_t
    assert _sig(lm.gain_poisson(MU, eta, Y0)) == q_t
    assert round(100 * lm.qber_poisson(MU, eta, Y0, E_DET), 2) == e_t
    assert _sig(lm.yield_n(1, eta, Y0)) == y1_t
    assert round(100 * lm.error_n(1, eta, Y0, E_DET), 2) == e1_t
    assert _sig(lm.yield_n(1, eta, Y0) * MU * math.exp(-MU)) == q1_t


@pytest.mark.parametrize("row", GYS_TABLE, ids=lambda r: f"{r[0]}km")
def test_detailed_model_of_gys_preset_matches_table(row: tuple) -> None:
    """The simulator's own model (two detectors, Poisson splitting) agrees with the table."""
    length, _, q_t, e_t, *_ = row
    p = lm.preset("gys").with_changes(source={"mu_signal": MU}, fibre={"length_km": length})
    m = lm.expected_stats(p)["signal"]
    assert _sig(m.gain) == q_t
    assert round(100 * m.qber, 2) == e_t
    assert m.sifted == pytest.approx(m.gain / 2, rel=1e-9)  # p_basis_z = 1/2 on both sides


def test_lim_forms_and_model_without_afterpulse_spread() -> None:
    """Without afterpulses the detailed model equals Lim's D_k and e_k (eta_sys version)."""
    p = lm.preset("lim2014").with_changes(
        receiver={"afterpulse_prob": 0.0}, source={"p_basis_z": 0.5}
    )
    eta = lm.total_transmittance(p)
    m = lm.expected_stats(p)
    pdc = p.receiver.dark_count_prob
    for k, name in enumerate(lm.CLASSES):
        mu = p.source.mu(k)
        assert m[name].gain == pytest.approx(lm.lim_detection_prob(mu, eta, pdc, 0.0), rel=2e-3)
        e_lim = lm.lim_error_prob(mu, eta, pdc, 0.0, p.receiver.misalignment)
        assert m[name].errors / 0.5 == pytest.approx(e_lim, rel=2e-2)


def test_afterpulses_add_class_independent_rate() -> None:
    p = lm.preset("lim2014")
    with_ap = lm.expected_stats(p)
    without = lm.expected_stats(p, afterpulses=False)
    extra = [with_ap[c].gain - without[c].gain for c in lm.CLASSES]
    assert extra[0] > 0
    assert extra[0] == pytest.approx(extra[2], rel=0.02)
    # First order: total extra rate is p_ap times the mean click rate.
    mean_gain = sum(p.source.p_class(k) * without[c].gain for k, c in enumerate(lm.CLASSES))
    assert extra[1] == pytest.approx(0.04 * mean_gain, rel=0.02)


def test_dead_time_reduces_gain_by_renewal_factor() -> None:
    p = lm.preset("snspd").with_distance(0)
    live = lm.expected_stats(p)
    ideal = lm.expected_stats(p, dead_time=False)
    assert live["signal"].gain < 0.6 * ideal["signal"].gain
    # A dead correct detector lets the wrong one click alone: QBER rises a little.
    assert ideal["signal"].qber < live["signal"].qber < 1.3 * ideal["signal"].qber
    assert lm.dead_slots(p) == 29  # 30 ns at 1 GHz: slots s+1 .. s+29 dead


def test_raman_noise_forward_and_backward() -> None:
    # Reference §4.4 worked example: rho 3e-9, 25 km, 0.2 dB/km, 0.8 nm, 1 mW, 1 ns gate,
    # eta 10 %: forward ~1.5e8 photons/s, p_ram ~1.5e-2.
    p = lm.LinkParams.parse(
        {
            "fibre": {"length_km": 25, "loss_db_per_km": 0.2, "classical_power_dbm": 0.0},
            "receiver": {"efficiency": 0.1, "gate_ps": 1000, "dark_count_prob": 0.0},
        }
    )
    n_fwd = lm.raman_photons_per_gate(p)
    assert n_fwd == pytest.approx(0.15, rel=0.05)
    assert 2 * lm.noise_probs(p)[0] == pytest.approx(1.5e-2, rel=0.05)
    back = p.with_changes(fibre={"raman_direction": "backward"})
    # sinh(aL)/a > L: backward noise exceeds forward, and more so for long fibres.
    ratio_25 = lm.raman_photons_per_gate(back) / n_fwd
    far = p.with_distance(100)
    far_back = far.with_changes(fibre={"raman_direction": "backward"})
    ratio_100 = lm.raman_photons_per_gate(far_back) / lm.raman_photons_per_gate(far)
    assert 1.0 < ratio_25 < ratio_100
    alpha_l = 0.2 * math.log(10) / 10 * 25
    assert ratio_25 == pytest.approx(math.sinh(alpha_l) / alpha_l, rel=1e-9)


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"receiver": {"dark_count_prob": 1.5}}, "receiver.dark_count_prob"),
        ({"receiver": {"dark_count": 1e-6}}, "receiver.dark_count"),
        ({"source": {"clock_hz": 1e12}}, "source.clock_hz"),
        ({"fibre": {"length_km": -1}}, "fibre.length_km"),
        ({"receiver": {"efficiency": [0.5, 0.5, 1.2, 0.5]}}, "receiver.efficiency"),
        ({"receiver": {"efficiency": [0.5, 0.5]}}, "receiver.efficiency"),
        ({"fibre": {"raman_direction": "sideways"}}, "fibre.raman_direction"),
        ({"source": {"p_signal": 0.5}}, "source.p_signal"),
        ({"detector": {}}, "detector"),
    ],
)
def test_bad_parameters_name_the_key(data: dict, key: str) -> None:
    with pytest.raises(lm.LinkConfigError, match=key.replace(".", r"\.")):
        lm.LinkParams.parse(data)


def test_load_link_round_trip_and_errors(tmp_path) -> None:
    p = lm.preset("lim2014").with_changes(receiver={"efficiency": (0.1, 0.11, 0.12, 0.13)})
    f = tmp_path / "link.toml"
    f.write_text(lm.dump_toml(p))
    assert lm.load_link(f) == p
    f.write_text("[receiver]\nafterpulse_prob = 2\n")
    with pytest.raises(lm.LinkConfigError, match=r"link\.toml: receiver\.afterpulse_prob"):
        lm.load_link(f)
    f.write_text("[receiver\n")
    with pytest.raises(lm.LinkConfigError, match="not valid TOML"):
        lm.load_link(f)
    with pytest.raises(lm.LinkConfigError, match="no such link file"):
        lm.load_link(tmp_path / "missing.toml")


def test_presets_and_helpers() -> None:
    assert lm.list_presets() == ["gys", "lim2014", "snspd"]
    with pytest.raises(lm.LinkConfigError, match="unknown preset 'nope'"):
        lm.preset("nope")
    p = lm.preset("snspd")
    q = p.with_distance(80)
    assert q.fibre.length_km == 80 and p.fibre.length_km == 50  # copies, frozen
    assert q.receiver == p.receiver
    assert p.period_ps == 1000.0
    assert p.receiver.efficiencies() == (0.8, 0.8, 0.8, 0.8)
    with pytest.raises(lm.LinkConfigError, match="receiver.misalignment"):
        p.with_changes(receiver={"misalignment": 0.7})


def test_sifted_events_split_by_basis() -> None:
    """Per-basis sifted gains sum to the total; without dead time or afterpulses their ratio is
    P_A(Z) P_B(Z) : P_A(X) P_B(X); with dead time the busier basis's pair loses more."""
    p = (
        lm.preset("snspd")
        .with_distance(10)
        .with_changes(source={"p_basis_z": 0.7}, receiver={"p_basis_z": 0.4})
    )
    ideal = lm.expected_stats(p, dead_time=False)["signal"]
    assert sum(ideal.sifted_by_basis) == pytest.approx(ideal.sifted, rel=1e-12)
    assert sum(ideal.errors_by_basis) == pytest.approx(ideal.errors, rel=1e-12)
    z, x = ideal.sifted_by_basis
    assert z / x == pytest.approx((0.7 * 0.4) / (0.3 * 0.6), rel=1e-9)
    assert ideal.qber_in(0) == pytest.approx(ideal.qber_in(1), rel=1e-9)
    sym = lm.preset("snspd").with_distance(10).with_changes(source={"p_basis_z": 0.7})
    live = lm.expected_stats(sym)["signal"]
    free = lm.expected_stats(sym, dead_time=False)["signal"]
    alive_z = live.sifted_by_basis[0] / free.sifted_by_basis[0]
    alive_x = live.sifted_by_basis[1] / free.sifted_by_basis[1]
    assert alive_z < 0.8 * alive_x < 0.8
