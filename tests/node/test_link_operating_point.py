"""The source settings ``qnode link`` runs at: the preset's operating point, overrides, benches."""

from __future__ import annotations

import tomllib

import pytest

from qnode import linkmodel
from qnode.link import (
    DEFAULT_P_BASIS_Z,
    OPERATING_POINTS,
    LinkOptions,
    auto_frame_slots,
    link_params,
    write_configs,
)


def test_snspd_preset_runs_at_its_operating_point_and_overrides_win(tmp_path):
    src = link_params(LinkOptions(distance_km=10)).source
    assert {k: getattr(src, k) for k in OPERATING_POINTS["snspd"]} == OPERATING_POINTS["snspd"]
    assert link_params(LinkOptions(p_basis_z=0.5)).source.p_basis_z == 0.5
    own = link_params(LinkOptions(source={})).source  # the preset's own source, old bias
    assert own.mu_signal == linkmodel.preset("snspd").source.mu_signal
    assert own.p_basis_z == DEFAULT_P_BASIS_Z
    assert link_params(LinkOptions(preset="gys")).source.p_basis_z == DEFAULT_P_BASIS_Z
    # a link file keeps its own intensities and class probabilities
    params = linkmodel.preset("lim2014").with_changes(source={"mu_signal": 0.42})
    path = tmp_path / "link.toml"
    path.write_text(linkmodel.dump_toml(params))
    from_file = link_params(LinkOptions(preset=None, link_file=path)).source
    assert from_file.mu_signal == 0.42 and from_file.p_basis_z == DEFAULT_P_BASIS_Z
    with pytest.raises(linkmodel.LinkConfigError):
        link_params(LinkOptions(source={"p_signal": 0.9}))  # probabilities no longer sum to 1


def test_alice_bench_carries_every_source_setting(tmp_path):
    opts = LinkOptions(distance_km=10, workdir=tmp_path)
    params = link_params(opts)
    world = tmp_path / "world.json"
    world.write_text("{}")
    write_configs(tmp_path, params, world, opts)
    bench = tomllib.loads((tmp_path / "bench-alice.toml").read_text())
    assert bench["source"]["settings"] == OPERATING_POINTS["snspd"]


def test_operating_point_is_near_the_finite_key_optimum_for_the_default_block():
    """At 10 km (the perf row's link) the node-block prediction at the operating point is within
    3 % of the optimiser's settings and several times the old p_basis_z 0.7 point."""
    from pipeline.keyrate import expected_key_rate
    from pipeline.keyrate_node import expected_node_key_rate

    base = linkmodel.preset("snspd").with_distance(10)
    opt = expected_key_rate(base, 200_000, f_ec=1.16, eps_sec=1e-10, eps_cor=1e-12)
    best = base.with_changes(source={
        "mu_signal": opt.mu[0], "mu_decoy": opt.mu[1], "mu_vacuum": opt.mu[2],
        "p_signal": opt.p_mu[0], "p_decoy": opt.p_mu[1], "p_vacuum": 1 - sum(opt.p_mu[:2]),
        "p_basis_z": 1 - opt.q_x,
    })  # fmt: skip
    ours = link_params(LinkOptions(distance_km=10))
    old = base.with_changes(source={"p_basis_z": 0.7})

    def rate(p: linkmodel.LinkParams) -> float:
        return expected_node_key_rate(p, 200_000, auto_frame_slots(p)).rate_bps

    assert rate(ours) >= 0.97 * rate(best)
    assert rate(ours) > 5 * rate(old)
