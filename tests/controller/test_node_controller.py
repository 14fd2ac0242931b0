"""The controller process: telemetry -> QKD 015 tree and metrics, control plane, closed loop."""

from __future__ import annotations

import time

import httpx
import msgpack
import pytest
from ctl_helpers import ControllerThread, FakeNodeCommandSocket, seed_blocks, wait_for

from controller.control_client import send_command, send_raw
from qnode.bus import Publisher, Subscriber
from qnode.codec import packb


def _start_node(tmp_path, pki):
    """A controller attached to a telemetry PUB and a command socket standing in for the node."""
    seed_blocks([tmp_path / "alice.db"], n_blocks=2, block_bytes=1024)
    pub = Publisher("tcp://127.0.0.1:0", "alice", "postprocess", connect=False)
    # It refuses the loop's "hold", so the closed-loop tests here run the pause fallback
    # (hold itself: tests/controller/test_closed_loop*.py).
    node_cmd = FakeNodeCommandSocket(refuse={"set_block_size", "hold"})
    cfg = {
        "node": "alice",
        "role": "alice",
        "keystore": str(tmp_path / "alice.db"),
        "kms": {
            "kme_id": "alice",
            "peer_kme_id": "bob",
            "cert": str(pki / "alice.pem"),
            "key": str(pki / "alice.key"),
            "ca": str(pki / "ca.pem"),
            "local_saes": ["sae-alice"],
            "peer_saes": ["sae-bob"],
            "port": 0,
        },
        "security": {"curve": False},
        "telemetry": {"node_endpoint": pub.endpoint, "peer_lost_s": 30},
        "control": {"node_endpoint": node_cmd.endpoint, "node_timeout_ms": 2000},
        "loop": {"qber_threshold": 0.08, "qber_blocks": 3, "recheck_s": 0.4, "pool_low_keys": 10},
    }
    ctl = ControllerThread(cfg).start()
    # Slow joiner: publish until the controller's subscription is live.
    wait_for(
        lambda: pub.publish("qfs/telemetry/alice/link/", {"qber": 0.02}) and
        ctl.controller.state.telemetry_received > 0, what="telemetry subscription",
    )  # fmt: skip
    return ctl, pub, node_cmd


def _stop_node(ctl, pub, node_cmd) -> None:
    ctl.stop()
    pub.close()
    node_cmd.close()


@pytest.fixture
def node(tmp_path, pki):
    parts = _start_node(tmp_path, pki)
    yield parts
    _stop_node(*parts)


@pytest.fixture(scope="module")
def shared_node(tmp_path_factory, pki):
    parts = _start_node(tmp_path_factory.mktemp("shared-node"), pki)
    yield parts
    _stop_node(*parts)


def test_telemetry_fills_the_qkd015_tree_and_metrics(node):
    ctl, pub, _ = node
    pub.publish("qfs/telemetry/alice/link/", {"qber": 0.031, "skr_bps": 12345.0, "f": 1.12})
    wait_for(lambda: ctl.controller.state.metrics.get("skr_bps") == 12345.0, what="skr")
    base = ctl.endpoints["http"]
    tree = httpx.get(f"{base}/restconf/data/etsi-qkd-sdn-node:qkd_node").json()
    node_tree = tree["etsi-qkd-sdn-node:qkd_node"]
    assert {"qkdn_id", "qkd_interfaces", "qkd_links", "qkd_applications"} <= set(node_tree)
    link = node_tree["qkd_links"]["qkd_link"][0]
    perf = link["qkdl_performance"]
    assert perf["skr"] == 12345 and set(perf) >= {"skr", "eskr", "expected_consumption"}
    assert perf["phys_perf"] == [{"perf_type": "etsi-qkd-node-types:QBER", "value": 0.031}]
    apps = node_tree["qkd_applications"]["qkd_app"]
    assert {a["server_app_id"] for a in apps} == {"sae-alice", "sae-bob"}
    sub = httpx.get(
        f"{base}/restconf/data/etsi-qkd-sdn-node:qkd_node/qkd_links/"
        f"qkd_link={link['qkdl_id']}/qkdl_performance"
    ).json()
    assert sub == {"etsi-qkd-sdn-node:qkdl_performance": perf}
    assert httpx.get(f"{base}/restconf/data/etsi-qkd-sdn-node:qkd_node/nope").status_code == 404
    assert httpx.post(f"{base}/restconf/data/etsi-qkd-sdn-node:qkd_node").status_code == 405
    wait_for(lambda: ctl.controller.state.pool.get("committed_blocks") == 2, what="pool stats")
    metrics = httpx.get(f"{base}/metrics").text
    assert 'qkd_link_qber_ratio{link="alice-bob",node="alice"} 0.031' in metrics
    assert 'qkd_link_secret_key_rate_bits_per_second{link="alice-bob",node="alice"} 12345.0' in (
        metrics
    )
    assert 'qkd_keystore_stored_keys{node="alice"} 32.0' in metrics  # 1 block of ours / 32 B
    assert "# TYPE qkd_kms_keys_issued_total counter" in metrics
    assert 'qkd_alarm_active{alarm="qber_high",node="alice"} 0.0' in metrics


