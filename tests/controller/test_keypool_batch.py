"""Group commits of the key pool: many requests in one transaction, one of them failing."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from ctl_helpers import seed_blocks

from controller.keypool import InsufficientKeys, KeyPool


def test_batched_requests_never_overlap_and_survive_a_failed_one(tmp_path: Path):
    seed_blocks([tmp_path / "a.db"], n_blocks=6, block_bytes=320)  # share 0: 3 blocks x 10 keys
    pool = KeyPool(tmp_path / "a.db", 0, 2)
    # Queued back to back so the writer takes many of them in one transaction; the 40-key
    # request cannot be served and must roll back alone.
    sizes = [3, 40, 4, 5, 1, 2, 6, 3]
    futures = [pool.issue_future("sae-a", "sae-b", n, 256) for n in sizes]
    results = []
    for n, fut in zip(sizes, futures, strict=True):
        if n == 40:
            with pytest.raises(InsufficientKeys):
                fut.result(10)
        else:
            results.append(fut.result(10))
    keys = [k for batch in results for k in batch]
    assert len(keys) == 24
    assert len({k.key_id for k in keys}) == 24 and len({k.material for k in keys}) == 24
    assert pool.stored_key_count(256) == 6
    pool.close()

    # The cursors in the database match what was handed out: a new pool continues after them.
    pool = KeyPool(tmp_path / "a.db", 0, 2)
    more = pool.issue("sae-a", "sae-b", 6, 256)
    assert not {k.key_id for k in more} & {k.key_id for k in keys}
    assert not {k.material for k in more} & {k.material for k in keys}
    with pytest.raises(InsufficientKeys):
        pool.issue("sae-a", "sae-b", 1, 256)
    pool.close()
    with sqlite3.connect(tmp_path / "a.db") as conn:
        assert conn.execute("SELECT COUNT(*) FROM kms_issued").fetchone()[0] == 30
        assert conn.execute("SELECT SUM(used_bytes) FROM kms_block_use").fetchone()[0] == 960
