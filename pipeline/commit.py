"""Two-phase key-block commit between Bob (initiator) and Alice (responder), sans-I/O.

A final key block is committed on both nodes or on neither (design-notes "Key commit"):
1. Bob stores the block as ``pending`` under a fresh UUID and sends ``commit_propose``.
2. Alice, holding the same final key for that pipeline block, stores it ``committed`` and sends
   ``commit_confirm``; if she no longer holds it (the block was aborted), she remembers the UUID
   as discarded (a tombstone, so it can never come back) and answers ``refused``.
3. Bob marks the block ``committed`` on ``committed``, discards it on ``refused``.
At start-up and after every reconnection each side sends ``commit_query`` for its pending
blocks; the peer answers each id with its own status, treating an id it does not know as
discarded from then on. So Bob commits a block only after Alice has, and discards it only after
Alice has promised never to commit it; a pending block with no answer is never served.

Messages (dicts, ``type`` plus identifiers, never key bytes):
``{"type": "commit_propose", "block": n, "block_id": uuid, "seq": s, "n_bits": b}``,
``{"type": "commit_confirm", "block_id": uuid, "status": "committed" | "auth" | "refused"}``,
``{"type": "commit_query", "block_ids": [...]}``, ``{"type": "commit_status", "status": {id: st}}``.

With Wegman-Carter authentication on, Alice decides which blocks feed the channel's one-time
pads (qnode/wegman_carter.py): a block whose ``seq`` is a multiple of ``wc_every_blocks`` is
stored with status ``auth`` while her unreserved pad is below ``pad_high_units`` 16-byte units
(one unit per checkpoint tag, about two per committed block). She says so in her answer
(``status: "auth"``) and Bob follows it, so both stores hold the same pad blocks in the same
order; each side stores such a block as ``auth`` in one transaction, never as servable key. The
channel sends the commit messages as Wegman-Carter checkpoints and rejects them otherwise, so in
a Wegman-Carter session no block is committed before its transcript is authenticated.

Refill (no HMAC downgrade, docs/contracts.md §7): once a store has held pad, the channel commits
nothing under HMAC alone, and it keeps the last units of the pad as a refill reserve that only
checkpoints committing no servable key may spend. When few units are left (``refill_units``) Bob
marks his proposal ``"refill": true`` and Alice turns every block into pad (``auth``), so the
pad comes back through Wegman-Carter-authenticated commits only.
"""

from __future__ import annotations

import uuid
from typing import Any

from qnode.keystore import KeyStore, KeyStoreError

Message = dict[str, Any]
COMMIT_TYPES = ("commit_propose", "commit_confirm", "commit_query", "commit_status")


PAD_HIGH_UNITS = 128  # 2 KiB of pad: ~60 committed blocks at two checkpoint tags each
REFILL_UNITS = 32  # refill mode: every block becomes pad (> the channel's 16-unit reserve)
_PAD_UNIT = 16  # bytes per checkpoint tag (qnode.wegman_carter.UNIT)
_ESTABLISH_UNITS = 64  # qnode.wegman_carter.ESTABLISH_UNITS