def test_malformed_telemetry_is_counted_and_gaps_are_seen(node):
    ctl, pub, _ = node
    state = ctl.controller.state
    before = state.telemetry_malformed
    # Same publisher socket as the node, garbage frames on a valid-looking topic.
    pub._sock.send_multipart([b"qfs/telemetry/alice/link/", b"\xc1", b"\xc1"])
    pub._sock.send_multipart([b"qfs/telemetry/alice/link/", packb({"schema": 1})])
    pub.seq += 5  # five messages "lost"
    pub.publish("qfs/telemetry/alice/link/", {"qber": 0.02})
    wait_for(lambda: state.telemetry_malformed >= before + 2, what="malformed count")
    wait_for(lambda: state.telemetry_gaps >= 5, what="gap count")
    assert send_command(ctl.endpoints["control"], {"cmd": "ping"})["ok"]


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b"\xc1\xff garbage", "malformed"),
        (msgpack.packb([1, 2, 3]), "map"),
        (msgpack.packb({"args": {}}), "missing 'cmd'"),
        (msgpack.packb({"cmd": "self_destruct"}), "unknown command"),
        (msgpack.packb({"cmd": "set_attenuation"}), "db"),
        (msgpack.packb({"cmd": "set_attenuation", "db": -3}), "db"),
        (msgpack.packb({"cmd": "set_attenuation", "db": "lots"}), "db"),
        (msgpack.packb({"cmd": "set_attenuation", "db": 3, "extra": 1}), "extra"),
        (msgpack.packb({"cmd": "set_intensities", "signal": 0.1, "decoy": 0.5}), "signal > decoy"),
        (msgpack.packb({"cmd": "set_probabilities", "signal": 0.5, "decoy": 0.4, "vacuum": 0.2}),
         "sum to 1"),
        (msgpack.packb({"cmd": "set_block_size", "n_bits": 10}), "n_bits"),
        (msgpack.packb({"cmd": "set_thresholds", "qber_threshold": 0.9}), "qber_threshold"),
    ],
)  # fmt: skip
def test_bad_commands_get_error_replies(shared_node, raw, fragment):
    ctl, _, node_cmd = shared_node
    reply = send_raw(ctl.endpoints["control"], raw)
    assert reply is not None and reply["ok"] is False, reply
    assert fragment in reply["error"], reply
    assert node_cmd.received == [], "an invalid command must not reach the node"
    assert send_command(ctl.endpoints["control"], {"cmd": "ping"})["ok"]


def test_commands_are_forwarded_to_the_node(node):
    ctl, _, node_cmd = node
    ep = ctl.endpoints["control"]
    reply = send_command(ep, {"cmd": "set_attenuation", "db": 7.5, "rid": "r1"})
    assert reply == {"rid": "r1", "ok": True, "result": {"node_reply": {"done": "set_attenuation"}}}
    assert node_cmd.received[-1]["cmd"] == "set_attenuation"
    assert node_cmd.received[-1]["args"] == {"db": 7.5}
    reply = send_command(ep, {"cmd": "set_intensities", "signal": 0.5, "decoy": 0.1})
    assert reply["ok"] and node_cmd.received[-1]["args"] == {
        "signal": 0.5, "decoy": 0.1, "vacuum": 0.0}  # fmt: skip
    assert send_command(ep, {"cmd": "pause"})["ok"] and ctl.controller.state.paused
    assert send_command(ep, {"cmd": "resume"})["ok"] and not ctl.controller.state.paused
    refused = send_command(ep, {"cmd": "set_block_size", "n_bits": 1 << 20})
    assert not refused["ok"] and "refused by test node" in refused["error"]
    state = send_command(ep, {"cmd": "state"})
    assert state["ok"] and state["result"]["node"] == "alice"
    thresholds = send_command(ep, {"cmd": "set_thresholds", "qber_blocks": 2})
    assert thresholds["ok"] and ctl.controller.cfg.loop.qber_blocks == 2


