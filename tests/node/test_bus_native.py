"""recv_batch's native drain (qnode.bus_drain) against the pure-Python path, frame limits, and
the publisher's ormsgpack packing (byte-identical to msgpack-python, same refusals)."""

from __future__ import annotations

import collections
import datetime
import enum
import uuid

import msgpack
import numpy as np
import pytest
import zmq

from qnode.bus import FRAME_LIMIT, Publisher, Subscriber, _Stats, encode_header
from qnode.codec import packb

T = b"qfs/telemetry/alice/link/"
U = b"qfs/telemetry/alice/block/"
V = b"qfs/telemetry/alice/lonk/"  # as long as T: told apart by its bytes only


def _head(seq: int, src: str = "pp", node: str = "alice", ts: int = 7) -> bytes:
    return encode_header({"schema": 1, "node": node, "src": src}, seq, ts)


def _stream() -> list[list[bytes]]:
    """Good messages from two publishers and two topics (runs of equal and of different topic
    and header bytes), foreign header encodings, gaps, a restart and every malformed kind."""
    msgs: list[list[bytes]] = []
    for i in range(1, 40):
        topic = T if i % 7 else U
        topic = V if i % 4 == 1 else topic
        src = ("pp", "qq", "pp", "pp", "acq")[i % 5]
        msgs.append([topic, _head(i, src, ts=1000 + i), packb({"i": i, "x": [i, 1.5]})])
    msgs += [
        [T, _head(45, ts=3), packb({"i": 45})],  # gap 40..44
        [T, packb({"schema": 1, "node": "bob", "src": "x", "seq": 3, "ts_ns": 9}), packb({})],
        [T, packb({"ts_ns": 9, "seq": 4, "src": "x", "node": "bob", "schema": 1}), packb({})],
        [T],  # one frame
        [T, _head(46)],  # two frames
        [T, _head(47), packb({"a": 1}), b"extra"],  # four frames
        [T, _head(48), packb({"a": 1}), T],  # four frames, the last a valid topic
        [b"qfs/telemetry/alice/link", _head(49), packb({})],  # topic without trailing '/'
        [b"qfs/\xff/x/", _head(50), packb({})],  # topic not UTF-8
        [T, packb({"schema": 2, "node": "alice", "src": "pp", "seq": 51, "ts_ns": 1}), b"\x80"],
        [T, b"\x00" * 30, packb({})],  # header not msgpack
        [T, _head(52), b"\x92\x01\x02"],  # payload an array
        [T, _head(53), b""],  # payload empty
        [T, _head(54), packb({"after": "junk"})],
        [T, _head(2, ts=5), packb({"restart": True})],  # seq went back: a restart
        [T, _head(1 << 63, ts=1 << 63), packb({"big": 1})],  # seq/ts beyond int64: full decode
        [T, _head((1 << 63) + 1, ts=1), packb({"big": 2})],
        [U, _head(3, src="acq", ts=11), packb({"i": "acq"})],
    ]
    return msgs


def _pair(ctx: zmq.Context, **kw):
    raw = ctx.socket(zmq.PUB)
    raw.linger = 0
    raw.sndhwm = 0
    port = raw.bind_to_random_port("tcp://127.0.0.1")
    subs = []
    for native in (True, False):
        sub = Subscriber(f"tcp://127.0.0.1:{port}", ["qfs/"], context=ctx, rcvhwm=0, **kw)
        if not native:
            sub._native_tried = True  # the pure-Python path
        subs.append(sub)
    probe = [T, _head(1, src="probe"), packb({})]
    for sub in subs:
        for _ in range(200):
            raw.send_multipart(probe)
            if sub.recv_batch(1, 50):
                break
        else:
            raise AssertionError("subscriber never connected")
    for sub in subs:  # the other one's probes too
        while sub.recv_batch(100, 100):
            pass
        sub.stats = _Stats()
    return raw, subs


def _drain_all(sub: Subscriber, n: int, max_messages: int) -> list:
    got: list = []
    while len(got) < n and (batch := sub.recv_batch(max_messages, 2000)):
        assert len(batch) <= max_messages
        got.extend(batch)
    return got


def _view(msg, lazy: bool):
    try:
        payload = msg.payload
    except ValueError:
        payload = "malformed"
    return (msg.topic, msg.node, msg.src, msg.seq, msg.ts_ns, msg.header, payload)


