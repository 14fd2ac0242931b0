"""Telemetry wire format (docs/telemetry.md, "Frames"): topics, the header layout, decoding.

``[topic, header, payload]``: the header is a msgpack map whose fixed fields a publisher encodes
once (:func:`encode_header`, ``seq`` and ``ts_ns`` last as uint64), so a subscriber's
:class:`_Decoder` reads a known header with one ``struct`` call after validating its prefix in
full once. Messages are :class:`BusMessage` objects whose header and payload dicts are built on
first use. Imported and re-exported by :mod:`qnode.bus`.
"""

from __future__ import annotations

import itertools
import re
import struct
from collections.abc import Iterator
from typing import Any

from qnode.codec import CodecError, packb, unpackb

SCHEMA = 1
FRAME_LIMIT = 1 << 20  # bytes per frame: a bigger one is malformed (publisher refuses it)
STRATA = ("con", "qfs", "svc")
PLANES = ("telemetry", "resource", "control", "mgmt")
_SEGMENT = re.compile(r"^[A-Za-z0-9_.\-]+$")


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


class MalformedMessage(ValueError):
    """A message that breaks the wire format (docs/telemetry.md); counted and dropped."""


class BusMessage:
    """One telemetry message: ``topic``, ``header`` and ``payload`` (dicts, built on first use).

    The subscriber fills ``node``, ``src``, ``seq`` and ``ts_ns`` from the header's fast path and
    keeps the payload as msgpack bytes until someone reads :attr:`payload` (lazy mode only).
    """

    __slots__ = ("topic", "node", "src", "seq", "ts_ns", "_base", "_header", "_raw", "_payload",
                 "_on_bad")  # fmt: skip

    def __init__(self, topic: str, header: dict[str, Any], payload: dict[str, Any]) -> None:
        self.topic = topic
        self.node, self.src = header["node"], str(header.get("src", ""))
        self.seq, self.ts_ns = header["seq"], header["ts_ns"]
        self._base = None
        self._header: dict[str, Any] | None = header
        self._raw: bytes | None = None
        self._payload: dict[str, Any] | None = payload
        self._on_bad: Any = None

    @classmethod
    def _lazy(cls, topic: str, base: dict[str, Any], key: tuple[str, str], seq: int, ts_ns: int,
              raw: bytes, on_bad: Any) -> BusMessage:  # fmt: skip
        msg = cls.__new__(cls)
        msg.topic, (msg.node, msg.src), msg.seq, msg.ts_ns = topic, key, seq, ts_ns
        msg._base, msg._header, msg._raw, msg._payload, msg._on_bad = base, None, raw, None, on_bad
        return msg

    @property
    def header(self) -> dict[str, Any]:
        if self._header is None:
            self._header = {**self._base, "seq": self.seq, "ts_ns": self.ts_ns}
        return self._header

    @property
    def payload(self) -> dict[str, Any]:
        """The payload map; in lazy mode decoded now (MalformedMessage, counted, if it is bad)."""
        if self._payload is None:
            try:
                payload = unpackb(self._raw)
                if not isinstance(payload, dict):
                    raise CodecError("payload is not a map")
            except CodecError as exc:
                if self._on_bad is not None:
                    self._on_bad()
                    self._on_bad = None  # count it once
                raise MalformedMessage(f"{self.topic}: {exc}") from exc
            self._payload, self._raw = payload, None
        return self._payload

    def __repr__(self) -> str:
        return f"BusMessage({self.topic!r}, seq={self.seq}, node={self.node!r}, src={self.src!r})"


