"""Wegman-Carter transcript checkpoints: the hash, the pad accounting, and attacks on real sockets.

The attacker here may even hold the pre-shared HMAC secret (:class:`ResigningProxy`): the
per-message HMAC then accepts its forgery, and the next checkpoint must still catch it.
"""

from __future__ import annotations

import os
import random

import pytest

from pipeline.commit import CommitInitiator, CommitResponder
from qnode.channel import ChannelError, ClassicalChannel, HmacAuth
from qnode.codec import packb, unpackb
from qnode.keystore import KeyStore
from qnode.wegman_carter import UNIT, Chain, P, WegmanCarter, combine, record_coefficients

from .mitm import MitmProxy
from .test_channel import FAST, SECRET, _connect, _exchange, _pair, _pump, ctx  # noqa: F401


def _ref_hash(k: int, records: list[bytes]) -> int:
    h = 0
    for data in records:
        coeffs = [len(data)] + [
            int.from_bytes(data[i : i + 7], "little") for i in range(0, len(data), 7)
        ]
        for c in coeffs:
            h = (h + c) * k % P
    return h


def test_chain_matches_the_polynomial_definition_and_concatenates():
    rng = random.Random(7)
    for _ in range(40):
        k1, k2 = rng.randrange(P), rng.randrange(P)
        records = [os.urandom(rng.randrange(0, 40)) for _ in range(rng.randrange(1, 5))]
        chain = Chain(k1, k2)
        for r in records:
            chain.absorb(r)
        assert (chain.h1, chain.h2) == (_ref_hash(k1, records), _ref_hash(k2, records))
        assert chain.n == sum(record_coefficients(len(r)) for r in records)
        parts = [Chain(k1, k2).absorb(r) for r in records[:3]] + [(0, 0, 0)] * 3
        joined = Chain(k1, k2)
        for r in records[:3]:
            joined.absorb(r)
        assert combine((k1, k2), *parts[:3]) == (joined.h1, joined.h2)
    # the modular product at the top of the range (the kernel splits it in 32-bit halves)
    top = Chain(P - 1, P - 1)
    top.absorb(b"\xff" * 70)
    assert top.h1 == _ref_hash(P - 1, [b"\xff" * 70])
    # records are self-delimiting: moving a byte across a record boundary changes the hash
    k = (12345, 67890)
    a, b = Chain(*k), Chain(*k)
    a.absorb(b"ab"), a.absorb(b"c")
    b.absorb(b"a"), b.absorb(b"bc")
    assert (a.h1, a.h2) != (b.h1, b.h2)


def _wc_store(path, pad: bytes) -> KeyStore:
    ks = KeyStore(path)
    ks.add_committed("pad0", 0, "peer", pad, {}, for_channel=True)
    return ks


def _wc_pair(ctx, tmp_path, units=400, via_proxy=True, proxy_cls=MitmProxy):  # noqa: F811
    pad = os.urandom(UNIT * units)
    ka, kb = _wc_store(tmp_path / "a.db", pad), _wc_store(tmp_path / "b.db", pad)
    wa = WegmanCarter(ka, "alice", "bob", reserve_checkpoints=4)
    wb = WegmanCarter(kb, "bob", "alice", reserve_checkpoints=4)
    alice = ClassicalChannel("alice", "bob", "tcp://127.0.0.1:*", SECRET, bind=True,
                             context=ctx, wegman_carter=wa, **FAST)  # fmt: skip
    proxy = proxy_cls(alice.endpoint, ctx) if via_proxy else None
    bob = ClassicalChannel("bob", "alice", proxy.endpoint if proxy else alice.endpoint, SECRET,
                           bind=False, context=ctx, wegman_carter=wb, **FAST)  # fmt: skip
    _connect(alice, bob)
    assert alice.mode == bob.mode == "wegman-carter"
    return alice, bob, proxy, (ka, kb), pad


def _deliver(src, dst, messages, timeout=2.0):
    for m in messages:
        src.send(m)
    got = []

    def done():
        while dst._inbox:
            got.append(dst._inbox.pop(0))
        return len(got) >= len(messages)

    try:
        _pump(src, dst, until=done, timeout=timeout)
    except AssertionError:
        pass
    return got


