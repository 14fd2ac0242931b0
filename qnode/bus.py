"""Telemetry bus: topics, headers, PUB/SUB helpers and a last-value cache (docs/contracts.md §4).

Patterns from the ZeroMQ guide:
- PUB/SUB for telemetry (lossy by design: a PUB drops at its high-water mark), with a
  per-publisher sequence number in every header so subscribers count the gaps.
- An XSUB/XPUB proxy per node (:class:`TelemetryHub`): the node's processes connect their PUB
  sockets to one internal endpoint and subscribers reach the whole node on one public endpoint.
- The "Clone" pattern (zguide ch. 5): the hub captures every message into a last-value cache
  keyed by topic and serves it on a ROUTER snapshot socket, so a late joiner subscribes first,
  then asks ``ICANHAZ?`` for the current state and drops updates older than the snapshot.

Frames are ``[topic, header, payload]``: topic is UTF-8 ``<stratum>/<plane>/<node>/<object>/``
(trailing ``/`` so prefix subscriptions cannot overmatch), header and payload are msgpack; the
header is ``{"schema": 1, "node", "src", "seq", "ts_ns"}`` (``src`` names the publishing process).
Key material never goes on this bus.

CurveZMQ: pass ``curve_server_keys=(public, secret)`` (and optionally the allowed client public
keys) to the hub, ``curve_client_keys=(public, secret, server_public)`` to a subscriber; a ZAP
handler (pyzmq's ThreadAuthenticator) then admits only listed clients.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import zmq

from qnode.codec import CodecError, packb, unpackb

SCHEMA = 1
STRATA = ("con", "qfs", "svc")
PLANES = ("telemetry", "resource", "control", "mgmt")
_SEGMENT = re.compile(r"^[A-Za-z0-9_.\-]+$")
_SNAPSHOT_REQUEST = b"ICANHAZ?"
_SNAPSHOT_END = b"KTHXBAI"


class TopicError(ValueError):
    """A topic that does not follow ``<stratum>/<plane>/<node>/<object>/``."""


def topic(stratum: str, plane: str, node: str, obj: str) -> str:
    """Build and validate a topic; ``obj`` may have several segments (``link/block``)."""
    if stratum not in STRATA:
        raise TopicError(f"stratum {stratum!r} not in {STRATA}")
    if plane not in PLANES:
        raise TopicError(f"plane {plane!r} not in {PLANES}")
    parts = [node, *obj.strip("/").split("/")]
    for part in parts:
        if not _SEGMENT.match(part):
            raise TopicError(f"bad topic segment {part!r}")
    return f"{stratum}/{plane}/{'/'.join(parts)}/"


def parse_topic(text: str) -> tuple[str, str, str, str]:
    """(stratum, plane, node, object) of a topic; raise TopicError if malformed."""
    if not text.endswith("/"):
        raise TopicError(f"topic {text!r} does not end with '/'")
    parts = text[:-1].split("/")
    if len(parts) < 4:
        raise TopicError(f"topic {text!r} has fewer than four segments")
    stratum, plane, node, *obj = parts
    topic(stratum, plane, node, "/".join(obj))
    return stratum, plane, node, "/".join(obj)


@dataclass
class BusMessage:
    topic: str
    header: dict[str, Any]
    payload: dict[str, Any]


def _apply_curve_client(sock: zmq.Socket, keys: tuple[bytes, bytes, bytes] | None) -> None:
    if keys:
        public, secret, server_public = keys
        sock.curve_publickey, sock.curve_secretkey = public, secret
        sock.curve_serverkey = server_public


def _apply_curve_server(sock: zmq.Socket, keys: tuple[bytes, bytes] | None) -> None:
    if keys:
        sock.curve_publickey, sock.curve_secretkey = keys
        sock.curve_server = True


class Publisher:
    """One process's PUB socket with its own sequence numbers.

    ``connect=True`` (the default in a node) connects to a hub's internal endpoint; ``False``
    binds ``endpoint`` itself.
    """

    def __init__(
        self,
        endpoint: str,
        node: str,
        src: str,
        *,
        connect: bool = True,
        context: zmq.Context | None = None,
        sndhwm: int = 10_000,
        curve_server_keys: tuple[bytes, bytes] | None = None,
    ) -> None:
        if not _SEGMENT.match(node) or not _SEGMENT.match(src):
            raise TopicError(f"bad node or source name {node!r}/{src!r}")
        self.node, self.src = node, src
        self.seq = 0
        self._ctx = context or zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.PUB)
        self._sock.sndhwm = sndhwm
        self._sock.linger = 200
        if connect:
            self._sock.connect(endpoint)
        else:
            _apply_curve_server(self._sock, curve_server_keys)
            self._sock.bind(endpoint)
        self.endpoint = self._sock.last_endpoint.decode() if not connect else endpoint

    def publish(self, topic_name: str, payload: dict[str, Any]) -> int:
        """Send one message; return its sequence number. Never blocks (PUB drops at HWM)."""
        self.seq += 1
        header = {
            "schema": SCHEMA,
            "node": self.node,
            "src": self.src,
            "seq": self.seq,
            "ts_ns": time.time_ns(),
        }
        self._sock.send_multipart([topic_name.encode(), packb(header), packb(payload)])
        return self.seq

    def close(self) -> None:
        self._sock.close()


def decode_frames(frames: list[bytes]) -> BusMessage:
    """Decode ``[topic, header, payload]``; raise ValueError (CodecError/TopicError) if malformed."""
    if len(frames) != 3:
        raise ValueError(f"expected 3 frames, got {len(frames)}")
    try:
        topic_text = bytes(frames[0]).decode()
    except UnicodeDecodeError as exc:
        raise ValueError("topic is not UTF-8") from exc
    parse_topic(topic_text)
    header = unpackb(bytes(frames[1]))
    payload = unpackb(bytes(frames[2]))
    if not isinstance(header, dict) or header.get("schema") != SCHEMA:
        raise ValueError("header is not a schema-1 map")
    for name, kind in (("node", str), ("seq", int), ("ts_ns", int)):
        if not isinstance(header.get(name), kind):
            raise ValueError(f"header field {name!r} missing or of the wrong type")
    if not isinstance(payload, dict):
        raise ValueError("payload is not a map")
    return BusMessage(topic_text, header, payload)


@dataclass
class _Stats:
    received: int = 0
    gaps: int = 0
    malformed: int = 0
    restarts: int = 0
    last_seq: dict[tuple[str, str], int] = field(default_factory=dict)


class Subscriber:
    """SUB socket that decodes, validates and counts: gaps per publisher, malformed messages.

    A malformed message is counted and dropped; :meth:`recv` never raises because of one.
    """

    def __init__(
        self,
        endpoint: str,
        topics: Iterable[str] = ("",),
        *,
        context: zmq.Context | None = None,
        rcvhwm: int = 100_000,
        curve_client_keys: tuple[bytes, bytes, bytes] | None = None,
        snapshot_endpoint: str | None = None,
    ) -> None:
        self._ctx = context or zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.SUB)
        self._sock.rcvhwm = rcvhwm
        self._sock.linger = 0
        _apply_curve_client(self._sock, curve_client_keys)
        self._curve = curve_client_keys
        self.topics = list(topics)
        for prefix in self.topics:
            self._sock.setsockopt(zmq.SUBSCRIBE, prefix.encode())
        self._sock.connect(endpoint)
        self.snapshot_endpoint = snapshot_endpoint
        self.stats = _Stats()
        self._floor: dict[tuple[str, str], int] = {}

    @property
    def socket(self) -> zmq.Socket:
        return self._sock

    def _account(self, msg: BusMessage) -> bool:
        """Update gap counters; False if the message is older than the snapshot (drop it)."""
        key = (msg.header["node"], str(msg.header.get("src", "")))
        seq = msg.header["seq"]
        floor = self._floor.get(key)
        if floor is not None:
            if seq <= floor:
                return False
            del self._floor[key]
        last = self.stats.last_seq.get(key)
        if last is not None:
            if seq > last + 1:
                self.stats.gaps += seq - last - 1
            elif seq <= last:
                self.stats.restarts += 1  # the publisher restarted its numbering
        self.stats.last_seq[key] = seq
        return True

    def recv(self, timeout_ms: int | None = None) -> BusMessage | None:
        """Next valid message, or None on timeout. Malformed messages are counted, not raised."""
        deadline = None if timeout_ms is None else time.monotonic() + timeout_ms / 1000
        while True:
            wait = None if deadline is None else max(0, int((deadline - time.monotonic()) * 1000))
            if not self._sock.poll(wait):
                return None
            frames = self._sock.recv_multipart()
            try:
                msg = decode_frames(frames)
            except (ValueError, CodecError):
                self.stats.malformed += 1
                continue
            if self._account(msg):
                self.stats.received += 1
                return msg

    def snapshot(self, prefix: str = "", timeout_ms: int = 2000) -> list[BusMessage]:
        """Clone pattern: fetch the hub's last value per topic; later updates resume after it."""
        if not self.snapshot_endpoint:
            raise RuntimeError("no snapshot endpoint configured")
        sock = self._ctx.socket(zmq.DEALER)
        sock.linger = 0
        _apply_curve_client(sock, self._curve)
        sock.connect(self.snapshot_endpoint)
        try:
            sock.send_multipart([_SNAPSHOT_REQUEST, prefix.encode()])
            out: list[BusMessage] = []
            deadline = time.monotonic() + timeout_ms / 1000
            while True:
                left = int((deadline - time.monotonic()) * 1000)
                if left <= 0 or not sock.poll(left):
                    raise TimeoutError(f"no snapshot from {self.snapshot_endpoint}")
                frames = sock.recv_multipart()
                if frames[0] == _SNAPSHOT_END:
                    break
                try:
                    msg = decode_frames(frames)
                except (ValueError, CodecError):
                    self.stats.malformed += 1
                    continue
                key = (msg.header["node"], str(msg.header.get("src", "")))
                self._floor[key] = max(self._floor.get(key, 0), msg.header["seq"])
                out.append(msg)
            return out
        finally:
            sock.close()

    def close(self) -> None:
        self._sock.close()


