"""Authenticated classical channel between Alice's and Bob's post-processing processes.

Pattern (ZeroMQ guide): ROUTER (the binding side) / DEALER (the connecting side) over TCP, with
heartbeats for liveness ("Paranoid Pirate" style: silence for ``timeout_s`` = peer lost).

Wire frames (after the ROUTER identity): ``[envelope, body, tag]``.
- ``envelope`` msgpack ``{"v": 1, "sid", "dir", "seq", "kind", "alg"}``; ``kind`` is ``hello``,
  ``welcome``, ``hb``, ``msg`` or ``nosession`` (the binder's authenticated notice that it holds
  no session with that id, e.g. after a restart, so the connector says hello at once); ``dir`` names the direction (``alice>bob``) so a message can
  never be reflected back to its sender.
- ``body`` msgpack: the stage message (a dict with ``type`` and its block/frame identifiers).
- ``tag`` authenticates (envelope, body): HMAC-SHA256 under the pre-shared secret. In a
  Wegman-Carter session (:mod:`qnode.wegman_carter`, once both nodes hold pad blocks) both ends
  also hash the whole session transcript, and the key-commit messages (*checkpoints*,
  ``alg: "wc"``, envelope also ``ck``, ``nin``, ``av``) carry a Wegman-Carter tag over everything
  sent and received in the session up to and including themselves instead of an HMAC; a commit
  message without one is rejected. Any message lost or rejected inside such a session would
  leave the two transcripts different, so it also ends the session (a new one starts at once).
- No downgrade: once this node has held pad (:meth:`WegmanCarter.established`), a commit message
  under HMAC alone is neither sent nor accepted (``rejected_downgrade``, ``commits_held``); when
  no pad is left the channel reports ``wc_pad_exhausted`` (event ``pad_exhausted``) and commits
  wait until pad exists again; the refill reserve (the last units) carries only checkpoints that
  commit no servable key (:func:`commits_no_key`), so a block turned into pad can restore it.

Sessions: the connector sends ``hello`` with a fresh nonce, the binder answers ``welcome`` with its
own; the session id is ``sha256(n_c || n_b)[:16]``; sequence numbers restart at 1 per direction.
A message from another session, with a bad tag (tampered or truncated), or with a sequence number
not above the last one accepted (replayed or reordered) is rejected and counted; a sequence jump
(a message dropped on the way) is accepted but reported. Each such integrity event and each
session change is handed to the caller (:meth:`ClassicalChannel.take_events`), which drops the
blocks in flight on both sides (``abort`` by block identifier). A lost peer leaves all state
(the key store, counters) as it is; the connector keeps saying ``hello`` until the peer is back.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from dataclasses import dataclass, field
from typing import Any

import zmq

from qnode.codec import CodecError, packb, unpackb

TAG_BYTES = 32
UNIT = 16  # one-time pad bytes per Wegman-Carter checkpoint (qnode.wegman_carter.UNIT)


def _record(envelope: bytes, body: bytes) -> bytes:
    """One message as it enters the session transcript (envelope length-prefixed)."""
    return len(envelope).to_bytes(4, "big") + envelope + body


def commits_no_key(message: dict[str, Any]) -> bool:
    """A commit message that may spend the refill reserve: a proposal marked ``refill`` (Alice
    turns it into pad or refuses it), an answer that commits no block as servable key, or a
    ``commit_status``: it settles blocks already committed on the sender's side (at most the
    few Bob holds pending, once per session), and a pending block holds back every pad block
    after it from Bob's pad stream (``KeyStore.auth_pad_bytes``), so refill needs it settled."""
    kind = message.get("type")
    if kind == "commit_propose":
        return message.get("refill") is True
    if kind == "commit_confirm":
        return message.get("status") in ("auth", "refused")
    return True


class ChannelError(RuntimeError):
    """The channel cannot send (no session with the peer, or the pad ran out)."""


