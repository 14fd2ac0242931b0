"""The property the fixed hash key's security rests on (docs/contracts.md §7, "Why the hash key
is not rotated"): no one-time pad unit is ever used twice, across sessions, forged checkpoints,
lost messages, restarts and pad blocks that settle out of order, and the hash key's unit is
never used as pad.

Sans-I/O: two nodes' :class:`WegmanCarter` objects over real SQLite key stores, their sessions
driven the way the channel drives them (hello/welcome terms, plain messages, checkpoints, the
peer's verification). Every unit a node takes is recorded; a reuse shows as the same 16 pad
bytes taken twice (the pads are random, so equal bytes are a reuse, not chance).
"""

from __future__ import annotations

import os
import random
import uuid

import pytest

from qnode.keystore import KeyStore, KeyStoreError
from qnode.wegman_carter import UNIT, WegmanCarter, WegmanCarterSession

A2B, B2A = "alice>bob", "bob>alice"


class Node:
    def __init__(self, path, name: str, peer: str) -> None:
        self.path, self.name, self.peer = path, name, peer
        self.open()

    def open(self) -> None:
        self.store = KeyStore(self.path)
        self.wc = WegmanCarter(self.store, self.name, self.peer, min_units=8, reserve_units=2)

    def restart(self) -> None:  # like kill -9: only what the store holds survives
        self.store.close()
        self.open()


@pytest.fixture
def takes(monkeypatch):
    """Every pad unit taken: (node's out direction, sent?, the 16 pad bytes)."""
    taken: list[tuple[str, bool, bytes]] = []
    original = WegmanCarterSession._take_pad

    def spy(self, direction, checkpoint):
        pad = original(self, direction, checkpoint)
        taken.append((self.out_dir, direction == self.out_dir, pad))
        return pad

    monkeypatch.setattr(WegmanCarterSession, "_take_pad", spy)
    return taken


def _handshake(alice: Node, bob: Node, rng: random.Random):
    """Alice binds: she agrees terms from Bob's offer; both start on them (or stay on HMAC)."""
    terms = alice.wc.agree(bob.wc.offer())
    if terms is None:
        return None
    sid = rng.randbytes(16)
    sa, sb = alice.wc.session(terms, sid, A2B), bob.wc.session(terms, sid, B2A)
    return (sa, sb) if sa is not None and sb is not None else None


def _checkpoint(sx, sy, rng: random.Random, deliver: bool = True) -> bool | None:
    """sx sends a checkpoint; True/False: sy verified it or not; None: sx had no pad."""
    ck = sx.next_checkpoint()
    if not sx.has_pad(sx.out_dir, ck):
        return None
    seq, record = sx.out_seq + 1, rng.randbytes(rng.randrange(1, 60))
    tag = sx.checkpoint_tag(seq, record, sx.in_seq, ck)
    if not deliver:
        return False
    return sy.verify_checkpoint(sx.out_dir, seq, record, sx.in_seq, ck, tag, sx.own_avail(True))


def _plain(sx, sy, rng: random.Random) -> None:
    record = rng.randbytes(rng.randrange(1, 200))
    sx.sent(sx.out_seq + 1, record)
    sy.received(sy.in_seq + 1, record)


def _forgery(sy, rng: random.Random) -> bool:
    """An attacker's checkpoint (it may hold the HMAC secret: only the pad tag stops it)."""
    ck = sy.checkpoints_in + 1
    direction = B2A if sy.out_dir == A2B else A2B
    if not sy.has_pad(direction, ck):
        return False
    return sy.verify_checkpoint(direction, sy.in_seq + 1, rng.randbytes(30), sy.out_seq, ck,
                                rng.randbytes(16), 0)  # fmt: skip


class PadBlocks:
    """Blocks as the commit step makes them: Bob pending, Alice committed (some as pad), Bob
    settling on her answers, which may arrive out of order (a lost confirmation is settled later
    by commit_query)."""

    def __init__(self, alice: Node, bob: Node, rng: random.Random) -> None:
        self.alice, self.bob, self.rng = alice, bob, rng
        self.waiting: list[tuple[str, str]] = []  # (block id, Alice's status) Bob has pending

    def add(self, pad: bool, units: int) -> None:
        block_id, key = str(uuid.uuid4()), os.urandom(units * UNIT)
        seq = self.bob.store.max_seq() + 1
        self.bob.store.add_pending(block_id, seq, "alice", key)
        self.alice.store.add_committed(block_id, seq, "bob", key, for_channel=pad)
        self.waiting.append((block_id, "auth" if pad else "committed"))

    def settle_one(self, newest_first: bool) -> None:
        if self.waiting:
            block_id, status = self.waiting.pop(-1 if newest_first else 0)
            self.bob.store.commit(block_id, for_channel=status == "auth")


def _nodes(tmp_path, first_pad_units: int) -> tuple[Node, Node]:
    alice, bob = (
        Node(tmp_path / "alice.db", "alice", "bob"),
        Node(tmp_path / "bob.db", "bob", "alice"),
    )
    key = os.urandom(first_pad_units * UNIT)
    for node in (alice, bob):
        node.store.add_committed("pad0", 0, "x", key, for_channel=True)
    return alice, bob


def _assert_no_reuse(takes, hash_key: bytes) -> None:
    for node in (A2B, B2A):
        mine = [pad for out, _, pad in takes if out == node]
        assert len(set(mine)) == len(mine), f"{node} took a pad unit twice"
    sent = [pad for _, was_sent, pad in takes if was_sent]
    assert len(set(sent)) == len(sent), "two genuine tags on one pad unit"
    assert hash_key not in {pad for _, _, pad in takes}, "the hash key's unit used as pad"


