"""Peer messages between a stage and its twin on the other node.

Stages are written sans-I/O: each side is an object whose methods take the peer's message (a dict
with at least ``type`` and the identifiers it refers to, e.g. ``block`` and ``frame``) and return
the messages to send back. The same objects run over the network (the node's authenticated
classical channel) and in one process through :class:`LoopbackChannel`, which pushes every
message through the real msgpack codec so tests exercise exactly what crosses the wire.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Protocol

from qnode.codec import packb, unpackb

Message = dict[str, Any]


class PeerChannel(Protocol):
    """What a stage needs from the link to its twin: ordered, reliable, authenticated delivery."""

    def send(self, message: Message) -> None: ...

    def recv(self) -> Message: ...


class ChannelEmpty(RuntimeError):
    """recv() on a loopback end with nothing queued: the protocol expected a reply that never came."""


class LoopbackChannel:
    """One end of an in-process channel; build a connected pair with :func:`loopback_pair`."""

    def __init__(self) -> None:
        self._inbox: deque[bytes] = deque()
        self.peer: LoopbackChannel | None = None
        self.bytes_sent = 0
        self.messages_sent = 0

    def send(self, message: Message) -> None:
        if "type" not in message:
            raise ValueError("a peer message needs a 'type'")
        data = packb(message)
        self.bytes_sent += len(data)
        self.messages_sent += 1
        assert self.peer is not None
        self.peer._inbox.append(data)

    def recv(self) -> Message:
        if not self._inbox:
            raise ChannelEmpty("no message from the peer")
        return unpackb(self._inbox.popleft())

    def pending(self) -> int:
        return len(self._inbox)


def loopback_pair() -> tuple[LoopbackChannel, LoopbackChannel]:
    """Alice's and Bob's ends of one in-process channel."""
    a, b = LoopbackChannel(), LoopbackChannel()
    a.peer, b.peer = b, a
    return a, b