@dataclass
class ChannelStats:
    sent: int = 0
    received: int = 0
    heartbeats_sent: int = 0
    rejected_malformed: int = 0
    rejected_auth: int = 0
    rejected_replay: int = 0
    rejected_session: int = 0
    gaps: int = 0
    sessions: int = 0
    peer_lost: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    wc_sessions: int = 0
    wc_checkpoints_sent: int = 0
    wc_checkpoints_verified: int = 0
    wc_pad_bits_used: int = 0
    wc_pad_bits_left: int = 0
    wc_eps: float = 0.0
    wc_established: bool = False
    wc_pad_low: bool = False
    wc_pad_exhausted: bool = False
    rejected_downgrade: int = 0
    commits_held: int = 0

    def rejected(self) -> int:
        return (
            self.rejected_malformed
            + self.rejected_auth
            + self.rejected_replay
            + self.rejected_session
        )


@dataclass
class ChannelEvent:
    """Something the post-processing loop must react to (drop blocks in flight)."""

    kind: str  # "connected", "peer_lost", "rejected", "gap"
    detail: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


class HmacAuth:
    """HMAC-SHA256 over (direction, session, sequence number, message bytes)."""

    name = "hmac"

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("the channel secret must be at least 16 bytes")
        self._secret = secret

    def __repr__(self) -> str:
        return "HmacAuth(<secret>)"

    def tag(self, direction: str, seq: int, envelope: bytes, body: bytes) -> bytes:
        mac = hmac.new(self._secret, digestmod=hashlib.sha256)
        mac.update(direction.encode() + b"|" + seq.to_bytes(8, "big"))
        mac.update(len(envelope).to_bytes(4, "big") + envelope + body)
        return mac.digest()

    def verify(self, direction: str, seq: int, envelope: bytes, body: bytes, tag: bytes) -> bool:
        return hmac.compare_digest(self.tag(direction, seq, envelope, body), tag)


def load_secret(path: str | None = None, env: str | None = None) -> bytes:
    """Read the pre-shared secret from a file or an environment variable (hex or raw bytes)."""
    if path:
        data = open(path, "rb").read().strip()
    elif env:
        value = os.environ.get(env)
        if not value:
            raise ValueError(f"environment variable {env} is not set")
        data = value.encode().strip()
    else:
        raise ValueError("no channel secret: give secret_file or secret_env")
    try:
        data = bytes.fromhex(data.decode())
    except (ValueError, UnicodeDecodeError):
        pass
    if len(data) < 16:
        raise ValueError("the channel secret must be at least 16 bytes")
    return data