def test_pad_is_spent_per_checkpoint_not_per_message(ctx, tmp_path):  # noqa: F811
    alice, bob, _, (ka, kb), _ = _wc_pair(ctx, tmp_path, via_proxy=False)
    # a block's worth of traffic: 60 plain messages each way, heartbeats, then the commit pair
    assert _exchange(bob, alice, 60) == list(range(60))
    assert _exchange(alice, bob, 60) == list(range(60))
    _pump(
        alice,
        bob,
        until=lambda: bob.stats.heartbeats_sent >= 3 and alice.stats.heartbeats_sent >= 3,
    )
    got = _deliver(bob, alice, [{"type": "commit_propose", "block": 0, "block_id": "x"}])
    assert [m["type"] for m in got] == ["commit_propose"]
    got = _deliver(alice, bob, [{"type": "commit_confirm", "block_id": "x", "status": "committed"}])
    assert [m["type"] for m in got] == ["commit_confirm"]
    for ch in (alice, bob):
        assert ch.stats.wc_checkpoints_sent == 1 and ch.stats.wc_checkpoints_verified == 1
        assert ch.stats.wc_pad_bits_used == 2 * 8 * UNIT  # one tag sent, one verified: 256 bits
        assert ch.stats.rejected() == 0 and ch.mode == "wegman-carter"
        assert 0 < ch.stats.wc_eps < 1e-17  # (L/p)^2 + 2^-60
    # both nodes persisted a cursor beyond every unit used (base + 2 checkpoints)
    used = alice._wc_session.base + 2
    assert ka.pad_cursor("units") >= used and kb.pad_cursor("units") >= used


@pytest.mark.parametrize("direction", ["up", "down"])
def test_forgery_under_a_valid_hmac_is_caught_by_the_next_checkpoint(ctx, tmp_path, direction):  # noqa: F811
    """The attacker knows the HMAC secret: it rewrites a stage message and re-signs it. HMAC
    accepts it; the commit message that follows fails its Wegman-Carter tag and is rejected."""

    class ResigningProxy(MitmProxy):
        forged = 0

        def _process(self, d, frames):
            env = unpackb(frames[0])
            if env.get("kind") == "msg" and env.get("alg") == "hmac" and d == direction:
                body = unpackb(frames[1])
                if body.get("i") == 3 and not self.forged:
                    self.forged += 1
                    body["i"] = 33
                    new = packb(body)
                    tag = HmacAuth(SECRET).tag(env["dir"], env["seq"], frames[0], new)
                    frames = [frames[0], new, tag]
            self._forward(d, frames)

    alice, bob, proxy, _, _ = _wc_pair(ctx, tmp_path, proxy_cls=ResigningProxy)
    src, dst = (bob, alice) if direction == "up" else (alice, bob)
    got = _exchange(src, dst, 6)
    assert proxy.forged == 1 and 33 in got  # the forgery got through the per-message HMAC
    dst.take_events()
    commit = {"type": "commit_confirm" if src is alice else "commit_propose", "block_id": "x"}
    assert _deliver(src, dst, [commit], timeout=1.0) == []
    assert dst.stats.rejected_auth == 1 and dst.stats.wc_checkpoints_verified == 0
    kinds = [e.kind for e in dst.take_events()]
    assert kinds[:2] == ["rejected", "peer_lost"], kinds
    # a new session (fresh transcripts, fresh pad units) carries commits again
    _connect(alice, bob)
    assert alice.mode == bob.mode == "wegman-carter"
    assert [m["type"] for m in _deliver(src, dst, [commit])] == [commit["type"]]


@pytest.mark.parametrize("action", ["flip", "drop", "reorder", "replay"])
def test_attacked_message_in_a_wc_session_is_rejected_and_restarts_it(ctx, tmp_path, action):  # noqa: F811
    alice, bob, proxy, _, _ = _wc_pair(ctx, tmp_path)
    proxy.attack("up", 2, action)
    got = _exchange(bob, alice, 5, expect=4 if action != "replay" else 5)
    counter = {
        "flip": "rejected_auth",
        "drop": "gaps",
        "reorder": "gaps",
        "replay": "rejected_replay",
    }
    assert getattr(alice.stats, counter[action]) >= 1
    assert 2 not in got or action == "replay"
    assert got.count(2) <= 1 and len(got) == len(set(got))
    kinds = [e.kind for e in alice.take_events()]
    if action == "replay":  # a replay is rejected but leaves the transcripts equal
        assert kinds == ["rejected"] and alice.connected
    else:
        assert "peer_lost" in kinds, kinds
    _connect(alice, bob)
    commit = {"type": "commit_propose", "block_id": "y"}
    assert [m["type"] for m in _deliver(bob, alice, [commit])] == ["commit_propose"]
    assert alice.stats.wc_checkpoints_verified == 1


