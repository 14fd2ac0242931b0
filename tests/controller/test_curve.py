"""CurveZMQ + ZAP on the controller's sockets: known keys served per role, unknown keys get nothing."""

from __future__ import annotations

import logging
import time

import httpx
import pytest
from ctl_helpers import (
    ControllerThread,
    FakeNodeCommandSocket,
    controller_config,
    free_port,
    sae_client,
    seed_blocks,
    wait_for,
)

from controller.control_client import send_command
from controller.curve import load_key_pair, load_public_key
from controller.pki import create_curve_keys
from qnode.bus import Publisher, Subscriber, TelemetryHub


def _security(pki, me: str, peer: str) -> dict:
    curve = pki / "curve"
    return {
        "curve": True,
        "server_secret": str(curve / f"{me}.key_secret"),
        "clients": [
            {"name": "operator", "public_key": str(curve / "operator.key"), "role": "operator"},
            {"name": "monitor", "public_key": str(curve / "monitor.key"), "role": "read"},
        ],
        "peer_kme_public": str(curve / f"{peer}.key"),
        "node_server_public": str(curve / "hub.key"),
    }


@pytest.fixture(scope="module")
def secured(tmp_path_factory, pki):
    """Alice and Bob with CURVE on every socket, Alice attached to a CURVE telemetry hub."""
    tmp = tmp_path_factory.mktemp("curve")
    create_curve_keys(pki / "curve", ["hub", "intruder"])
    seed_blocks([tmp / "alice.db", tmp / "bob.db"], n_blocks=4, block_bytes=1024)
    hub_keys = load_key_pair(pki / "curve" / "hub.key_secret")
    hub = TelemetryHub(
        "inproc://curve-test-hub",
        "tcp://127.0.0.1:0",
        "tcp://127.0.0.1:0",
        curve_server_keys=hub_keys,
        curve_allowed_clients=[load_public_key(pki / "curve" / "alice.key")],
    )
    node_pub = Publisher(hub.internal, "alice", "postprocess")
    node_cmd = FakeNodeCommandSocket()
    pa, pb = free_port(), free_port()
    alice_cfg = controller_config(
        tmp, pki, "alice", "bob", ["sae-alice"], ["sae-bob"], sync_port=pa, peer_sync_port=pb,
        security=_security(pki, "alice", "bob"),
        telemetry={"node_endpoint": hub.public, "relay": "tcp://127.0.0.1:0"},
        control={"node_endpoint": node_cmd.endpoint},
    )  # fmt: skip
    bob_cfg = controller_config(
        tmp, pki, "bob", "alice", ["sae-bob"], ["sae-alice"], sync_port=pb, peer_sync_port=pa,
        security=_security(pki, "bob", "alice"),
    )  # fmt: skip
    alice, bob = ControllerThread(alice_cfg).start(), ControllerThread(bob_cfg).start()
    yield alice, bob, node_pub, node_cmd
    alice.stop()
    bob.stop()
    node_pub.close()
    node_cmd.close()
    hub.close()


def _client(pki, name: str) -> dict:
    return {
        "curve_secret": pki / "curve" / f"{name}.key_secret",
        "server_key": pki / "curve" / "alice.key",
    }


def test_control_roles(secured, pki):
    alice, _, _, node_cmd = secured
    ep = alice.endpoints["control"]
    assert send_command(ep, {"cmd": "ping"}, **_client(pki, "operator"))["ok"]
    assert send_command(ep, {"cmd": "state"}, **_client(pki, "monitor"))["ok"]
    refused = send_command(ep, {"cmd": "pause"}, **_client(pki, "monitor"))
    assert not refused["ok"] and "not authorised" in refused["error"]
    assert "pause" not in node_cmd.commands()
    assert send_command(ep, {"cmd": "pause"}, **_client(pki, "operator"))["ok"]
    assert node_cmd.commands()[-1] == "pause"


def test_unknown_key_gets_nothing_and_is_logged(secured, pki, caplog):
    alice, _, _, _ = secured
    ep = alice.endpoints["control"]
    rejected = alice.controller.auth.rejected
    with caplog.at_level(logging.WARNING, logger="qnode.controller.curve"):
        reply = send_command(ep, {"cmd": "state"}, timeout_ms=800, **_client(pki, "intruder"))
        assert not reply["ok"] and "no reply" in reply["error"]
        wait_for(lambda: alice.controller.auth.rejected > rejected, what="ZAP rejection")
    assert any("CURVE client rejected" in r.getMessage() for r in caplog.records)
    # A client without CURVE at all gets nothing either.
    reply = send_command(ep, {"cmd": "state"}, timeout_ms=500)
    assert not reply["ok"] and "no reply" in reply["error"]


def test_telemetry_needs_an_allowed_key(secured, pki):
    alice, _, _, _ = secured
    server = load_public_key(pki / "curve" / "alice.key")
    subs = {}
    for name in ("monitor", "intruder"):
        public, secret = load_key_pair(pki / "curve" / f"{name}.key_secret")
        subs[name] = Subscriber(
            alice.endpoints["publish"],
            ["svc/telemetry/alice/kms/"],
            curve_client_keys=(public, secret, server),
        )
    got = subs["monitor"].recv(timeout_ms=5000)  # the pool statistics are published every 1 s
    assert got is not None and got.payload["committed_blocks"] == 4
    assert "key" not in got.payload, "no key material on the bus"
    assert subs["intruder"].recv(timeout_ms=2500) is None
    for sub in subs.values():
        sub.close()


def test_controller_reads_a_curve_hub_and_kmes_talk_over_curve(secured, pki):
    alice, bob, node_pub, _ = secured
    wait_for(
        lambda: node_pub.publish("qfs/telemetry/alice/link/", {"qber": 0.0421}) and
        alice.controller.state.metrics.get("qber") == 0.0421, what="telemetry through CURVE hub",
    )  # fmt: skip
    with sae_client(pki, "sae-alice") as a, sae_client(pki, "sae-bob") as b:
        r = a.post(f"{alice.endpoints['kms']}/api/v1/keys/sae-bob/enc_keys", json={"number": 2})
        keys = r.json()["keys"]
        r = b.post(
            f"{bob.endpoints['kms']}/api/v1/keys/sae-alice/dec_keys",
            json={"key_IDs": [{"key_ID": k["key_ID"]} for k in keys]},
        )
    assert r.status_code == 200, r.text
    assert r.json()["keys"] == keys
    assert httpx.get(f"{alice.endpoints['http']}/alarms").status_code == 200
    time.sleep(1.2)  # a tick: the peer KME answers pings over CURVE
    assert not alice.controller.state.alarms["peer_lost"].active


def test_node_telemetry_relayed_to_curve_clients_only(secured, pki):
    alice, _, node_pub, _ = secured
    server = load_public_key(pki / "curve" / "alice.key")
    subs = {}
    for name in ("monitor", "intruder"):
        public, secret = load_key_pair(pki / "curve" / f"{name}.key_secret")
        subs[name] = Subscriber(
            alice.endpoints["relay"], ["qfs/telemetry/alice/"],
            curve_client_keys=(public, secret, server),
        )  # fmt: skip
    time.sleep(0.3)
    got = None
    for _ in range(50):
        node_pub.publish("qfs/telemetry/alice/acquisition/", {"detections_per_s": 1234.0})
        got = subs["monitor"].recv(timeout_ms=100)
        if got is not None:
            break
    assert got is not None and got.header["src"] == "postprocess", "relay keeps node headers"
    assert got.payload == {"detections_per_s": 1234.0}
    assert subs["intruder"].recv(timeout_ms=1000) is None
    for sub in subs.values():
        sub.close()
