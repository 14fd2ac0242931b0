"""Transport adapters: one lock per connection, DEBUG log of every exchange, named exceptions.

The public methods (``write``, ``query``, ``read``, ``read_block``, ``query_block``) hold the
connection lock, open the connection lazily, log each exchange at DEBUG on
``qnode.drivers.<name>`` (direction, text, duration) and then call the private ``_open``,
``_close``, ``_write_bytes``, ``_read_line`` and ``_read_exact`` that a transport implements
(PyMeasure's adapter idea). Transport exceptions are translated into the named exceptions of
``drivers.errors``; after a timeout, a drop or garbage the stream is in an unknown state, so the
connection is marked broken and the next exchange reconnects first (bounded retries, then the
hooks registered with ``on_reconnect`` run, e.g. to replay settings).

Binary blocks (IEEE 488.2 ``#<n><len><payload>`` then ``\\n``) are parsed here and the payload is
read with the read terminator off: pyvisa's ``query_binary_values`` stops at every 0x0A inside the
payload and is 10-20x slower (shared/reference/instruments.md §5.2).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from drivers.errors import (
    InstrumentDisconnected,
    InstrumentError,
    InstrumentProtocolError,
    InstrumentTimeout,
)
from qnode.redact import redact_command

_NOT_PRINTABLE = re.compile(rb"[^\x20-\x7e\t]")
_MAX_LOGGED = 200  # characters of a reply shown in the DEBUG log


def block_header(size: int) -> bytes:
    """IEEE 488.2 definite-length block header ``#<n><len>`` for a payload of ``size`` bytes."""
    digits = str(size).encode()
    if len(digits) > 9:
        raise ValueError("a definite-length block holds at most 999,999,999 bytes")
    return b"#" + str(len(digits)).encode() + digits


def encode_block(payload: bytes) -> bytes:
    """IEEE 488.2 definite-length block header + payload (no terminator)."""
    return block_header(len(payload)) + payload