def test_commit_message_without_its_checkpoint_is_rejected(ctx, tmp_path):  # noqa: F811
    alice, bob, _, _, _ = _wc_pair(ctx, tmp_path, via_proxy=False)
    bob._wc.checkpoint_types = frozenset()  # a sender that sends commits under HMAC only
    assert _deliver(bob, alice, [{"type": "commit_propose", "block_id": "z"}], timeout=1.0) == []
    assert alice.stats.rejected_auth == 1
    assert "peer_lost" in [e.kind for e in alice.take_events()]


def test_flipped_checkpoint_is_rejected(ctx, tmp_path):  # noqa: F811
    alice, bob, proxy, _, _ = _wc_pair(ctx, tmp_path)
    proxy.attack_type("up", "commit_propose", "flip")
    assert _deliver(bob, alice, [{"type": "commit_propose", "block_id": "w"}], timeout=1.0) == []
    assert alice.stats.rejected_auth == 1 and alice.stats.wc_checkpoints_verified == 0


def test_pad_exhaustion_restarts_and_new_pad_extends_a_running_session(ctx, tmp_path):  # noqa: F811
    alice, bob, _, (ka, kb), pad = _wc_pair(ctx, tmp_path, units=80, via_proxy=False)
    session = bob._wc_session
    left = session.units_left()
    assert 0 < left <= 40
    # more pad committed on both sides while the session runs: the session extends itself
    more = os.urandom(UNIT * 100)
    for ks in (ka, kb):
        ks.add_committed("pad1", 1, "peer", more, {}, for_channel=True)
    for i in range(left + 10):
        got = _deliver(bob, alice, [{"type": "commit_propose", "block_id": f"b{i}"}])
        assert len(got) == 1, f"checkpoint {i} not delivered"
        got = _deliver(alice, bob, [{"type": "commit_confirm", "block_id": f"b{i}"}])
        assert len(got) == 1
    assert bob._wc_session is session and bob.stats.sessions == 1, "the session restarted"
    assert session.peer_avail == 180  # learnt from Alice's checkpoints
    # spend it: key commits stop at the refill reserve (held: no restart, no HMAC fall-back)
    with pytest.raises(ChannelError, match="refill reserve"):
        for i in range(200):
            _deliver(bob, alice, [{"type": "commit_propose", "block_id": f"c{i}"}])
            _deliver(alice, bob, [{"type": "commit_confirm", "block_id": f"c{i}"}])
    assert bob.stats.wc_pad_low and not bob.stats.wc_pad_exhausted and session.units_left() > 0
    # the reserve carries only commits that make pad (a refill proposal, an "auth" answer)
    refills = 0
    with pytest.raises(ChannelError, match="exhausted"):
        for i in range(40):
            prop = {"type": "commit_propose", "block_id": f"r{i}", "refill": True}
            assert len(_deliver(bob, alice, [prop])) == 1
            conf = {"type": "commit_confirm", "block_id": f"r{i}", "status": "auth"}
            assert len(_deliver(alice, bob, [conf])) == 1
            refills += 1
    assert 4 <= refills <= 8  # 16 reserve units, two per refill
    assert bob._wc_session is session and bob.stats.sessions == 1, "the session restarted"
    _pump(alice, bob, until=lambda: alice.stats.wc_pad_exhausted and bob.stats.wc_pad_exhausted)
    assert "pad_exhausted" in [e.kind for e in bob.take_events()]
    # a new session has no pad: it runs on HMAC, and commits stay held on both sides
    bob.renegotiate()
    _connect(alice, bob)
    assert bob.mode == alice.mode == "hmac"
    assert bob.stats.wc_pad_bits_left == 0 == alice.stats.wc_pad_bits_left  # none on HMAC
    for ch, kind in ((bob, "commit_propose"), (alice, "commit_status")):
        with pytest.raises(ChannelError, match="downgrade"):
            ch.send({"type": kind, "block_id": "h", "status": {}})
        assert ch.stats.wc_pad_exhausted and ch.stats.commits_held >= 1


