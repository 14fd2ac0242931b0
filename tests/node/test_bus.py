"""Telemetry bus over real ZeroMQ sockets: topics, hub, gaps, malformed input, clone snapshot, CURVE."""

from __future__ import annotations

import time

import pytest
import zmq

from qnode.bus import (
    Publisher,
    Subscriber,
    TelemetryHub,
    TopicError,
    parse_topic,
    topic,
)
from qnode.codec import packb


def _hub(**kw) -> TelemetryHub:
    return TelemetryHub(
        "tcp://127.0.0.1:*", "tcp://127.0.0.1:*", "tcp://127.0.0.1:*", context=zmq.Context(), **kw
    )


def _wait_connected(pub: Publisher, sub: Subscriber, topic_name: str) -> None:
    """Slow-joiner handshake: publish probes until the subscriber sees one."""
    for _ in range(100):
        pub.publish(topic_name, {"probe": True})
        if sub.recv(50) is not None:
            while sub.recv(20) is not None:
                pass
            return
    raise AssertionError("subscriber never connected")


def test_topic_building_and_validation():
    assert topic("qfs", "telemetry", "alice", "link") == "qfs/telemetry/alice/link/"
    assert topic("con", "resource", "bob", "det/1") == "con/resource/bob/det/1/"
    assert parse_topic("qfs/telemetry/alice/link/") == ("qfs", "telemetry", "alice", "link")
    for bad in [
        ("xyz", "telemetry", "a", "b"),
        ("qfs", "data", "a", "b"),
        ("qfs", "mgmt", "a b", "c"),
    ]:
        with pytest.raises(TopicError):
            topic(*bad)
    with pytest.raises(TopicError):
        parse_topic("qfs/telemetry/alice/link")


def test_hub_forwards_with_header_and_prefix_does_not_overmatch():
    hub = _hub()
    ctx = hub._ctx
    pub = Publisher(hub.internal, "alice", "pp", context=ctx)
    sub = Subscriber(hub.public, ["qfs/telemetry/alice/link/"], context=ctx)
    _wait_connected(pub, sub, "qfs/telemetry/alice/link/")
    pub.publish("qfs/telemetry/alice/linkx/", {"x": 1})  # must not match the subscription
    seq = pub.publish("qfs/telemetry/alice/link/", {"qber": 0.02})
    msg = sub.recv(2000)
    assert msg is not None and msg.topic == "qfs/telemetry/alice/link/"
    assert msg.payload == {"qber": 0.02}
    assert msg.header["schema"] == 1 and msg.header["node"] == "alice"
    assert msg.header["seq"] == seq and msg.header["src"] == "pp"
    assert abs(msg.header["ts_ns"] - time.time_ns()) < 5e9
    assert sub.recv(100) is None
    sub.close(), pub.close(), hub.close()


def test_gaps_and_malformed_are_counted_not_raised():
    ctx = zmq.Context()
    raw = ctx.socket(zmq.PUB)
    raw.linger = 0
    port = raw.bind_to_random_port("tcp://127.0.0.1")
    sub = Subscriber(f"tcp://127.0.0.1:{port}", context=ctx)
    t = b"qfs/telemetry/alice/link/"

    def header(seq):
        return packb({"schema": 1, "node": "alice", "src": "pp", "seq": seq, "ts_ns": 1})

    for _ in range(100):  # slow joiner
        raw.send_multipart([t, header(1), packb({})])
        if sub.recv(50):
            break
    raw.send_multipart([t, header(2), packb({"a": 1})])
    raw.send_multipart([t, header(6), packb({"a": 2})])  # 3 lost
    raw.send_multipart([t, b"\xc1garbage", packb({})])
    raw.send_multipart([t, header(7)])  # two frames
    raw.send_multipart([b"no-slash", header(8), packb({})])
    raw.send_multipart([t, packb({"schema": 2, "node": "a", "seq": 1, "ts_ns": 1}), packb({})])
    raw.send_multipart([t, header(9), b"\x92\x01"])  # truncated payload
    raw.send_multipart([t, header(10), packb({"a": 3})])
    got = [sub.recv(1000) for _ in range(3)]
    assert [m.payload["a"] for m in got] == [1, 2, 3]
    assert sub.stats.gaps == 3 + 3  # seq 3..5 and 7..9 never arrived valid
    assert sub.stats.malformed == 5
    sub.close(), raw.close()


