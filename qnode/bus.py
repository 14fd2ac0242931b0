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

import struct
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import msgpack
import ormsgpack
import zmq

from qnode.bus_wire import (  # noqa: F401  (re-exported: the bus's public names)
    _CACHE_MAX,
    _MAP_FIRST,
    _PUB_TAIL,
    _SEGMENT,
    _TS_KEY,
    FRAME_LIMIT,
    PLANES,
    SCHEMA,
    STRATA,
    BusMessage,
    MalformedMessage,
    MessageBatch,
    TopicError,
    _Decoder,
    _header_prefix,
    decode_frames,
    encode_header,
    parse_topic,
    topic,
)
from qnode.codec import CodecError, _default, unpackb

# pyzmq's Cython socket methods, called directly: the ``zmq.Socket`` subclass wraps ``send`` in
# a Python method (routing_id/group handling, unused here) that costs ~0.3 µs per frame.
_SEND = zmq.backend.Socket.send
_RECV = zmq.backend.Socket.recv
_NB, _MORE = int(zmq.NOBLOCK), int(zmq.SNDMORE)
_MAP_BYTES = frozenset(bytes([b]) for b in _MAP_FIRST)
_new_message = object.__new__
_SNAPSHOT_REQUEST = b"ICANHAZ?"
_SNAPSHOT_END = b"KTHXBAI"


# ormsgpack writes the same bytes as msgpack-python for telemetry payloads (str-keyed maps of
# scalars, strings, lists) at ~70 % of the CPU. Every type that msgpack-python refuses but
# ormsgpack would encode its own way is passed through to _or_default, which refuses it, and
# anything ormsgpack refuses (int keys, bytearray, ...) is packed by msgpack-python instead:
# a payload is encoded, or refused, exactly as before.
_OR_PACK = ormsgpack.packb
_OR_OPTIONS = (
    ormsgpack.OPT_PASSTHROUGH_DATACLASS
    | ormsgpack.OPT_PASSTHROUGH_DATETIME
    | ormsgpack.OPT_PASSTHROUGH_ENUM
    | ormsgpack.OPT_PASSTHROUGH_UUID
    | ormsgpack.OPT_PASSTHROUGH_SUBCLASS
    | ormsgpack.OPT_PASSTHROUGH_BIG_INT
)