def test_commit_feeds_the_pad_only_below_the_high_water_mark(tmp_path):
    a, b = KeyStore(tmp_path / "a.db"), KeyStore(tmp_path / "b.db")
    alice = CommitResponder(a, "bob", wc_every_blocks=1, pad_high_units=20)
    bob = CommitInitiator(b, "alice", 1, pad_high_units=20)
    meta = {"n_bits": 8 * 16 * 12}
    for n in range(6):
        key = os.urandom(16 * 12)  # 12 pad units a block
        alice.offer(n, key, meta)
        proposal = bob.propose(n, key, meta)
        for reply in alice.handle(proposal):
            bob.handle(reply)
    # the pad reaches 2 blocks (23 usable units >= 20), then blocks are key again
    assert [x.seq for x in a.blocks("auth")] == [0, 1] == [x.seq for x in b.blocks("auth")]
    assert a.auth_pad_bytes() == b.auth_pad_bytes()
    assert alice.pad_units_left() == 23
    a.advance_pad_cursor("units", 10)  # the channel used pad: below the mark again
    key = os.urandom(16)
    alice.offer(6, key, {"n_bits": 128})
    replies = alice.handle(bob.propose(6, key, {"n_bits": 128}))
    assert replies and all(reply["status"] == "auth" for reply in replies), replies
    for reply in replies:
        bob.handle(reply)
    assert b.status(b.blocks()[-1].block_id) == "auth"
    # an auth block never shows up as committed key: blocks 0, 1 and 6 fed the pad, 2-5 are key
    for store in (a, b):
        assert [x.seq for x in store.blocks("committed")] == [2, 3, 4, 5]
        assert [x.seq for x in store.blocks("auth")] == [0, 1, 6]
    assert a.committed_digest() == b.committed_digest()
    assert a.committed_digest()[0] == 4  # the digest covers the four key blocks only


def test_cursor_one_unit_ahead_survives_a_crash_and_unit_parity_names_the_direction(tmp_path):
    """Item: a unit is never used twice, even across kill -9, and a restart burns at most one
    unit that was never used; an (HMAC-only) handshake cannot move a direction onto the other's
    units (odd base) or below a node's cursor."""
    pad = os.urandom(UNIT * 100)
    ka, kb = _wc_store(tmp_path / "a.db", pad), _wc_store(tmp_path / "b.db", pad)
    wa, wb = WegmanCarter(ka, "alice", "bob"), WegmanCarter(kb, "bob", "alice")
    assert wa.established() and wb.established()
    terms = wa.agree(wb.offer())
    assert terms is not None and terms["base"] % 2 == 0
    sa = wa.session(terms, b"s" * 16, "alice>bob")
    sb = wb.session(terms, b"s" * 16, "bob>alice")
    used = []
    for c in (1, 2, 3):
        sa.checkpoint_tag(c, b"record %d" % c, 0, c)
        used.append(sa.unit("alice>bob", c))
        # on disk (another connection, as after kill -9) before the tag exists anywhere
        assert KeyStore(tmp_path / "a.db").pad_cursor("units") == used[-1] + 1
    sb.checkpoint_tag(1, b"bob", 0, 1)
    bob_unit = sb.unit("bob>alice", 1)
    assert all(u % 2 == 0 for u in used) and bob_unit % 2 == 1  # "alice>bob" sorts first
    # crash and restart: the next session starts beyond every unit used, burning at most one
    wa2 = WegmanCarter(KeyStore(tmp_path / "a.db"), "alice", "bob")
    terms2 = wa2.agree(wb.offer())
    top = max(used + [bob_unit])
    assert top < terms2["base"] <= top + 2 and terms2["base"] % 2 == 0
    # terms a forged welcome could carry: below the cursor, or odd (swapping the directions)
    for base in (terms2["base"] - 2, terms2["base"] + 1):
        assert wa2.session({"base": base, "limit": terms2["limit"]}, b"t" * 16, "alice>bob") is None
    # before 64 units were ever held a session waits for them; afterwards any pad will do
    small = _wc_store(tmp_path / "c.db", os.urandom(UNIT * 40))
    wc_small = WegmanCarter(small, "alice", "bob")
    assert not wc_small.established() and wc_small.agree(wc_small.offer()) is None
    ka.advance_pad_cursor("units", 90)
    kb.advance_pad_cursor("units", 90)
    assert wa.agree(wb.offer()) == {"base": 90, "limit": 100}
