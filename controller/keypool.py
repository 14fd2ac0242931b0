"""The KME key pool: application keys cut from committed key blocks of the node's key store.

Design (see docs/controller.md, "How the two KMEs agree"):
- Both nodes hold the same committed blocks (same ``block_id``, ``seq`` and bytes; issue 4's
  two-phase commit). Keys are cut *deterministically*: a key is ``size`` bytes at byte ``offset``
  of block ``block_id`` and its ID is ``uuid5(NS, "block_id:offset:size")``, so either KME can
  recompute and check an ID from its coordinates.
- Each block is issued by exactly one KME: the one whose ``share_index == seq % share_count``.
  The two KMEs therefore never cut the same bits for different masters, with no coordination.
- The master's KME records each issued key (``kms_issued``) in the same transaction that advances
  the block's cursor (``kms_block_use``), under ``BEGIN IMMEDIATE``: concurrent requests can never
  receive the same bits.
- The slave's KME learns a key's coordinates from the master's KME (lookup by ID over the KME
  channel, no key material on the wire), checks them, and records delivery in ``kms_delivered``
  (primary key = key ID) before returning the bytes: each key reaches the slave once.
The pool only reads ``key_blocks`` (owned by the node runtime) and never logs key material.

Durability: the database runs with ``synchronous=FULL`` (a key handed out survives power loss
as "issued", or the same bits could be cut again after a crash). An fsync per request would cap
the KME at a few hundred requests per second, so writes go through one writer thread that
*group-commits*: all requests waiting at that moment run in one ``BEGIN IMMEDIATE`` transaction,
each inside its own SAVEPOINT (one request failing does not touch the others), and no caller
gets its keys before the COMMIT that records them returned.
"""

from __future__ import annotations

import base64
import queue
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

KEY_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:qnode:kms:key-id")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kms_block_use (
    block_id TEXT PRIMARY KEY,
    used_bytes INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS kms_issued (
    key_id TEXT PRIMARY KEY,
    block_id TEXT NOT NULL,
    offset_bytes INTEGER NOT NULL,
    size_bytes INTEGER NOT NULL,
    master_sae TEXT NOT NULL,
    slave_sae TEXT NOT NULL,
    issued_ns INTEGER NOT NULL,
    peer_looked_up_ns INTEGER
);
CREATE TABLE IF NOT EXISTS kms_delivered (
    key_id TEXT PRIMARY KEY,
    block_id TEXT NOT NULL,
    offset_bytes INTEGER NOT NULL,
    size_bytes INTEGER NOT NULL,
    master_sae TEXT NOT NULL,
    slave_sae TEXT NOT NULL,
    delivered_ns INTEGER NOT NULL
);
"""


# Guard on the node's table (it changes no data): a block that already served keys can never be
# moved to the classical channel's one-time-pad reserve (status 'auth'), or pad bits would be
# key bits. The node's commit step reserves a block right after committing it; this closes the
# window in which the KMS could have cut a key from it.
_GUARD = """
CREATE TRIGGER IF NOT EXISTS kms_guard_no_reuse
BEFORE UPDATE OF status ON key_blocks
WHEN NEW.status <> 'committed' AND (
    EXISTS (SELECT 1 FROM kms_block_use WHERE block_id = OLD.block_id AND used_bytes > 0)
    OR EXISTS (SELECT 1 FROM kms_delivered WHERE block_id = OLD.block_id))
BEGIN
    SELECT RAISE(ABORT, 'key block already serves ETSI 014 keys');
END
"""


class PoolError(Exception):
    """Base of key-pool errors; ``http_status`` is the ETSI 014 status it maps to."""

    http_status = 503


class InsufficientKeys(PoolError):
    """Not enough committed key material in this KME's share for the request."""


class KeysNotFound(PoolError):
    """One or more key IDs are unknown, already delivered, or inconsistent."""

    http_status = 400


class NotAuthorized(PoolError):
    """The requesting SAE is not the slave SAE the keys were issued for (ETSI 014: 401)."""

    http_status = 401


class BlockNotReady(PoolError):
    """The block a key lives in is not (yet) committed on this node."""


@dataclass(frozen=True)
class KeyRecord:
    """Coordinates of one key (no material): enough for the peer KME to cut the same bytes."""

    key_id: str
    block_id: str
    offset_bytes: int
    size_bytes: int
    master_sae: str
    slave_sae: str

    def as_dict(self) -> dict:
        return {
            "key_id": self.key_id,
            "block_id": self.block_id,
            "offset_bytes": self.offset_bytes,
            "size_bytes": self.size_bytes,
            "master_sae": self.master_sae,
            "slave_sae": self.slave_sae,
        }

    @classmethod
    def from_dict(cls, data: dict) -> KeyRecord:
        return cls(
            key_id=str(data["key_id"]),
            block_id=str(data["block_id"]),
            offset_bytes=int(data["offset_bytes"]),
            size_bytes=int(data["size_bytes"]),
            master_sae=str(data["master_sae"]),
            slave_sae=str(data["slave_sae"]),
        )