def _or_default(obj: Any) -> Any:
    """qnode.codec's numpy handling for ormsgpack; everything else goes to msgpack-python."""
    out = _default(obj)  # TypeError for what msgpack-python cannot encode either
    if isinstance(out, msgpack.ExtType):
        return ormsgpack.Ext(out.code, out.data)
    return out


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
    binds ``endpoint`` itself. The header's fixed part is encoded once (a template); each message
    adds only its ``seq`` and ``ts_ns`` (docs/telemetry.md, "Frames"). Not thread-safe (neither
    is a ZeroMQ socket): one Publisher per thread.
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
        self._prefix = _header_prefix({"schema": SCHEMA, "node": node, "src": src})
        self._topics: dict[str, bytes] = {}
        self._ctx = context or zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.PUB)
        self._sock.sndhwm = sndhwm
        # Bounded linger: the last messages before close() (a node's "stopped") still go out,
        # and closing never waits more than 0.2 s for a slow subscriber.
        self._sock.linger = 200
        try:
            if connect:
                self._sock.connect(endpoint)
            else:
                _apply_curve_server(self._sock, curve_server_keys)
                self._sock.bind(endpoint)
        except BaseException:
            self._sock.close(0)
            raise
        self.endpoint = self._sock.last_endpoint.decode() if not connect else endpoint
        # The header: the fixed prefix, seq, the ts_ns key, ts_ns in one struct call.
        self._head = struct.Struct(f">{len(self._prefix)}sQ7sQ")
        # msgpack-python Packer for the payloads ormsgpack refuses (see _OR_OPTIONS).
        self._pack = msgpack.Packer(default=_default, use_bin_type=True).pack

    def publish(self, topic_name: str, payload: dict[str, Any]) -> int:
        """Send one message; return its sequence number. Never blocks (PUB drops at HWM).

        A payload that cannot be encoded raises TypeError (one over FRAME_LIMIT bytes,
        ValueError) and uses no sequence number.
        """
        raw_topic = self._topics.get(topic_name)
        if raw_topic is None:
            raw_topic = topic_name.encode()
            if len(self._topics) < _CACHE_MAX:
                self._topics[topic_name] = raw_topic
        try:
            body = _OR_PACK(payload, default=_or_default, option=_OR_OPTIONS)
        except TypeError:  # ormsgpack.MsgpackEncodeError: let msgpack-python decide
            body = self._pack(payload)
        if len(body) > FRAME_LIMIT:
            raise ValueError(f"telemetry payload of {len(body)} bytes > {FRAME_LIMIT}")
        self.seq = seq = self.seq + 1
        sock = self._sock
        # Three copying sends (small frames copy faster than zero-copy; cheaper than
        # send_multipart); PUB never blocks, it drops at SNDHWM.
        _SEND(sock, raw_topic, _MORE)
        _SEND(sock, self._head.pack(self._prefix, seq, _TS_KEY, time.time_ns()), _MORE)
        _SEND(sock, body)
        return seq

    def close(self) -> None:
        self._sock.close()


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
    ``lazy_payload=True`` checks only that the payload is a msgpack map on receipt and decodes it
    when :attr:`BusMessage.payload` is read (a bad one is then counted and raises
    :class:`MalformedMessage`); the header is always validated on receipt.
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
        lazy_payload: bool = False,
    ) -> None:
        self._ctx = context or zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.SUB)
        self._sock.rcvhwm = rcvhwm
        self._sock.linger = 0
        self._curve = curve_client_keys
        self.topics = list(topics)
        try:  # bad keys or endpoint: close the socket (an open one makes term() wait)
            _apply_curve_client(self._sock, curve_client_keys)
            for prefix in self.topics:
                self._sock.setsockopt(zmq.SUBSCRIBE, prefix.encode())
            self._sock.connect(endpoint)
        except BaseException:
            self._sock.close(0)
            raise
        self.snapshot_endpoint = snapshot_endpoint
        self.lazy_payload = lazy_payload
        self.stats = _Stats()
        self._floor: dict[tuple[str, str], int] = {}
        self._decoder = _Decoder()
        self._on_bad = self._count_malformed  # bound once: every lazy message carries it
        self._drainer: Any = None  # qnode.bus_drain.Drainer, made on the first recv_batch
        self._native_tried = False

    @property
    def socket(self) -> zmq.Socket:
        return self._sock

    def _count_malformed(self) -> None:
        self.stats.malformed += 1

    def _account(self, key: tuple[str, str], seq: int) -> bool:
        """Update gap counters; False if the message is older than the snapshot (drop it)."""
        stats = self.stats
        if self._floor:
            floor = self._floor.get(key)
            if floor is not None:
                if seq <= floor:
                    return False
                del self._floor[key]
                # the snapshot delivered up to floor: count gaps from there, not from before
                stats.last_seq[key] = max(stats.last_seq.get(key, floor), floor)
        last = stats.last_seq.get(key)
        if last is not None:
            if seq > last + 1:
                stats.gaps += seq - last - 1
            elif seq <= last:
                stats.restarts += 1  # the publisher restarted its numbering
        stats.last_seq[key] = seq
        return True

    def _read(self) -> BusMessage | None:
        """Read one whole message without blocking and decode it (raise zmq.Again if none).

        Returns None for a message that was dropped (malformed, or older than the snapshot).
        Frames 0 and 1 are received as bytes (``recv`` copying: ~0.3 µs, against ~1 µs for a
        ``Frame``), frame 2 as a ``Frame`` whose ``more`` flag says whether the message goes on.
        ZeroMQ delivers a multipart message whole, so a short message shows up as ``zmq.Again``
        in the middle or as frames that do not decode, and :meth:`_junk` sorts those out; the
        read always ends on a message boundary.
        """
        sock = self._sock
        a = _RECV(sock, _NB)  # zmq.Again: nothing queued
        try:
            b = _RECV(sock, _NB)
        except zmq.Again:  # a one-frame message was the last one queued
            return self._junk([a])
        try:
            last = _RECV(sock, _NB, False)
        except zmq.Again:  # a two-frame message (or two one-frame ones) was the last queued
            return self._junk([a, b])
        c = last.bytes
        if last.more or len(c) > FRAME_LIMIT:
            return self._junk([a, b, c], more=last.more)
        dec = self._decoder
        topic_text = dec.topics.get(a)
        known = dec.prefixes.get(b[:-23])
        if topic_text is None or known is None:
            return self._junk([a, b, c])  # first sight of a topic or header prefix, or bad
        # A cached prefix is never empty, so b holds the prefix and exactly 23 bytes more.
        seq, ts_key, ts_ns = _PUB_TAIL.unpack_from(b, len(b) - 23)
        if ts_key != _TS_KEY:
            return self._junk([a, b, c])
        if self.lazy_payload:
            if not c or c[0] not in _MAP_FIRST:
                return self._take([a, b, c])  # counts it
            payload, raw, on_bad = None, c, self._on_bad
        else:
            try:
                payload = unpackb(c)
            except CodecError:
                payload = None
            if not isinstance(payload, dict):
                self.stats.malformed += 1
                return None
            raw = on_bad = None
        msg = _new_message(BusMessage)  # BusMessage._lazy, inlined (per-message cost)
        msg.topic, msg.seq, msg.ts_ns, msg._header = topic_text, seq, ts_ns, None
        msg._base, msg._payload, msg._raw, msg._on_bad = known[0], payload, raw, on_bad
        key = msg.node, msg.src = known[1]
        return msg if self._account(key, seq) else None

    def _junk(self, frames: list[bytes], more: bool = False) -> BusMessage | None:
        """Frames that are not one good three-frame message: split, count and drop (rare path).

        ``more``: the last frame read had more frames after it; read them (to the message
        boundary), so the stream stays in step. Every frame from frame 2 on belongs to one
        message (their flags are known); the boundaries after frames 0 and 1 are not, so a
        message is taken to start at frame 1 or 2 where that frame is a valid topic, or, in a run
        longer than three frames, at frame 2 where it is not a msgpack map (a header or payload
        always is). Each piece of three frames is decoded as usual (a good message behind a
        short one is kept); every other piece counts as one malformed message.
        """
        sock = self._sock
        while more:
            frame = _RECV(sock, _NB, False)
            frames.append(frame.bytes)
            more = frame.more
        is_topic, n = self._decoder.is_topic, len(frames)
        starts = [0]
        if n > 1 and is_topic(frames[1]):
            starts.append(1)
        if n > 2 and (is_topic(frames[2]) or (n > 3 and frames[2][:1] not in _MAP_BYTES)):
            starts.append(2)
        starts.append(n)
        out = None
        for start, end in zip(starts, starts[1:], strict=False):
            if end - start != 3:
                self.stats.malformed += 1
            elif (msg := self._take(frames[start:end])) is not None:
                out = msg  # only the last piece can have three frames
        return out

    def _take(self, frames: list[bytes]) -> BusMessage | None:
        """Full decode and validation of ``[topic, header, payload]`` (caches what it learns)."""
        try:
            msg = self._decoder.decode(frames, self.lazy_payload, self._count_malformed)
        except ValueError:  # MalformedMessage, TopicError, CodecError
            self.stats.malformed += 1
            return None
        return msg if self._account((msg.node, msg.src), msg.seq) else None

    def recv(self, timeout_ms: int | None = None) -> BusMessage | None:
        """Next valid message, or None on timeout. Malformed messages are counted, not raised.

        Queued messages are taken without polling (``NOBLOCK``); the socket is polled only when
        its queue is empty.
        """
        sock, deadline, read = self._sock, None, self._read
        while True:
            try:
                msg = read()
            except zmq.Again:
                if timeout_ms is None:
                    wait = None
                elif deadline is None:
                    deadline, wait = time.monotonic() + timeout_ms / 1000, timeout_ms
                else:
                    wait = max(0, int((deadline - time.monotonic()) * 1000))
                if not sock.poll(wait):
                    return None
                continue
            if msg is not None:
                self.stats.received += 1
                return msg

    def recv_batch(self, max_messages: int = 1024, timeout_ms: int | None = None) -> MessageBatch:
        """Up to ``max_messages`` valid messages (a :class:`MessageBatch`, empty on timeout):
        drain what is queued without blocking (at most ``max_messages`` reads per round, dropped
        ones included); poll only when a round found nothing valid, until ``timeout_ms`` has
        passed. Every message is validated and gap-counted here; its object is built when read.

        Frames are read by :mod:`qnode.bus_drain`'s native kernel where it is available (one
        call per round instead of three pyzmq calls per message), else one message at a time.
        """
        if self._drainer is None and not self._native_tried:
            self._native_tried = True
            from qnode.bus_drain import drainer

            self._drainer = drainer(self._sock)
        out = MessageBatch(self.lazy_payload, self._on_bad)
        deadline = None
        round_ = self._native_round if self._drainer is not None else self._python_round
        while True:
            round_(max_messages, out)
            if out:
                break
            if timeout_ms is None:
                wait = None
            elif deadline is None:
                deadline, wait = time.monotonic() + timeout_ms / 1000, timeout_ms
            else:
                left = deadline - time.monotonic()
                if left < 0:
                    break
                wait = int(left * 1000)
            if not self._sock.poll(wait):
                break
        self.stats.received += len(out)
        return out

    def _python_round(self, max_messages: int, out: MessageBatch) -> None:
        read, append = self._read, out.append
        for _ in range(max_messages):
            try:
                msg = read()
            except zmq.Again:
                break
            if msg is not None:
                append(msg)

    def _native_round(self, max_messages: int, out: MessageBatch) -> None:
        """One native drain of up to ``max_messages`` messages, decoded and gap-counted here."""
        if self._sock.closed:  # the native call must never see a freed socket handle
            raise zmq.ZMQError(zmq.ENOTSOCK)
        data, columns = self._drainer.drain(max_messages)
        if not columns:
            return
        dec, stats, append = self._decoder, self.stats, out.append
        topics, prefixes, last_seq = dec.topics, dec.prefixes, stats.last_seq
        lazy, floor = self.lazy_payload, self._floor
        # MessageBatch's columns: a message is kept as its fields (no object per message here)
        add_topic, add_seq, add_ts = out._topics.append, out._seqs.append, out._ts.append
        add_known, add_raw = out._known.append, out._raws.append
        topic_text = known = None
        for t0, t1, h1, p1, nframes, seq, ts_ns, fast, same in zip(*columns, strict=True):
            if fast == 1:
                # SAME bits: topic / header prefix as the previous message's (no look-up)
                if not same & 1 or topic_text is None:
                    topic_text = topics.get(data[t0:t1])
                if not same & 2 or known is None:
                    known = prefixes.get(data[t1 : h1 - 23])
                if topic_text is not None and known is not None:
                    if lazy:
                        payload = data[h1:p1]
                    else:
                        try:
                            payload = unpackb(data[h1:p1])
                        except CodecError:
                            payload = None
                        if not isinstance(payload, dict):
                            stats.malformed += 1
                            continue
                    key = known[1]
                    if floor:  # after a snapshot (rare): the full check
                        if not self._account(key, seq):
                            continue
                    else:
                        last = last_seq.get(key)  # Subscriber._account, inlined
                        if last is not None:
                            if seq > last + 1:
                                stats.gaps += seq - last - 1
                            elif seq <= last:
                                stats.restarts += 1
                        last_seq[key] = seq
                    add_topic(topic_text)
                    add_seq(seq)
                    add_ts(ts_ns)
                    add_known(known)
                    add_raw(payload)
                    continue
            topic_text = known = None  # the next message looks its topic and prefix up
            if nframes != 3 or fast < 0:  # not three frames, or one over FRAME_LIMIT
                stats.malformed += 1
                continue
            msg = self._take([data[t0:t1], data[t1:h1], data[h1:p1]])
            if msg is not None:
                append(msg)

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
                    msg = self._decoder.decode(frames, lazy=False)
                except ValueError:  # MalformedMessage, TopicError, CodecError
                    self.stats.malformed += 1
                    continue
                key = (msg.node, msg.src)
                self._floor[key] = max(self._floor.get(key, 0), msg.seq)
                out.append(msg)
            return out
        finally:
            sock.close()

    def close(self) -> None:
        self._sock.close()


