"""The key-rate prediction for a link's own settings against the photon simulator.

``expected_key_rate(optimise=False)`` fills a block of ``n_X`` key-basis events in
``pulses_per_block`` slots; the simulator (``sim_hw.physics``, the process the nodes see) must
give the same key-basis sifted fraction per slot, test-basis fraction and key-basis QBER,
including detector dead time, saturation of a heavily used basis and afterpulses.
"""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.estimation import binary_entropy
from pipeline.keyrate import LinkCounts, dead_time_alive_fraction, expected_key_rate
from pipeline.keyrate_node import expected_frames_to_fill, expected_node_key_rate
from qnode import linkmodel as lm
from sim_hw.physics import LinkSimulator
from sim_hw.stats import bob_view
from sim_hw.symbols import decode, symbols_for_slots

CHUNK = 10**7
KEY = 0x5EED_0F_A11CE


def simulated_fractions(params: lm.LinkParams, chunks: int = 3) -> dict[str, float]:
    """Per-slot sifted events in X and Z and the X-basis QBER over ``chunks`` x 1e7 slots."""
    sim = LinkSimulator(params, key=KEY, seed=7)
    rng = np.random.default_rng(7)
    src = params.source
    n = {"x": 0, "z": 0, "ex": 0}
    for i in range(chunks):  # contiguous chunks: dead time carries across the calls
        slots, b_basis, b_bit = bob_view(sim.simulate(i * CHUNK, CHUNK), rng)
        a_basis, a_bit, _ = decode(
            symbols_for_slots(KEY, slots, src.p_basis_z, src.p_signal, src.p_decoy)
        )
        x = (a_basis == 1) & (b_basis == 1)
        n["x"] += int(np.count_nonzero(x))
        n["z"] += int(np.count_nonzero((a_basis == 0) & (b_basis == 0)))
        n["ex"] += int(np.count_nonzero(x & (a_bit != b_bit)))
    slots_total = chunks * CHUNK
    return {"x": n["x"] / slots_total, "z": n["z"] / slots_total, "qber_x": n["ex"] / n["x"]}


CASES = [
    # (preset, km, Alice's p_basis_z): Bob's bias follows Alice's
    ("snspd", 10.0, 0.7),  # the link row: Z pair saturated, X pair less so
    ("snspd", 10.0, 0.1),  # the preset's bias: X pair saturated
    ("snspd", 0.0, 0.5),  # both pairs dead most of the time
    ("snspd", 50.0, 0.7),
    ("lim2014", 25.0, 0.5),  # afterpulses, no dead time
]


@pytest.mark.parametrize("name, km, p_z", CASES, ids=lambda v: str(v))
def test_sifted_fraction_per_slot_matches_the_simulator(name: str, km: float, p_z: float):
    link = lm.preset(name).with_distance(km).with_changes(source={"p_basis_z": p_z})
    n_x = 200_000
    res = expected_key_rate(link, n_x, optimise=False, eps_sec=1e-10, eps_cor=1e-12)
    counts = LinkCounts.from_link(link)
    sim = simulated_fractions(link)
    # >= 6e4 events per basis in the simulation: 3 % is over 7 standard deviations
    assert n_x / res.pulses_per_block == pytest.approx(sim["x"], rel=0.03)
    assert sum(counts.z) == pytest.approx(sim["z"], rel=0.03)  # the test basis of the bound
    assert res.qber == pytest.approx(sim["qber_x"], rel=0.1)


def test_one_alive_fraction_for_all_clicks_would_miss_the_simulator():
    """With Z on 70 % of the slots the Z pair is dead far more often than the X pair: thinning
    every click by the mean alive fraction gives the key basis ~20 % too few events and the
    test basis ~25 % too many (the 1.32x gap of the link row)."""
    link = lm.preset("snspd").with_distance(10).with_changes(source={"p_basis_z": 0.7})
    ideal = LinkCounts.from_link(link.with_changes(receiver={"dead_time_ns": 0.0}))
    a_all = dead_time_alive_fraction(link)
    sim = simulated_fractions(link, chunks=2)
    assert ideal.sifted_x * a_all < 0.85 * sim["x"]
    assert sum(ideal.z) * a_all > 1.15 * sim["z"]


def test_expected_frames_to_fill_matches_a_monte_carlo():
    """Blocks close at the first event frame reaching the target: E[n_X] = E[N] x per frame."""
    rng = np.random.default_rng(3)
    for target, mean in ((241_702, 4472.0), (120_851, 30_000.0), (10_000, 37.0)):
        frames = int(target / mean * 1.3) + 10
        sums = rng.poisson(mean, size=(20_000, frames)).cumsum(axis=1)
        n_needed = (sums < target).sum(axis=1) + 1
        mc = sums[np.arange(sums.shape[0]), n_needed - 1].mean()
        # Compared past the target: the overshoot (about half a frame; 0.4 % Monte Carlo error)
        # within 5 %. A relative tolerance on the whole block would accept no overshoot at all.
        predicted = mean * expected_frames_to_fill(target, mean, mean)
        assert predicted - target == pytest.approx(mc - target, rel=0.05), (predicted, mc)
    # many frames per block: the renewal limit, target + E[X^2] / (2 E[X]), with no seam
    assert 0.01 * expected_frames_to_fill(1e6, 0.01, 0.01) == pytest.approx(1e6 + 0.505, abs=1e-6)
    below, above = (m * expected_frames_to_fill(1e6, m, m) for m in (99.9, 100.1))
    assert below == pytest.approx(1e6 + 50.45, abs=0.5) and above == pytest.approx(
        1e6 + 50.55, abs=0.5
    )
    with pytest.raises(ValueError, match="mean"):
        expected_frames_to_fill(10, 0.0, 0.0)


def test_node_block_prediction_is_the_finite_key_bound_with_the_pipeline_overheads():
    """expected_node_key_rate = Lim's bound on the expected n_X block, leak of the planned LDPC
    frames plus tags, minus the unreconciled tail."""
    from pipeline.block_stages import frame_key_bits, frame_key_bits_counts

    link = lm.preset("snspd").with_distance(10).with_changes(source={"p_basis_z": 0.7})
    node = expected_node_key_rate(link, 200_000, 1 << 19)
    k = node.extra["ldpc_frame_bits"]
    # reach planned at the upper confidence bound of the block's expected Z counts, above the
    # mean; the syndrome starts lower, between the two, with extra punctured rounds
    assert node.extra["qber_plan"] >= node.extra["qber_start"] > node.extra["qber_z"]
    z = 200_000 / node.extra["sifted_x_per_pulse"] * sum(LinkCounts.from_link(link).z)
    assert k == frame_key_bits_counts(z * node.extra["qber_z"], z)
    assert frame_key_bits(node.extra["qber_plan"]) <= frame_key_bits(node.extra["qber_z"])
    assert node.extra["reconciled_bits"] == 2 * k >= 200_000
    assert 0 < node.extra["dropped_bits"] < (1 << 19) * node.extra["sifted_x_per_pulse"]
    n_x = node.extra["reconciled_bits"] + node.extra["dropped_bits"]
    # the same bound from expected_key_rate at that n_X with the same total leak
    plain_leak_f = node.extra["leak_bits"] / (n_x * binary_entropy(node.qber))
    plain = expected_key_rate(link, round(n_x), optimise=False, f_ec=plain_leak_f,
                              eps_sec=1e-10, eps_cor=1e-12)  # fmt: skip
    assert node.key_length == pytest.approx(plain.key_length - node.extra["dropped_bits"], abs=5)
    assert node.rate_per_pulse == pytest.approx(node.key_length / node.pulses_per_block, rel=1e-3)
