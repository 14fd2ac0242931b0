"""Peer messages between a stage and its twin on the other node.

Stages are written sans-I/O: each side is an object whose methods take the peer's message (a dict
with at least ``type`` and the identifiers it refers to, e.g. ``block`` and ``frame``) and return
the messages to send back. The same objects run over the network (the node's authenticated
classical channel) and in one process through :class:`LoopbackChannel`, which pushes every
message through the real msgpack codec so tests exercise exactly what crosses the wire.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from qnode.codec import packb, unpackb

Message = dict[str, Any]


class PeerChannel(Protocol):
    """What a stage needs from the link to its twin: ordered, reliable, authenticated delivery."""

    def send(self, message: Message) -> None: ...

    def recv(self) -> Message: ...


class Handler(Protocol):
    """A sans-I/O stage side: takes the peer's message, returns the messages to send back."""

    def handle(self, message: Message) -> list[Message]: ...


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


def exchange(
    alice: Handler,
    bob: Handler,
    a_end: LoopbackChannel,
    b_end: LoopbackChannel,
    max_rounds: int | None = None,
    on_bob_message: Callable[[Message], None] | None = None,
) -> bool:
    """Deliver messages both ways (Bob's inbox, then Alice's, per round) until both inboxes are
    empty: True, or False when ``max_rounds`` rounds ran first. ``on_bob_message`` sees each
    message Bob sends."""
    rounds = 0
    while a_end.pending() or b_end.pending():
        if max_rounds is not None and rounds >= max_rounds:
            return False
        rounds += 1
        while b_end.pending():
            for m in bob.handle(b_end.recv()):
                if on_bob_message is not None:
                    on_bob_message(m)
                b_end.send(m)
        while a_end.pending():
            for m in alice.handle(a_end.recv()):
                a_end.send(m)
    return True
