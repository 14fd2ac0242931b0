"""The fast subscriber path: header template and fast parse, lazy payload, frame reading, batches."""

from __future__ import annotations

import time

import msgpack
import pytest
import zmq

from qnode.bus import (
    MalformedMessage,
    Publisher,
    Subscriber,
    _Decoder,
    decode_frames,
    encode_header,
)
from qnode.codec import packb

T = b"qfs/telemetry/alice/link/"


def _plain_header(seq: int, ts: int = 5, src: str = "pp", node: str = "alice") -> bytes:
    return packb({"schema": 1, "node": node, "src": src, "seq": seq, "ts_ns": ts})


def test_template_header_is_plain_msgpack_with_the_documented_fields():
    fields = {"schema": 1, "node": "alice", "src": "pp"}
    raw = encode_header(fields, 7, 1_700_000_000_123_456_789)
    assert msgpack.unpackb(raw) == {**fields, "seq": 7, "ts_ns": 1_700_000_000_123_456_789}
    assert list(msgpack.unpackb(raw)) == ["schema", "node", "src", "seq", "ts_ns"]


def test_fast_path_agrees_with_full_decode_for_template_and_foreign_headers():
    dec = _Decoder()
    fields = {"schema": 1, "node": "alice", "src": "pp"}
    for seq in (1, 2, 300, 1 << 40):  # the first one learns the prefix, the rest take the fast path
        msg = dec.decode([T, encode_header(fields, seq, seq * 10), packb({"a": seq})], lazy=True)
        assert (msg.node, msg.src, msg.seq, msg.ts_ns) == ("alice", "pp", seq, seq * 10)
        assert msg.header == {**fields, "seq": seq, "ts_ns": seq * 10}
        assert msg.payload == {"a": seq}
    assert len(dec.prefixes) == 1
    # A header written by another msgpack encoder (small ints, other key order) is read in full.
    foreign = packb({"ts_ns": 9, "seq": 3, "src": "x", "node": "bob", "schema": 1})
    msg = dec.decode([T, foreign, packb({})], lazy=False)
    assert (msg.node, msg.src, msg.seq, msg.ts_ns) == ("bob", "x", 3, 9)
    assert len(dec.prefixes) == 1  # not the canonical layout: never cached
    # Same node and src but another process's prefix bytes: a different cache entry.
    other = encode_header({"schema": 1, "node": "alice", "src": "acq"}, 4, 4)
    assert dec.decode([T, other, packb({})], lazy=True).src == "acq"


def test_fast_path_still_rejects_bad_headers():
    dec = _Decoder()
    fields = {"schema": 1, "node": "alice", "src": "pp"}
    dec.decode([T, encode_header(fields, 1, 1), packb({})], lazy=True)
    good = encode_header(fields, 2, 2)
    for bad in (
        good[:-1],  # truncated
        encode_header({"schema": 2, "node": "alice", "src": "pp"}, 2, 2),
        encode_header({"schema": 1, "node": 5, "src": "pp"}, 2, 2),
        b"\x85" + good[1:-23] + b"\x00" * 23,  # known prefix, tail of the wrong shape
    ):
        with pytest.raises(ValueError):
            dec.decode([T, bad, packb({})], lazy=True)
    with pytest.raises(ValueError):
        decode_frames([b"qfs/telemetry/alice/link", good, packb({})])  # no trailing '/'


def _raw_pub_and_sub(**kw):
    ctx = zmq.Context()
    raw = ctx.socket(zmq.PUB)
    raw.linger = 0
    port = raw.bind_to_random_port("tcp://127.0.0.1")
    sub = Subscriber(f"tcp://127.0.0.1:{port}", context=ctx, **kw)
    for _ in range(100):  # slow joiner
        raw.send_multipart([T, _plain_header(1), packb({"a": 0})])
        if sub.recv(50):
            break
    else:
        raise AssertionError("subscriber never connected")
    return ctx, raw, sub


