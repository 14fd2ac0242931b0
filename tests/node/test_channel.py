"""Authenticated classical channel over real sockets, attacked by a man-in-the-middle proxy."""

from __future__ import annotations

import time

import pytest
import zmq

from qnode.channel import ChannelError, ClassicalChannel, HmacAuth, load_secret

from .mitm import MitmProxy

SECRET = bytes(range(32))
FAST = {"heartbeat_s": 0.05, "timeout_s": 0.6}


def _pump(*channels, until, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for ch in channels:
            ch.poll(5)
        if until():
            return
    raise AssertionError("condition not reached in time")


def _pair(ctx, via_proxy=False, secret_b=SECRET, **kw):
    alice = ClassicalChannel(
        "alice",
        "bob",
        "tcp://127.0.0.1:*",
        SECRET,
        bind=True,
        context=ctx,
        **FAST,
        **kw.get("a", {}),
    )
    proxy = MitmProxy(alice.endpoint, ctx) if via_proxy else None
    bob = ClassicalChannel(
        "bob",
        "alice",
        proxy.endpoint if proxy else alice.endpoint,
        secret_b,
        bind=False,
        context=ctx,
        **FAST,
        **kw.get("b", {}),
    )
    return alice, bob, proxy


def _connect(alice, bob):
    _pump(alice, bob, until=lambda: alice.connected and bob.connected)
    alice.take_events(), bob.take_events()


def _exchange(src, dst, n, start=0, expect=None):
    expect = n if expect is None else expect
    for i in range(start, start + n):
        src.send({"type": "data", "block": 7, "i": i})
    got = []

    def done():
        while m := dst._inbox and dst._inbox.pop(0):
            got.append(m["i"])
        return len(got) >= expect

    try:
        _pump(src, dst, until=done, timeout=1.5)
    except AssertionError:
        pass
    return got


@pytest.fixture
def ctx():
    context = zmq.Context()
    yield context
    context.destroy(0)


def test_messages_flow_both_ways_in_order(ctx):
    alice, bob, _ = _pair(ctx)
    _connect(alice, bob)
    assert _exchange(bob, alice, 20) == list(range(20))
    assert _exchange(alice, bob, 20) == list(range(20))
    assert alice.stats.rejected() == 0 and bob.stats.rejected() == 0
    with pytest.raises(ValueError):
        bob.send({"no": "type"})


def test_wrong_secret_never_connects(ctx):
    alice, bob, _ = _pair(ctx, secret_b=b"x" * 32)
    with pytest.raises(AssertionError):
        _pump(alice, bob, until=lambda: alice.connected, timeout=0.5)
    assert alice.stats.rejected_auth > 0
    with pytest.raises(ChannelError):
        bob.send({"type": "data"})


@pytest.mark.parametrize(
    "action, counter",
    [
        ("flip", "rejected_auth"),
        ("truncate", "rejected_auth"),
        ("drop_tag", "rejected_malformed"),
        ("replay", "rejected_replay"),
        ("reorder", "rejected_replay"),
    ],
)
@pytest.mark.parametrize("direction", ["up", "down"])
def test_attacked_messages_are_rejected_and_reported(ctx, action, counter, direction):
    alice, bob, proxy = _pair(ctx, via_proxy=True)
    _connect(alice, bob)
    proxy.attack(direction, 3, action)
    src, dst = (bob, alice) if direction == "up" else (alice, bob)
    got = _exchange(src, dst, 8, expect=8 if action == "replay" else 7)
    dst.poll(50)
    assert getattr(dst.stats, counter) == 1, f"{action} not counted as {counter}: {dst.stats}"
    if action in ("flip", "truncate", "drop_tag"):
        assert got == [0, 1, 2, 4, 5, 6, 7]
    elif action == "replay":
        assert got == list(range(8))  # the replayed copy is rejected, nothing delivered twice
    else:
        assert got == [0, 1, 2, 4, 5, 6, 7]  # 3 arrived after 4: rejected
    kinds = {e.kind for e in dst.take_events()}
    assert "rejected" in kinds
    if action != "replay":
        assert "gap" in kinds or action == "reorder"


def test_dropped_message_is_reported_as_gap(ctx):
    alice, bob, proxy = _pair(ctx, via_proxy=True)
    _connect(alice, bob)
    proxy.attack("up", 2, "drop")
    assert _exchange(bob, alice, 5, expect=4) == [0, 1, 3, 4]
    assert alice.stats.gaps == 1
    assert [e.kind for e in alice.take_events()] == ["gap"]


def test_peer_lost_state_kept_and_session_resumes(ctx):
    alice, bob, _ = _pair(ctx)
    _connect(alice, bob)
    endpoint = alice.endpoint
    alice.close()
    _pump(bob, until=lambda: not bob.connected, timeout=3)
    assert [e.kind for e in bob.take_events()] == ["peer_lost"]
    with pytest.raises(ChannelError):
        bob.send({"type": "data"})
    alice2 = _rebind(
        lambda: ClassicalChannel("alice", "bob", endpoint, SECRET, bind=True, context=ctx, **FAST)
    )
    _connect(alice2, bob)
    assert bob.stats.sessions == 2
    assert _exchange(bob, alice2, 3) == [0, 1, 2]


def _rebind(make):
    """The closed socket's port is released by ZeroMQ's I/O thread a moment later."""
    deadline = time.monotonic() + 5
    while True:
        try:
            return make()
        except zmq.ZMQError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_binder_restart_is_noticed_before_the_timeout(ctx):
    slow = {"heartbeat_s": 0.05, "timeout_s": 20.0}
    alice = ClassicalChannel("alice", "bob", "tcp://127.0.0.1:*", SECRET, bind=True, context=ctx,
                             **slow)  # fmt: skip
    bob = ClassicalChannel("bob", "alice", alice.endpoint, SECRET, bind=False, context=ctx, **slow)
    _connect(alice, bob)
    endpoint = alice.endpoint
    alice.close()
    alice2 = _rebind(lambda: ClassicalChannel("alice", "bob", endpoint, SECRET, bind=True,
                                              context=ctx, **slow))  # fmt: skip
    t0 = time.monotonic()
    _pump(alice2, bob, until=lambda: alice2.connected and bob.connected, timeout=5)
    assert time.monotonic() - t0 < 5, "the connector waited for its timeout"
    assert "peer_lost" in [e.kind for e in bob.take_events()]
    assert _exchange(bob, alice2, 2) == [0, 1]


def test_connector_restart_starts_new_session_and_old_one_is_dead(ctx):
    alice, bob, _ = _pair(ctx)
    _connect(alice, bob)
    old_sid = alice.session
    bob.close()
    bob2 = ClassicalChannel("bob", "alice", alice.endpoint, SECRET, bind=False, context=ctx, **FAST)
    _pump(alice, bob2, until=lambda: bob2.connected and alice.session != old_sid)
    assert "peer_lost" in [e.kind for e in alice.take_events()]
    assert _exchange(bob2, alice, 2) == [0, 1]


def test_secret_loading(tmp_path, monkeypatch):
    f = tmp_path / "secret"
    f.write_text(SECRET.hex())
    assert load_secret(str(f)) == SECRET
    monkeypatch.setenv("QNODE_TEST_SECRET", SECRET.hex())
    assert load_secret(env="QNODE_TEST_SECRET") == SECRET
    with pytest.raises(ValueError, match="QNODE_MISSING"):
        load_secret(env="QNODE_MISSING")
    with pytest.raises(ValueError, match="16 bytes"):
        HmacAuth(b"short")
    assert SECRET.hex() not in repr(HmacAuth(SECRET))