@pytest.mark.parametrize("lazy", [True, False])
def test_native_drain_and_python_path_deliver_and_count_the_same(lazy):
    ctx = zmq.Context()
    raw, (native, python) = _pair(ctx, lazy_payload=lazy)
    assert native._drainer is not None, "the native drain should be available on Linux"
    assert python._drainer is None
    stream = _stream()
    for frames in stream:
        raw.send_multipart(frames)
    expected = 39 + 1 + 2 + 1 + 1 + 2 + 1  # good, after the gap, foreign, 54, restart, big, acq
    got_native = _drain_all(native, expected, max_messages=16)
    got_python = _drain_all(python, expected, max_messages=16)
    assert [_view(m, lazy) for m in got_native] == [_view(m, lazy) for m in got_python]
    views = [_view(m, lazy) for m in got_native]
    assert [v[3] for v in views[:39]] == list(range(1, 40))
    topics = ["lonk", "link", "link", "link", "lonk", "link", "lock", "link"]
    assert [v[0][-5:-1] for v in views[:8]] == topics
    assert [v[2] for v in views[:5]] == ["qq", "pp", "pp", "acq", "pp"]
    assert views[0][5] == {"schema": 1, "node": "alice", "src": "qq", "seq": 1, "ts_ns": 1001}
    assert views[0][6] == {"i": 1, "x": [1, 1.5]}
    assert views[39][3] == 45
    assert (views[-1][0], views[-1][2], views[-1][6]) == (U.decode(), "acq", {"i": "acq"})
    assert {v[3] for v in views} >= {1 << 63, (1 << 63) + 1}
    for sub in (native, python):
        assert sub.stats.received == len(got_native)
    assert native.stats == python.stats
    raw.close(), native.close(), python.close(), ctx.term()


def test_native_drain_counts_each_malformed_message_once():
    ctx = zmq.Context()
    raw, (native, _python) = _pair(ctx, lazy_payload=False)
    for frames in _stream()[39:]:
        raw.send_multipart(frames)
    got = _drain_all(native, 8, max_messages=1024)
    # one frame, two frames, two four-frame runs, two bad topics, schema 2, bad header,
    # payload an array, payload empty: ten malformed, each counted once
    assert native.stats.malformed == 10
    assert [m.seq for m in got][:4] == [45, 3, 4, 54]
    assert native.stats.restarts >= 1
    raw.close(), native.close(), _python.close(), ctx.term()


def test_frame_over_the_limit_is_malformed_on_both_paths_and_the_stream_goes_on():
    ctx = zmq.Context()
    raw, subs = _pair(ctx, lazy_payload=True)
    big = b"\x81\xa1a\xc6" + (FRAME_LIMIT).to_bytes(4, "big") + b"\x00" * FRAME_LIMIT
    raw.send_multipart([T, _head(4), packb({"ok": 0})])
    raw.send_multipart([T, _head(5), big])
    raw.send_multipart([T, _head(6), packb({"ok": 1})])
    for sub in subs:
        got = _drain_all(sub, 2, max_messages=8)
        assert [(m.seq, m.payload) for m in got] == [(4, {"ok": 0}), (6, {"ok": 1})]
        assert sub.stats.malformed == 1 and sub.stats.gaps == 1
    raw.close(), [s.close() for s in subs], ctx.term()


def test_batches_end_at_max_messages_and_at_message_boundaries():
    ctx = zmq.Context()
    raw, (native, python) = _pair(ctx, lazy_payload=True)
    for i in range(1, 301):
        raw.send_multipart([T if i % 3 else U, _head(i, ts=i), packb({"i": i})])
    sizes, got = [], []
    while len(got) < 300 and (batch := native.recv_batch(64, 2000)):
        sizes.append(len(batch))
        got.extend(batch)
    assert max(sizes) <= 64
    assert [m.payload["i"] for m in got] == list(range(1, 301))
    assert native.stats.gaps == 0 and native.stats.malformed == 0
    assert native.recv_batch(10, 20) == []
    raw.close(), native.close(), python.close(), ctx.term()


def test_recv_batch_on_a_closed_subscriber_raises_instead_of_touching_the_socket():
    ctx = zmq.Context()
    raw, (native, python) = _pair(ctx)
    native.close()
    with pytest.raises(zmq.ZMQError):
        native.recv_batch(10, 0)
    raw.close(), python.close(), ctx.term()


class _Color(enum.IntEnum):
    RED = 3


class _Name(str):
    pass


@pytest.mark.parametrize(
    "payload",
    [
        {"a": 1, "b": 2.5, "c": "x" * 40, "d": None, "e": True, "f": [1, 2, (3, 4)]},
        {"bin": b"\x00" * 300, "neg": -(2**63), "u64": 2**64 - 1, "s": "\u00fc" * 70_000},
        {"arr": np.arange(10, dtype=np.int32), "f64": np.float64(2.5), "i64": np.int64(-7)},
        {"m": np.zeros((3, 4)), "empty": np.zeros(0, np.uint8), "flag": np.bool_(True)},
        {"nested": {"x": {"y": [1.0, float("inf")]}}, "ba": bytearray(b"ab")},
        {1: "int key", "e": _Color.RED, "s": _Name("sub")},  # ormsgpack refuses: msgpack packs
        {"c": collections.Counter("abca"), "o": collections.OrderedDict(x=1)},  # dict subclasses
    ],
)
def test_publisher_payload_bytes_equal_msgpack_python(payload):
    ctx = zmq.Context()
    pub = Publisher("inproc://pack", "alice", "pp", connect=False, context=ctx)
    sub = ctx.socket(zmq.SUB)
    sub.subscribe(b"")
    sub.connect("inproc://pack")
    while not sub.poll(20):  # slow joiner: probe until the subscription is in place
        pub.publish("qfs/telemetry/alice/probe/", {})
    while sub.poll(20):
        sub.recv_multipart()
    seq = pub.publish("qfs/telemetry/alice/link/", payload)
    topic, head, body = sub.recv_multipart()
    assert body == packb(payload)
    assert topic == T and msgpack.unpackb(head)["seq"] == seq
    sub.close(), pub.close(), ctx.term()


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        ({"t": datetime.datetime(2026, 1, 1)}, TypeError),  # ormsgpack could, msgpack cannot
        ({"u": uuid.UUID(int=5)}, TypeError),
        ({"o": object()}, TypeError),
        ({"big": b"\x00" * (FRAME_LIMIT + 1)}, ValueError),
    ],
)
def test_publisher_refuses_what_it_refused_before_without_using_a_seq(payload, error):
    ctx = zmq.Context()
    pub = Publisher("inproc://refuse", "alice", "pp", connect=False, context=ctx)
    with pytest.raises(error):
        pub.publish("qfs/telemetry/alice/link/", payload)
    assert pub.seq == 0
    assert pub.publish("qfs/telemetry/alice/link/", {"ok": 1}) == 1
    pub.close(), ctx.term()