def test_lazy_payload_counts_a_bad_payload_when_read():
    ctx, raw, sub = _raw_pub_and_sub(lazy_payload=True)
    raw.send_multipart([T, _plain_header(2), b"\x92\x01"])  # an array: refused on receipt
    raw.send_multipart([T, _plain_header(3), b"\x81\xa1a"])  # a map, truncated: found on use
    raw.send_multipart([T, _plain_header(4), packb({"a": 4})])
    bad, good = sub.recv(1000), sub.recv(1000)
    assert sub.stats.malformed == 1
    assert (bad.seq, good.seq) == (3, 4)
    with pytest.raises(MalformedMessage):
        _ = bad.payload
    with pytest.raises(MalformedMessage):
        _ = bad.payload
    assert sub.stats.malformed == 2  # counted once
    assert good.payload == {"a": 4}
    assert sub.stats.gaps == 1  # seq 2 was dropped
    sub.close(), raw.close(), ctx.term()


def test_frame_reading_stays_in_step_after_short_and_long_messages():
    ctx, raw, sub = _raw_pub_and_sub()
    raw.send(T)  # one frame
    raw.send_multipart([T, _plain_header(2)])  # two frames
    raw.send_multipart([T, _plain_header(3), packb({"a": 3}), b"extra"])  # four frames
    raw.send_multipart([T, _plain_header(4), packb({"a": 4})])
    msg = sub.recv(1000)
    assert (msg.seq, msg.payload) == (4, {"a": 4})
    assert sub.stats.malformed == 3 and sub.stats.gaps == 2
    sub.close(), raw.close(), ctx.term()


def test_recv_batch_drains_with_one_poll_and_counts_gaps():
    ctx = zmq.Context()
    pub = Publisher("tcp://127.0.0.1:0", "alice", "pp", connect=False, context=ctx)
    sub = Subscriber(pub.endpoint, ["qfs/"], context=ctx, lazy_payload=True)
    for _ in range(100):
        pub.publish("qfs/telemetry/alice/probe/", {})
        if sub.recv(50):
            break
    while sub.recv(50):
        pass
    first = pub.seq
    for i in range(500):
        if i == 100:
            pub.seq += 7  # seven messages "lost"
        pub.publish("qfs/telemetry/alice/link/", {"i": i})
    got: list = []
    while len(got) < 500 and (batch := sub.recv_batch(128, 1000)):
        assert len(batch) <= 128
        got.extend(batch)
    assert [m.payload["i"] for m in got] == list(range(500))
    assert got[0].seq == first + 1 and got[-1].seq == first + 507
    assert sub.stats.gaps == 7 and sub.stats.malformed == 0
    assert sub.recv_batch(10, 50) == []
    sub.close(), pub.close(), ctx.term()


def test_hub_forwards_bursts_in_order_and_caches_the_last_per_topic():
    from qnode.bus import TelemetryHub

    ctx = zmq.Context()
    hub = TelemetryHub("inproc://fast-hub", "tcp://127.0.0.1:*", "tcp://127.0.0.1:*", context=ctx)
    pub = Publisher(hub.internal, "alice", "pp", context=ctx)
    sub = Subscriber(hub.public, ["qfs/"], context=ctx, snapshot_endpoint=hub.snapshot)
    for _ in range(100):
        pub.publish("qfs/telemetry/alice/probe/", {})
        if sub.recv(50):
            break
    while sub.recv(50):
        pass
    topics = [f"qfs/telemetry/alice/t{i}/" for i in range(5)]
    last = {}
    for i in range(2000):
        last[topics[i % 5]] = pub.publish(topics[i % 5], {"i": i})
    got = []
    while len(got) < 2000 and (msg := sub.recv(2000)) is not None:
        got.append(msg)
    assert [m.payload["i"] for m in got] == list(range(2000))
    assert sub.stats.gaps == 0
    late = Subscriber(
        hub.public, ["qfs/telemetry/alice/t"], context=ctx, snapshot_endpoint=hub.snapshot
    )
    for _ in range(20):  # the hub caches a message just after forwarding it: allow a moment
        snap = {m.topic: m.seq for m in late.snapshot("qfs/telemetry/alice/t")}
        if snap == last:
            break
        time.sleep(0.05)
    assert snap == last
    late.close(), sub.close(), pub.close(), hub.close()


