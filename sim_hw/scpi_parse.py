"""SCPI message framing and parsing (IEEE 488.2 §7, definite/indefinite blocks) for sim_hw.

``MessageFramer`` cuts a byte stream into program messages; ``parse_message`` splits one message
into units (header + raw parameter tokens). Both honour definite-length blocks, whose payload may
hold ``\n``, ``;`` and ``,``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass

from sim_hw.scpi_params import ScpiError, Token

log = logging.getLogger(__name__)


class MessageFramer:
    """Cut a byte stream into program messages at ``\\n``, skipping over definite-length blocks.

    A block ``#<d><len><bytes>`` may contain ``\\n``; the framer waits for all ``len`` bytes.
    A header announcing more than ``max_block`` bytes is not treated as a block (the parser then
    reports a syntax error), and a message longer than ``max_block + max_text`` is discarded, so
    bad input cannot make the server buffer forever.
    """

    _SPECIAL = re.compile(rb"[\n#]")

    def __init__(self, max_block: int = 1 << 29, max_text: int = 1 << 20) -> None:
        self._buf = bytearray()
        self._pos = 0
        self._max_block = max_block
        self._max_buffer = max_block + max_text
        self.discarded = 0  # bytes thrown away because a message grew beyond any limit

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        messages: list[bytes] = []
        buf = self._buf
        while True:
            m = self._SPECIAL.search(buf, self._pos)
            if m is None:
                self._pos = len(buf)
                break
            i = m.start()
            if buf[i] == 0x0A:
                end = i - 1 if i > 0 and buf[i - 1] == 0x0D else i
                messages.append(bytes(buf[:end]))
                del buf[: i + 1]
                self._pos = 0
                continue
            skip = _block_extent(buf, i, self._max_block)
            if skip is None:  # header or payload incomplete: wait for more bytes
                self._pos = i
                break
            self._pos = i + skip
        if len(buf) > self._max_buffer:  # no terminator in sight: refuse to buffer forever
            self.discarded += len(buf)
            log.warning("discarding %d bytes without a message terminator", len(buf))
            buf.clear()
            self._pos = 0
        return messages


def _block_extent(buf: bytes | bytearray, i: int, max_block: int) -> int | None:
    """Bytes from ``#`` at ``i`` to the end of a definite block, 1 if not a block, None if short."""
    if i + 1 >= len(buf):
        return None
    d = buf[i + 1] - 0x30
    if not 1 <= d <= 9:
        return 1
    if i + 2 + d > len(buf):
        return None
    digits = bytes(buf[i + 2 : i + 2 + d])
    if not digits.isdigit() or int(digits) > max_block:
        return 1
    total = 2 + d + int(digits)
    return total if i + total <= len(buf) else None


def definite_block(payload: bytes | bytearray | memoryview) -> bytes:
    """IEEE 488.2 definite-length block ``#<d><len><payload>``."""
    n = str(len(payload)).encode()
    return b"".join((b"#", str(len(n)).encode(), n, memoryview(payload).cast("B")))


@dataclass
class Unit:
    """One message unit: header text (as sent) and raw parameter tokens."""

    header: str
    params: list[Token]


def parse_message(msg: bytes) -> Iterator[Unit]:
    """Yield the message units of a program message; raise ``ScpiError(-102)`` at a bad one."""
    n = len(msg)
    i = 0
    while i <= n:
        while i < n and msg[i] in b" \t":
            i += 1
        j = i
        while j < n and msg[j] not in b" \t;":
            j += 1
        header = msg[i:j].decode("ascii", "replace")
        params: list[Token] = []
        i = j
        while i < n and msg[i] in b" \t":
            i += 1
        if i < n and msg[i] != 0x3B:
            i = _parse_params(msg, i, params)
        if header or params:
            if not header:
                raise ScpiError(-102, "missing header")
            yield Unit(header, params)
        elif i < n or j < n:
            raise ScpiError(-102, "empty message unit")
        i += 1  # skip ';'


def _parse_params(msg: bytes, i: int, out: list[Token]) -> int:
    """Parse ``p1, p2, ...`` from ``i`` up to ``;`` or the end; return the index of the stop."""
    n = len(msg)
    while True:
        while i < n and msg[i] in b" \t":
            i += 1
        if i >= n or msg[i] in b",;":
            raise ScpiError(-102, "empty parameter")
        c = msg[i]
        if c in b"\"'":
            i = _parse_string(msg, i, out)
        elif c == 0x23 and i + 1 < n and 0x30 <= msg[i + 1] <= 0x39:
            i = _parse_block(msg, i, out)
        else:
            j = i
            while j < n and msg[j] not in b",;":
                j += 1
            text = msg[i:j].strip().decode("ascii", "replace")
            out.append(Token("data", text))
            i = j
        while i < n and msg[i] in b" \t":
            i += 1
        if i >= n or msg[i] == 0x3B:
            return i
        if msg[i] != 0x2C:
            raise ScpiError(-102, "expected ',' between parameters")
        i += 1


def _parse_string(msg: bytes, i: int, out: list[Token]) -> int:
    quote = msg[i]
    j = i + 1
    parts = bytearray()
    while True:
        k = msg.find(bytes([quote]), j)
        if k < 0:
            raise ScpiError(-102, "unterminated string")
        parts += msg[j:k]
        if k + 1 < len(msg) and msg[k + 1] == quote:  # doubled quote is a literal quote
            parts.append(quote)
            j = k + 2
            continue
        out.append(Token("string", parts.decode("utf-8", "replace")))
        return k + 1


def _parse_block(msg: bytes, i: int, out: list[Token]) -> int:
    d = msg[i + 1] - 0x30
    if d == 0:  # indefinite block: everything up to the terminator (end of message)
        out.append(Token("block", bytes(msg[i + 2 :])))
        return len(msg)
    digits = msg[i + 2 : i + 2 + d]
    if len(digits) != d or not digits.isdigit():
        raise ScpiError(-102, "bad block header")
    length = int(digits)
    start = i + 2 + d
    if start + length > len(msg):
        raise ScpiError(-102, "block shorter than its header says")
    out.append(Token("block", bytes(msg[start : start + length])))
    return start + length