def test_a_pad_block_settling_out_of_order_never_reuses_a_unit(tmp_path, takes):
    """Bob's answer for block 1 is lost, block 2's arrives: block 2 is pad on both sides, block
    1 pending at Bob. If block 2 joined Bob's pad stream at once, block 1 joining later would
    shift it: units Bob already spent would come back at new offsets."""
    rng = random.Random(1)
    alice, bob = _nodes(tmp_path, 12)
    hash_key = alice.store.auth_pad_bytes()[:UNIT]
    blocks = PadBlocks(alice, bob, rng)
    blocks.add(pad=True, units=9)  # block 1 (odd: a shift would also swap the parity)
    blocks.add(pad=True, units=9)  # block 2
    blocks.settle_one(newest_first=True)  # block 2 settles first
    assert bob.store.auth_pad_len() == 12 * UNIT  # block 2 waits behind the pending block 1
    verified = 0
    for _ in range(3):  # sessions until the pad known to both runs out
        pair = _handshake(alice, bob, rng)
        assert pair is not None
        sa, sb = pair
        while (ok := _checkpoint(*((sa, sb) if rng.random() < 0.5 else (sb, sa)), rng)) is True:
            verified += 1
        if ok is None:
            break
    blocks.settle_one(newest_first=True)  # block 1's answer comes through commit_query
    assert bob.store.auth_pad_bytes() == alice.store.auth_pad_bytes()
    for _ in range(4):
        pair = _handshake(alice, bob, rng)
        if pair is None:
            break
        sa, sb = pair
        while (ok := _checkpoint(*((sa, sb) if rng.random() < 0.5 else (sb, sa)), rng)) is True:
            verified += 1
        if ok is None:
            break
    assert verified >= 10  # the pads agreed all along: every checkpoint verified
    _assert_no_reuse(takes, hash_key)


def random_walk(alice, bob, blocks, rng, takes, hash_key, steps: int = 400, each=None):
    """Random faults, restarts, forgeries, lost checkpoints and block settlements between the
    two nodes' sessions; no pad unit reused after any step; ``each()`` runs after every step.
    Returns (sessions started, checkpoints verified, delivered checkpoints that failed)."""
    pair = None
    sessions = verified = genuine_failed = 0
    for _ in range(steps):
        event = rng.random()
        if pair is None:
            pair = _handshake(alice, bob, rng)
            sessions += pair is not None
        if event < 0.08:
            blocks.add(rng.random() < 0.7, rng.randrange(2, 12))  # (pad block?, units)
        elif event < 0.16:
            blocks.settle_one(newest_first=rng.random() < 0.5)
        elif event < 0.20:
            (alice if rng.random() < 0.5 else bob).restart()
            pair = None
        elif pair is None:
            continue
        elif event < 0.35:
            sa, sb = pair
            _plain(*((sa, sb) if rng.random() < 0.5 else (sb, sa)), rng)
        elif event < 0.40:  # a forged checkpoint: rejected, the session ends
            assert not _forgery(pair[rng.randrange(2)], rng)
            pair = None
        else:
            sa, sb = pair
            x, y = (sa, sb) if rng.random() < 0.5 else (sb, sa)
            deliver = rng.random() > 0.1  # 10 % lost on the way
            ok = _checkpoint(x, y, rng, deliver=deliver)
            verified += ok is True
            genuine_failed += deliver and ok is False
            if not ok:
                pair = None
        _assert_no_reuse(takes, hash_key)
        if each is not None:
            each()
    return sessions, verified, genuine_failed


@pytest.mark.parametrize("seed", range(6))
def test_pad_units_are_never_reused_under_random_faults_and_restarts(tmp_path, takes, seed):
    rng = random.Random(seed)
    alice, bob = _nodes(tmp_path, 10)
    hash_key = alice.store.auth_pad_bytes()[:UNIT]
    blocks = PadBlocks(alice, bob, rng)
    sessions, verified, _ = random_walk(alice, bob, blocks, rng, takes, hash_key)
    assert sessions >= 5 and verified >= 20  # the scenario did run checkpoints
    # the two streams agree once every block is settled
    while blocks.waiting:
        blocks.settle_one(newest_first=False)
    assert bob.store.auth_pad_bytes() == alice.store.auth_pad_bytes()


def test_the_pad_stream_only_grows_at_its_end(tmp_path):
    store = KeyStore(tmp_path / "k.db")
    store.add_committed("a", 0, "p", b"\x01" * 32, for_channel=True)
    store.add_committed("k", 1, "p", b"\x02" * 32)  # key
    store.add_committed("b", 2, "p", b"\x03" * 32, for_channel=True)
    store.add_pending("c", 3, "p", b"\x04" * 32)
    store.add_committed("d", 4, "p", b"\x05" * 32, for_channel=True)  # behind pending c
    assert (
        store.auth_pad_bytes()
        == b"\x01" * 32 + b"\x03" * 32
        == bytes(store.auth_pad_bytes()[: store.auth_pad_len()])
    )
    with pytest.raises(KeyStoreError, match="only grows at its end"):
        store.reserve_for_channel("k")  # below the last pad block: would shift the stream
    with pytest.raises(KeyStoreError, match="pending"):
        store.provision_pad("oob", 9, "p", b"\x06" * 32)
    store.commit("c", for_channel=True)  # settled: c and d join, in block order
    assert store.auth_pad_bytes() == bytes.fromhex("01" * 32 + "03" * 32 + "04" * 32 + "05" * 32)
    with pytest.raises(KeyStoreError, match="must exceed"):
        store.provision_pad("oob", 4, "p", b"\x06" * 32)
    store.provision_pad("oob", 9, "p", b"\x06" * 32)
    assert store.auth_pad_bytes().endswith(b"\x06" * 32) and store.auth_pad_len() == 5 * 32
    store.close()