class _Side:
    def __init__(
        self,
        store: KeyStore,
        peer: str,
        wc_every_blocks: int = 0,
        pad_high_units: int = PAD_HIGH_UNITS,
        refill_units: int = REFILL_UNITS,
    ) -> None:
        self.store = store
        self.peer = peer
        self.wc_every_blocks = wc_every_blocks
        self.pad_high_units = pad_high_units
        self.refill_units = refill_units
        self.committed: list[str] = []  # ids committed since start (for telemetry events)
        self.discarded: list[str] = []

    def recovery_query(self) -> Message | None:
        """The query for this side's pending blocks (None when there are none)."""
        pending = [b.block_id for b in self.store.blocks("pending")]
        return {"type": "commit_query", "block_ids": pending} if pending else None

    def _answer_query(self, msg: Message) -> Message:
        status: dict[str, str] = {}
        for block_id in msg.get("block_ids", []):
            block_id = str(block_id)
            state = self.store.status(block_id)
            if state is None:
                self.store.discard(block_id)  # promise never to commit it
                state = "discarded"
            status[block_id] = state
        return {"type": "commit_status", "status": status}

    def _apply_status(self, msg: Message) -> None:
        for block_id, peer_state in dict(msg.get("status", {})).items():
            if self.store.status(block_id) != "pending":
                continue
            if peer_state in ("committed", "auth"):
                self._commit_local(block_id, peer_state)
            elif peer_state == "discarded":
                self.store.discard(block_id)
                self.discarded.append(block_id)
            # "pending" on both sides cannot happen (Alice never holds pending blocks); leave it.

    def _commit_local(self, block_id: str, peer_state: str) -> None:
        self.store.commit(block_id, for_channel=peer_state == "auth")
        self.committed.append(block_id)

    def pad_units_left(self) -> int:
        """Pad units (16 bytes) in this store's ``auth`` blocks beyond the channel's cursor."""
        cursor = max(1, self.store.pad_cursor("units"))
        return max(0, self.store.auth_pad_len() // _PAD_UNIT - cursor)

    def refill_mode(self) -> bool:
        """Pad established and nearly spent: every block becomes pad until it is back."""
        if self.wc_every_blocks <= 0 or self.store.auth_pad_len() < _ESTABLISH_UNITS * _PAD_UNIT:
            return False
        return self.pad_units_left() <= self.refill_units

    def _is_auth_block(self, seq: int, refill: bool = False) -> bool:
        """Whether block ``seq`` feeds the pads (Alice decides; Bob follows her answer)."""
        if self.wc_every_blocks <= 0:
            return False
        if refill or self.refill_mode():
            return True
        if seq % self.wc_every_blocks != 0:
            return False
        return self.pad_units_left() < self.pad_high_units


class CommitInitiator(_Side):
    """Bob's side: proposes blocks and completes them on Alice's answer."""

    def propose(self, block: int, key: bytes, meta: dict[str, Any]) -> Message:
        """Store the block as pending and return the proposal for Alice."""
        block_id = str(uuid.uuid4())
        seq = self.store.max_seq() + 1
        self.store.add_pending(block_id, seq, self.peer, key, meta)
        proposal = {
            "type": "commit_propose",
            "block": int(block),
            "block_id": block_id,
            "seq": seq,
            "n_bits": int(meta.get("n_bits", len(key) * 8)),
        }
        if self.refill_mode():  # may spend the channel's refill reserve: Alice makes it pad
            proposal["refill"] = True
        return proposal

    def withdraw(self, block_id: str) -> None:
        """The proposal of ``block_id`` never left this node (the channel held or refused it):
        discard the block now instead of leaving it pending. Alice commits only on a proposal she
        received (after establishment only on a verified Wegman-Carter checkpoint), so she can
        never hold it; a block left pending would also hold back every pad block after it from
        the pad stream (``KeyStore.auth_pad_bytes``) until a commit query settles it, which an
        exhausted pad cannot carry."""
        if self.store.status(block_id) == "pending":
            self.store.discard(block_id)
            self.discarded.append(block_id)

    def handle(self, msg: Message) -> list[Message]:
        kind = msg.get("type")
        if kind == "commit_confirm":
            block_id = str(msg.get("block_id"))
            if self.store.status(block_id) == "pending":
                if msg.get("status") in ("committed", "auth"):
                    self._commit_local(block_id, msg["status"])
                elif msg.get("status") == "refused":
                    self.store.discard(block_id)
                    self.discarded.append(block_id)
            return []
        if kind == "commit_query":
            return [self._answer_query(msg)]
        if kind == "commit_status":
            self._apply_status(msg)
            return []
        raise ValueError(f"not a commit message: {kind!r}")


class CommitResponder(_Side):
    """Alice's side: commits a proposed block if she holds its final key.

    A proposal for a block this side is still working on (``expect``) waits until the block is
    offered (its final key is ready) or dropped (aborted); one for any other block is refused.
    """

    def __init__(
        self,
        store: KeyStore,
        peer: str,
        wc_every_blocks: int = 0,
        pad_high_units: int = PAD_HIGH_UNITS,
        refill_units: int = REFILL_UNITS,
    ) -> None:
        super().__init__(store, peer, wc_every_blocks, pad_high_units, refill_units)
        self._ready: dict[int, tuple[bytes, dict[str, Any]]] = {}
        self._expected: set[int] = set()
        self._deferred: dict[int, Message] = {}

    def __repr__(self) -> str:
        return f"CommitResponder(ready_blocks={sorted(self._ready)})"

    def expect(self, block: int) -> None:
        """The pipeline started ``block`` on this side."""
        self._expected.add(int(block))

    def offer(self, block: int, key: bytes, meta: dict[str, Any]) -> list[Message]:
        """The pipeline finished ``block`` on this side; answer a waiting proposal, if any."""
        block = int(block)
        self._expected.discard(block)
        self._ready[block] = (bytes(key), dict(meta))
        waiting = self._deferred.pop(block, None)
        return [self._on_propose(waiting)] if waiting is not None else []

    def drop(self, block: int) -> list[Message]:
        """The block was aborted on this side: refuse its proposal now or whenever it comes."""
        block = int(block)
        self._expected.discard(block)
        self._ready.pop(block, None)
        waiting = self._deferred.pop(block, None)
        return [self._on_propose(waiting)] if waiting is not None else []

    def in_flight(self) -> set[int]:
        return set(self._expected) | set(self._ready) | set(self._deferred)

    def handle(self, msg: Message) -> list[Message]:
        kind = msg.get("type")
        if kind == "commit_propose":
            block = msg.get("block")
            if isinstance(block, int) and block in self._expected and block not in self._ready:
                self._deferred[block] = msg
                return []
            return [self._on_propose(msg)]
        if kind == "commit_query":
            return [self._answer_query(msg)]
        if kind == "commit_status":
            self._apply_status(msg)
            return []
        raise ValueError(f"not a commit message: {kind!r}")

    def _on_propose(self, msg: Message) -> Message:
        block_id, block, seq = str(msg.get("block_id")), msg.get("block"), msg.get("seq")
        ready = self._ready.pop(block, None) if isinstance(block, int) else None
        existing = self.store.status(block_id)
        if existing in ("committed", "auth"):  # a repeated proposal: answer the same
            return {"type": "commit_confirm", "block_id": block_id, "status": existing}
        valid = (
            ready is not None
            and existing is None
            and isinstance(seq, int)
            and seq > self.store.max_seq()
            and int(msg.get("n_bits", -1)) == int(ready[1].get("n_bits", len(ready[0]) * 8))
        )
        for_channel = valid and self._is_auth_block(seq, msg.get("refill") is True)
        if valid:
            key, meta = ready
            try:
                self.store.add_committed(
                    block_id, seq, self.peer, key, meta, for_channel=for_channel
                )
            except KeyStoreError:
                valid = False
        if not valid:
            if self.store.status(block_id) is None:
                self.store.discard(block_id)
            self.discarded.append(block_id)
            return {"type": "commit_confirm", "block_id": block_id, "status": "refused"}
        status = "auth" if for_channel else "committed"
        self.committed.append(block_id)
        return {"type": "commit_confirm", "block_id": block_id, "status": status}