@dataclass(frozen=True)
class Key:
    """A delivered key: its ID and its material (base64 for the wire). Never log ``material``."""

    key_id: str
    material: bytes

    def __repr__(self) -> str:  # keep key bytes out of logs and tracebacks
        return f"Key(key_id={self.key_id!r}, {len(self.material)} bytes)"

    @property
    def b64(self) -> str:
        return base64.b64encode(self.material).decode("ascii")


def derive_key_id(block_id: str, offset_bytes: int, size_bytes: int) -> str:
    """The key ID of ``size_bytes`` bytes at ``offset_bytes`` of block ``block_id``."""
    return str(uuid.uuid5(KEY_ID_NAMESPACE, f"{block_id}:{offset_bytes}:{size_bytes}"))


class KeyPool:
    """One KME's view of its node's key store. Thread-safe: one SQLite connection per thread."""

    def __init__(
        self,
        path: Path | str,
        share_index: int = 0,
        share_count: int = 2,
        busy_timeout_ms: int = 10_000,
    ) -> None:
        if not 0 <= share_index < share_count:
            raise ValueError("share_index must be in [0, share_count)")
        self.path = str(path)
        self.share_index = share_index
        self.share_count = share_count
        self._busy_timeout_ms = busy_timeout_ms
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._guarded = False
        self._conn().executescript(_SCHEMA)
        self._has_key_blocks(self._conn())
        self._ops: queue.SimpleQueue[tuple[Callable[[sqlite3.Connection], Any], Future] | None]
        self._ops = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        # Writer thread only: our share's blocks as [block_id, total, used], read once per group
        # commit (nobody else can write inside its BEGIN IMMEDIATE) and advanced by each _issue.
        self._batch_blocks: list[list[Any]] | None = None

    # -- connections -------------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout={int(self._busy_timeout_ms)}")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def close(self) -> None:
        with self._lock:
            writer, self._writer = self._writer, None
        if writer is not None:
            self._ops.put(None)
            writer.join(10)
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
        self._local = threading.local()

    # -- group commit ------------------------------------------------------------------------
    def _submit(self, op: Callable[[sqlite3.Connection], Any]) -> Future:
        """Queue ``op(conn)`` for the writer thread's next group commit; its Future."""
        with self._lock:
            if self._writer is None:
                self._writer = threading.Thread(target=self._write_loop, daemon=True)
                self._writer.start()
        done: Future = Future()
        self._ops.put((op, done))
        return done

    def _write(self, op: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run ``op(conn)`` atomically in a group commit and wait for it."""
        return self._submit(op).result()

    def _write_loop(self, max_batch: int = 256) -> None:
        conn = self._conn()
        while True:
            item = self._ops.get()
            if item is None:
                return
            batch = [item]
            while len(batch) < max_batch:
                try:
                    nxt = self._ops.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._ops.put(None)  # finish this batch, then stop
                    break
                batch.append(nxt)
            outcomes: list[tuple[Future, Any, BaseException | None]] = []
            self._batch_blocks = None
            try:
                conn.execute("BEGIN IMMEDIATE")
                for op, done in batch:
                    conn.execute("SAVEPOINT kms_op")
                    try:
                        result = op(conn)
                    except Exception as exc:
                        conn.execute("ROLLBACK TO kms_op")
                        conn.execute("RELEASE kms_op")
                        outcomes.append((done, None, exc))
                    else:
                        conn.execute("RELEASE kms_op")
                        outcomes.append((done, result, None))
                conn.execute("COMMIT")
            except Exception as exc:  # the whole batch failed to commit: nobody gets keys
                self._batch_blocks = None
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                for _, done in batch:
                    done.set_exception(exc)
                continue
            self._batch_blocks = None
            for done, result, error in outcomes:
                if error is not None:
                    done.set_exception(error)
                else:
                    done.set_result(result)
            if not self._ops.empty():
                # Back-to-back transactions would starve other writers of this file (the
                # node committing new blocks waits in SQLite's busy handler): leave a gap.
                time.sleep(0.001)

    def _has_key_blocks(self, conn: sqlite3.Connection) -> bool:
        if self._guarded:
            return True
        row = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name='key_blocks'"
        ).fetchone()
        if row is None:
            return False
        conn.execute(_GUARD)
        self._guarded = True
        return True

    def _share_blocks(self, conn: sqlite3.Connection, min_free: int) -> list[tuple[str, int, int]]:
        """Committed blocks of our share with at least ``min_free`` unused bytes, in seq order."""
        if not self._has_key_blocks(conn):
            return []
        rows = conn.execute(
            "SELECT b.block_id, MIN(b.n_bits / 8, LENGTH(b.key)), COALESCE(u.used_bytes, 0) "
            "FROM key_blocks b LEFT JOIN kms_block_use u ON u.block_id = b.block_id "
            "WHERE b.status = 'committed' AND b.seq % ? = ? ORDER BY b.seq",
            (self.share_count, self.share_index),
        ).fetchall()
        return [(bid, total, used) for bid, total, used in rows if total - used >= min_free]

    # -- master side (enc_keys) --------------------------------------------------------------
    def stored_key_count(self, size_bits: int) -> int:
        """How many keys of ``size_bits`` this KME can still issue (its share, unused bytes)."""
        size = size_bits // 8
        return sum(
            (total - used) // size for _, total, used in self._share_blocks(self._conn(), size)
        )

    def issue(self, master_sae: str, slave_sae: str, number: int, size_bits: int) -> list[Key]:
        """Cut ``number`` keys of ``size_bits`` for the pair and record them; all or nothing."""
        return self.issue_future(master_sae, slave_sae, number, size_bits).result()

    def issue_future(self, master_sae: str, slave_sae: str, number: int, size_bits: int) -> Future:
        """``issue`` without waiting: a Future of the keys (for asyncio callers)."""
        if number < 1 or size_bits <= 0 or size_bits % 8:
            raise ValueError("number must be >= 1 and size a positive multiple of 8")
        size = size_bits // 8
        return self._submit(lambda conn: self._issue(conn, master_sae, slave_sae, number, size))

    def _issue(
        self, conn: sqlite3.Connection, master_sae: str, slave_sae: str, number: int, size: int
    ) -> list[Key]:
        now = time.time_ns()
        # Runs inside the writer's transaction, in this request's own savepoint. The block list
        # is read once per transaction; it is advanced only after this request's SQL succeeded,
        # so a request rolled back to its savepoint leaves it as the database is.
        if self._batch_blocks is None:
            self._batch_blocks = [list(b) for b in self._share_blocks(conn, 1)]
        cuts: list[tuple[str, int]] = []
        cursor_updates: dict[str, int] = {}
        touched: list[list[Any]] = []
        for entry in self._batch_blocks:
            block_id, total, used = entry
            if total - used < size:
                continue
            while used + size <= total and len(cuts) < number:
                cuts.append((block_id, used))
                used += size
            cursor_updates[block_id] = used
            touched.append(entry)
            if len(cuts) == number:
                break
        if len(cuts) < number:
            raise InsufficientKeys(
                f"insufficient key material: {len(cuts)} of {number} keys of {size * 8} bits"
            )
        # The cuts from one block are consecutive: read each block's run once.
        first: dict[str, int] = {}
        for block_id, offset in cuts:
            first.setdefault(block_id, offset)
        runs = {
            block_id: self._read(conn, block_id, start, cursor_updates[block_id] - start)
            for block_id, start in first.items()
        }
        keys: list[Key] = []
        rows = []
        for block_id, offset in cuts:
            key_id = derive_key_id(block_id, offset, size)
            rows.append((key_id, block_id, offset, size, master_sae, slave_sae, now))
            at = offset - first[block_id]
            keys.append(Key(key_id, runs[block_id][at : at + size]))
        conn.executemany(
            "INSERT INTO kms_issued (key_id, block_id, offset_bytes, size_bytes, "
            "master_sae, slave_sae, issued_ns) VALUES (?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        conn.executemany(
            "INSERT INTO kms_block_use (block_id, used_bytes) VALUES (?, ?) "
            "ON CONFLICT(block_id) DO UPDATE SET used_bytes = excluded.used_bytes",
            list(cursor_updates.items()),
        )
        for entry in touched:
            entry[2] = cursor_updates[entry[0]]
        return keys

    @staticmethod
    def _read(conn: sqlite3.Connection, block_id: str, offset: int, size: int) -> bytes:
        row = conn.execute(
            "SELECT substr(key, ?, ?) FROM key_blocks WHERE block_id = ? AND status = 'committed'",
            (offset + 1, size, block_id),
        ).fetchone()
        if row is None or row[0] is None or len(row[0]) != size:
            raise BlockNotReady(f"key block {block_id} is not committed on this node")
        return bytes(row[0])

    def lookup_issued(self, key_ids: list[str]) -> list[KeyRecord]:
        """Coordinates of keys this KME issued (served to the peer KME); unknown IDs omitted."""
        conn = self._conn()
        records: list[KeyRecord] = []
        for key_id in key_ids:
            row = conn.execute(
                "SELECT key_id, block_id, offset_bytes, size_bytes, master_sae, slave_sae "
                "FROM kms_issued WHERE key_id = ?",
                (key_id,),
            ).fetchone()
            if row is not None:
                records.append(KeyRecord(*row))
        return records

    # -- slave side (dec_keys) ---------------------------------------------------------------
    def already_delivered(self, key_ids: list[str]) -> list[str]:
        """The IDs among ``key_ids`` that this KME already delivered to a slave SAE."""
        conn = self._conn()
        found = []
        for key_id in key_ids:
            if conn.execute("SELECT 1 FROM kms_delivered WHERE key_id = ?", (key_id,)).fetchone():
                found.append(key_id)
        return found

    def deliver(
        self, requester_sae: str, master_sae: str, key_ids: list[str], records: list[KeyRecord]
    ) -> list[Key]:
        """Deliver the keys described by the peer's ``records`` to the slave SAE, once each.

        Raises NotAuthorized if a key was issued for another slave SAE, KeysNotFound if an ID
        is missing, delivered already, issued for another master or inconsistent with its
        coordinates, BlockNotReady if its block is not committed here.
        """
        wanted = set(key_ids)
        by_id = {r.key_id: r for r in records if r.key_id in wanted}
        if any(r.slave_sae != requester_sae for r in by_id.values()):
            # ETSI 014 §5.4: the requester was not the slave SAE named when these were issued.
            raise NotAuthorized("keys were not issued for this SAE")
        if len(set(key_ids)) != len(key_ids) or any(k not in by_id for k in key_ids):
            raise KeysNotFound("one or more keys specified are not found on KME")
        ordered = [by_id[k] for k in key_ids]
        for r in ordered:
            if (
                r.master_sae != master_sae
                or derive_key_id(r.block_id, r.offset_bytes, r.size_bytes) != r.key_id
                or r.size_bytes <= 0
                or r.offset_bytes < 0
            ):
                raise KeysNotFound("one or more keys specified are not found on KME")
        return self._write(lambda conn: self._deliver(conn, ordered))

    def _deliver(self, conn: sqlite3.Connection, ordered: list[KeyRecord]) -> list[Key]:
        now = time.time_ns()
        # Runs inside the writer's transaction, in this request's own savepoint.
        keys: list[Key] = []
        for r in ordered:
            seq_row = conn.execute(
                "SELECT seq FROM key_blocks WHERE block_id = ? AND status = 'committed'",
                (r.block_id,),
            ).fetchone()
            if seq_row is None:
                raise BlockNotReady(f"key block {r.block_id} is not committed on this node")
            if seq_row[0] % self.share_count == self.share_index:
                # Our own share: the peer may never issue from it (defence in depth).
                raise KeysNotFound("one or more keys specified are not found on KME")
            try:
                conn.execute(
                    "INSERT INTO kms_delivered (key_id, block_id, offset_bytes, size_bytes, "
                    "master_sae, slave_sae, delivered_ns) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        r.key_id,
                        r.block_id,
                        r.offset_bytes,
                        r.size_bytes,
                        r.master_sae,
                        r.slave_sae,
                        now,
                    ),
                )
            except sqlite3.IntegrityError:
                raise KeysNotFound("one or more keys specified are not found on KME") from None
            keys.append(Key(r.key_id, self._read(conn, r.block_id, r.offset_bytes, r.size_bytes)))
        return keys

    # -- statistics --------------------------------------------------------------------------
    def stats(self) -> dict[str, int]:
        """Counts for telemetry and the state tree (no key material)."""
        conn = self._conn()
        issued, issued_bytes = conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(size_bytes), 0) FROM kms_issued"
        ).fetchone()
        delivered, delivered_bytes = conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(size_bytes), 0) FROM kms_delivered"
        ).fetchone()
        committed_blocks = committed_bytes = 0
        if self._has_key_blocks(conn):
            committed_blocks, committed_bytes = conn.execute(
                "SELECT COUNT(*), COALESCE(SUM(n_bits / 8), 0) FROM key_blocks "
                "WHERE status = 'committed'"
            ).fetchone()
        free = sum(total - used for _, total, used in self._share_blocks(conn, 1))
        return {
            "committed_blocks": committed_blocks,
            "committed_bytes": committed_bytes,
            "share_free_bytes": free,
            "issued_keys": issued,
            "issued_bytes": issued_bytes,
            "delivered_keys": delivered,
            "delivered_bytes": delivered_bytes,
        }