def test_closed_loop_pauses_on_qber_rise_and_resumes_when_a_check_passes(node):
    ctl, pub, node_cmd = node
    state = ctl.controller.state
    alarms = Subscriber(ctl.endpoints["publish"], ["svc/mgmt/alice/alarm/"])
    time.sleep(0.3)  # let the alarm subscription reach the controller's PUB
    for i, qber in enumerate([0.03, 0.12, 0.13]):
        pub.publish("qfs/telemetry/alice/block/", {"block_id": f"b{i}", "qber": qber})
    time.sleep(0.3)
    assert "pause" not in node_cmd.commands(), "two high blocks must not pause (N = 3)"
    pub.publish("qfs/telemetry/alice/block/", {"block_id": "b3", "qber": 0.14})
    wait_for(lambda: "pause" in node_cmd.commands(), what="pause sent to the node")
    assert state.paused_by_loop and state.alarms["qber_high"].active
    msg = alarms.recv(timeout_ms=3000)
    assert msg is not None and msg.topic == "svc/mgmt/alice/alarm/qber_high/"
    assert msg.payload["active"] is True and "0.14" in msg.payload["message"]
    # After recheck_s the loop resumes on probation; a bad block pauses again at once.
    wait_for(lambda: node_cmd.commands().count("resume") == 1, what="probation resume")
    pub.publish("qfs/telemetry/alice/block/", {"block_id": "b4", "qber": 0.2})
    wait_for(lambda: node_cmd.commands().count("pause") == 2, what="second pause")
    assert state.alarms["qber_high"].active
    # Next probation: a good block clears the alarm and production stays on.
    wait_for(lambda: node_cmd.commands().count("resume") == 2, what="second probation")
    pub.publish("qfs/telemetry/alice/block/", {"block_id": "b5", "qber": 0.025})
    wait_for(lambda: not state.alarms["qber_high"].active, what="alarm cleared")
    assert not state.paused and not state.paused_by_loop
    cleared = alarms.recv(timeout_ms=3000)
    assert cleared is not None and cleared.payload["active"] is False
    alarms.close()


def test_instrument_fault_and_pool_low_alarms(node):
    ctl, pub, _ = node
    state = ctl.controller.state
    pub.publish("qfs/telemetry/alice/instrument/tagger/", {"instrument": "tagger",
                "state": "fault", "fault": "InstrumentTimeout"})  # fmt: skip
    wait_for(lambda: state.alarms["instrument_fault"].active, what="fault alarm")
    assert "InstrumentTimeout" in state.alarms["instrument_fault"].message
    pub.publish("qfs/telemetry/alice/instrument/tagger/", {"instrument": "tagger", "state": "ok"})
    wait_for(lambda: not state.alarms["instrument_fault"].active, what="fault cleared")
    # 32 keys in our share, threshold 10: take 30 and the pool_low alarm goes up.
    ctl.controller.pool.issue("sae-alice", "sae-bob", 30, 256)
    wait_for(lambda: state.alarms["pool_low"].active, what="pool low alarm")


def test_reload_applies_thresholds_and_limits(tmp_path, pki):
    cfg_file = tmp_path / "ctl.toml"

    def write(threshold: float, per_request: int) -> None:
        cfg_file.write_text(
            f'node = "alice"\nrole = "alice"\nkeystore = "{tmp_path / "a.db"}"\n'
            f'[kms]\nkme_id = "alice"\npeer_kme_id = "bob"\ncert = "{pki / "alice.pem"}"\n'
            f'key = "{pki / "alice.key"}"\nca = "{pki / "ca.pem"}"\nlocal_saes = ["sae-alice"]\n'
            f'peer_saes = ["sae-bob"]\nport = 0\nmax_key_per_request = {per_request}\n'
            f"[security]\ncurve = false\n[http]\nenabled = false\n"
            f"[loop]\nqber_threshold = {threshold}\n"
        )

    from controller.config import load_config

    write(0.08, 128)
    ctl = ControllerThread(load_config(cfg_file), cfg_file).start()
    try:
        ep = ctl.endpoints["control"]
        write(0.05, 4)
        reply = send_command(ep, {"cmd": "reload"})
        assert reply["ok"], reply
        assert ctl.controller.cfg.loop.qber_threshold == 0.05
        assert ctl.controller.kms.cfg.max_key_per_request == 4
        cfg_file.write_text("node = [")  # a broken file is refused and changes nothing
        broken = send_command(ep, {"cmd": "reload"})
        assert not broken["ok"] and "TOML" in broken["error"]
        assert ctl.controller.cfg.loop.qber_threshold == 0.05
    finally:
        ctl.stop()


