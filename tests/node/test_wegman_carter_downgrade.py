"""No silent downgrade from Wegman-Carter to HMAC (docs/contracts.md §7), on real sockets.

The attacker sits in the middle (tests/node/mitm.py), holds the pre-shared HMAC secret and can
drop messages: it drops commit checkpoints to force session restarts until the pad runs out,
then forges commit messages under a valid HMAC. Once the nodes have held pad, no block may be
committed as key without a Wegman-Carter checkpoint; the condition is reported; production
resumes when pad exists again (the refill reserve, or pad provisioned out of band), and both
key stores end identical.
"""

from __future__ import annotations

import os
import time

import pytest

from pipeline.commit import CommitInitiator, CommitResponder
from qnode.channel import ChannelError, ClassicalChannel, HmacAuth
from qnode.codec import packb, unpackb
from qnode.keystore import KeyStore, KeyStoreError
from qnode.wegman_carter import UNIT, Chain, WegmanCarter

from .mitm import MitmProxy
from .test_channel import SECRET, ctx  # noqa: F401

# fast heartbeats; a generous silence timeout, so only the attacker ends sessions on a loaded host
FAST = {"heartbeat_s": 0.05, "timeout_s": 2.0}


class Attacker(MitmProxy):
    """Drops the next ``drop_budget`` commit messages; turns heartbeats into HMAC-signed forged
    commit messages (``forge[direction]``) with the secret it holds."""

    def __init__(self, upstream, context):
        self.drop_budget = 0  # set before the proxy thread starts
        self.dropped = 0
        self.forge: dict[str, dict] = {}
        self.forged: list[str] = []
        super().__init__(upstream, context)

    def _process(self, d, frames):
        env = unpackb(frames[0])
        if env.get("kind") == "msg" and self.drop_budget > 0:
            if str(unpackb(frames[1]).get("type", "")).startswith("commit_"):
                self.drop_budget -= 1
                self.dropped += 1
                return
        if env.get("kind") == "hb" and d in self.forge:
            env["kind"] = "msg"
            envelope, body = packb(env), packb(self.forge.pop(d))
            tag = HmacAuth(SECRET).tag(env["dir"], env["seq"], envelope, body)
            self.forged.append(d)
            frames = [envelope, body, tag]
        self._forward(d, frames)


class Node:
    """The commit step of one node on its channel (what pipeline/postprocess.py does with it)."""

    def __init__(self, ch: ClassicalChannel, commit, store: KeyStore) -> None:
        self.ch, self.commit, self.store = ch, commit, store
        self.events: list[str] = []

    def send(self, msg) -> bool:
        try:
            self.ch.send(msg)
            return True
        except ChannelError:
            return False

    def step(self) -> None:
        self.ch.poll(5)
        for ev in self.ch.take_events():
            self.events.append(ev.kind)
            if ev.kind in ("peer_lost", "connected"):
                if isinstance(self.commit, CommitResponder):  # blocks in flight dropped by id
                    for block in list(self.commit.in_flight()):
                        for reply in self.commit.drop(block):
                            self.send(reply)
                elif ev.kind == "connected" and (query := self.commit.recovery_query()):
                    self.send(query)
        while self.ch._inbox:
            for reply in self.commit.handle(self.ch._inbox.pop(0)):
                self.send(reply)