def test_recv_batch_drops_updates_not_newer_than_the_snapshot_on_both_paths():
    from qnode.bus import TelemetryHub

    ctx = zmq.Context()
    hub = TelemetryHub("inproc://snap-hub", "tcp://127.0.0.1:*", "tcp://127.0.0.1:*", context=ctx)
    pub = Publisher(hub.internal, "alice", "pp", context=ctx)
    subs = [Subscriber(hub.public, ["qfs/"], context=ctx, snapshot_endpoint=hub.snapshot)]
    subs.append(Subscriber(hub.public, ["qfs/"], context=ctx, snapshot_endpoint=hub.snapshot))
    subs[1]._native_tried = True  # the pure-Python path
    for sub in subs:
        for _ in range(200):
            pub.publish("qfs/telemetry/alice/probe/", {})
            if sub.recv_batch(1, 50):
                break
    for sub in subs:
        while sub.recv_batch(100, 100):
            pass
    link = "qfs/telemetry/alice/link/"
    last = [pub.publish(link, {"v": v}) for v in (1, 2, 3)][-1]  # queued in both SUBs
    for sub in subs:
        for _ in range(40):  # the hub caches a message just after forwarding it
            if [m.seq for m in sub.snapshot(link)] == [last]:
                break
        else:
            raise AssertionError("snapshot never caught up")
    pub.publish(link, {"v": 4})
    for sub in subs:
        got = _drain_all(sub, 1, max_messages=16)
        assert [m.payload for m in got] == [{"v": 4}]  # v1..v3 are not newer than the snapshot
        assert sub.stats.gaps == 0 and sub.stats.malformed == 0 and sub.stats.restarts == 0
    assert subs[0]._drainer is not None and subs[1]._drainer is None
    [s.close() for s in subs], pub.close(), hub.close()


def test_message_batch_reads_like_a_list_of_messages():
    ctx = zmq.Context()
    raw, subs = _pair(ctx, lazy_payload=True)
    bob = packb({"schema": 1, "node": "bob", "src": "x", "seq": 1, "ts_ns": 5})
    raw.send_multipart([T, _head(10, ts=100), packb({"i": 10})])
    raw.send_multipart([T, _head(11, ts=101), b"\x81\xa1a"])  # a map, truncated: bad on use
    raw.send_multipart([U, _head(12, ts=102), packb({"i": 12})])
    raw.send_multipart([T, bob, b"\x80"])  # decoded in full: a ready object in the batch
    expected = [(T, "pp", 10, 100), (T, "pp", 11, 101), (U, "pp", 12, 102), (T, "x", 1, 5)]
    for sub in subs:
        batches = []
        while sum(map(len, batches)) < 4 and (batch := sub.recv_batch(16, 2000)):
            batches.append(batch)
        fields = []
        for batch in batches:
            view = [(m.topic.encode(), m.src, m.seq, m.ts_ns) for m in batch]
            assert view == [(m.topic.encode(), m.src, m.seq, m.ts_ns) for m in batch]  # again
            assert view == [(m.topic.encode(), m.src, m.seq, m.ts_ns) for m in batch[:]]
            by_index = [batch[i] for i in range(len(batch))]
            assert view == [(m.topic.encode(), m.src, m.seq, m.ts_ns) for m in by_index]
            assert (batch[-1].seq, batch[0].seq) == (view[-1][2], view[0][2])
            with pytest.raises(IndexError):
                batch[len(batch)]
            fields += view
        assert fields == expected
        bad = next(m for b in batches for m in b if m.seq == 11)
        before = sub.stats.malformed
        for _ in range(2):
            with pytest.raises(ValueError):
                _ = bad.payload
        assert sub.stats.malformed == before + 1  # counted once for this message object
        empty = sub.recv_batch(10, 20)
        assert empty == [] and not empty and len(empty) == 0
    raw.close(), [s.close() for s in subs], ctx.term()
