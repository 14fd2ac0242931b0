"""Per-node key store: final key blocks in SQLite (WAL mode), contract in docs/contracts.md §5.

One row per key block, keyed by the UUID agreed in the two-phase commit (pipeline/commit.py).
Every write is one SQLite transaction, so a process killed half-way leaves either the whole row
or nothing. WAL mode lets the controller read (and keep its own ``kms_*`` tables) while the
post-processing process writes; ``busy_timeout`` makes concurrent writers wait instead of fail.

Key bytes are returned only by :meth:`KeyStore.read_key`; nothing here logs them and no
``__repr__`` shows them.

Besides ``key_blocks`` the store keeps three small tables of its own:
- ``key_block_tombstones``: ids this node has discarded or declared unknown to its peer; such an
  id can never be inserted again, so a late message cannot resurrect a block the peer dropped.
- ``channel_pads``: the Wegman-Carter pad cursor per direction (qnode/channel.py). Blocks whose
  status is ``auth`` were taken out of the key pool to feed the channel's one-time pads.
- ``node_state``: durable, monotone facts about the node: ``wc_established`` (the channel has run
  under Wegman-Carter; from then on ``auth = "hmac"`` is refused, docs/contracts.md §7) and
  ``auth_downgrades`` (how often, and when last, an operator overrode that refusal).
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STATUSES = ("pending", "committed", "auth")
# Pad bytes after which a store counts as Wegman-Carter-established even without the marker
# (stores from before ``node_state``): qnode.wegman_carter.ESTABLISH_UNITS x UNIT.
WC_ESTABLISH_BYTES = 64 * 16

_SCHEMA = """
CREATE TABLE IF NOT EXISTS key_blocks (
    block_id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    peer TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'committed', 'auth')),
    created_ns INTEGER NOT NULL,
    committed_ns INTEGER,
    n_bits INTEGER NOT NULL,
    qber REAL,
    n_x INTEGER,
    leak_bits INTEGER,
    eps_sec REAL,
    eps_cor REAL,
    key BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS key_blocks_status_seq ON key_blocks(status, seq);
