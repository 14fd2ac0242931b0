"""Client of the node's command socket (``qnode/node.py``: ROUTER, msgpack maps).

Pattern: one DEALER, one request at a time (an asyncio lock), a request id in every message and
a timeout; a late reply to a timed-out request carries an old id and is skipped.

    request  [b"", {"cmd": NAME, "args": {...}, "rid": n}]
    reply    [b"", {"ok": bool, "result" | "error": ..., "rid": n}]
"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import zmq
import zmq.asyncio

from controller.commands import CommandError
from qnode.codec import CodecError, packb, unpackb


class NodeCommandClient:
    """Forward commands to a node; ``curve`` = (public, secret, server_public) or None."""

    def __init__(
        self,
        ctx: zmq.asyncio.Context,
        endpoint: str,
        timeout_ms: int,
        curve: tuple[bytes, bytes, bytes] | None = None,
    ) -> None:
        self.ctx, self.endpoint, self.timeout_ms, self.curve = ctx, endpoint, timeout_ms, curve
        self._sock: zmq.asyncio.Socket | None = None
        self._lock = asyncio.Lock()
        self._rids = itertools.count(1)

    def _socket(self) -> zmq.asyncio.Socket:
        if self._sock is None:
            sock = self.ctx.socket(zmq.DEALER)
            sock.linger = 0
            try:  # a bad key or endpoint must not leave an open socket (term() would wait)
                if self.curve:
                    sock.curve_publickey, sock.curve_secretkey, sock.curve_serverkey = self.curve
                sock.connect(self.endpoint)
            except BaseException:
                sock.close(0)
                raise
            self._sock = sock
        return self._sock

    async def call(self, message: dict[str, Any]) -> dict[str, Any]:
        """Send one command and return the node's reply map; CommandError on timeout."""
        if not self.endpoint:
            raise CommandError("node command endpoint not configured")
        async with self._lock:
            sock = self._socket()
            rid = next(self._rids)
            deadline = time.monotonic() + self.timeout_ms / 1000
            try:
                await asyncio.wait_for(
                    sock.send_multipart([b"", packb({**message, "rid": rid})]),
                    self.timeout_ms / 1000,
                )
            except TimeoutError:
                self.close()  # the socket may hold the unsent message: start afresh
                raise CommandError("node command socket not reachable") from None
            while (left := deadline - time.monotonic()) > 0:
                if not await sock.poll(int(left * 1000) + 1):
                    break
                frames = await sock.recv_multipart()
                try:
                    reply = unpackb(frames[-1])
                except CodecError:
                    continue
                if isinstance(reply, dict) and reply.get("rid") == rid:
                    return reply
            raise CommandError("node did not answer the command in time")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close(0)
            self._sock = None
