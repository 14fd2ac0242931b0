"""Wegman-Carter authentication of the classical channel by transcript checkpoints.

Design (docs/architecture.md "Classical channel"): every message still carries an HMAC-SHA256
tag under the pre-shared secret (sequence numbers, at-once rejection of a replayed, reordered,
truncated or tampered message). On top of that, in a Wegman-Carter session both ends hash the
whole session transcript, both directions, with an information-theoretic universal hash, and the
messages that commit key (``commit_propose``, ``commit_confirm``, ``commit_status``: the
*checkpoints*) carry, instead of an HMAC, a Wegman-Carter tag over everything sent and received
in the session up to and including the checkpoint itself. A node commits a key block only on a
verified checkpoint, so no key is used before the transcript that produced it is authenticated
(delayed authentication: Fung, Ma, Chau 2010; Kiktenko et al. 2020), and the one-time pad is spent
per checkpoint (two per committed block), not per message.

Hash: polynomial evaluation over GF(p), p = 2^61 - 1, in two lanes with independent keys
(k1, k2). A byte string is one *record*: its length, then 7-byte little-endian chunks, each a
coefficient c < 2^56; Horner ``h = (h + c) * k``. Records are self-delimiting, so a sequence of
records parses uniquely. The checkpoint message is ``M = header || out-records(1..seq) ||
in-records(1..n_in)`` (header: session id, direction, seq, n_in, checkpoint number), and its tag
is ``T_i = h_ki(M) + s_i mod p`` with a fresh pad ``s``. For M != M' of at most L coefficients,
``h_k(M) - h_k(M') - c`` is a nonzero polynomial of degree <= L in k, so one lane is
L/p-almost-Delta-universal and the two lanes together (L/p)^2. The hash key is recycled and only
the pad is consumed (Wegman & Carter 1981; Bennett, Brassard, Robert 1988; key recycling with a
bound linear in the number of tags: Portmann 2014): after N checkpoints the forgery probability
is at most ``N * ((L/p)^2 + 2^-60)`` (the 2^-60 term: a 64-bit pad word masked to 61 bits and
taken mod p is 2^-61-close to uniform per lane).

Pad stream (identical on both nodes): the key bytes of the key-store blocks with status ``auth``
in block order, cut in 16-byte units. Unit 0 is the hash key (two lanes); checkpoint ``c`` (1, 2,
...) of the direction that sorts first uses unit ``base + 2(c-1)``, the other direction
``base + 2(c-1) + 1``; ``base`` is always even, so even units belong to the first direction and
odd ones to the other, whatever the (HMAC-only) handshake said. Each node persists its cursor
beyond a unit before using it (exactly one unit ahead by default: a forced session restart burns
at most the units in flight plus one for parity), so a unit is never used twice, even across
``kill -9``; the hello/welcome agree ``base = max(cursors)`` rounded up to even and ``limit =
min(available)``. Which blocks feed the pad is decided by the commit step (pipeline/commit.py);
an ``auth`` block is never served as key (qnode/keystore.py).

No downgrade (docs/contracts.md §7): once this node's store holds ``min_units`` of pad
(:meth:`WegmanCarter.established`, monotone: ``auth`` blocks are never removed) the channel never
commits key under HMAC alone. The last ``reserve_units`` of a session's pad are a *refill
reserve*: only checkpoints that commit no servable key (a ``refill`` proposal, an ``auth`` or
``refused`` answer) may spend them, so pad can always come back by a block turned into pad.
"""

from __future__ import annotations

import hmac
from collections import OrderedDict
from typing import Any

import numpy as np
from numba import njit

from qnode.keystore import KeyStore

P = (1 << 61) - 1
UNIT = 16  # pad bytes per checkpoint tag (two 64-bit lane words)
TAG_BYTES = 16
CHECKPOINT_TYPES = frozenset({"commit_propose", "commit_confirm", "commit_status"})
ESTABLISH_UNITS = 64  # pad units a store must have held before Wegman-Carter is mandatory
RESERVE_UNITS = 16  # refill reserve: > what one forced session restart can burn (<= 3 units)
_HEADER_DOMAIN = b"qnode-wc-checkpoint/2"
_P = np.uint64(P)
_M32 = np.uint64(0xFFFFFFFF)
_M29 = np.uint64((1 << 29) - 1)