def _linger0(sock: zmq.Socket, opened: list[zmq.Socket]) -> zmq.Socket:
    sock.linger = 0
    opened.append(sock)
    return sock


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
        opened: list[zmq.Socket] = []
        try:  # LINGER 0 everywhere; a bind that fails closes what was opened (term never waits)
            self._xsub = _linger0(self._ctx.socket(zmq.XSUB), opened)
            self._xsub.bind(internal)
            self._xpub = _linger0(self._ctx.socket(zmq.XPUB), opened)
            self._xpub.sndhwm = 100_000
            _apply_curve_server(self._xpub, curve_server_keys)
            self._xpub.bind(public)
            self._snap = _linger0(self._ctx.socket(zmq.ROUTER), opened)
            _apply_curve_server(self._snap, curve_server_keys)
            self._snap.bind(snapshot)
        except BaseException:
            for sock in opened:
                sock.close(0)
            if self._auth is not None:
                self._auth.stop()
            raise
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
                if sock is self._xpub:  # subscriptions flow upstream to the publishers
                    self._xsub.send_multipart(self._xpub.recv_multipart())
                    continue
                self._forward_queued()
        for sock in (self._xsub, self._xpub):
            sock.close(0)

    def _forward_queued(self, limit: int = 1000) -> None:
        """Forward what the XSUB has queued (up to ``limit``, no polling) and cache each message.

        Frames are received as ``Frame`` objects (their ``more`` flag keeps messages whole) and
        sent on as they are (ZeroMQ copies the message, not Python): about half the CPU of
        ``recv_multipart``/``send_multipart``, which ask the socket for RCVMORE per frame.
        """
        xsub, xpub, cache, lock = self._xsub, self._xpub, self._cache, self._lock
        for _ in range(limit):
            try:
                frame = _RECV(xsub, _NB, False)
            except zmq.Again:
                break
            frames = [frame]
            while frame.more:  # the rest of a message is always there (delivered whole)
                frame = _RECV(xsub, _NB, False)
                frames.append(frame)
            last = len(frames) - 1
            for i, part in enumerate(frames):
                _SEND(xpub, part, _MORE if i < last else 0)
            if last == 2:
                with lock:  # uncontended: well under a µs; the snapshot sees every message
                    cache[frames[0].bytes] = frames

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
