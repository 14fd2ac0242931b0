"""Wegman-Carter authentication for the classical channel: polynomial hash + one-time pad.

Tag of a message ``m`` (direction, sequence number, envelope and body, length-prefixed, cut into
15-byte chunks ``m_1..m_L``): ``t = (sum_i m_i k^(L-i+1) + s) mod p`` with ``p = 2^127 - 1``,
``k`` the hash key and ``s`` a fresh 16-byte pad. The polynomial hash is ``L/p``-almost
Delta-universal, so with a one-time pad the forgery probability is at most ``L/p`` per message
(Wegman & Carter 1981; Stinson 1994), information-theoretically.

Where the pad comes from, identically on both sides:
- Key blocks are taken out of the key pool for the channel by the commit step: when Wegman-Carter
  is on, every block whose sequence number is a multiple of ``wc_every_blocks`` is stored with
  status ``auth`` instead of ``committed`` on both nodes (the decision depends only on the agreed
  block number). The controller serves only ``committed`` blocks, so pad bits are never keys.
- The pad stream is the concatenation of the ``auth`` blocks in block order, cut in 16-byte units.
  Unit 0 is the hash key ``k``; units from 1 on are pads.
- Each node persists a cursor (the first unit it has not reserved). At every session start the
  hello/welcome (HMAC-authenticated with the pre-shared secret) carry both cursors and both
  availabilities; the session uses ``base = max(cursors)`` and ``limit = min(available)``.
  Message ``n`` (n >= 1) in the direction that sorts first uses unit ``base + 2(n-1)``, the other
  direction ``base + 2(n-1) + 1``. Before using a unit a node persists a cursor beyond it (in
  chunks of ``reserve_messages``), so no unit is ever used twice, even across crashes.
- Until both nodes hold enough pad the session runs on HMAC-SHA256; when the pad runs out the
  session restarts and renegotiates.
"""

from __future__ import annotations

from typing import Any

from qnode.keystore import KeyStore

P = (1 << 127) - 1
UNIT = 16
_CHUNK = 15


def poly_hash(key: int, data: bytes) -> int:
    """Polynomial evaluation hash over GF(p) of length-prefixed ``data`` (Horner's rule)."""
    h = 0
    framed = len(data).to_bytes(8, "big") + data
    for i in range(0, len(framed), _CHUNK):
        h = ((h + int.from_bytes(framed[i : i + _CHUNK], "big")) * key) % P
    return h


class WegmanCarterSession:
    """Pad bookkeeping of one channel session (offsets agreed at the handshake)."""

    def __init__(self, owner: WegmanCarter, base: int, limit: int, pad: bytes) -> None:
        self._owner = owner
        self.base, self.limit = base, limit
        self._pad = pad
        self._key = int.from_bytes(pad[:UNIT], "big") % P or 1
        self._reserved_to = base

    def __repr__(self) -> str:
        return f"WegmanCarterSession(base={self.base}, limit={self.limit}, <pad>)"

    def unit(self, direction: str, seq: int) -> int:
        first = direction == self._owner.first_direction
        return self.base + 2 * (seq - 1) + (0 if first else 1)

    def has_pad(self, direction: str, seq: int) -> bool:
        return seq >= 1 and self.unit(direction, seq) < self.limit

    def _pad_int(self, direction: str, seq: int) -> int:
        unit = self.unit(direction, seq)
        if not (seq >= 1 and unit < self.limit):
            raise ValueError(f"no pad left for message {seq} ({direction})")
        if unit >= self._reserved_to:
            self._reserved_to = min(self.limit, unit + 2 * self._owner.reserve_messages)
            self._owner.persist(self._reserved_to)
        return int.from_bytes(self._pad[unit * UNIT : (unit + 1) * UNIT], "big") % P

    def _digest(self, direction: str, seq: int, envelope: bytes, body: bytes) -> int:
        head = direction.encode() + b"|" + seq.to_bytes(8, "big") + len(envelope).to_bytes(4, "big")
        return poly_hash(self._key, head + envelope + body)

    def tag(self, direction: str, seq: int, envelope: bytes, body: bytes) -> bytes:
        value = (self._digest(direction, seq, envelope, body) + self._pad_int(direction, seq)) % P
        return value.to_bytes(UNIT, "big")

    def verify(self, direction: str, seq: int, envelope: bytes, body: bytes, tag: bytes) -> bool:
        if len(tag) != UNIT or not self.has_pad(direction, seq):
            return False
        # A receiver burns the pad unit too (it is persisted as used before the comparison).
        return self.tag(direction, seq, envelope, body) == tag


class WegmanCarter:
    """Pad source for a node's channel, backed by its key store (``auth`` blocks)."""

    def __init__(
        self,
        keystore: KeyStore,
        node: str,
        peer: str,
        *,
        min_units: int = 64,
        reserve_messages: int = 1024,
    ) -> None:
        self.keystore = keystore
        self.first_direction = "{}>{}".format(*sorted([node, peer]))
        self.min_units = min_units
        self.reserve_messages = reserve_messages

    def __repr__(self) -> str:
        return f"WegmanCarter({self.keystore!r})"

    def _available(self) -> int:
        return len(self.keystore.auth_pad_bytes()) // UNIT

    def _cursor(self) -> int:
        return max(1, self.keystore.pad_cursor("units"))

    def persist(self, cursor: int) -> None:
        self.keystore.advance_pad_cursor("units", cursor)

    def offer(self) -> dict[str, int]:
        """What this node brings to a handshake."""
        return {"avail": self._available(), "cursor": self._cursor()}

    def agree(self, peer_offer: Any) -> dict[str, int] | None:
        """Binder side: session terms from both offers, or None (stay on HMAC)."""
        if not isinstance(peer_offer, dict):
            return None
        try:
            base = max(self._cursor(), int(peer_offer["cursor"]))
            limit = min(self._available(), int(peer_offer["avail"]))
        except (KeyError, TypeError, ValueError):
            return None
        if limit - base < self.min_units:
            return None
        return {"base": base, "limit": limit}

    def session(self, terms: Any) -> WegmanCarterSession | None:
        """Start a session on agreed terms; refuse terms this node cannot honour."""
        if not isinstance(terms, dict):
            return None
        base, limit = int(terms["base"]), int(terms["limit"])
        pad = self.keystore.auth_pad_bytes()
        if base < self._cursor() or limit > len(pad) // UNIT or limit - base < 1:
            return None
        self.persist(base)
        return WegmanCarterSession(self, base, limit, pad)