@njit(cache=True, inline="always")
def _mulmod(a, b):  # pragma: no cover - compiled
    """a * b mod 2^61 - 1 for a, b < 2^61, with 64-bit words only."""
    a_lo, a_hi = a & _M32, a >> np.uint64(32)
    b_lo, b_hi = b & _M32, b >> np.uint64(32)
    lo = a_lo * b_lo
    mid = a_lo * b_hi + a_hi * b_lo
    hi = a_hi * b_hi
    # 2^64 = 8 (mod p); mid * 2^32 = (mid >> 29) * 2^61 + (mid & M29) << 32
    r = (hi << np.uint64(3)) + (mid >> np.uint64(29)) + ((mid & _M29) << np.uint64(32))
    r += (lo >> np.uint64(61)) + (lo & _P)
    r = (r & _P) + (r >> np.uint64(61))
    return r - _P if r >= _P else r


@njit(cache=True)
def _absorb(data, k1, k2, h1, h2):  # pragma: no cover - compiled
    """Horner-absorb one record (length, then 7-byte chunks) into both lanes."""
    n = data.size
    c = np.uint64(n)
    h1 = _mulmod((h1 + c) % _P, k1)
    h2 = _mulmod((h2 + c) % _P, k2)
    i = 0
    while i < n:
        c = np.uint64(0)
        end = min(i + 7, n)
        for j in range(end - 1, i - 1, -1):
            c = (c << np.uint64(8)) | np.uint64(data[j])
        h1 = _mulmod((h1 + c) % _P, k1)
        h2 = _mulmod((h2 + c) % _P, k2)
        i = end
    return h1, h2


