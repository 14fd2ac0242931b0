"""Two-phase key-block commit: protocol cases in one process, kill -9 trials across processes."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.commit import CommitInitiator, CommitResponder
from qnode.keystore import KeyStore
from qnode.ports import free_port as qnode_free_port

META = {"qber": 0.02, "n_x": 1000, "leak_bits": 100, "eps_sec": 1e-10, "eps_cor": 1e-12}
KEY = b"\x11" * 32


@pytest.fixture
def stores(tmp_path):
    a, b = KeyStore(tmp_path / "alice.db"), KeyStore(tmp_path / "bob.db")
    yield a, b
    a.close(), b.close()


def _run(msgs, handler):
    out = []
    for m in msgs:
        out.extend(handler.handle(m))
    return out


def test_happy_path_commits_on_both(stores):
    a, b = stores
    alice, bob = CommitResponder(a, "bob"), CommitInitiator(b, "alice")
    alice.expect(0)
    propose = bob.propose(0, KEY, META)
    assert "key" not in propose and KEY.hex() not in repr(propose)
    assert b.status(propose["block_id"]) == "pending"
    assert _run([propose], alice) == []  # Alice still working on block 0: the proposal waits
    confirm = alice.offer(0, KEY, META)
    assert confirm[0]["status"] == "committed"
    assert a.status(propose["block_id"]) == "committed"
    _run(confirm, bob)
    assert b.status(propose["block_id"]) == "committed"
    assert a.committed_digest() == b.committed_digest()


def test_aborted_block_is_refused_and_discarded_on_both(stores):
    a, b = stores
    alice, bob = CommitResponder(a, "bob"), CommitInitiator(b, "alice")
    alice.expect(5)
    propose = bob.propose(5, KEY, META)
    _run([propose], alice)
    confirm = alice.drop(5)
    assert confirm[0]["status"] == "refused"
    _run(confirm, bob)
    assert b.status(propose["block_id"]) == "discarded"
    assert a.status(propose["block_id"]) == "discarded"
    assert a.blocks() == [] and b.blocks() == []


def test_unknown_block_and_wrong_size_are_refused(stores):
    a, b = stores
    alice, bob = CommitResponder(a, "bob"), CommitInitiator(b, "alice")
    p1 = bob.propose(9, KEY, META)
    assert _run([p1], alice)[0]["status"] == "refused"
    alice.offer(10, KEY, {**META, "n_bits": 128})
    p2 = bob.propose(10, KEY, META)  # 256 bits proposed, Alice holds 128
    assert _run([p2], alice)[0]["status"] == "refused"
    assert a.blocks("committed") == []


def test_lost_confirm_resolved_by_recovery_query(stores):
    a, b = stores
    alice, bob = CommitResponder(a, "bob"), CommitInitiator(b, "alice")
    alice.offer(0, KEY, META)
    p = bob.propose(0, KEY, META)
    _run([p], alice)  # confirm lost on the way
    lost = bob.propose(1, KEY, META)  # proposal lost on the way (Alice never saw it)
    bob2 = CommitInitiator(b, "alice")  # Bob restarts
    query = bob2.recovery_query()
    assert sorted(query["block_ids"]) == sorted([p["block_id"], lost["block_id"]])
    _run(_run([query], alice), bob2)
    assert b.status(p["block_id"]) == "committed"
    assert b.status(lost["block_id"]) == "discarded"
    # the late proposal can no longer commit on Alice's side
    alice.offer(1, KEY, META)
    assert _run([lost], alice)[0]["status"] == "refused"
    assert a.committed_digest() == b.committed_digest()


def test_wegman_carter_blocks_leave_the_pool_on_both(stores):
    a, b = stores
    alice, bob = CommitResponder(a, "bob", wc_every_blocks=2), CommitInitiator(b, "alice", 2)
    for n in range(3):
        alice.offer(n, bytes([n + 1]) * 16, META)
        _run(_run([bob.propose(n, bytes([n + 1]) * 16, META)], alice), bob)
    assert [x.seq for x in a.blocks("auth")] == [0, 2] == [x.seq for x in b.blocks("auth")]
    assert a.auth_pad_bytes() == b.auth_pad_bytes()
    assert [x.seq for x in b.blocks("committed")] == [1]


def _free_port() -> int:
    return qnode_free_port()


PEER = str(Path(__file__).with_name("commit_peer.py"))


def _start(role, endpoint, db, n):
    return subprocess.Popen(
        [sys.executable, PEER, role, endpoint, str(db), os.urandom(0).hex() + "ab" * 32, str(n)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _count_committed(path) -> int:
    import sqlite3

    if not path.exists():
        return 0
    db = sqlite3.connect(path, timeout=5)
    try:
        return db.execute("SELECT COUNT(*) FROM key_blocks WHERE status = 'committed'").fetchone()[
            0
        ]
    except sqlite3.OperationalError:
        return 0
    finally:
        db.close()


def _committed(path):
    ks = KeyStore(path)
    try:
        return {(b.block_id, b.seq): ks.read_key(b.block_id) for b in ks.blocks("committed")}
    finally:
        ks.close()


def test_kill_9_during_commit_never_leaves_a_block_on_one_side(tmp_path):
    rng = random.Random(1234)
    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    dbs = {"alice": tmp_path / "alice.db", "bob": tmp_path / "bob.db"}
    target = 10_000
    procs = {r: _start(r, endpoint, dbs[r], target) for r in ("alice", "bob")}
    kills = 0
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and kills < 20:
            # wait until the pair commits again (a restarted process is up), then strike at a
            # random point of the commit exchanges that follow
            progress = _count_committed(dbs["alice"])
            until = time.monotonic() + 10
            while _count_committed(dbs["alice"]) <= progress and time.monotonic() < until:
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 0.15))
            victim = rng.choice(["alice", "bob"])
            os.kill(procs[victim].pid, signal.SIGKILL)
            procs[victim].wait()
            kills += 1
            alice, bob = _committed(dbs["alice"]), _committed(dbs["bob"])
            extra = set(bob) - set(alice)
            assert not extra, f"Bob committed blocks Alice does not hold: {extra}"
            assert all(bob[k] == alice[k] for k in bob), "committed key bytes differ"
            procs[victim] = _start(victim, endpoint, dbs[victim], target)
        assert kills >= 10, f"only {kills} kill trials in the time allowed"
        # let recovery finish: Bob stops proposing once he holds what he has plus nothing pending
        for p in procs.values():
            os.kill(p.pid, signal.SIGKILL)
            p.wait()
        final = len(_committed(dbs["alice"]))
        procs = {r: _start(r, endpoint, dbs[r], 0) for r in ("alice", "bob")}
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            ks = KeyStore(dbs["bob"])
            pending = ks.blocks("pending")
            ks.close()
            if not pending:
                break
            time.sleep(0.2)
        alice, bob = _committed(dbs["alice"]), _committed(dbs["bob"])
        assert not pending, "Bob's pending blocks were never resolved"
        assert alice == bob, "the two stores differ after recovery"
        assert len(alice) >= final and len(alice) >= kills, f"too few blocks ({len(alice)})"
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
