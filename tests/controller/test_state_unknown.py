"""An unknown QBER (docs/telemetry.md: ``qber`` null + ``qber_unknown``) reaches the state tree
and Prometheus as *absent*, never as a stale or placeholder number."""

from __future__ import annotations

from fastapi.testclient import TestClient

from controller.state import NodeState
from controller.state_api import create_state_app

QBER_GAUGE = 'qkd_link_qber_ratio{link="alice-bob",node="bob"}'
F_GAUGE = 'qkd_link_reconciliation_efficiency_ratio{link="alice-bob",node="bob"}'


def _views(client: TestClient) -> tuple[str, list]:
    metrics = client.get("/metrics").text
    tree = client.get("/restconf/data/etsi-qkd-sdn-node:qkd_node").json()
    link = tree["etsi-qkd-sdn-node:qkd_node"]["qkd_links"]["qkd_link"][0]
    return metrics, link["qkdl_performance"]["phys_perf"]


def test_unknown_qber_is_absent_from_the_tree_and_prometheus():
    state = NodeState(node="bob", role="bob", peer="alice")
    client = TestClient(create_state_app(state))
    state.absorb("block", {"block": 1, "status": "final", "qber": 0.012, "qber_z": 0.011,
                           "f": 1.13})  # fmt: skip
    metrics, phys = _views(client)
    assert f"{QBER_GAUGE} 0.012" in metrics and f"{F_GAUGE} 1.13" in metrics
    assert phys == [{"perf_type": "etsi-qkd-node-types:QBER", "value": 0.012}]
    # the next block decoded no frame: its QBER is unknown (qber_z is known but is not "qber")
    state.absorb("block", {"block": 2, "status": "no_key", "qber": None, "qber_x": None,
                           "qber_z": 0.3, "f": None, "qber_unknown": "no LDPC frame decoded"})  # fmt: skip
    metrics, phys = _views(client)
    assert QBER_GAUGE not in metrics and F_GAUGE not in metrics
    assert phys == []
    assert "qber" not in state.metrics and "block.qber" not in state.metrics
    assert state.metrics["block.qber_z"] == 0.3
    # a known value again
    state.absorb("link", {"qber": 0.02, "f": 1.2})
    metrics, phys = _views(client)
    assert f"{QBER_GAUGE} 0.02" in metrics and phys[0]["value"] == 0.02


def test_non_finite_values_are_not_measurements():
    state = NodeState(node="bob", role="bob", peer="alice")
    state.absorb("link", {"qber": float("nan"), "qber_z": 0.04, "skr_bps": float("inf")})
    assert state.metrics["qber"] == 0.04  # NaN is not a value: the next alias decides
    assert "skr_bps" not in state.metrics and "link.skr_bps" not in state.metrics