def record_coefficients(n_bytes: int) -> int:
    """Coefficients one record of ``n_bytes`` adds to a transcript (length + chunks)."""
    return 1 + -(-n_bytes // 7)


class Chain:
    """Running two-lane hash of a sequence of records: ``(h1, h2, n_coefficients)``."""

    __slots__ = ("k1", "k2", "h1", "h2", "n")

    def __init__(self, k1: int, k2: int) -> None:
        self.k1, self.k2 = k1, k2
        self.h1 = self.h2 = self.n = 0

    def absorbed(self, record: bytes) -> tuple[int, int, int]:
        """The state after ``record`` (this chain unchanged)."""
        h1, h2 = _absorb(
            np.frombuffer(record, np.uint8), np.uint64(self.k1), np.uint64(self.k2),
            np.uint64(self.h1), np.uint64(self.h2),
        )  # fmt: skip
        return int(h1), int(h2), self.n + record_coefficients(len(record))

    def absorb(self, record: bytes) -> tuple[int, int, int]:
        self.h1, self.h2, self.n = self.absorbed(record)
        return self.h1, self.h2, self.n


def _pad_word(unit: bytes, lane: int) -> int:
    return (int.from_bytes(unit[8 * lane : 8 * lane + 8], "little") & P) % P


def combine(
    keys: tuple[int, int],
    header: tuple[int, int, int],
    out_state: tuple[int, int, int],
    in_state: tuple[int, int, int],
) -> tuple[int, int]:
    """Hash of ``header || out || in`` from the three parts' states (concatenation rule
    ``H(x || y) = H(x) k^|y| + H(y)``)."""
    lanes = []
    for i, k in enumerate(keys):
        h = header[i] * pow(k, out_state[2] + in_state[2], P)
        h += out_state[i] * pow(k, in_state[2], P) + in_state[i]
        lanes.append(h % P)
    return lanes[0], lanes[1]


class WegmanCarterSession:
    """One channel session's transcripts and pad bookkeeping (terms agreed at the handshake)."""

    def __init__(
        self, owner: WegmanCarter, base: int, limit: int, pad: bytes, sid: bytes, out_dir: str
    ) -> None:
        self._owner = owner
        self.base = base
        self.peer_avail = limit  # units the peer holds (agreed, then from its checkpoints)
        self._pad = pad
        self._keys = (_pad_word(pad[:UNIT], 0), _pad_word(pad[:UNIT], 1))
        self._reserved_to = base
        self.sid, self.out_dir = sid, out_dir
        self.out = Chain(*self._keys)
        self.inn = Chain(*self._keys)
        # my transcript state after each of my seqs (the peer's checkpoint names one as n_in)
        self._out_hist: OrderedDict[int, tuple[int, int, int]] = OrderedDict({0: (0, 0, 0)})
        self.out_seq = self.in_seq = 0
        self.checkpoints_out = self.checkpoints_in = 0
        self.units_used = 0
        self.last_eps = 0.0

    def __repr__(self) -> str:
        return f"WegmanCarterSession(base={self.base}, limit={self.limit}, <pad>)"

    # -- pad ------------------------------------------------------------------------------------
    def own_avail(self, refresh: bool = False) -> int:
        """Pad units this node holds (re-read from the key store when ``refresh``: new ``auth``
        blocks extend a running session, so it never has to restart for pad)."""
        if refresh and self._owner.keystore.auth_pad_len() > len(self._pad):
            pad = self._owner.keystore.auth_pad_bytes()
            # the stream only grows at its end (KeyStore.auth_pad_bytes); should it ever not,
            # keep the pad this session started with rather than let a unit name new bytes
            if pad.startswith(self._pad):
                self._pad = pad
        return len(self._pad) // UNIT

    @property
    def limit(self) -> int:
        """Units usable by a sender: held by both nodes as far as this one knows."""
        return min(self.own_avail(), self.peer_avail)

    def unit(self, direction: str, checkpoint: int) -> int:
        first = direction == self._owner.first_direction
        return self.base + 2 * (checkpoint - 1) + (0 if first else 1)

    def has_pad(self, direction: str, checkpoint: int) -> bool:
        """Whether this node may use the unit of ``checkpoint`` (to send: both hold it; to
        verify: this node holds it)."""
        if checkpoint < 1:
            return False
        unit = self.unit(direction, checkpoint)
        if unit >= self.own_avail():
            self.own_avail(refresh=True)
        bound = self.limit if direction == self.out_dir else self.own_avail()
        return unit < bound

    def units_left(self) -> int:
        """Checkpoint tags this node can still send in this session with the pad known now."""
        nxt = self.unit(self.out_dir, self.checkpoints_out + 1)
        return max(0, (self.limit - nxt + 1) // 2)

    def in_reserve(self, checkpoint: int) -> bool:
        """Whether my ``checkpoint`` would spend a unit of the refill reserve (the last
        ``reserve_units`` units both nodes hold): only a refill may do that."""
        self.own_avail(refresh=True)
        return self.unit(self.out_dir, checkpoint) >= self.limit - self._owner.reserve_units

    def _take_pad(self, direction: str, checkpoint: int) -> bytes:
        if not self.has_pad(direction, checkpoint):
            raise ValueError(f"no pad left for checkpoint {checkpoint} ({direction})")
        unit = self.unit(direction, checkpoint)
        if unit >= self._reserved_to:  # persisted before use: never reused, even after kill -9
            self._reserved_to = unit + 2 * self._owner.reserve_checkpoints - 1
            self._owner.persist(self._reserved_to)
        self.units_used += 1
        return self._pad[unit * UNIT : (unit + 1) * UNIT]

    # -- transcripts ----------------------------------------------------------------------------
    def _header(self, direction: str, seq: int, n_in: int, checkpoint: int) -> tuple[int, int, int]:
        data = b"|".join(
            [_HEADER_DOMAIN, self.sid, direction.encode()]
            + [x.to_bytes(8, "little") for x in (seq, n_in, checkpoint)]
        )
        return Chain(*self._keys).absorb(data)

    def _tag(self, header, out_state, in_state, pad: bytes) -> bytes:
        lanes = combine(self._keys, header, out_state, in_state)
        n = header[2] + out_state[2] + in_state[2]
        self.last_eps = (n / P) ** 2 + 2.0**-60
        return b"".join(((h + _pad_word(pad, i)) % P).to_bytes(8, "little")
                        for i, h in enumerate(lanes))  # fmt: skip

    def sent(self, seq: int, record: bytes) -> None:
        """A plain (HMAC) message of mine went out: extend my transcript."""
        self.out_seq = seq
        self._out_hist[seq] = self.out.absorb(record)
        while len(self._out_hist) > self._owner.history:
            self._out_hist.popitem(last=False)

    def received(self, seq: int, record: bytes) -> None:
        """A plain message of the peer was accepted (in order): extend the peer's transcript."""
        self.in_seq = seq
        self.inn.absorb(record)

    def next_checkpoint(self) -> int:
        return self.checkpoints_out + 1

    def checkpoint_tag(self, seq: int, record: bytes, n_in: int, checkpoint: int) -> bytes:
        """Tag of my checkpoint ``seq`` (its record already final); extends my transcript."""
        if checkpoint != self.checkpoints_out + 1 or n_in != self.in_seq:
            raise ValueError("checkpoint out of order")
        pad = self._take_pad(self.out_dir, checkpoint)
        self.sent(seq, record)
        self.checkpoints_out = checkpoint
        header = self._header(self.out_dir, seq, n_in, checkpoint)
        return self._tag(header, self._out_hist[seq], (self.inn.h1, self.inn.h2, self.inn.n), pad)

    def verify_checkpoint(
        self,
        direction: str,
        seq: int,
        record: bytes,
        n_in: int,
        checkpoint: int,
        tag: bytes,
        peer_avail: int = 0,
    ) -> bool:
        """Check the peer's checkpoint against my view of both transcripts; extend on success."""
        if not all(type(x) is int for x in (seq, n_in, checkpoint, peer_avail)):
            return False
        if (
            len(tag) != TAG_BYTES
            or seq != self.in_seq + 1
            or checkpoint != self.checkpoints_in + 1
            or n_in not in self._out_hist
            or not self.has_pad(direction, checkpoint)
        ):
            return False
        pad = self._take_pad(direction, checkpoint)  # burnt whatever the outcome
        self.checkpoints_in = checkpoint
        peer_out = self.inn.absorbed(record)
        header = self._header(direction, seq, n_in, checkpoint)
        expected = self._tag(header, peer_out, self._out_hist[n_in], pad)
        if not hmac.compare_digest(expected, tag):  # constant time, as for the HMAC tags
            return False
        self.inn.h1, self.inn.h2, self.inn.n = peer_out
        self.in_seq = seq
        self.peer_avail = max(self.peer_avail, int(peer_avail))
        for old in [s for s in self._out_hist if s < n_in]:  # the peer never names these again
            del self._out_hist[old]
        return True


class WegmanCarter:
    """Pad source for a node's channel, backed by its key store (``auth`` blocks)."""

    checkpoint_types = CHECKPOINT_TYPES

    def __init__(
        self,
        keystore: KeyStore,
        node: str,
        peer: str,
        *,
        min_units: int = ESTABLISH_UNITS,
        reserve_checkpoints: int = 1,
        reserve_units: int = RESERVE_UNITS,
        history: int = 1 << 16,
    ) -> None:
        self.keystore = keystore
        self.first_direction = "{}>{}".format(*sorted([node, peer]))
        self.min_units = min_units
        self.reserve_checkpoints = max(1, reserve_checkpoints)
        self.reserve_units = reserve_units
        self.history = history
        self._established = False

    def __repr__(self) -> str:
        return f"WegmanCarter({self.keystore!r})"

    def _available(self) -> int:
        return self.keystore.auth_pad_len() // UNIT

    def _cursor(self) -> int:
        return max(1, self.keystore.pad_cursor("units"))

    def units_left(self) -> int:
        """Pad units not yet reserved by this node."""
        return max(0, self._available() - self._cursor())

    def persist(self, cursor: int) -> None:
        self.keystore.advance_pad_cursor("units", cursor)

    def established(self) -> bool:
        """Whether this node has ever held ``min_units`` of pad. Monotone and durable: the first
        time it holds, the key store records it (``node_state``), and the mark alone keeps the
        node established after a restart, whatever pad is left. From then on no key is
        committed under HMAC alone, and ``auth = "hmac"`` is refused at start-up
        (:func:`qnode.config.check_auth_downgrade`)."""
        if not self._established:
            if self.keystore.wc_established_ns() is not None:
                self._established = True
            elif self._available() >= self.min_units:
                self.keystore.mark_wc_established()
                self._established = True
        return self._established

    def offer(self) -> dict[str, Any]:
        """What this node brings to a handshake."""
        return {"avail": self._available(), "cursor": self._cursor(), "est": self.established()}

    def agree(self, peer_offer: Any) -> dict[str, int] | None:
        """Binder side: session terms from both offers, or None (stay on HMAC)."""
        if not isinstance(peer_offer, dict):
            return None
        try:
            base = max(self._cursor(), int(peer_offer["cursor"]))
            limit = min(self._available(), int(peer_offer["avail"]))
        except (KeyError, TypeError, ValueError):
            return None
        base += base % 2  # even: the unit's parity names its direction across all sessions
        # before the pad is established, wait for enough of it; afterwards any pad left (even
        # the refill reserve alone) is better than a session that can commit nothing
        if limit - base < (2 if self.established() else self.min_units):
            return None
        return {"base": base, "limit": limit}

    def session(self, terms: Any, sid: bytes, out_dir: str) -> WegmanCarterSession | None:
        """Start a session on agreed terms; refuse terms this node cannot honour."""
        if not isinstance(terms, dict):
            return None
        try:
            base, limit = int(terms["base"]), int(terms["limit"])
        except (KeyError, TypeError, ValueError):
            return None
        pad = self.keystore.auth_pad_bytes()
        if base < self._cursor() or base % 2 or limit > len(pad) // UNIT or limit - base < 1:
            return None
        self.persist(base)
        return WegmanCarterSession(self, base, limit, pad, sid, out_dir)
