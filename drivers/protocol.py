"""Protocol testing without hardware: ordered ``(sent, reply)`` pairs (PyMeasure's idea).

``expected_protocol(DriverClass, [(sent, reply), ...])`` builds the driver on a
``ProtocolAdapter`` that checks each write against the next pair and serves its reply; at exit it
asserts that every pair was used and no reply was left unread. The adapter subclasses ``Adapter``,
so locking, logging, block parsing and error translation are the production code paths.
``sent``/``reply`` are text without the ``\\n`` terminator, or ``bytes`` taken literally (block
arguments and binary replies); ``reply=None`` means the command has no answer; an exception
instance as ``reply`` is raised by the read that follows (a transport failure: a reset peer,
a timeout), to test error translation and reconnects.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from drivers.adapter import Adapter

Pair = tuple[str | bytes | None, str | bytes | BaseException | None]


def _wire(item: str | bytes) -> bytes:
    return item if isinstance(item, bytes) else item.encode("ascii") + b"\n"


class ProtocolAdapter(Adapter):
    """A fake transport for unit tests of one driver class: checks writes, serves replies."""

    def __init__(self, pairs: Sequence[Pair], name: str = "protocol") -> None:
        super().__init__("protocol", name, timeout_s=0.0)
        self.pairs = list(pairs)
        self.index = 0
        self._pending = bytearray()
        self._failure: BaseException | None = None
        self.opens = 0
        self._queue_unsolicited()

    def _queue_unsolicited(self) -> None:
        while self.index < len(self.pairs) and self.pairs[self.index][0] is None:
            reply = self.pairs[self.index][1]
            self._pending += _wire(reply) if reply is not None else b""
            self.index += 1

    def _open(self) -> None:
        self.opens += 1
        self._pending.clear()  # a new connection starts with an empty stream

    def _close(self) -> None:
        pass

    def _write_bytes(self, data: bytes) -> None:
        assert not self._pending, f"unread reply {bytes(self._pending)!r} before writing {data!r}"
        assert self.index < len(self.pairs), f"unexpected write {data!r}: no pairs left"
        sent, reply = self.pairs[self.index]
        assert data == _wire(sent), f"pair {self.index}: sent {data!r}, expected {_wire(sent)!r}"
        self.index += 1
        if isinstance(reply, BaseException):
            self._failure = reply
        elif reply is not None:
            self._pending += _wire(reply)
        self._queue_unsolicited()

    def _raise_failure(self) -> None:
        if self._failure is not None:
            failure, self._failure = self._failure, None
            raise failure

    def _take(self, count: int) -> bytes:
        self._raise_failure()
        if len(self._pending) < count:
            raise TimeoutError(f"read of {count} bytes but only {bytes(self._pending)!r} pending")
        out = bytes(self._pending[:count])
        del self._pending[:count]
        return out

    def _read_line(self) -> bytes:
        self._raise_failure()
        end = self._pending.find(b"\n")
        if end < 0:
            raise TimeoutError(f"read of a line but only {bytes(self._pending)!r} pending")
        return self._take(end + 1)

    def _read_exact(self, count: int) -> bytes:
        return self._take(count)

    def check_done(self) -> None:
        """Assert every pair was exchanged and nothing is left to read."""
        assert self.index == len(self.pairs), (
            f"only {self.index} of {len(self.pairs)} pairs used; next: {self.pairs[self.index]!r}"
            " (an error-queue check after a set is a pair of its own)"
        )
        assert not self._pending, f"reply left unread: {bytes(self._pending)!r}"


@contextmanager
def expected_protocol(cls: type, pairs: Sequence[Pair], **kwargs: Any) -> Iterator[Any]:
    """Yield ``cls(ProtocolAdapter(pairs), **kwargs)`` and check the protocol at exit."""
    adapter = ProtocolAdapter(pairs, name=getattr(cls, "default_name", "protocol"))
    instrument = cls(adapter, **kwargs)
    yield instrument
    adapter.check_done()