CREATE TABLE IF NOT EXISTS key_block_tombstones (
    block_id TEXT PRIMARY KEY,
    discarded_ns INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS channel_pads (
    direction TEXT PRIMARY KEY,
    cursor_bytes INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS node_state (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL,
    set_ns INTEGER NOT NULL
);
"""

_META_FIELDS = ("qber", "n_x", "leak_bits", "eps_sec", "eps_cor")
# The channel's pad stream: auth blocks below the first pending one (KeyStore.auth_pad_bytes).
_PAD_STREAM = (
    "status = 'auth' AND seq < COALESCE("
    "(SELECT MIN(seq) FROM key_blocks WHERE status = 'pending'), 9223372036854775807)"
)


_INFO_COLS = (
    "block_id, seq, peer, status, created_ns, committed_ns, n_bits, qber, n_x, "
    "leak_bits, eps_sec, eps_cor"
)  # BlockInfo's fields, in order


class KeyStoreError(RuntimeError):
    """A key-store operation that would break an invariant (conflicting key, unknown block)."""


@dataclass(frozen=True)
class BlockInfo:
    """One key block without its key bytes (safe to log and publish)."""

    block_id: str
    seq: int
    peer: str
    status: str
    created_ns: int
    committed_ns: int | None
    n_bits: int
    qber: float | None
    n_x: int | None
    leak_bits: int | None
    eps_sec: float | None
    eps_cor: float | None


class KeyStore:
    """SQLite-backed key block store; safe to use from several processes at once."""

    def __init__(self, path: str | Path, busy_timeout_ms: int = 10_000) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            str(self.path),
            timeout=busy_timeout_ms / 1000,
            isolation_level=None,
            check_same_thread=False,
        )
        self._db.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        self._db.execute("PRAGMA journal_mode = WAL")
        # FULL: a committed key block survives power loss, not only a killed process.
        self._db.execute("PRAGMA synchronous = FULL")
        with self._tx() as db:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)

    def __repr__(self) -> str:
        return f"KeyStore({str(self.path)!r})"

    # -- transactions -------------------------------------------------------------------------
    def _tx(self) -> _Transaction:
        return _Transaction(self._db, self._lock)

    # -- writes -------------------------------------------------------------------------------
    def add_pending(
        self, block_id: str, seq: int, peer: str, key: bytes, meta: dict[str, Any] | None = None
    ) -> bool:
        """Insert a block as pending; True if inserted, False if the same block already exists.

        Idempotent on ``block_id``; the same id with different key bytes, a different sequence
        number, or an id this node already discarded raises :class:`KeyStoreError`.
        """
        return self._insert(block_id, seq, peer, key, meta or {}, "pending")

    def add_committed(
        self,
        block_id: str,
        seq: int,
        peer: str,
        key: bytes,
        meta: dict[str, Any] | None = None,
        *,
        for_channel: bool = False,
    ) -> bool:
        """Insert a block directly as committed (the responder's side of the two-phase commit).

        ``for_channel``: insert it as ``auth`` (the channel's pad) in the same transaction, so
        there is no moment at which the block is ``committed`` and could be served as key.
        """
        status = "auth" if for_channel else "committed"
        return self._insert(block_id, seq, peer, key, meta or {}, status)

    def _insert(
        self, block_id: str, seq: int, peer: str, key: bytes, meta: dict[str, Any], status: str
    ) -> bool:
        if not isinstance(key, bytes | bytearray | memoryview) or len(key) == 0:
            raise KeyStoreError(f"block {block_id}: key must be non-empty bytes")
        unknown = set(meta) - set(_META_FIELDS) - {"n_bits"}
        if unknown:
            raise KeyStoreError(f"block {block_id}: unknown meta fields {sorted(unknown)}")
        key = bytes(key)
        n_bits = int(meta.get("n_bits", len(key) * 8))
        now = time.time_ns()
        with self._tx() as db:
            if db.execute(
                "SELECT 1 FROM key_block_tombstones WHERE block_id = ?", (block_id,)
            ).fetchone():
                raise KeyStoreError(f"block {block_id} was discarded and cannot come back")
            row = db.execute(
                "SELECT key, seq, status FROM key_blocks WHERE block_id = ?", (block_id,)
            ).fetchone()
            if row is not None:
                if row[0] != key or row[1] != seq:
                    raise KeyStoreError(
                        f"block {block_id} already stored with different key bytes or seq"
                    )
                if status in ("committed", "auth") and row[2] == "pending":
                    db.execute(
                        "UPDATE key_blocks SET status = ?, committed_ns = ? WHERE block_id = ?",
                        (status, now, block_id),
                    )
                elif status != row[2] and {status, row[2]} == {"committed", "auth"}:
                    raise KeyStoreError(f"block {block_id} is already {row[2]}, not {status}")
                return False
            db.execute(
                "INSERT INTO key_blocks (block_id, seq, peer, status, created_ns, committed_ns, "
                "n_bits, qber, n_x, leak_bits, eps_sec, eps_cor, key) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    block_id,
                    int(seq),
                    peer,
                    status,
                    now,
                    now if status != "pending" else None,
                    n_bits,
                    *(meta.get(name) for name in _META_FIELDS),
                    key,
                ),
            )
        return True

    def commit(self, block_id: str, *, for_channel: bool = False) -> None:
        """Mark a pending block committed (no-op if already committed).

        ``for_channel``: commit it straight to ``auth`` (the channel's pad) in one transaction,
        so a pad block is never visible as ``committed`` key, not even for a moment.
        """
        status = "auth" if for_channel else "committed"
        with self._tx() as db:
            row = db.execute(
                "SELECT status FROM key_blocks WHERE block_id = ?", (block_id,)
            ).fetchone()
            if row is None:
                raise KeyStoreError(f"commit of unknown block {block_id}")
            if row[0] == "pending":
                db.execute(
                    "UPDATE key_blocks SET status = ?, committed_ns = ? WHERE block_id = ?",
                    (status, time.time_ns(), block_id),
                )
            elif row[0] != status:
                raise KeyStoreError(f"block {block_id} is already {row[0]}, not {status}")

    def discard(self, block_id: str) -> None:
        """Delete a pending block (or remember an unknown id) so it can never be committed.

        A committed block cannot be discarded: the peer may already serve it.
        """
        with self._tx() as db:
            row = db.execute(
                "SELECT status FROM key_blocks WHERE block_id = ?", (block_id,)
            ).fetchone()
            if row is not None and row[0] != "pending":
                raise KeyStoreError(f"block {block_id} is {row[0]}; only pending blocks go")
            db.execute("DELETE FROM key_blocks WHERE block_id = ?", (block_id,))
            db.execute(
                "INSERT OR IGNORE INTO key_block_tombstones (block_id, discarded_ns) VALUES (?, ?)",
                (block_id, time.time_ns()),
            )

    def provision_pad(self, block_id: str, seq: int, peer: str, key: bytes) -> None:
        """Add channel pad delivered out of band (the same bytes, id and ``seq`` on both nodes),
        e.g. after an attack exhausted the Wegman-Carter pad (docs/contracts.md §7).

        Refused while a block is pending (settle it first from the peer's store: pad behind a
        pending block does not join the pad stream) or unless ``seq`` is above every block of
        this store, so the pad stream only grows at its end."""
        with self._lock:
            pending = self._db.execute(
                "SELECT block_id FROM key_blocks WHERE status = 'pending' ORDER BY seq LIMIT 1"
            ).fetchone()
        if pending is not None:
            raise KeyStoreError(
                f"block {pending[0]} is pending: settle it as the peer's store has it first"
            )
        if seq <= self.max_seq():
            raise KeyStoreError(f"pad seq {seq} must exceed every stored block ({self.max_seq()})")
        self.add_committed(block_id, seq, peer, key, {}, for_channel=True)

    def reserve_for_channel(self, block_id: str) -> None:
        """Take a committed block out of the key pool for the channel's Wegman-Carter pads.

        Only a block after every ``auth`` block: one inserted earlier would shift the pad stream
        (:meth:`auth_pad_bytes`) under the channel's cursor, and units already used would come
        back at new offsets."""
        with self._tx() as db:
            row = db.execute(
                "SELECT seq < (SELECT COALESCE(MAX(seq), -1) FROM key_blocks WHERE status = 'auth')"
                " FROM key_blocks WHERE block_id = ?",
                (block_id,),
            ).fetchone()
            if row is not None and row[0]:
                raise KeyStoreError(
                    f"block {block_id} precedes a pad block: the pad stream only grows at its end"
                )
            cur = db.execute(
                "UPDATE key_blocks SET status = 'auth' WHERE block_id = ? AND status = 'committed'",
                (block_id,),
            )
            if cur.rowcount != 1:
                raise KeyStoreError(f"block {block_id} is not a committed block")

    # -- reads --------------------------------------------------------------------------------
    def status(self, block_id: str) -> str | None:
        """``pending``, ``committed``, ``auth``, ``discarded`` or None if never seen."""
        with self._lock:
            row = self._db.execute(
                "SELECT status FROM key_blocks WHERE block_id = ?", (block_id,)
            ).fetchone()
            if row is not None:
                return row[0]
            gone = self._db.execute(
                "SELECT 1 FROM key_block_tombstones WHERE block_id = ?", (block_id,)
            ).fetchone()
        return "discarded" if gone else None

    def block(self, block_id: str) -> BlockInfo | None:
        """One block's row without its key bytes, or None if it is not stored."""
        with self._lock:
            row = self._db.execute(
                f"SELECT {_INFO_COLS} FROM key_blocks WHERE block_id = ?", (block_id,)
            ).fetchone()
        return None if row is None else BlockInfo(*row)

    def blocks(self, status: str | None = None) -> list[BlockInfo]:
        """All blocks (or those with ``status``) in block order, without key bytes."""
        if status is not None and status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, not {status!r}")
        cols = _INFO_COLS
        with self._lock:
            if status is None:
                rows = self._db.execute(f"SELECT {cols} FROM key_blocks ORDER BY seq").fetchall()
            else:
                rows = self._db.execute(
                    f"SELECT {cols} FROM key_blocks WHERE status = ? ORDER BY seq", (status,)
                ).fetchall()
        return [BlockInfo(*row) for row in rows]

    def read_key(self, block_id: str) -> bytes:
        """The key bytes of one block (never log them)."""
        with self._lock:
            row = self._db.execute(
                "SELECT key FROM key_blocks WHERE block_id = ?", (block_id,)
            ).fetchone()
        if row is None:
            raise KeyStoreError(f"unknown block {block_id}")
        return bytes(row[0])

    def committed_digest(self) -> tuple[int, int, str]:
        """(blocks, bits, sha256 hex over all committed key bytes in block order)."""
        digest = hashlib.sha256()
        blocks = bits = 0
        with self._lock:
            rows = self._db.execute(
                "SELECT key, n_bits FROM key_blocks WHERE status = 'committed' ORDER BY seq"
            ).fetchall()
        for key, n_bits in rows:
            digest.update(key)
            blocks += 1
            bits += n_bits
        return blocks, bits, digest.hexdigest()

    def max_seq(self) -> int:
        """Highest block sequence number stored or -1."""
        with self._lock:
            row = self._db.execute("SELECT MAX(seq) FROM key_blocks").fetchone()
        return -1 if row[0] is None else int(row[0])

    # -- channel pads ---------------------------------------------------------------------------
    def pad_cursor(self, direction: str) -> int:
        with self._lock:
            row = self._db.execute(
                "SELECT cursor_bytes FROM channel_pads WHERE direction = ?", (direction,)
            ).fetchone()
        return 0 if row is None else int(row[0])

    def advance_pad_cursor(self, direction: str, cursor_bytes: int) -> None:
        """Persist a pad cursor; it only ever moves forward (a pad is used at most once)."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO channel_pads (direction, cursor_bytes) VALUES (?, ?) "
                "ON CONFLICT(direction) DO UPDATE SET cursor_bytes = "
                "MAX(cursor_bytes, excluded.cursor_bytes)",
                (direction, int(cursor_bytes)),
            )

    def auth_pad_len(self) -> int:
        """Bytes in the channel's pad stream (:meth:`auth_pad_bytes`), without reading them."""
        with self._lock:
            row = self._db.execute(
                f"SELECT COALESCE(SUM(LENGTH(key)), 0) FROM key_blocks WHERE {_PAD_STREAM}"
            ).fetchone()
        return int(row[0])

    def auth_pad_bytes(self) -> bytes:
        """The channel's pad stream: the key bytes of the ``auth`` blocks in block order, up to
        the first block still ``pending`` (docs/contracts.md §7, "Pad").

        The stream only ever grows at its end, so a pad unit (an offset in it) always names the
        same bytes, which is what makes a persisted cursor enough to never reuse one. A pending
        block (Bob's, awaiting Alice's answer) may still become ``auth`` after a later block
        did (its confirmation lost, the later one's not), so nothing from it on joins the stream
        until it is settled; Alice never holds pending blocks, so Bob's stream is always a
        prefix of hers. :meth:`reserve_for_channel` refuses a block below the last ``auth``.
        """
        with self._lock:
            rows = self._db.execute(
                f"SELECT key FROM key_blocks WHERE {_PAD_STREAM} ORDER BY seq"
            ).fetchall()
        return b"".join(bytes(r[0]) for r in rows)

    # -- node state (durable, monotone) ---------------------------------------------------------
    def mark_wc_established(self) -> None:
        """Record, once and for good, that this node's channel has run under Wegman-Carter."""
        with self._tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO node_state (name, value, set_ns) "
                "VALUES ('wc_established', 1, ?)",
                (time.time_ns(),),
            )

    def wc_established_ns(self) -> int | None:
        """When the Wegman-Carter mark was set (ns), or None if it never was."""
        with self._lock:
            row = self._db.execute(
                "SELECT set_ns FROM node_state WHERE name = 'wc_established'"
            ).fetchone()
        return None if row is None else int(row[0])

    def wc_established(self) -> bool:
        """Whether this store has been under Wegman-Carter: the mark, or (a store from before
        the mark existed) at least ``WC_ESTABLISH_BYTES`` of ``auth`` blocks ever held, which
        are never removed."""
        if self.wc_established_ns() is not None:
            return True
        with self._lock:
            row = self._db.execute(
                "SELECT COALESCE(SUM(LENGTH(key)), 0) FROM key_blocks WHERE status = 'auth'"
            ).fetchone()
        return int(row[0]) >= WC_ESTABLISH_BYTES

    def record_auth_downgrade(self) -> int:
        """Count an operator's override of the no-downgrade rule; returns the new count."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO node_state (name, value, set_ns) VALUES ('auth_downgrades', 1, ?) "
                "ON CONFLICT(name) DO UPDATE SET value = value + 1, set_ns = excluded.set_ns",
                (time.time_ns(),),
            )
            row = db.execute("SELECT value FROM node_state WHERE name = 'auth_downgrades'")
            return int(row.fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (or ``ROLLBACK`` on error) under the store's lock."""

    def __init__(self, db: sqlite3.Connection, lock: threading.Lock) -> None:
        self._db = db
        self._lock = lock

    def __enter__(self) -> sqlite3.Connection:
        self._lock.acquire()
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except BaseException:
            self._lock.release()
            raise
        return self._db

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            if exc_type is None:
                self._db.execute("COMMIT")
            else:
                self._db.execute("ROLLBACK")
        finally:
            self._lock.release()
