"""Key pool: deterministic cutting, atomic consumption under concurrency, restarts, guards."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
import uuid
from pathlib import Path

import pytest
from ctl_helpers import seed_blocks

from controller.keypool import (
    BlockNotReady,
    InsufficientKeys,
    KeyPool,
    KeyRecord,
    KeysNotFound,
    NotAuthorized,
    derive_key_id,
)
from qnode.keystore import KeyStore


@pytest.fixture
def pools(tmp_path):
    seed_blocks([tmp_path / "a.db", tmp_path / "b.db"], n_blocks=6, block_bytes=1024)
    a, b = KeyPool(tmp_path / "a.db", 0, 2), KeyPool(tmp_path / "b.db", 1, 2)
    yield a, b
    a.close()
    b.close()


def test_master_and_slave_cut_identical_keys(pools):
    alice, bob = pools
    keys = alice.issue("sae-a", "sae-b", 5, 256)
    assert len({k.key_id for k in keys}) == 5
    records = alice.lookup_issued([k.key_id for k in keys] + [str(uuid.uuid4())])
    assert len(records) == 5  # the unknown ID is simply absent
    for r in records:
        assert derive_key_id(r.block_id, r.offset_bytes, r.size_bytes) == r.key_id
    delivered = bob.deliver("sae-b", "sae-a", [k.key_id for k in keys], records)
    assert [(k.key_id, k.material) for k in delivered] == [(k.key_id, k.material) for k in keys]
    with pytest.raises(KeysNotFound):  # once only
        bob.deliver("sae-b", "sae-a", [keys[0].key_id], records[:1])


def test_slave_checks(pools, tmp_path):
    alice, bob = pools
    keys = alice.issue("sae-a", "sae-b", 2, 256)
    ids = [k.key_id for k in keys]
    records = alice.lookup_issued(ids)
    with pytest.raises(NotAuthorized):
        bob.deliver("sae-c", "sae-a", ids, records)
    with pytest.raises(KeysNotFound):  # wrong master in the URL
        bob.deliver("sae-b", "sae-x", ids, records)
    forged = KeyRecord(**{**records[0].as_dict(), "offset_bytes": records[0].offset_bytes + 32})
    with pytest.raises(KeysNotFound):  # coordinates that do not hash to the ID
        bob.deliver("sae-b", "sae-a", ids[:1], [forged])
    # A record pointing into Bob's own share is refused even if its ID is consistent.
    own = bob.issue("sae-b", "sae-a", 1, 256)[0]
    own_rec = bob.lookup_issued([own.key_id])
    with pytest.raises(KeysNotFound):
        bob.deliver("sae-b", "sae-a", [own.key_id], [KeyRecord(**{**own_rec[0].as_dict(),
                    "master_sae": "sae-a", "slave_sae": "sae-b"})])  # fmt: skip
    assert bob.deliver("sae-b", "sae-a", ids, records)  # the genuine request still works


def test_pending_and_auth_blocks_are_never_served(tmp_path):
    store = KeyStore(tmp_path / "n.db")
    store.add_pending(str(uuid.uuid4()), 0, "bob", os.urandom(256))
    auth_id = str(uuid.uuid4())
    store.add_committed(auth_id, 2, "bob", os.urandom(256))
    store.reserve_for_channel(auth_id)
    pool = KeyPool(tmp_path / "n.db", 0, 2)
    assert pool.stored_key_count(256) == 0
    with pytest.raises(InsufficientKeys):
        pool.issue("a", "b", 1, 256)
    # Slave side: a block that is not committed here yet is not served (retryable 503).
    block = str(uuid.uuid4())
    store.add_pending(block, 3, "bob", os.urandom(256))
    rec = KeyRecord(derive_key_id(block, 0, 32), block, 0, 32, "a", "b")
    with pytest.raises(BlockNotReady):
        pool.deliver("b", "a", [rec.key_id], [rec])
    store.commit(block)
    assert len(pool.deliver("b", "a", [rec.key_id], [rec])[0].material) == 32
    pool.close()
    store.close()


def test_block_serving_keys_cannot_become_channel_pad(pools, tmp_path):
    alice, _ = pools
    key = alice.issue("sae-a", "sae-b", 1, 256)[0]
    used_block = alice.lookup_issued([key.key_id])[0].block_id
    store = KeyStore(tmp_path / "a.db")
    with pytest.raises(sqlite3.IntegrityError, match="already serves"):
        store.reserve_for_channel(used_block)
    fresh = [b for b in store.blocks("committed") if b.block_id != used_block][0]
    store.reserve_for_channel(fresh.block_id)  # an untouched block may still be reserved
    store.close()


def test_key_material_not_in_repr(pools):
    alice, _ = pools
    key = alice.issue("sae-a", "sae-b", 1, 256)[0]
    assert key.material.hex() not in repr(key) and key.b64 not in repr(key)


def test_restart_keeps_the_pool(tmp_path):
    seed_blocks([tmp_path / "a.db"], n_blocks=4, block_bytes=1024)
    pool = KeyPool(tmp_path / "a.db", 0, 2)
    before = pool.stored_key_count(256)
    first = pool.issue("sae-a", "sae-b", 10, 256)
    pool.close()
    pool = KeyPool(tmp_path / "a.db", 0, 2)
    assert pool.stored_key_count(256) == before - 10
    second = pool.issue("sae-a", "sae-b", 10, 256)
    assert not {k.key_id for k in first} & {k.key_id for k in second}
    assert not {k.material for k in first} & {k.material for k in second}
    assert len(pool.lookup_issued([k.key_id for k in first])) == 10
    pool.close()


_WORKER = textwrap.dedent(
    """
    import sys, threading
    from controller.keypool import KeyPool, InsufficientKeys
    pool = KeyPool(sys.argv[1], 0, 2)
    out, lock = [], threading.Lock()
    print("ready", flush=True)
    sys.stdin.readline()
    def run():
        for _ in range(40):
            keys = pool.issue("sae-a", "sae-b", 3, 256)
            with lock:
                out.extend(k.key_id + ":" + k.material.hex() for k in keys)
    threads = [threading.Thread(target=run) for _ in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    print("\\n".join(out))
    """
)


def test_concurrent_consumers_never_share_a_key(tmp_path):
    """8 threads here and 4 in another process take keys at once, then the rest is drained:
    every key exactly once, and the share's bytes all accounted for."""
    db = tmp_path / "a.db"
    seed_blocks([db], n_blocks=24, block_bytes=4096)
    pool = KeyPool(db, 0, 2)
    total = pool.stored_key_count(256)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen(
        [sys.executable, "-c", _WORKER, str(db)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout.readline().strip() == "ready"
    got: list[str] = []
    lock = threading.Lock()

    def run() -> None:
        for _ in range(40):
            keys = pool.issue("sae-a", "sae-b", 2, 256)
            with lock:
                got.extend(f"{k.key_id}:{k.material.hex()}" for k in keys)

    threads = [threading.Thread(target=run) for _ in range(8)]
    proc.stdin.write("go\n")
    proc.stdin.flush()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out = proc.stdout.read()
    proc.wait(timeout=60)
    assert proc.returncode == 0
    other = [line for line in out.splitlines() if line]
    assert len(other) == 4 * 40 * 3 and len(got) == 8 * 40 * 2
    # Then drain what is left: every byte of the share is handed out exactly once.
    while True:
        try:
            got.extend(f"{k.key_id}:{k.material.hex()}" for k in pool.issue("a", "b", 16, 256))
        except InsufficientKeys:
            break
    while pool.stored_key_count(256):
        got.extend(f"{k.key_id}:{k.material.hex()}" for k in pool.issue("a", "b", 1, 256))
    everything = got + other
    ids = [e.split(":")[0] for e in everything]
    materials = [e.split(":")[1] for e in everything]
    assert len(set(ids)) == len(ids), "a key ID was issued twice"
    assert len(set(materials)) == len(materials), "key material was issued twice"
    # Draining in 16s leaves fewer than 16 keys; take them one by one above.
    assert pool.stored_key_count(256) == 0
    assert len(ids) == total
    pool.close()