def test_late_joiner_gets_snapshot_then_updates():
    hub = _hub()
    ctx = hub._ctx
    pub = Publisher(hub.internal, "bob", "acq", context=ctx)
    early = Subscriber(hub.public, context=ctx)
    _wait_connected(pub, early, "qfs/telemetry/bob/probe/")
    pub.publish("qfs/telemetry/bob/link/", {"v": 1})
    pub.publish("qfs/telemetry/bob/link/", {"v": 2})
    pub.publish("con/resource/bob/detector/", {"rate": 5})
    while early.recv(200):
        pass
    late = Subscriber(hub.public, ["qfs/"], context=ctx, snapshot_endpoint=hub.snapshot)
    snap = late.snapshot("qfs/")
    by_topic = {m.topic: m.payload for m in snap}
    assert by_topic["qfs/telemetry/bob/link/"] == {"v": 2}
    assert "con/resource/bob/detector/" not in by_topic
    for _ in range(50):
        pub.publish("qfs/telemetry/bob/link/", {"v": 3})
        msg = late.recv(100)
        if msg:
            break
    assert msg.payload == {"v": 3} and msg.header["seq"] > snap[-1].header["seq"]
    late.close(), early.close(), pub.close(), hub.close()


def test_curve_admits_listed_client_only():
    server_pub, server_sec = zmq.curve_keypair()
    good_pub, good_sec = zmq.curve_keypair()
    bad_pub, bad_sec = zmq.curve_keypair()
    hub = _hub(curve_server_keys=(server_pub, server_sec), curve_allowed_clients=[good_pub])
    ctx = hub._ctx
    pub = Publisher(hub.internal, "alice", "pp", context=ctx)
    good = Subscriber(hub.public, context=ctx, curve_client_keys=(good_pub, good_sec, server_pub))
    bad = Subscriber(hub.public, context=ctx, curve_client_keys=(bad_pub, bad_sec, server_pub))
    _wait_connected(pub, good, "qfs/telemetry/alice/link/")
    for _ in range(20):
        pub.publish("qfs/telemetry/alice/link/", {"secret": False})
    assert good.recv(500) is not None
    assert bad.recv(500) is None, "an unknown CURVE client received telemetry"
    good.close(), bad.close(), pub.close(), hub.close()


def test_qnode_telemetry_watch_prints_json_lines():
    import json
    import subprocess
    import sys

    hub = _hub()
    pub = Publisher(hub.internal, "alice", "pp", context=hub._ctx)
    early = Subscriber(hub.public, context=hub._ctx)
    _wait_connected(pub, early, "qfs/telemetry/alice/probe/")
    pub.publish("qfs/telemetry/alice/link/", {"qber": 0.02})
    time.sleep(0.2)
    cmd = [sys.executable, "-m", "qnode", "telemetry", "watch", hub.public, "--json",
           "--topic", "qfs/telemetry/alice/link/", "--snapshot", hub.snapshot, "--count", "3",
           "--duration", "30"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while proc.poll() is None and time.monotonic() < deadline:
        pub.publish("qfs/telemetry/alice/link/", {"qber": 0.03})
        pub.publish("con/resource/alice/instrument/source/", {"state": "running"})
        time.sleep(0.1)
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) == 3
    assert lines[0]["payload"].get("qber") in (0.02, 0.03), lines  # the snapshot comes first
    seqs = [m["header"]["seq"] for m in lines]
    assert seqs == sorted(set(seqs)), f"snapshot and updates overlap: {seqs}"
    assert all(m["topic"] == "qfs/telemetry/alice/link/" for m in lines)
    assert all(m["header"]["node"] == "alice" for m in lines)
    early.close(), pub.close(), hub.close()