def test_closed_loop_resumes_on_a_good_estimate_while_paused(node):
    ctl, pub, node_cmd = node
    state = ctl.controller.state
    for i in range(3):
        pub.publish("qfs/telemetry/alice/block/", {"block_id": f"h{i}", "qber": 0.2})
    wait_for(lambda: state.paused_by_loop, what="pause")
    # The link summary still carries the bad block's QBER: no resume on that.
    pub.publish("qfs/telemetry/alice/link/", {"qber": 0.2, "skr_bps": 0.0})
    time.sleep(0.2)
    assert state.paused_by_loop
    pub.publish("qfs/telemetry/alice/link/", {"qber": 0.03})
    wait_for(lambda: not state.alarms["qber_high"].active, what="resume on a good estimate")
    assert node_cmd.commands()[-1] == "resume" and not state.paused


def test_a_burst_is_drained_in_batches_relayed_and_counted(tmp_path, pki):
    """More than one wake-up's bound in one burst: every message counted and relayed, in order."""
    from controller.node_controller import NodeController

    seed_blocks([tmp_path / "alice.db"], n_blocks=2, block_bytes=1024)
    pub = Publisher("tcp://127.0.0.1:0", "alice", "postprocess", connect=False)
    node_cmd = FakeNodeCommandSocket()
    cfg = {
        "node": "alice",
        "role": "alice",
        "keystore": str(tmp_path / "alice.db"),
        "security": {"curve": False},
        "telemetry": {"node_endpoint": pub.endpoint, "relay": "tcp://127.0.0.1:0"},
        "control": {"node_endpoint": node_cmd.endpoint},
    }
    ctl = ControllerThread(cfg).start()
    watcher = Subscriber(ctl.endpoints["relay"], ["qfs/telemetry/alice/burst/"])
    try:
        state = ctl.controller.state
        wait_for(
            lambda: pub.publish("qfs/telemetry/alice/burst/", {"i": -1}) and
            watcher.recv(20) is not None and state.telemetry_received > 0, what="subscriptions",
        )  # fmt: skip
        while watcher.recv(100) is not None:
            pass
        wait_for(lambda: state.telemetry_received == pub.seq, what="warm-up messages")
        before, gaps, n = (
            state.telemetry_received,
            state.telemetry_gaps,
            3 * NodeController.INGEST_BATCH + 17,
        )
        first = pub.seq + 1
        for i in range(n):
            pub.publish("qfs/telemetry/alice/burst/", {"i": i})
        wait_for(lambda: state.telemetry_received == before + n, what="the whole burst")
        assert state.telemetry_gaps == gaps
        relayed = []
        while len(relayed) < n and (msg := watcher.recv(2000)) is not None:
            relayed.append(msg)
        assert [m.seq for m in relayed] == list(range(first, first + n))
        assert [m.payload["i"] for m in relayed] == list(range(n))
        assert watcher.stats.gaps == 0 and watcher.stats.malformed == 0
    finally:
        watcher.close()
        ctl.stop()
        pub.close()
        node_cmd.close()


def test_a_failed_set_up_closes_the_context(tmp_path, pki):
    """A port already taken: run() raises, and the ZeroMQ context is closed, not left for the
    garbage collector (whose term() would wait forever on the publisher's socket)."""
    import asyncio
    import socket

    import zmq

    from controller.config import parse_config
    from controller.node_controller import NodeController

    seed_blocks([tmp_path / "alice.db"], n_blocks=2, block_bytes=1024)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = {
            "node": "alice",
            "role": "alice",
            "keystore": str(tmp_path / "alice.db"),
            "kms": {
                "kme_id": "alice",
                "peer_kme_id": "bob",
                "cert": str(pki / "alice.pem"),
                "key": str(pki / "alice.key"),
                "ca": str(pki / "ca.pem"),
                "local_saes": ["sae-alice"],
                "peer_saes": ["sae-bob"],
                "port": 0,
                "sync_bind": f"tcp://127.0.0.1:{port}",
            },
            "security": {"curve": False},
            "telemetry": {"publish_mode": "bind", "publish": "tcp://127.0.0.1:0"},
        }
        ctl = NodeController(parse_config(cfg))
        with pytest.raises(zmq.ZMQError):
            asyncio.run(ctl.run())
    assert ctl.ctx.closed
    assert ctl.publisher is not None and ctl.publisher._sock.closed