class ClassicalChannel:
    """One node's end of the authenticated channel; poll-driven, no threads.

    ``bind=True`` listens (ROUTER), else connects (DEALER). Call :meth:`poll` (or :meth:`recv`)
    regularly: it receives, verifies, sends heartbeats and hellos, and detects a lost peer.
    """

    def __init__(
        self,
        node: str,
        peer: str,
        endpoint: str,
        secret: bytes,
        *,
        bind: bool,
        heartbeat_s: float = 0.5,
        timeout_s: float = 3.0,
        context: zmq.Context | None = None,
        wegman_carter: Any | None = None,
        sndhwm: int = 1000,
    ) -> None:
        self.node, self.peer, self.bind = node, peer, bind
        self._hmac = HmacAuth(secret)
        self._wc = wegman_carter
        self.heartbeat_s, self.timeout_s = heartbeat_s, timeout_s
        self._ctx = context or zmq.Context.instance()
        self._endpoint = endpoint
        self._sndhwm = sndhwm
        self.stats = ChannelStats()
        self._events: list[ChannelEvent] = []
        self._inbox: list[dict[str, Any]] = []
        self._sid: bytes | None = None
        self._peer_identity: bytes | None = None
        self._send_seq = 0
        self._recv_seq = 0
        self._last_rx = self._last_tx = 0.0
        self._hello_nonce: bytes | None = None
        self._seen_hellos: set[bytes] = set()
        self._told_stale: set[bytes] = set()
        self._wc_session: Any | None = None
        self._peer_established = False  # from the handshake: liveness hint only, never trusted
        self._sock = self._make_socket()
        self.endpoint = self._sock.last_endpoint.decode() if bind else endpoint

    def __repr__(self) -> str:
        return f"ClassicalChannel({self.node}->{self.peer}, {self._endpoint}, <secret>)"

    # -- sockets --------------------------------------------------------------------------------
    def _make_socket(self) -> zmq.Socket:
        sock = self._ctx.socket(zmq.ROUTER if self.bind else zmq.DEALER)
        sock.linger = 0
        sock.sndhwm = self._sndhwm
        sock.rcvhwm = self._sndhwm
        if self.bind:
            sock.router_mandatory = False
            sock.bind(self._endpoint)
        else:
            sock.connect(self._endpoint)
        return sock

    @property
    def connected(self) -> bool:
        return self._sid is not None

    @property
    def session(self) -> bytes | None:
        return self._sid

    @property
    def mode(self) -> str:
        """``wegman-carter`` while the session runs on one-time pads, else ``hmac``."""
        return "wegman-carter" if self._wc_session is not None else "hmac"

    def renegotiate(self) -> bool:
        """Connector: start a new session now (e.g. Wegman-Carter pads became available).

        The current session ends like a lost peer (the caller drops what is in flight).
        Returns False on the binding side, which cannot start a session.
        """
        if self.bind:
            return False
        self._lose_peer("renegotiating the session")
        return True

    @property
    def out_dir(self) -> str:
        return f"{self.node}>{self.peer}"

    @property
    def in_dir(self) -> str:
        return f"{self.peer}>{self.node}"

    # -- sending ----------------------------------------------------------------------------------
    def _raw_send(self, frames: list[bytes]) -> None:
        if self.bind:
            if self._peer_identity is None:
                raise ChannelError("no peer has said hello yet")
            frames = [self._peer_identity, *frames]
        try:
            self._sock.send_multipart(frames, flags=zmq.NOBLOCK)
        except zmq.Again as exc:
            raise ChannelError("peer is not draining the channel (send queue full)") from exc
        self._last_tx = time.monotonic()

    def _send_kind(self, kind: str, body_obj: Any, sid: bytes, seq: int, alg: str) -> None:
        env: dict[str, Any] = {
            "v": 1, "sid": sid, "dir": self.out_dir, "seq": seq, "kind": kind, "alg": alg
        }  # fmt: skip
        wc = self._wc_session if kind in ("msg", "hb") else None
        if alg == "wc":
            env.update(ck=wc.next_checkpoint(), nin=self._recv_seq, av=wc.own_avail(refresh=True))
        envelope = packb(env)
        body = packb(body_obj)
        if alg == "wc":
            tag = wc.checkpoint_tag(seq, _record(envelope, body), self._recv_seq, env["ck"])
            self._wc_counted(sent=True)
        else:
            tag = self._hmac.tag(self.out_dir, seq, envelope, body)
            if wc is not None:
                wc.sent(seq, _record(envelope, body))
        self._raw_send([envelope, body, tag])
        self.stats.bytes_sent += len(envelope) + len(body)

    def _wc_counted(self, sent: bool) -> None:
        wc = self._wc_session
        if sent:
            self.stats.wc_checkpoints_sent += 1
        else:
            self.stats.wc_checkpoints_verified += 1
        self.stats.wc_pad_bits_used += 8 * UNIT
        self.stats.wc_pad_bits_left = 2 * 8 * UNIT * wc.units_left()
        self.stats.wc_eps = wc.last_eps
        self._update_pad_state()

    def send(self, message: dict[str, Any]) -> None:
        """Send one stage message to the peer; raise ChannelError if there is no session.

        In a Wegman-Carter session a message whose type is a checkpoint type goes out as a
        checkpoint (one pad unit); if the pad is exhausted the session restarts.
        """
        if "type" not in message:
            raise ValueError("a peer message needs a 'type'")
        if self._sid is None:
            raise ChannelError(f"no session with {self.peer}")
        alg = "hmac"
        if self._wc is not None and message["type"] in self._wc.checkpoint_types:
            self._check_commit_allowed(message)
            alg = "wc" if self._wc_session is not None else "hmac"
        self._send_seq += 1
        try:
            self._send_kind("msg", message, self._sid, self._send_seq, alg)
        except ValueError as exc:  # checkpoint bookkeeping out of step: never reuse a pad unit
            if alg != "wc":
                raise
            self._lose_peer(f"Wegman-Carter checkpoint refused: {exc}")
            raise ChannelError(str(exc)) from exc
        self.stats.sent += 1

    def _check_commit_allowed(self, message: dict[str, Any]) -> None:
        """Raise ChannelError (the commit is held) unless this commit message may go out: as a
        checkpoint with a unit outside the refill reserve, a reserve unit only for a message
        that commits no servable key, and under HMAC only before the pad is established."""
        wc = self._wc_session
        if wc is None:
            if self._wc.established() and self._peer_established:
                self._hold("no Wegman-Carter pad in this session; commit held (no HMAC downgrade)")
            return  # bootstrap: the peer has no pad yet, it accepts HMAC commits
        ck = wc.next_checkpoint()
        if not wc.has_pad(self.out_dir, ck):
            self._hold("Wegman-Carter pad exhausted; commit held")
        if wc.in_reserve(ck) and not commits_no_key(message):
            self._hold("only the refill reserve is left; key commit held")

    def _hold(self, reason: str) -> None:
        self.stats.commits_held += 1
        self._update_pad_state()
        raise ChannelError(reason)

    def _update_pad_state(self) -> None:
        """Telemetry flags of the pad; an event when the pad runs out (commits held)."""
        if self._wc is None or self._sid is None:
            return
        est = self._wc.established()
        wc = self._wc_session
        if wc is None:
            low = exhausted = est
        else:
            ck = wc.next_checkpoint()
            exhausted = est and not wc.has_pad(self.out_dir, ck)
            low = exhausted or (est and wc.in_reserve(ck))
        if exhausted and not self.stats.wc_pad_exhausted:
            self._events.append(ChannelEvent("pad_exhausted", "no Wegman-Carter pad: commits held"))
        self.stats.wc_established = est
        self.stats.wc_pad_low, self.stats.wc_pad_exhausted = low, exhausted

    def _send_heartbeat(self) -> None:
        self._send_seq += 1
        self._send_kind("hb", {}, self._sid, self._send_seq, "hmac")
        self.stats.heartbeats_sent += 1
        self._update_pad_state()  # new pad committed since the last checkpoint shows up here

    def _send_hello(self) -> None:
        self._hello_nonce = os.urandom(16)
        body = {"nonce": self._hello_nonce, "node": self.node}
        if self._wc is not None:
            body["wc"] = self._wc.offer()
        self._send_kind("hello", body, b"", 0, "hmac")

    # -- receiving --------------------------------------------------------------------------------
    def poll(self, timeout_ms: int = 0) -> None:
        """Receive and verify whatever arrived, keep the session alive (heartbeats, hellos)."""
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            self._housekeeping()
            left = max(0, int((deadline - time.monotonic()) * 1000))
            wait = min(left, int(self.heartbeat_s * 1000))
            if self._sock.poll(wait):
                frames = self._sock.recv_multipart()
                self._handle(frames)
                # drain without blocking
                while self._sock.poll(0):
                    self._handle(self._sock.recv_multipart())
                return
            if time.monotonic() >= deadline:
                return

    def recv(self, timeout_ms: int = 0) -> dict[str, Any] | None:
        """Next verified stage message, or None after ``timeout_ms``."""
        deadline = time.monotonic() + timeout_ms / 1000
        while not self._inbox:
            left = int((deadline - time.monotonic()) * 1000)
            self.poll(max(0, left))
            if self._inbox or time.monotonic() >= deadline:
                break
        return self._inbox.pop(0) if self._inbox else None

    def take_events(self) -> list[ChannelEvent]:
        events, self._events = self._events, []
        return events

    def _housekeeping(self) -> None:
        now = time.monotonic()
        if self._sid is not None:
            if now - self._last_rx > self.timeout_s:
                self._lose_peer(f"no message for {self.timeout_s} s")
            elif now - self._last_tx > self.heartbeat_s:
                try:
                    self._send_heartbeat()
                except ChannelError:
                    pass
        elif not self.bind and now - self._last_tx > self.heartbeat_s:
            self._send_hello()

    def _lose_peer(self, reason: str) -> None:
        if self._sid is not None:
            self.stats.peer_lost += 1
            self._events.append(ChannelEvent("peer_lost", reason))
        self._sid = None
        self._wc_session = None
        self.stats.wc_pad_bits_left = 0  # no session: nothing to spend (docs/telemetry.md)
        if not self.bind:
            # A fresh socket forgets messages queued for the dead session.
            self._sock.close(0)
            self._sock = self._make_socket()
            self._last_tx = 0.0

    def _reject(self, counter: str, detail: str) -> None:
        setattr(self.stats, counter, getattr(self.stats, counter) + 1)
        # Stale messages of an earlier session are expected after a reconnection: counted, but
        # no event (a message of this session that goes missing shows up as a sequence gap).
        if counter != "rejected_session":
            self._events.append(ChannelEvent("rejected", detail, {"counter": counter}))

    def _integrity_failure(self, detail: str, seq: int) -> None:
        """A message of this session failed authentication: rejected and counted; in a
        Wegman-Carter session the transcripts now differ, so the session also ends."""
        self._reject("rejected_auth", detail)
        if self._wc_session is not None and seq > self._recv_seq:
            self._lose_peer("a message of this session failed authentication; new session")

    def _handle(self, frames: list[bytes]) -> None:
        identity = None
        if self.bind:
            identity, frames = frames[0], frames[1:]
        if len(frames) != 3:
            return self._reject("rejected_malformed", f"{len(frames)} frames")
        envelope, body, tag = (bytes(f) for f in frames)
        try:
            env = unpackb(envelope)
            sid, direction, seq, kind = env["sid"], env["dir"], env["seq"], env["kind"]
            alg = env.get("alg", "hmac")
            if not isinstance(seq, int) or not isinstance(sid, bytes):
                raise CodecError("bad envelope types")
        except (CodecError, KeyError, TypeError):
            return self._reject("rejected_malformed", "envelope does not decode")
        if direction != self.in_dir:
            return self._reject("rejected_auth", f"direction {direction!r}")
        if kind == "hello":
            return self._on_hello(identity, envelope, body, tag)
        if kind == "welcome":
            return self._on_welcome(envelope, body, tag, sid)
        if kind == "nosession":
            return self._on_nosession(envelope, body, tag, sid)
        if self._sid is None or sid != self._sid or (self.bind and identity != self._peer_identity):
            if self.bind and sid and sid not in self._told_stale:
                # Tell the connector (authenticated) that we hold no such session, so it says
                # hello at once instead of waiting for its timeout (e.g. after we restarted).
                self._told_stale.add(sid)
                saved = self._peer_identity
                self._peer_identity = identity
                try:
                    self._send_kind("nosession", {}, sid, 0, "hmac")
                except ChannelError:
                    pass
                self._peer_identity = saved
            return self._reject("rejected_session", "message from another session")
        wc = self._wc_session
        if alg == "wc" and wc is None:
            return self._reject("rejected_auth", f"Wegman-Carter tag outside such a session {seq}")
        if alg != "wc" and not self._hmac.verify(direction, seq, envelope, body, tag):
            return self._integrity_failure(f"bad tag on seq {seq}", seq)
        if seq <= self._recv_seq:
            return self._reject("rejected_replay", f"seq {seq} after {self._recv_seq}")
        if seq > self._recv_seq + 1:
            if alg == "wc":  # a checkpoint after a gap cannot match: the transcripts differ
                return self._integrity_failure(f"checkpoint {seq} after a gap", seq)
            self.stats.gaps += seq - self._recv_seq - 1
            self._events.append(ChannelEvent("gap", f"{seq - self._recv_seq - 1} lost"))
            if wc is not None:  # the transcripts differ from here on: no checkpoint can pass
                return self._lose_peer("a message of this session was lost; new session")
        message: Any = None
        decoded = False
        if kind != "hb":
            try:
                message, decoded = unpackb(body), True
            except CodecError:
                pass
        if alg == "wc":
            record = _record(envelope, body)
            args = (env.get("nin", -1), env.get("ck", -1), tag, env.get("av", 0))
            if not wc.verify_checkpoint(direction, seq, record, *args):
                return self._integrity_failure(f"bad Wegman-Carter tag on seq {seq}", seq)
            self._wc_counted(sent=False)
        elif wc is not None:
            if isinstance(message, dict) and message.get("type") in self._wc.checkpoint_types:
                return self._integrity_failure(f"{message['type']} without its checkpoint", seq)
            wc.received(seq, _record(envelope, body))
        downgrade = (
            alg != "wc"
            and self._wc is not None
            and isinstance(message, dict)
            and message.get("type") in self._wc.checkpoint_types
            and self._wc.established()
        )
        self._recv_seq = seq
        self._last_rx = time.monotonic()
        self.stats.bytes_received += len(envelope) + len(body)
        if kind == "hb":
            return None
        if not decoded:
            return self._reject("rejected_malformed", "body does not decode")
        if not isinstance(message, dict) or "type" not in message:
            return self._reject("rejected_malformed", "body is not a stage message")
        if downgrade:  # authentic under HMAC, but key is never committed on HMAC alone any more
            self.stats.rejected_downgrade += 1
            self._update_pad_state()
            return None
        self.stats.received += 1
        self._inbox.append(message)
        return None

    def _on_hello(self, identity: bytes | None, envelope: bytes, body: bytes, tag: bytes) -> None:
        if not self.bind:
            return self._reject("rejected_session", "hello sent to the connecting side")
        if not self._hmac.verify(self.in_dir, 0, envelope, body, tag):
            return self._reject("rejected_auth", "bad hello tag")
        hello = unpackb(body)
        nonce = hello.get("nonce")
        if not isinstance(nonce, bytes) or nonce in self._seen_hellos:
            return self._reject("rejected_replay", "replayed hello")
        self._seen_hellos.add(nonce)
        offer = hello.get("wc")
        self._peer_established = isinstance(offer, dict) and offer.get("est") is True
        if self._sid is not None:
            self._lose_peer("peer started a new session")
        my_nonce = os.urandom(16)
        sid = hashlib.sha256(nonce + my_nonce).digest()[:16]
        self._peer_identity = identity
        reply: dict[str, Any] = {"nonce_c": nonce, "nonce_b": my_nonce, "node": self.node}
        wc_terms = None
        if self._wc is not None and "wc" in hello:
            wc_terms = self._wc.agree(hello["wc"])
            reply["wc"] = wc_terms
            reply["wc_est"] = self._wc.established()
        self._send_kind("welcome", reply, sid, 0, "hmac")
        self._start_session(sid, wc_terms)

    def _on_nosession(self, envelope: bytes, body: bytes, tag: bytes, sid: bytes) -> None:
        if self.bind or not self._hmac.verify(self.in_dir, 0, envelope, body, tag):
            return self._reject("rejected_auth", "bad nosession notice")
        if self._sid is not None and sid == self._sid:
            self._lose_peer("the peer holds no session (it restarted)")
        return None

    def _on_welcome(self, envelope: bytes, body: bytes, tag: bytes, sid: bytes) -> None:
        if self.bind:
            return self._reject("rejected_session", "welcome sent to the binding side")
        if not self._hmac.verify(self.in_dir, 0, envelope, body, tag):
            return self._reject("rejected_auth", "bad welcome tag")
        welcome = unpackb(body)
        nonce_c, nonce_b = welcome.get("nonce_c"), welcome.get("nonce_b")
        if (
            self._hello_nonce is None
            or nonce_c != self._hello_nonce
            or not isinstance(nonce_b, bytes)
        ):
            return self._reject("rejected_replay", "welcome for another hello")
        if sid != hashlib.sha256(nonce_c + nonce_b).digest()[:16]:
            return self._reject("rejected_auth", "session id does not match the nonces")
        self._hello_nonce = None
        wc_terms = welcome.get("wc") if self._wc is not None else None
        self._peer_established = welcome.get("wc_est") is True
        self._start_session(sid, wc_terms)

    def _start_session(self, sid: bytes, wc_terms: dict[str, Any] | None) -> None:
        self._sid = sid
        self._send_seq = self._recv_seq = 0
        self._last_rx = time.monotonic()
        self._wc_session = (
            self._wc.session(wc_terms, sid, self.out_dir) if (self._wc and wc_terms) else None
        )
        self.stats.sessions += 1
        self.stats.wc_pad_bits_left = 0  # an HMAC session spends no pad
        if self._wc_session is not None:
            self.stats.wc_sessions += 1
            self.stats.wc_pad_bits_left = 2 * 8 * UNIT * self._wc_session.units_left()
        mode = "wegman-carter" if self._wc_session is not None else "hmac"
        self._events.append(ChannelEvent("connected", mode, {"session": sid.hex()}))
        self._update_pad_state()

    def close(self) -> None:
        self._sock.close(0)