class TelemetryHub:
    """A node's telemetry proxy (XSUB -> XPUB) with a last-value cache and snapshot server.

    ``internal`` is where the node's publishers connect; ``public`` is what subscribers (the
    controller, ``qnode telemetry watch``) connect to; ``snapshot`` serves the clone snapshot.
    Runs in two daemon threads of the process that owns it (the node supervisor).
    """

    def __init__(
        self,
        internal: str,
        public: str,
        snapshot: str,
        *,
        context: zmq.Context | None = None,
        curve_server_keys: tuple[bytes, bytes] | None = None,
        curve_allowed_clients: list[bytes] | None = None,
    ) -> None:
        self._ctx = context or zmq.Context.instance()
        self._auth = None
        if curve_server_keys:
            from zmq.auth.thread import ThreadAuthenticator

            self._auth = ThreadAuthenticator(self._ctx)
            self._auth.start()
            if curve_allowed_clients is None:
                self._auth.configure_curve(domain="*", location=zmq.auth.CURVE_ALLOW_ANY)
            else:
                self._auth.configure_curve_callback(
                    domain="*", credentials_provider=_Allowed(curve_allowed_clients)
                )
        self._xsub = self._ctx.socket(zmq.XSUB)
        self._xsub.bind(internal)
        self._xpub = self._ctx.socket(zmq.XPUB)
        self._xpub.sndhwm = 100_000
        _apply_curve_server(self._xpub, curve_server_keys)
        self._xpub.bind(public)
        self._snap = self._ctx.socket(zmq.ROUTER)
        _apply_curve_server(self._snap, curve_server_keys)
        self._snap.bind(snapshot)
        self.internal = self._xsub.last_endpoint.decode()
        self.public = self._xpub.last_endpoint.decode()
        self.snapshot = self._snap.last_endpoint.decode()
        self._cache: dict[bytes, list[bytes]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._proxy_loop, name="telemetry-proxy", daemon=True),
            threading.Thread(target=self._snapshot_loop, name="telemetry-snapshot", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _proxy_loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self._xsub, zmq.POLLIN)
        poller.register(self._xpub, zmq.POLLIN)
        while not self._stop.is_set():
            for sock, _ in poller.poll(100):
                frames = sock.recv_multipart()
                if sock is self._xpub:  # subscriptions flow upstream to the publishers
                    self._xsub.send_multipart(frames)
                    continue
                self._xpub.send_multipart(frames)
                if len(frames) == 3:
                    with self._lock:
                        self._cache[bytes(frames[0])] = frames
        for sock in (self._xsub, self._xpub):
            sock.close(0)

    def _snapshot_loop(self) -> None:
        while not self._stop.is_set():
            if not self._snap.poll(100):
                continue
            frames = self._snap.recv_multipart()
            if len(frames) != 3 or frames[1] != _SNAPSHOT_REQUEST:
                continue  # not a snapshot request: ignore it
            identity, prefix = frames[0], frames[2]
            with self._lock:
                items = [f for t, f in sorted(self._cache.items()) if t.startswith(prefix)]
            for msg in items:
                self._snap.send_multipart([identity, *msg])
            self._snap.send_multipart([identity, _SNAPSHOT_END])
        self._snap.close(0)

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(2)
        if self._auth is not None:
            self._auth.stop()


class _Allowed:
    """ZAP credentials provider: admit only the listed client public keys (z85 bytes)."""

    def __init__(self, keys: list[bytes]) -> None:
        self.keys = set(keys)

    def callback(self, domain: str, key: bytes) -> bool:
        return bytes(key) in self.keys
