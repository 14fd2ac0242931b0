"""``qnode keyrate`` and ``expected_key_rate`` against the reference figures (GYS, Lim 2014)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from pipeline.estimation import BlockCounts, DecoySettings, binary_entropy, key_length
from pipeline.keyrate import Channel, expected_key_rate
from qnode.cli import _load, app
from qnode.linkmodel import CLASSES, expected_stats, preset

# standards-and-physics.md §4.1 (GYS, mu = 0.48, nu = 0.1, f = 1.22, q = 1/2)
GYS_RATES = [
    (0, 2.555e-03, 2.270e-03),
    (25, 7.544e-04, 6.670e-04),
    (50, 2.226e-04, 1.963e-04),
    (75, 6.435e-05, 5.646e-05),
    (100, 1.718e-05, 1.482e-05),
    (125, 3.206e-06, 2.493e-06),
    (140, 2.465e-07, 0.0),
]
FAST = dict(starts=2, samples=500)  # the optimiser, kept short for tests


@pytest.mark.parametrize("distance, r_inf, r_vw", GYS_RATES)
def test_gys_asymptotic_table(distance, r_inf, r_vw) -> None:
    link = preset("gys").with_distance(distance)
    assert (link.source.mu_signal, link.source.mu_decoy) == (0.48, 0.1)
    res = expected_key_rate(link, None, optimise=False)
    assert res.block is None and res.f_ec == 1.22 and res.mu[0] == 0.48
    assert res.extra["rate_per_pulse_infinite_decoy"] == pytest.approx(r_inf, rel=2e-3)
    assert res.rate_per_pulse == pytest.approx(r_vw, rel=2e-3, abs=1e-12)
    assert res.rate_bps == pytest.approx(res.rate_per_pulse * link.source.clock_hz)


def test_gys_optimised_intensity_and_reach() -> None:
    gys = preset("gys")
    # reference: mu_opt = 0.486 at 0 km, 0.434 at 140 km; reach 142.21 km (infinite decoys)
    # and 139.7 km (vacuum + weak decoy nu = 0.1)
    assert expected_key_rate(gys.with_distance(0)).extra["mu1_infinite_decoy"] == pytest.approx(
        0.486, abs=0.003
    )
    far = expected_key_rate(gys.with_distance(140))
    assert far.extra["mu1_infinite_decoy"] == pytest.approx(0.434, abs=0.003)
    inf = "rate_per_pulse_infinite_decoy"
    assert expected_key_rate(gys.with_distance(141.7)).extra[inf] > 0
    assert expected_key_rate(gys.with_distance(142.7)).extra[inf] == 0
    assert expected_key_rate(gys.with_distance(139.2)).rate_per_pulse > 0
    assert expected_key_rate(gys.with_distance(140.2)).rate_per_pulse == 0


def test_lim2014_block_size_figures() -> None:
    lim = preset("lim2014").with_distance(100)
    r7 = expected_key_rate(lim, 10**7, **FAST)
    r9 = expected_key_rate(lim, 10**9, **FAST)
    # our re-implementation (reference §4.2): 4.77e-5 and 8.54e-5 per pulse; paper ratio ~1.75
    assert r7.rate_per_pulse == pytest.approx(4.77e-5, rel=0.03)
    assert r9.rate_per_pulse == pytest.approx(8.54e-5, rel=0.03)
    assert 1.70 <= r9.rate_per_pulse / r7.rate_per_pulse <= 1.85
    assert r7.block == 10**7 and r7.key_length > 0 and 0.5 < r7.q_x < 1.0
    mu1, mu2, mu3 = r7.mu
    assert mu1 > mu2 + mu3 and mu2 > mu3 == 2e-4
    assert sum(r7.p_mu) == pytest.approx(1.0)


def test_lim2014_small_blocks_reach_beyond_120_km() -> None:
    lim = preset("lim2014")
    near = expected_key_rate(lim.with_distance(100), 10**4, **FAST)
    assert near.rate_per_pulse == pytest.approx(9.9e-7, rel=0.1)
    far = expected_key_rate(lim.with_distance(121), 10**4, **FAST)
    assert far.rate_per_pulse > 0, "n_X = 1e4 must still give key beyond 120 km"
    assert far.p_mu[0] < 0.2, "small-block optimum puts most pulses into the decoys"


def test_prediction_for_fixed_settings_matches_the_estimator() -> None:
    """optimise=False (what the node predicts for its settings) = key_length on the expected
    per-class, per-basis counts of the link model (afterpulses in later slots, Bob's basis)."""
    link = preset("lim2014").with_distance(50).with_changes(source={"p_basis_z": 0.5})
    n_x = 10**6
    res = expected_key_rate(link, n_x, optimise=False, eps_sec=1e-10, eps_cor=1e-12)
    src = link.source
    mu = (src.mu_signal, src.mu_decoy, src.mu_vacuum)
    p = np.array((src.p_signal, src.p_decoy, src.p_vacuum))
    q_x, q_z = 1 - src.p_basis_z, src.p_basis_z  # Bob's bias follows Alice's
    stats = [expected_stats(link)[c] for c in CLASSES]
    sx = p * [m.sifted_by_basis[1] for m in stats]
    sz = p * [m.sifted_by_basis[0] for m in stats]
    ez = p * [m.errors_by_basis[0] for m in stats]
    ex = p * [m.errors_by_basis[1] for m in stats]
    # the split between the bases is P_A(b) P_B(b) (up to afterpulses in the unused pair,
    # which make Bob's basis a coin flip in a few slots)
    assert sx.sum() / sz.sum() == pytest.approx(q_x**2 / q_z**2, rel=1e-3)
    pulses = n_x / sx.sum()
    counts = BlockCounts(n_x=pulses * sx, n_z=pulses * sz, m_z=pulses * ez)
    qber = ex.sum() / sx.sum()
    expect = key_length(
        counts, DecoySettings(mu, tuple(p), 1e-10, 1e-12), 1.16 * n_x * binary_entropy(qber)
    )
    assert res.q_x == pytest.approx(q_x) and res.qber == pytest.approx(qber)
    assert res.pulses_per_block == pytest.approx(pulses, rel=1e-12)
    assert res.key_length == expect.length > 0
    assert res.rate_per_pulse == pytest.approx(max(expect.value, 0) / pulses, rel=1e-9)
    # Lim's R_k = D_k (1 + p_ap) ties afterpulses to the parent's class; the simulator does not,
    # so the vacuum class sees the afterpulses of the others and the key is smaller.
    ch = Channel.from_link(link)
    lim_vacuum = q_x**2 * p[2] * ch.detection(mu[2])
    assert sx[2] > 5 * lim_vacuum


def test_bad_arguments_raise() -> None:
    link = preset("lim2014")
    for kwargs, match in (
        (dict(block=0), "block"),
        (dict(block=2.5), "block"),
        (dict(block=10**6, eps_sec=2.0), "eps_sec"),
        (dict(block=10**6, eps_cor=0.0), "eps_cor"),
    ):
        with pytest.raises(ValueError, match=match):
            expected_key_rate(link, **kwargs)
    all_z = link.with_changes(source={"p_basis_z": 1.0})
    with pytest.raises(ValueError, match="p_basis_z"):
        expected_key_rate(all_z, 10**6, optimise=False)
    no_decoy = link.with_changes(source={"mu_decoy": 0.0, "mu_vacuum": 0.0})
    with pytest.raises(ValueError, match="decoy intensity"):
        expected_key_rate(no_decoy, None)
    with pytest.raises(ValueError, match="mu2 > mu3"):
        expected_key_rate(no_decoy, 10**6, optimise=False)


# --------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def runner() -> CliRunner:
    _load()
    return CliRunner()


def test_cli_asymptotic_json(runner) -> None:
    out = runner.invoke(app, ["keyrate", "--preset", "gys", "--distance", "50", "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    assert data["block"] is None and data["distance_km"] == 50
    assert data["rate_per_pulse"] == pytest.approx(1.98e-4, rel=0.01)  # mu optimised, nu = 0.1
    assert data["rate_bps"] == pytest.approx(data["rate_per_pulse"] * 1e9)
    for key in ("mu", "p_mu", "q_x", "p_basis_z", "qber", "rate_per_pulse_infinite_decoy"):
        assert key in data


def test_cli_finite_json(runner) -> None:
    args = ["keyrate", "--preset", "lim2014", "--distance", "100", "--block", "1e9", "--json"]
    out = runner.invoke(app, args)
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    assert data["block"] == 10**9 and data["distance_km"] == 100
    assert data["rate_per_pulse"] == pytest.approx(8.54e-5, rel=0.03)
    assert 0 < data["qber"] < 0.05 and data["p_basis_z"] == pytest.approx(1 - data["q_x"])


@pytest.mark.parametrize(
    "args, message",
    [
        (["--distance", "10"], "exactly one of"),
        (["--preset", "gys", "--link", "x.toml", "--distance", "10"], "exactly one of"),
        (["--preset", "nope", "--distance", "10"], "unknown preset"),
        (["--preset", "gys", "--distance", "10", "--block", "1e7", "--asymptotic"], "exclude"),
        (["--preset", "gys", "--distance", "10", "--block", "ten"], "not a number"),
        (["--link", "/nonexistent/link.toml", "--distance", "10"], "no such link file"),
    ],
)
def test_cli_bad_input(runner, args, message) -> None:
    out = runner.invoke(app, ["keyrate", *args])
    assert out.exit_code == 2
    assert message in out.output


def test_cli_link_file_gives_the_preset_figures(runner, tmp_path) -> None:
    """--link FILE reads a TOML link file; the preset written out as a file plans the same link."""
    from qnode.linkmodel import dump_toml

    path = tmp_path / "lim.toml"
    path.write_text(dump_toml(preset("lim2014")))
    common = ["--distance", "100", "--block", "1e9", "--fixed", "--json"]
    by_file = runner.invoke(app, ["keyrate", "--link", str(path), *common])
    by_preset = runner.invoke(app, ["keyrate", "--preset", "lim2014", *common])
    assert by_file.exit_code == 0 and by_preset.exit_code == 0, by_file.output + by_preset.output
    a, b = json.loads(by_file.stdout), json.loads(by_preset.stdout)
    assert a["link"] == str(path) and b["link"] == "lim2014"
    assert a["rate_per_pulse"] > 0 and a["block"] == 10**9
    for key in ("rate_per_pulse", "key_length", "qber", "mu", "p_mu", "q_x"):
        assert a[key] == b[key], key


def test_dead_time_thins_the_predicted_rate_only_where_there_is_dead_time():
    from pipeline.keyrate import dead_time_alive_fraction

    gys = preset("gys")
    assert dead_time_alive_fraction(gys) == 1.0
    assert dead_time_alive_fraction(gys, 0) == dead_time_alive_fraction(gys, 1) == 1.0
    snspd = preset("snspd").with_distance(10).with_changes(source={"p_basis_z": 0.5})
    alive = dead_time_alive_fraction(snspd)
    assert 0.2 < alive < 0.8, alive  # 30 ns dead time at ~0.1 clicks per slot saturates
    no_dead = snspd.with_changes(receiver={"dead_time_ns": 0.0})
    with_dead = expected_key_rate(snspd, block=10**6, optimise=False)
    without = expected_key_rate(no_dead, block=10**6, optimise=False)
    assert 0 < with_dead.rate_per_pulse < without.rate_per_pulse
    # a dead correct detector lets the wrong one click alone: the QBER rises a little
    assert without.qber < with_dead.qber < 1.15 * without.qber


def test_each_basis_saturates_by_its_own_load():
    """Z used on 70 % of the slots by both sides: the Z pair is dead far more often than the X
    pair, so one alive fraction for all clicks under-predicts the key-basis counts (the 1.32x
    gap of the link row)."""
    from pipeline.keyrate import dead_time_alive_fraction

    link = preset("snspd").with_distance(10).with_changes(source={"p_basis_z": 0.7})
    a_all, a_z, a_x = (dead_time_alive_fraction(link, b) for b in (None, 0, 1))
    assert a_z < a_all < a_x
    assert a_x / a_z > 1.4, (a_x, a_z)
    res = expected_key_rate(link, block=200_000, optimise=False, eps_sec=1e-10, eps_cor=1e-12)
    assert res.extra["sifted_x_per_pulse"] == pytest.approx(200_000 / res.pulses_per_block)
    # thinning the key basis by the all-click alive fraction would lose ~20 % of its events
    ideal = expected_key_rate(link.with_changes(receiver={"dead_time_ns": 0.0}), block=200_000,
                              optimise=False, eps_sec=1e-10, eps_cor=1e-12)  # fmt: skip
    thinned = ideal.extra["sifted_x_per_pulse"] * a_all
    assert res.extra["sifted_x_per_pulse"] > 1.15 * thinned


def test_asymptotic_sifting_is_the_basis_match_probability():
    """q = P_A(Z) P_B(Z) + P_A(X) P_B(X): Ma's 1/2 for GYS, 0.82 for the snspd preset's 0.1."""
    gys = expected_key_rate(preset("gys").with_distance(50), None, optimise=False)
    assert gys.extra["sifting_factor"] == pytest.approx(0.5)
    lim = preset("lim2014").with_distance(50)
    asym = expected_key_rate(lim, None, optimise=False)
    half = expected_key_rate(lim, None, optimise=False, sifting_factor=0.5)
    assert asym.extra["sifting_factor"] == pytest.approx(0.82)
    assert asym.rate_per_pulse == pytest.approx(half.rate_per_pulse * 0.82 / 0.5, rel=1e-9)


@pytest.mark.parametrize("km, p_z", [(0.0, 0.5), (10.0, 0.7), (10.0, 0.1), (50.0, 0.7)])
def test_optimiser_channel_per_basis_matches_the_link_model_under_dead_time(km, p_z):
    """The optimiser's Lim forms, each basis thinned by its own pair's alive fraction, give the
    key- and test-basis counts of linkmodel.expected_stats (which the simulator matches)."""
    from pipeline.keyrate import LinkCounts

    link = preset("snspd").with_distance(km).with_changes(source={"p_basis_z": p_z})
    src = link.source
    mu = (src.mu_signal, src.mu_decoy, src.mu_vacuum)
    p = (src.p_signal, src.p_decoy, src.p_vacuum)
    ch = Channel.from_link(link)
    assert ch.dead_slots == 29
    per_basis = []
    for q in (p_z, 1 - p_z):  # Z, X
        thin = ch.thinned(mu, p, q, q)
        assert 0.2 < thin.alive < 1.0
        per_basis.append(q**2 * sum(pk * thin.detection(m) for pk, m in zip(p, mu, strict=True)))
    counts = LinkCounts.from_link(link)
    assert per_basis[0] == pytest.approx(sum(counts.z), rel=0.01)
    assert per_basis[1] == pytest.approx(counts.sifted_x, rel=0.01)
    gys = Channel.from_link(preset("gys"))
    assert gys.thinned(mu, p, 0.5, 0.5) is gys