def _run(nodes, until, timeout=3.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for n in nodes:
            n.step()
        if until():
            return True
    return False


def _setup(ctx, tmp_path, units=96, cursor=40):  # noqa: F811
    """Both nodes established (they hold ``units`` of pad), ``cursor`` units already spent."""
    Chain(1, 2).absorb(b"warm-up")  # load the compiled hash before the sessions start
    pad = os.urandom(UNIT * units)
    stores = []
    for name in ("a", "b"):
        ks = KeyStore(tmp_path / f"{name}.db")
        ks.add_committed("pad0", 0, "peer", pad, {}, for_channel=True)
        ks.advance_pad_cursor("units", cursor)
        stores.append(ks)
    ka, kb = stores
    alice_ch = ClassicalChannel("alice", "bob", "tcp://127.0.0.1:*", SECRET, bind=True,
                                context=ctx, wegman_carter=WegmanCarter(ka, "alice", "bob"),
                                **FAST)  # fmt: skip
    proxy = Attacker(alice_ch.endpoint, ctx)
    bob_ch = ClassicalChannel("bob", "alice", proxy.endpoint, SECRET, bind=False, context=ctx,
                              wegman_carter=WegmanCarter(kb, "bob", "alice"), **FAST)  # fmt: skip
    alice = Node(alice_ch, CommitResponder(ka, "bob", wc_every_blocks=4), ka)
    bob = Node(bob_ch, CommitInitiator(kb, "alice", 4), kb)
    nodes = (alice, bob)
    assert _run(nodes, lambda: alice.ch.connected and bob.ch.connected)
    assert alice.ch.mode == bob.ch.mode == "wegman-carter"
    return alice, bob, proxy, nodes


def _block(nodes, n: int, units: int = 4, timeout: float = 3.0) -> tuple[str, dict]:
    """One final key block through the two-phase commit; returns Bob's id and the proposal."""
    alice, bob = nodes
    key = os.urandom(UNIT * units)
    meta = {"n_bits": len(key) * 8}
    alice.commit.offer(n, key, meta)
    proposal = bob.commit.propose(n, key, meta)
    if not bob.send(proposal):  # held: it never left, so it is withdrawn (as postprocess does)
        bob.commit.withdraw(proposal["block_id"])
    _run(nodes, lambda: bob.store.status(proposal["block_id"]) != "pending", timeout)
    return proposal["block_id"], proposal


def _key_ids(store: KeyStore) -> list[str]:
    return [b.block_id for b in store.blocks("committed")]


def _force_restart(nodes, proxy) -> None:
    """Drop one commit checkpoint: the transcripts differ, the session restarts."""
    alice, bob = nodes
    sessions = bob.ch.stats.sessions
    before = max(n.store.pad_cursor("units") for n in nodes)
    proxy.drop_budget = 1
    _block(nodes, 1000 + proxy.dropped, timeout=0.3)
    ok = _run(nodes, lambda: bob.ch.stats.sessions > sessions and alice.ch.connected
              and bob.ch.connected and proxy.drop_budget == 0)  # fmt: skip
    assert ok, "no session restart"
    proxy.drop_budget = 0
    _run(nodes, lambda: not bob.store.blocks("pending"), timeout=0.5)  # settled by id
    # the dropped checkpoint, the status settling Bob's block, one unit for parity at most
    assert max(n.store.pad_cursor("units") for n in nodes) - before <= 3


def _assert_identical(alice: Node, bob: Node) -> None:
    assert _run((alice, bob), lambda: not bob.store.blocks("pending"))
    assert _key_ids(alice.store) == _key_ids(bob.store)
    assert alice.store.committed_digest() == bob.store.committed_digest()
    assert alice.store.auth_pad_bytes() == bob.store.auth_pad_bytes()


def test_forced_restarts_exhaust_the_pad_and_nothing_commits_under_hmac(ctx, tmp_path):  # noqa: F811
    alice, bob, proxy, nodes = _setup(ctx, tmp_path, units=96, cursor=56)
    block_id, _ = _block(nodes, 1)
    assert bob.store.status(block_id) == "committed"  # honest key commit on Wegman-Carter
    keys_before = _key_ids(bob.store)
    # the attacker drops commit checkpoints until no pad is left at all (the reserve too)
    deadline = time.monotonic() + 30
    while not (alice.ch.stats.wc_pad_exhausted and bob.ch.stats.wc_pad_exhausted):
        assert time.monotonic() < deadline, "the pad never ran out"
        _force_restart(nodes, proxy)
    assert bob.ch.mode == alice.ch.mode == "hmac"  # the sessions now run without pad
    assert proxy.dropped <= 40  # <= 40 units: each forced restart burnt at least one
    for node in nodes:
        assert "pad_exhausted" in node.events
        assert node.ch.stats.wc_established and node.ch.stats.wc_pad_low
    # honest commits are held: Bob's proposal never leaves (he withdraws the block at once: Alice
    # cannot hold it), Alice's ready block stays uncommitted
    held = bob.ch.stats.commits_held
    pending_id, proposal = _block(nodes, 2, timeout=0.3)
    assert bob.ch.stats.commits_held == held + 1 and bob.store.status(pending_id) == "discarded"
    # the attacker, holding the HMAC secret, forges the commit messages under a valid HMAC
    proxy.forge["up"] = proposal
    proxy.forge["down"] = {"type": "commit_confirm", "block_id": pending_id, "status": "committed"}
    assert _run(nodes, lambda: len(proxy.forged) == 2)
    _run(nodes, lambda: False, timeout=0.3)  # let both nodes act on the forgeries
    assert alice.store.status(pending_id) is None and bob.store.status(pending_id) == "discarded"
    assert alice.ch.stats.rejected_downgrade == 1 == bob.ch.stats.rejected_downgrade
    assert _key_ids(bob.store) == keys_before == _key_ids(alice.store)
    assert alice.ch.stats.rejected_auth == 0  # authentic HMAC: counted as a refused downgrade
    # pad provisioned out of band on both nodes: a new session runs on Wegman-Carter again (no
    # pending block holds the new pad back from Bob's pad stream), and key production resumes
    more = os.urandom(UNIT * 64)
    _run(nodes, lambda: False, timeout=0.3)  # the last commit query has been answered, or not
    alice.store.provision_pad("pad-new", 10_000, "peer", more)
    if bob.store.blocks("pending"):  # the dropped proposal's status could not be sent
        with pytest.raises(KeyStoreError, match="pending"):  # never behind a pending block
            bob.store.provision_pad("pad-new", 10_000, "peer", more)
    for block in bob.store.blocks("pending"):  # settled by the operator from Alice's store
        if alice.store.status(block.block_id) in ("committed", "auth"):
            bob.store.commit(
                block.block_id, for_channel=alice.store.status(block.block_id) == "auth"
            )
        else:
            bob.store.discard(block.block_id)
    bob.store.provision_pad("pad-new", 10_000, "peer", more)
    bob.ch.renegotiate()
    assert _run(nodes, lambda: alice.ch.mode == bob.ch.mode == "wegman-carter")
    assert bob.store.status(pending_id) == "discarded" and alice.store.status(pending_id) is None
    block_id, _ = _block(nodes, 3)
    assert bob.store.status(block_id) == alice.store.status(block_id) == "committed"
    assert not bob.ch.stats.wc_pad_exhausted
    _assert_identical(alice, bob)


def test_refill_reserve_survives_a_forced_restart_and_restores_the_pad(ctx, tmp_path):  # noqa: F811
    alice, bob, proxy, nodes = _setup(ctx, tmp_path, units=96, cursor=40)
    assert _block(nodes, 1)[0] in _key_ids(bob.store)
    pad_before = bob.store.auth_pad_len()
    # forced restarts until only the refill reserve is left, then one more inside the reserve
    deadline = time.monotonic() + 30
    while not bob.ch.stats.wc_pad_low:
        assert time.monotonic() < deadline, "the pad never reached the reserve"
        _force_restart(nodes, proxy)
    assert not bob.ch.stats.wc_pad_exhausted
    try:
        bob.ch.send({"type": "commit_propose", "block": 9, "block_id": "x", "seq": 99})
        raise AssertionError("a key commit spent the refill reserve")
    except ChannelError as exc:
        assert "reserve" in str(exc)
    assert bob.commit.refill_mode() and alice.commit.refill_mode()
    _force_restart(nodes, proxy)
    assert bob.ch.mode == "wegman-carter" and not bob.ch.stats.wc_pad_exhausted
    assert _key_ids(bob.store) == _key_ids(alice.store)  # nothing committed meanwhile
    # the attacker stops: the next block is a refill (pad, never key), committed on the reserve
    block_id, proposal = _block(nodes, 2, units=160)
    assert proposal.get("refill") is True
    assert bob.store.status(block_id) == alice.store.status(block_id) == "auth"
    assert bob.store.auth_pad_len() == pad_before + 160 * UNIT
    assert _run(nodes, lambda: not bob.ch.stats.wc_pad_low)
    # production resumes: key blocks again, in the same session
    sessions = bob.ch.stats.sessions
    for n in (3, 4, 5):
        block_id, proposal = _block(nodes, n)
        assert "refill" not in proposal
        assert bob.store.status(block_id) == alice.store.status(block_id) == "committed"
    assert bob.ch.stats.sessions == sessions
    assert not alice.ch.stats.wc_pad_low  # she learnt Bob's new pad from his checkpoints
    for node in nodes:
        assert node.ch.stats.rejected_downgrade == 0 and "pad_exhausted" not in node.events
    _assert_identical(alice, bob)
