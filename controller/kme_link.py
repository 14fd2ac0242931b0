"""KME-to-KME channel: the slave's KME asks the master's KME where a key ID lives.

Pattern: ROUTER server / DEALER clients with a request id (ZeroMQ guide "asynchronous client/
server"). Requests and replies are msgpack maps (``qnode.codec``); they carry key coordinates
(block id, byte offset, size, SAE IDs), never key material. With CURVE on, the channel is
encrypted and only the peer KME's key is admitted (ZAP domain ``kme``).

    request  {"op": "lookup", "rid": int, "key_ids": [str, ...]}
             {"op": "ping", "rid": int}
    reply    {"rid": int, "ok": true, "records": [{key_id, block_id, offset_bytes, size_bytes,
              master_sae, slave_sae}, ...]}   (unknown IDs are simply absent)
             {"rid": int, "ok": false, "error": str}
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable
from pathlib import Path

import zmq
import zmq.asyncio

from controller.curve import make_client
from controller.keypool import KeyPool, KeyRecord, PoolError
from qnode.codec import CodecError, packb, unpackb

log = logging.getLogger("qnode.controller.kme_link")

MAX_LOOKUP_IDS = 4096


class PeerUnavailable(PoolError):
    """The peer KME did not answer in time (maps to ETSI 014 503)."""


def handle_request(pool: KeyPool, kme_id: str, raw: bytes) -> bytes:
    """Answer one KME-channel request; malformed input gets an error reply, never an exception."""
    rid = None
    try:
        msg = unpackb(raw)
        if not isinstance(msg, dict):
            raise ValueError("request must be a map")
        rid = msg.get("rid")
        op = msg.get("op")
        if op == "ping":
            return packb({"rid": rid, "ok": True, "kme_id": kme_id})
        if op != "lookup":
            raise ValueError(f"unknown op {op!r}")
        key_ids = msg.get("key_ids")
        if (
            not isinstance(key_ids, list)
            or not all(isinstance(k, str) for k in key_ids)
            or len(key_ids) > MAX_LOOKUP_IDS
        ):
            raise ValueError("key_ids must be a list of strings")
        records = pool.lookup_issued(key_ids)
        return packb({"rid": rid, "ok": True, "records": [r.as_dict() for r in records]})
    except (CodecError, ValueError) as exc:
        log.warning("bad KME-channel request: %s", exc)
        return packb({"rid": rid, "ok": False, "error": str(exc)})


async def serve(
    socket: zmq.asyncio.Socket, pool: KeyPool, kme_id: str, stop: Callable[[], bool]
) -> None:
    """Serve lookups on a bound ROUTER until ``stop()`` is true."""
    while not stop():
        if not await socket.poll(200):
            continue
        frames = await socket.recv_multipart()
        if len(frames) < 2:
            continue
        reply = handle_request(pool, kme_id, frames[-1])
        await socket.send_multipart([frames[0], reply])


class PeerKmeClient:
    """Synchronous client of the peer KME, safe to use from many threads (one DEALER each)."""

    def __init__(
        self,
        endpoint: str,
        timeout_ms: int = 2000,
        context: zmq.Context | None = None,
        curve_secret: Path | None = None,
        peer_public: bytes | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.timeout_ms = timeout_ms
        self._ctx = context or zmq.Context.instance()
        self._curve = (curve_secret, peer_public) if curve_secret and peer_public else None
        self._local = threading.local()
        self._rids = itertools.count(1)
        self._sockets: list[zmq.Socket] = []
        self._lock = threading.Lock()

    def _socket(self) -> zmq.Socket:
        sock = getattr(self._local, "sock", None)
        if sock is None:
            sock = self._ctx.socket(zmq.DEALER)
            sock.linger = 0
            sock.sndtimeo = self.timeout_ms  # never block on a peer that refuses us
            if self._curve:
                make_client(sock, self._curve[0], self._curve[1])
            sock.connect(self.endpoint)
            self._local.sock = sock
            with self._lock:
                self._sockets.append(sock)
        return sock

    def _call(self, request: dict) -> dict:
        rid = next(self._rids)
        request["rid"] = rid
        sock = self._socket()
        try:
            sock.send(packb(request))
        except zmq.Again:
            raise PeerUnavailable(f"peer KME at {self.endpoint} is not reachable") from None
        remaining = self.timeout_ms
        while remaining > 0:
            if not sock.poll(remaining):
                break
            try:
                reply = unpackb(sock.recv())
            except CodecError:
                continue
            if isinstance(reply, dict) and reply.get("rid") == rid:
                return reply
            # A late reply to an earlier, timed-out request: skip it.
        raise PeerUnavailable(f"peer KME at {self.endpoint} did not answer")

    def lookup(self, key_ids: list[str]) -> list[KeyRecord]:
        """Coordinates of keys the peer KME issued; unknown IDs are absent from the result."""
        reply = self._call({"op": "lookup", "key_ids": list(key_ids)})
        if not reply.get("ok"):
            raise PeerUnavailable(f"peer KME refused the lookup: {reply.get('error')}")
        try:
            return [KeyRecord.from_dict(r) for r in reply.get("records", [])]
        except (KeyError, TypeError, ValueError):
            raise PeerUnavailable("peer KME sent a malformed lookup reply") from None

    def ping(self) -> bool:
        try:
            return bool(self._call({"op": "ping"}).get("ok"))
        except PeerUnavailable:
            return False

    def close(self) -> None:
        with self._lock:
            for sock in self._sockets:
                sock.close(linger=0)
            self._sockets.clear()
        self._local = threading.local()