def test_a_good_message_behind_a_short_one_is_kept():
    """Frames 0 and 1 are read without their flags: a lone topic frame just before a good message
    is split off and counted, and the good message is still delivered."""
    ctx, raw, sub = _raw_pub_and_sub(lazy_payload=True)
    raw.send(T)  # one frame, then a good message right behind it
    raw.send_multipart([T, _plain_header(2), packb({"a": 2})])
    raw.send_multipart([T, _plain_header(3)])  # two frames, then a good one
    raw.send_multipart([T, _plain_header(4), packb({"a": 4})])
    got = [sub.recv(1000), sub.recv(1000)]
    assert [(m.seq, m.payload) for m in got] == [(2, {"a": 2}), (4, {"a": 4})]
    assert sub.stats.malformed == 2 and sub.stats.gaps == 1  # seq 3 never arrived whole
    # Three frames then a fourth that is a valid topic: still one malformed message.
    raw.send_multipart([T, _plain_header(5), packb({"a": 5}), T])
    raw.send_multipart([T, _plain_header(6), packb({"a": 6})])
    assert sub.recv(1000).seq == 6
    assert sub.stats.malformed == 3 and sub.stats.gaps == 2  # seq 3 and 5
    assert sub.stats.received == 4  # the connection probe, seq 2, 4 and 6
    sub.close(), raw.close(), ctx.term()


def test_publisher_refuses_a_payload_it_cannot_encode_without_using_a_seq():
    ctx = zmq.Context()
    pub = Publisher("tcp://127.0.0.1:0", "alice", "pp", connect=False, context=ctx)
    with pytest.raises(TypeError):
        pub.publish("qfs/telemetry/alice/link/", {"x": object()})
    assert pub.seq == 0
    assert pub.publish("qfs/telemetry/alice/link/", {"x": 1}) == 1
    pub.close(), ctx.term()


def test_a_hub_that_cannot_bind_closes_its_sockets():
    """The public endpoint is taken: the constructor raises and term() returns (no open socket)."""
    import threading

    ctx = zmq.Context()
    taken = ctx.socket(zmq.PUB)
    taken.linger = 0
    port = taken.bind_to_random_port("tcp://127.0.0.1")
    from qnode.bus import TelemetryHub

    with pytest.raises(zmq.ZMQError):
        TelemetryHub("inproc://hub-fail", f"tcp://127.0.0.1:{port}", "inproc://snap", context=ctx)
    taken.close()
    done = threading.Thread(target=ctx.term, daemon=True)
    done.start()
    done.join(5)
    assert not done.is_alive(), "term() waited on a socket the failed hub left open"


def test_recv_batch_waits_past_a_dropped_message_until_its_timeout():
    """A malformed message alone does not end the wait: a good one 0.1 s later is returned."""
    import threading

    ctx, raw, sub = _raw_pub_and_sub()
    lock = threading.Lock()

    def later() -> None:
        with lock:
            raw.send_multipart([T, _plain_header(3), packb({"a": 3})])

    with lock:
        raw.send_multipart([T, b"\xc1", packb({})])  # malformed
    timer = threading.Timer(0.1, later)
    timer.start()
    batch = sub.recv_batch(10, 5000)
    timer.join()
    assert [m.seq for m in batch] == [3] and sub.stats.malformed == 1
    t0 = time.monotonic()
    assert sub.recv_batch(10, 200) == []
    assert time.monotonic() - t0 >= 0.15  # the timeout was waited, not cut short
    sub.close(), raw.close(), ctx.term()


def test_telemetry_perf_run_is_a_real_pub_sub_that_accounts_for_every_message():
    """The ``telemetry`` perf row's measurement: a publisher process, this subscriber, TCP."""
    from controller.perf import _telemetry_run

    out = _telemetry_run(3000, 0.0, lazy=True)
    # The high-water marks hold a 3000-message burst: nothing lost, no gap counted.
    assert out["received"] == 3000 and out["lost"] == 0 and out["gaps_counted"] == 0
    assert out["msgs_per_s"] > 0 and out["sub_cpu_us"] > 0 and out["pub_cpu_us"] > 0