class MessageBatch:
    """What :meth:`qnode.bus.Subscriber.recv_batch` returns: a sequence of :class:`BusMessage`.

    Received messages are validated and gap-counted on receipt, but kept as plain fields
    (topic, seq, ts_ns, the cached header fields, the payload) in a few lists; each
    :class:`BusMessage` is built when it is read. A batch of message objects alive at once
    would be a thousand objects for Python's cyclic GC, whose collections (in a big process,
    full ones over the whole heap) cost the subscriber more than decoding the messages; a
    consumer that handles one message at a time now never has more than one alive. Each pass
    over the batch builds new objects (a bad lazy payload counts once per object read).
    """

    __slots__ = ("_topics", "_seqs", "_ts", "_known", "_raws", "_lazy", "_on_bad")

    def __init__(self, lazy: bool, on_bad: Any) -> None:
        self._topics: list[str | None] = []  # None: _raws holds a ready BusMessage
        self._seqs: list[int] = []
        self._ts: list[int] = []
        self._known: list[Any] = []  # (header fields other than seq/ts_ns, (node, src))
        self._raws: list[Any] = []  # payload bytes (lazy) or dict, or a ready BusMessage
        self._lazy, self._on_bad = lazy, on_bad

    def append(self, msg: BusMessage) -> None:
        """Add a message object that already exists (the pure-Python path, the rare path)."""
        self._topics.append(None)
        self._seqs.append(0)
        self._ts.append(0)
        self._known.append(None)
        self._raws.append(msg)

    def __len__(self) -> int:
        return len(self._topics)

    def __iter__(self) -> Iterator[BusMessage]:
        new, cls, on_bad = _new_message, BusMessage, self._on_bad
        lazy = self._lazy
        items = zip(self._topics, self._seqs, self._ts, self._known, self._raws, strict=True)
        for topic_text, seq, ts_ns, known, raw in items:
            if topic_text is None:
                yield raw
                continue
            msg = new(cls)
            msg.topic, msg.seq, msg.ts_ns, msg._header = topic_text, seq, ts_ns, None
            msg._base, (msg.node, msg.src) = known
            if lazy:
                msg._payload, msg._raw, msg._on_bad = None, raw, on_bad
            else:
                msg._payload, msg._raw, msg._on_bad = raw, None, None
            yield msg

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return list(self)[index]
        n = len(self)
        if not -n <= index < n:
            raise IndexError("batch index out of range")
        index %= n
        return next(itertools.islice(iter(self), index, None))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, MessageBatch | list):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"MessageBatch({len(self)} messages)"


_new_message = object.__new__


# -- header wire layout ------------------------------------------------------------------------
# qnode's publisher writes the header map as its fixed fields followed by ``seq`` and ``ts_ns``,
# both as msgpack uint64 (0xcf): a valid msgpack map that any decoder reads, and whose last 23
# bytes a subscriber can read with one struct call once it has seen the prefix before.
_SEQ_KEY = b"\xa3seq\xcf"
_TS_KEY = b"\xa5ts_ns\xcf"
_TAIL = struct.Struct(">Q7xQ")  # seq, b"\xa5ts_ns\xcf", ts_ns
_PUB_TAIL = struct.Struct(">Q7sQ")
_MAP_FIRST = frozenset([*range(0x80, 0x90), 0xDE, 0xDF])
_CACHE_MAX = 4096


def _header_prefix(fields: dict[str, Any]) -> bytes:
    """Canonical header bytes up to the ``seq`` value: map marker, ``fields``, ``seq`` key."""
    count = len(fields) + 2
    marker = bytes([0x80 | count]) if count < 16 else b"\xde" + count.to_bytes(2, "big")
    return marker + b"".join(packb(k) + packb(v) for k, v in fields.items()) + _SEQ_KEY


def encode_header(fields: dict[str, Any], seq: int, ts_ns: int) -> bytes:
    """The header as qnode's publisher sends it (``fields`` then ``seq`` and ``ts_ns``)."""
    return _header_prefix(fields) + _PUB_TAIL.pack(seq, _TS_KEY, ts_ns)


