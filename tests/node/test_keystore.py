"""Key store: contract §5, idempotency, tombstones, concurrent writers, crash safety."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sqlite3
import time

import pytest

from qnode.keystore import KeyStore, KeyStoreError

META = {"qber": 0.02, "n_x": 10_000, "leak_bits": 1234, "eps_sec": 1e-10, "eps_cor": 1e-12}


@pytest.fixture
def store(tmp_path):
    ks = KeyStore(tmp_path / "keys.db")
    yield ks
    ks.close()


def test_schema_and_wal_mode(store, tmp_path):
    db = sqlite3.connect(tmp_path / "keys.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    cols = [r[1] for r in db.execute("PRAGMA table_info(key_blocks)")]
    assert cols == [
        "block_id",
        "seq",
        "peer",
        "status",
        "created_ns",
        "committed_ns",
        "n_bits",
        "qber",
        "n_x",
        "leak_bits",
        "eps_sec",
        "eps_cor",
        "key",
    ]


def test_pending_commit_read(store):
    assert store.add_pending("b1", 0, "alice", b"\x01\x02", META) is True
    assert store.status("b1") == "pending"
    info = store.blocks("pending")[0]
    assert (info.block_id, info.seq, info.n_bits, info.qber) == ("b1", 0, 16, 0.02)
    assert info.committed_ns is None
    store.commit("b1")
    assert store.status("b1") == "committed"
    assert store.blocks("committed")[0].committed_ns is not None
    assert store.read_key("b1") == b"\x01\x02"
    assert store.block("b1") == store.blocks("committed")[0]  # one row, same fields
    assert store.block("nosuch") is None


def test_insert_is_idempotent_and_conflicts_are_refused(store):
    assert store.add_pending("b1", 3, "alice", b"key", META)
    assert store.add_pending("b1", 3, "alice", b"key", META) is False
    assert len(store.blocks()) == 1
    with pytest.raises(KeyStoreError, match="different key"):
        store.add_pending("b1", 3, "alice", b"other", META)
    with pytest.raises(KeyStoreError, match="different key"):
        store.add_pending("b1", 4, "alice", b"key", META)


def test_discard_leaves_a_tombstone(store):
    store.add_pending("b1", 0, "alice", b"k", META)
    store.discard("b1")
    assert store.status("b1") == "discarded"
    assert store.blocks() == []
    with pytest.raises(KeyStoreError, match="discarded"):
        store.add_committed("b1", 0, "alice", b"k", META)
    store.discard("never-seen")  # an unknown id is remembered too
    with pytest.raises(KeyStoreError):
        store.add_pending("never-seen", 1, "alice", b"k", META)


def test_committed_blocks_cannot_be_discarded(store):
    store.add_committed("b1", 0, "bob", b"k", META)
    with pytest.raises(KeyStoreError, match="committed"):
        store.discard("b1")
    assert store.status("b1") == "committed"


def test_bad_input_is_refused(store):
    with pytest.raises(KeyStoreError, match="non-empty"):
        store.add_pending("b1", 0, "alice", b"", META)
    with pytest.raises(KeyStoreError, match="unknown meta"):
        store.add_pending("b1", 0, "alice", b"k", {"colour": 1})
    with pytest.raises(KeyStoreError, match="unknown block"):
        store.commit("nope")
    with pytest.raises(ValueError):
        store.blocks("weird")


def test_no_key_material_in_reprs(store):
    secret = b"\xde\xad\xbe\xef" * 4
    store.add_pending("b1", 0, "alice", secret, META)
    text = repr(store) + repr(store.blocks()) + str(store.blocks())
    assert secret.hex() not in text and "deadbeef" not in text.lower()


def test_digest_over_committed_blocks_in_order(store):
    store.add_committed("b2", 1, "bob", b"BB", META)
    store.add_committed("b1", 0, "bob", b"AA", META)
    store.add_pending("b3", 2, "bob", b"CC", META)
    import hashlib

    assert store.committed_digest() == (2, 32, hashlib.sha256(b"AABB").hexdigest())


def _writer(path: str, worker: int, count: int) -> None:
    ks = KeyStore(path)
    for i in range(count):
        ks.add_pending(f"w{worker}-{i}", worker * 1000 + i, "peer", os.urandom(32), META)
        # every worker also inserts the same shared ids: exactly one insert must win
        ks.add_pending(f"shared-{i}", 10**6 + i, "peer", b"shared-key", META)
    ks.close()


def test_concurrent_writers_from_several_processes(tmp_path):
    path = str(tmp_path / "keys.db")
    KeyStore(path).close()
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, w, 40)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0, "a concurrent writer failed (busy timeout or conflict)"
    ks = KeyStore(path)
    blocks = ks.blocks()
    assert len(blocks) == 4 * 40 + 40
    assert len({b.block_id for b in blocks}) == len(blocks)
    ks.close()


def _half_transaction(path: str, ready) -> None:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("BEGIN IMMEDIATE")
    db.execute(
        "INSERT INTO key_blocks (block_id, seq, peer, status, created_ns, n_bits, key) "
        "VALUES ('half', 0, 'p', 'pending', 0, 8, x'01')"
    )
    ready.set()
    time.sleep(60)


def test_killed_transaction_leaves_no_half_row(tmp_path):
    path = str(tmp_path / "keys.db")
    KeyStore(path).close()
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    proc = ctx.Process(target=_half_transaction, args=(path, ready))
    proc.start()
    assert ready.wait(30)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(10)
    ks = KeyStore(path, busy_timeout_ms=5000)
    assert ks.status("half") is None, "a killed transaction left its row behind"
    ks.add_pending("after", 1, "p", b"k", META)  # the write lock was released by the kill
    assert ks.status("after") == "pending"
    ks.close()


def test_pad_blocks_go_straight_to_auth_and_are_never_committed_key(store):
    store.add_pending("p", 0, "bob", b"\x01" * 32, META)
    store.commit("p", for_channel=True)
    assert store.status("p") == "auth"
    store.add_committed("q", 1, "bob", b"\x02" * 48, META, for_channel=True)
    assert store.status("q") == "auth"
    store.add_committed("k", 2, "bob", b"\x03" * 16, META)
    assert store.auth_pad_len() == 80
    assert store.auth_pad_bytes() == b"\x01" * 32 + b"\x02" * 48
    assert store.committed_digest()[:2] == (1, 128)  # only the key block counts as key
    # a block is key or pad, never switched by a repeated commit or insert
    with pytest.raises(KeyStoreError, match="already auth"):
        store.commit("p")
    with pytest.raises(KeyStoreError, match="already committed"):
        store.commit("k", for_channel=True)
    with pytest.raises(KeyStoreError, match="already auth"):
        store.add_committed("q", 1, "bob", b"\x02" * 48, META)
    assert store.commit("p", for_channel=True) is None  # the same answer again: no-op
    # the channel cursor only moves forward
    store.advance_pad_cursor("units", 5)
    store.advance_pad_cursor("units", 3)
    assert store.pad_cursor("units") == 5