class Adapter(ABC):
    """One connection to one instrument; subclasses implement the private transport methods."""

    def __init__(
        self,
        resource: str,
        name: str,
        *,
        timeout_s: float = 2.0,
        reconnect_attempts: int = 3,
        reconnect_delay_s: float = 0.1,
    ) -> None:
        self.resource = resource
        self.name = name
        self.timeout_s = timeout_s
        self.reconnect_attempts = reconnect_attempts
        self.reconnect_delay_s = reconnect_delay_s
        self.lock = threading.RLock()
        self.log = logging.getLogger(f"qnode.drivers.{name}")
        self.reconnects = 0
        self._is_open = False
        self._broken = False
        self._reconnect_hooks: list[Callable[[], None]] = []

    # -- transport, implemented by subclasses (raise the transport's own exceptions) ---------
    @abstractmethod
    def _open(self) -> None: ...

    @abstractmethod
    def _close(self) -> None: ...

    @abstractmethod
    def _write_bytes(self, data: bytes) -> None: ...

    @abstractmethod
    def _read_line(self) -> bytes:
        """Bytes up to and including the ``\\n`` terminator."""

    @abstractmethod
    def _read_exact(self, count: int) -> bytes:
        """Exactly ``count`` bytes, terminator detection off."""

    def _apply_timeout(self) -> None:  # noqa: B027 - optional hook, most transports need it
        """Push ``timeout_s`` to an open transport (subclasses with their own timeout)."""

    def _translate(self, exc: BaseException, command: str) -> InstrumentError | None:
        """Map a transport exception to a named one (None: not a transport failure)."""
        if isinstance(exc, TimeoutError):  # the transport's own words, when it has any
            detail = str(exc) or f"no answer within {self.timeout_s} s"
            return InstrumentTimeout(self.name, command, detail)
        if isinstance(exc, OSError):  # BrokenPipe, ConnectionReset/Refused, EIO on a pty
            return InstrumentDisconnected(self.name, command, f"connection lost: {exc!r}")
        return None

    # -- lifecycle -----------------------------------------------------------------------------
    @property
    def is_open(self) -> bool:
        return self._is_open

    def open(self) -> None:
        """Connect (idempotent); raise InstrumentDisconnected when the peer cannot be reached."""
        with self.lock:
            if self._is_open:
                return
            try:
                self._open()
            except Exception as exc:
                self._safe_close()
                named = self._translate(exc, "<open>") or InstrumentDisconnected(
                    self.name, "<open>", f"cannot open {self.resource}: {exc!r}"
                )
                if isinstance(named, InstrumentTimeout):
                    named = InstrumentDisconnected(self.name, "<open>", f"cannot open: {exc!r}")
                raise named from exc
            self._is_open = True
            self._broken = False

    def close(self) -> None:
        """Disconnect (idempotent, never raises)."""
        with self.lock:
            self._safe_close()

    def _safe_close(self) -> None:
        try:
            self._close()
        except Exception as exc:  # a dead peer may refuse even the close
            self.log.debug("close of %s failed: %r", self.resource, exc)
        self._is_open = False

    @contextmanager
    def timeout(self, seconds: float) -> Iterator[None]:
        """Hold the lock with at least ``seconds`` of timeout (slow queries, large blocks)."""
        with self.lock:
            old = self.timeout_s
            if seconds <= old:
                yield
                return
            self.timeout_s = seconds
            if self._is_open:
                self._apply_timeout()
            try:
                yield
            finally:
                self.timeout_s = old
                if self._is_open:
                    self._apply_timeout()

    def mark_broken(self) -> None:
        """Force a reconnect before the next exchange (the stream is out of step)."""
        self._broken = True

    def on_reconnect(self, hook: Callable[[], None]) -> None:
        """Run ``hook`` (with the lock held) after every successful reconnect."""
        self._reconnect_hooks.append(hook)

    def reconnect(self, command: str = "<reconnect>") -> None:
        """Close and reopen, up to ``reconnect_attempts`` times, then run the reconnect hooks."""
        with self.lock:
            last: Exception | None = None
            for attempt in range(max(1, self.reconnect_attempts)):
                self._safe_close()
                try:
                    self.open()
                except InstrumentDisconnected as exc:
                    last = exc
                    if attempt + 1 < self.reconnect_attempts:  # back off: 1x, 2x, 4x ...
                        time.sleep(self.reconnect_delay_s * (2**attempt))
                    continue
                self.reconnects += 1
                self.log.info("reconnected to %s (attempt %d)", self.resource, attempt + 1)
                for hook in self._reconnect_hooks:
                    hook()
                return
            raise InstrumentDisconnected(
                self.name,
                command,
                f"reconnect to {self.resource} failed after {self.reconnect_attempts} attempts: {last}",
            )

    def __enter__(self) -> Adapter:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- exchanges -----------------------------------------------------------------------------
    def _ready(self, command: str) -> None:
        if self._broken:
            self.reconnect(command)
        elif not self._is_open:
            self.open()

    def _fail(self, exc: BaseException, command: str) -> InstrumentError:
        """The named exception for a failed exchange (anything else is re-raised as it is)."""
        named = exc if isinstance(exc, InstrumentError) else self._translate(exc, command)
        if named is None:
            raise exc
        # Timeouts, drops and garbage leave the byte stream in an unknown state.
        self._broken = True
        return named

    def _send(self, command: str, block: bytes | None) -> None:
        if block is None:
            data = command.encode("ascii") + b"\n"
        else:  # one copy of the payload (it may be megabytes)
            data = b"".join((command.encode("ascii"), block_header(len(block)), block, b"\n"))
        self._write_bytes(data)

    def _decode(self, raw: bytes, command: str) -> str:
        if not raw.endswith(b"\n"):
            raise InstrumentProtocolError(self.name, command, f"reply not terminated: {raw[:40]!r}")
        body = raw[:-1].rstrip(b"\r")
        # IEEE 488.2 §8.7: text responses are printable 7-bit ASCII (blocks are read apart).
        if _NOT_PRINTABLE.search(body):
            raise InstrumentProtocolError(
                self.name, command, f"reply is not printable ASCII: {raw[:40]!r}"
            )
        return body.decode("ascii")

    def _logged(self, direction: str, text: str, t0: float) -> None:
        text = redact_command(text)
        if len(text) > _MAX_LOGGED:
            text = text[:_MAX_LOGGED] + f"...({len(text)} chars)"
        self.log.debug("%s %s (%.1f us)", direction, text, (time.perf_counter() - t0) * 1e6)

    def write(self, command: str, block: bytes | None = None) -> None:
        """Send one command line (optionally with a definite-length block argument)."""
        with self.lock:
            self._ready(command)
            t0 = time.perf_counter()
            try:
                self._send(command, block)
            except Exception as exc:
                raise self._fail(exc, command) from exc
            if self.log.isEnabledFor(logging.DEBUG):
                self._logged("->", _shown(command, block), t0)

    def read(self, command: str = "<read>") -> str:
        """Read one reply line (terminator stripped); ``command`` names it in errors."""
        with self.lock:
            self._ready(command)
            t0 = time.perf_counter()
            try:
                reply = self._decode(self._read_line(), command)
            except Exception as exc:
                raise self._fail(exc, command) from exc
            if self.log.isEnabledFor(logging.DEBUG):
                self._logged("<-", reply, t0)
            return reply

    def query(self, command: str, block: bytes | None = None) -> str:
        """Write ``command`` and read its reply line, atomically with respect to other threads."""
        with self.lock:
            self.write(command, block)
            return self.read(command)

    def read_block(self, command: str = "<read_block>") -> bytes:
        """Read one IEEE 488.2 block (definite ``#<n><len>`` or indefinite ``#0``) and its ``\\n``."""
        with self.lock:
            self._ready(command)
            t0 = time.perf_counter()
            try:
                payload = self._read_block(command)
            except Exception as exc:
                raise self._fail(exc, command) from exc
            if self.log.isEnabledFor(logging.DEBUG):
                self._logged("<-", f"#block {len(payload)} bytes", t0)
            return payload

    def query_block(self, command: str, block: bytes | None = None) -> bytes:
        """Write ``command`` (optionally with a block argument) and read a block reply."""
        with self.lock:
            self.write(command, block)
            return self.read_block(command)

    def _read_block(self, command: str) -> bytes:
        head = self._read_exact(2)
        ndigits = self._block_digits(head, command)
        if ndigits == 0:  # indefinite length: payload runs to the terminator
            return self._read_line()[:-1]
        count = self._block_length(self._read_exact(ndigits), command)
        payload = self._read_exact(count) if count else b""
        self._check_tail(self._read_exact(1), count, command)
        return payload

    # -- block header checks, shared by transports that read blocks their own way -------------
    def _block_digits(self, head: bytes, command: str) -> int:
        """The ``<n>`` of a ``#<n>`` block header (0: indefinite length)."""
        if head[:1] != b"#" or not head[1:2].isdigit():
            # Possibly an error line or garbage: show it.
            raise InstrumentProtocolError(self.name, command, f"bad block header {head!r}")
        return int(head[1:2])

    def _block_length(self, digits: bytes, command: str) -> int:
        """The payload length from the ``<len>`` digits of a definite-length block."""
        if not digits.isdigit():
            raise InstrumentProtocolError(self.name, command, f"bad block length {digits!r}")
        return int(digits)

    def _check_tail(self, tail: bytes, count: int, command: str) -> None:
        """A definite-length block is followed by exactly ``\\n``."""
        if tail != b"\n":
            raise InstrumentProtocolError(
                self.name, command, f"block of {count} bytes not followed by \\n: {tail!r}"
            )


def _shown(command: str, block: bytes | None) -> str:
    return command if block is None else f"{command}#block {len(block)} bytes"