class _Decoder:
    """Validate and decode frames, with caches of known topics and known header prefixes."""

    def __init__(self) -> None:
        self.topics: dict[bytes, str] = {}
        self.prefixes: dict[bytes, tuple[dict[str, Any], tuple[str, str]]] = {}

    def topic(self, raw: bytes) -> str:
        text = self.topics.get(raw)
        if text is None:
            try:
                text = raw.decode()
            except UnicodeDecodeError as exc:
                raise MalformedMessage("topic is not UTF-8") from exc
            parse_topic(text)
            if len(self.topics) >= _CACHE_MAX:
                self.topics.clear()
            self.topics[raw] = text
        return text

    def is_topic(self, raw: bytes) -> bool:
        """Whether ``raw`` is a valid topic frame (used to find message starts in junk)."""
        try:
            self.topic(raw)
        except ValueError:
            return False
        return True

    def header(self, raw: bytes) -> tuple[dict[str, Any], tuple[str, str], int, int]:
        """(fields other than seq/ts_ns, (node, src), seq, ts_ns) of a header."""
        n = len(raw)
        if n > 23 and raw[-15:-8] == _TS_KEY:
            known = self.prefixes.get(raw[:-23])
            if known is not None:
                seq, ts_ns = _TAIL.unpack_from(raw, n - 23)
                return known[0], known[1], seq, ts_ns
        header = unpackb(raw)
        if not isinstance(header, dict) or header.get("schema") != SCHEMA:
            raise MalformedMessage("header is not a schema-1 map")
        for name, kind in (("node", str), ("seq", int), ("ts_ns", int)):
            if not isinstance(header.get(name), kind):
                raise MalformedMessage(f"header field {name!r} missing or of the wrong type")
        base = {k: v for k, v in header.items() if k not in ("seq", "ts_ns")}
        key = (header["node"], str(header.get("src", "")))
        prefix = raw[:-23]
        if (
            n > 23
            and 0 <= header["seq"] < 1 << 64
            and 0 <= header["ts_ns"] < 1 << 64
            and raw == encode_header(base, header["seq"], header["ts_ns"])
        ):  # our canonical layout: later headers with this prefix take the fast path
            if len(self.prefixes) >= _CACHE_MAX:
                self.prefixes.clear()
            self.prefixes[prefix] = (base, key)
        return base, key, header["seq"], header["ts_ns"]

    def decode(self, frames: list[bytes], lazy: bool, on_bad: Any = None) -> BusMessage:
        """Decode ``[topic, header, payload]``; raise ValueError (MalformedMessage/CodecError)."""
        if len(frames) != 3:
            raise MalformedMessage(f"expected 3 frames, got {len(frames)}")
        raw_topic, head, raw = frames
        if len(raw) > FRAME_LIMIT or len(head) > FRAME_LIMIT or len(raw_topic) > FRAME_LIMIT:
            raise MalformedMessage(f"a frame is over {FRAME_LIMIT} bytes")
        topic_text = self.topics.get(raw_topic)
        if topic_text is None:
            topic_text = self.topic(raw_topic)
        # Fast path inlined (see header()); a cached prefix is never empty, so a match means
        # len(head) == len(prefix) + 23.
        known = self.prefixes.get(head[:-23])
        if known is not None and head[-15:-8] == _TS_KEY:
            base, key = known
            seq, ts_ns = _TAIL.unpack_from(head, len(head) - 23)
        else:
            base, key, seq, ts_ns = self.header(head)
        if lazy:
            if not raw or raw[0] not in _MAP_FIRST:
                raise MalformedMessage("payload is not a map")
            return BusMessage._lazy(topic_text, base, key, seq, ts_ns, raw, on_bad)
        payload = unpackb(raw)
        if not isinstance(payload, dict):
            raise MalformedMessage("payload is not a map")
        msg = BusMessage._lazy(topic_text, base, key, seq, ts_ns, None, None)
        msg._payload = payload
        return msg


_SHARED = _Decoder()  # caches only validated topics/prefixes; dict get/set is safe across threads


def decode_frames(frames: list[bytes]) -> BusMessage:
    """Decode ``[topic, header, payload]``; raise ValueError (CodecError/TopicError) if malformed."""
    return _SHARED.decode([bytes(f) for f in frames], lazy=False)
