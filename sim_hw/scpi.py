"""SCPI-99 / IEEE 488.2 engine shared by the emulated instruments.

Small parts, each with one job (in the manner of pyvisa-sim's ``ErrorQueue``/``StatusRegister``):
``ErrorQueue`` (FIFO, 32 entries, -350 on overflow), ``StatusRegisters`` (ESR/ESE/SRE/STB),
``MessageFramer`` and ``parse_message`` (in ``sim_hw.scpi_parse``: byte stream -> program
messages -> units, honouring definite-length blocks that may hold ``\\n``), parameter types (in
``sim_hw.scpi_params``), ``CommandTree`` (header patterns with short/long forms,
optional nodes ``[...]`` and numeric suffixes ``<n>``) and ``ScpiDevice`` that binds them and adds
the common commands. An instrument subclasses ``ScpiDevice`` and declares its tree.

Grammar choices (SCPI-99 vol. 1 §6, IEEE 488.2 §7):
- keywords are case-insensitive; each matches its short form (the upper-case letters of the
  pattern) or its long form exactly, nothing in between;
- in ``A:B 1;C 2`` the header ``C`` is relative to ``A:`` (the previous header minus its last
  node); ``;:C`` starts again from the root; common commands (``*XXX``) leave the path as is;
- a command error (-1xx) discards the rest of the program message; an execution error (-2xx)
  does not.
"""

from __future__ import annotations

import logging
import re
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sim_hw.faults import FaultInjector
from sim_hw.scpi_params import ERROR_TEXTS, Integer, Param, ScpiError, Token
from sim_hw.scpi_parse import MessageFramer, Unit, definite_block, parse_message

__all__ = [
    "ERROR_TEXTS",
    "CommandTree",
    "ErrorQueue",
    "MessageFramer",
    "ScpiDevice",
    "ScpiError",
    "StatusRegisters",
    "Token",
    "definite_block",
    "parse_message",
]

log = logging.getLogger(__name__)


class ErrorQueue:
    """FIFO of ``(code, text)``; when full, the newest entry becomes -350 (SCPI-99 §21.8.1)."""

    def __init__(self, capacity: int = 32) -> None:
        self._capacity = capacity
        self._queue: deque[tuple[int, str]] = deque()

    def push(self, code: int, text: str) -> None:
        if len(self._queue) >= self._capacity:
            self._queue[-1] = (-350, ERROR_TEXTS[-350])
        else:
            self._queue.append((code, text))

    def pop(self) -> tuple[int, str]:
        return self._queue.popleft() if self._queue else (0, ERROR_TEXTS[0])

    def clear(self) -> None:
        self._queue.clear()

    def __len__(self) -> int:
        return len(self._queue)


# ESR bits (IEEE 488.2 §11.5.1): which class of error sets which bit.
ESR_OPC, ESR_QYE, ESR_DDE, ESR_EXE, ESR_CME = 0x01, 0x04, 0x08, 0x10, 0x20


class StatusRegisters:
    """Standard event status register with its enable mask, and the service request enable."""

    def __init__(self) -> None:
        self.esr = 0
        self.ese = 0
        self.sre = 0

    def record_error(self, code: int) -> None:
        if -199 <= code <= -100:
            self.esr |= ESR_CME
        elif -299 <= code <= -200:
            self.esr |= ESR_EXE
        elif -399 <= code <= -300 or code > 0:
            self.esr |= ESR_DDE
        elif -499 <= code <= -400:
            self.esr |= ESR_QYE

    def read_esr(self) -> int:
        value, self.esr = self.esr, 0
        return value

    def stb(self, error_queue_nonempty: bool) -> int:
        # bit 2: error/event queue not empty (SCPI), bit 5: ESB, bit 6: MSS
        value = (0x04 if error_queue_nonempty else 0) | (0x20 if self.esr & self.ese else 0)
        if value & self.sre & 0xBF:
            value |= 0x40
        return value

    def clear(self) -> None:
        self.esr = 0


# ---------------------------------------------------------------------------------------------
# Header patterns and the command tree

_PATTERN_NODE = re.compile(r"(\[)?:?([A-Za-z_*]+)(<n>)?(\])?")
_KEYWORD = re.compile(r"([A-Za-z_][A-Za-z_]*?)(\d*)")


@dataclass(frozen=True)
class _Node:
    short: str
    long: str
    optional: bool
    suffix: bool


def _compile_pattern(pattern: str) -> tuple[_Node, ...]:
    nodes = []
    for m in _PATTERN_NODE.finditer(pattern):
        word = m.group(2)
        short = "".join(ch for ch in word if ch.isupper() or ch == "_") or word.upper()
        nodes.append(_Node(short, word.upper(), bool(m.group(1)), bool(m.group(3))))
    if not nodes:
        raise ValueError(f"empty header pattern {pattern!r}")
    return tuple(nodes)


def _match(nodes: Sequence[_Node], keywords: Sequence[tuple[str, str]]) -> list[int] | None:
    """Match upper-cased ``(name, suffix)`` keywords against nodes; return numeric suffixes."""

    def walk(ni: int, ki: int, suffixes: list[int]) -> list[int] | None:
        if ni == len(nodes):
            return suffixes if ki == len(keywords) else None
        node = nodes[ni]
        if ki < len(keywords):
            name, suffix = keywords[ki]
            if name in (node.short, node.long) and (node.suffix or not suffix):
                extra = [int(suffix) if suffix else 1] if node.suffix else []
                found = walk(ni + 1, ki + 1, suffixes + extra)
                if found is not None:
                    return found
        if node.optional:
            return walk(ni + 1, ki, suffixes + ([1] if node.suffix else []))
        return None

    return walk(0, 0, [])


@dataclass
class Command:
    """A header (set or query form) with its parameter types and handler.

    The handler is called as ``handler(*suffixes, *converted_params)`` and returns the reply
    (``None`` for none, ``bytes`` for a ready block, or a value the device formats).
    """

    nodes: tuple[_Node, ...]
    query: bool
    handler: Callable[..., Any]
    params: tuple[Param, ...]
    optional_params: int = 0


class CommandTree:
    """The headers an instrument understands, with a lookup cache (headers repeat a lot)."""

    def __init__(self) -> None:
        self._commands: list[Command] = []
        self._common: dict[tuple[str, bool], Command] = {}
        self._cache: dict[tuple, tuple[Command, list[int]] | None] = {}

    def add(
        self,
        header: str,
        handler: Callable[..., Any],
        params: Sequence[Param] = (),
        optional_params: int = 0,
    ) -> None:
        """Register ``header`` (ending in ``?`` for the query form)."""
        query = header.endswith("?")
        name = header.rstrip("?")
        if name.startswith("*"):  # IEEE 488.2 common command: one fixed word
            command = Command((), query, handler, tuple(params), optional_params)
            self._common[(name.upper(), query)] = command
            return
        nodes = _compile_pattern(name)
        self._commands.append(Command(nodes, query, handler, tuple(params), optional_params))
        self._cache.clear()

    def setting(
        self, header: str, param: Param, get: Callable[..., Any], set: Callable[..., Any]
    ) -> None:
        """Register ``header <value>`` and ``header?`` (which also accepts ``MIN|MAX|DEF``)."""
        self.add(header, set, [param])
        limit = param.limit_param()
        if limit is not None:
            self.add(header + "?", lambda *a: _query_with_limit(get, a), [limit], 1)
        else:
            self.add(header + "?", get)

    def lookup(self, keywords: Sequence[str], query: bool) -> tuple[Command, list[int]]:
        key = (tuple(keywords), query)
        if key not in self._cache:
            if len(self._cache) > 4096:  # junk headers must not grow the cache without bound
                self._cache.clear()
            self._cache[key] = self._find(keywords, query)
        found = self._cache[key]
        if found is None:
            raise ScpiError(-113, ":".join(keywords) + ("?" if query else ""))
        return found

    def _find(self, keywords: Sequence[str], query: bool) -> tuple[Command, list[int]] | None:
        if keywords and keywords[0].startswith("*"):
            common = self._common.get((keywords[0].upper(), query))
            return (common, []) if common is not None and len(keywords) == 1 else None
        split: list[tuple[str, str]] = []
        for word in keywords:
            m = _KEYWORD.fullmatch(word)
            if m is None:
                return None
            split.append((m.group(1).upper(), m.group(2)))
        for command in self._commands:
            if command.query == query:
                suffixes = _match(command.nodes, split)
                if suffixes is not None:
                    return command, suffixes
        return None


def _query_with_limit(get: Callable[..., Any], args: tuple) -> Any:
    """``X? MIN`` returns the limit; ``X?`` the current value (the last arg is the limit or None)."""
    *suffixes, limit = args
    return get(*suffixes) if limit is None else limit


# ---------------------------------------------------------------------------------------------
# The device


class ScpiDevice:
    """Binds a command tree, error queue and status registers; answers program messages.

    Subclasses set ``idn`` and register their commands in ``build(tree)``; ``reset()`` is ``*RST``.
    Floats are formatted by ``format_float`` (override for instrument-specific styles).
    """

    idn = "QNODE,SCPI-DEVICE,0,0"

    def __init__(self, name: str = "device") -> None:
        self.name = name
        self.faults = FaultInjector()
        self.errors = ErrorQueue()
        self.status = StatusRegisters()
        self.tree = CommandTree()
        self._add_common(self.tree)
        self.build(self.tree)

    def build(self, tree: CommandTree) -> None:
        """Register the instrument's commands."""

    def reset(self) -> None:
        """``*RST``: back to the power-on settings."""

    def format_float(self, value: float) -> str:
        return repr(float(value)) if value == value else "9.91E+37"  # SCPI NaN

    def new_framer(self) -> MessageFramer:
        return MessageFramer()

    def report_injected_error(self, code: int, text: str, reply: bytes | None) -> bytes | None:
        """The ``error`` fault: the command ran, and an error lands in the queue."""
        self.push_error(code, text)
        return reply

    def push_error(self, code: int, detail: str = "") -> None:
        error = ScpiError(code, detail)
        self.errors.push(code, error.text)
        self.status.record_error(code)

    def execute(self, msg: bytes) -> bytes | None:
        """Run one program message; return the response message (with ``\\n``) or None."""
        replies: list[bytes] = []
        path: list[str] = []
        try:
            for unit in parse_message(msg):
                try:
                    path = self._execute_unit(unit, path, replies)
                except ScpiError as exc:
                    self.push_error(exc.code, exc.detail)
                    if exc.code <= -100 and exc.code > -200:
                        break
        except ScpiError as exc:  # syntax error in the message itself
            self.push_error(exc.code, exc.detail)
        if not replies:
            return None
        parts = [b";"] * (2 * len(replies))
        parts[::2] = replies
        parts[-1] = b"\n"
        return b"".join(parts)  # one copy, however large a block reply is

    def _execute_unit(self, unit: Unit, path: list[str], replies: list[bytes]) -> list[str]:
        header = unit.header
        query = header.endswith("?")
        name = header[:-1] if query else header
        if name.startswith("*"):
            keywords = [name.upper()]
            next_path = path
        elif name.startswith(":"):
            keywords = name[1:].split(":")
            next_path = keywords[:-1]
        else:
            keywords = path + name.split(":")
            next_path = keywords[:-1]
        command, suffixes = self.tree.lookup(keywords, query)
        args = _convert(command, unit.params)
        try:
            reply = command.handler(*suffixes, *args)
        except ScpiError:
            raise
        except Exception as exc:  # a bug must not take the instrument down: report it as -200
            log.exception("%s: %s failed", self.name, header)
            raise ScpiError(-200, f"{type(exc).__name__}: {exc}") from exc
        if query and reply is not None:
            replies.append(self._format(reply))
        return next_path

    def _format(self, value: Any) -> bytes:
        if isinstance(value, bytes):
            return value
        if isinstance(value, bool):
            return b"1" if value else b"0"
        if isinstance(value, int):
            return str(value).encode()
        if isinstance(value, float):
            return self.format_float(value).encode()
        return str(value).encode()

    def _add_common(self, tree: CommandTree) -> None:
        byte = Integer(0, 255)
        tree.add("*IDN?", lambda: self.idn)
        tree.add("*RST", self.reset)
        tree.add("*CLS", self._cls)
        tree.add("*OPC", self._opc)
        tree.add("*OPC?", lambda: 1)
        tree.add("*WAI", lambda: None)
        tree.add("*TST?", lambda: 0)
        tree.add("*ESR?", self.status.read_esr)
        tree.add("*ESE", lambda v: setattr(self.status, "ese", v), [byte])
        tree.add("*ESE?", lambda: self.status.ese)
        tree.add("*SRE", lambda v: setattr(self.status, "sre", v & 0xBF), [byte])
        tree.add("*SRE?", lambda: self.status.sre)
        tree.add("*STB?", lambda: self.status.stb(len(self.errors) > 0))
        tree.add("SYSTem:ERRor[:NEXT]?", self._next_error)
        tree.add("SYSTem:ERRor:COUNt?", lambda: len(self.errors))
        tree.add("SYSTem:VERSion?", lambda: "1999.0")

    def _cls(self) -> None:
        self.errors.clear()
        self.status.clear()

    def _opc(self) -> None:
        self.status.esr |= ESR_OPC

    def _next_error(self) -> str:
        code, text = self.errors.pop()
        return f'{code},"{text}"'


def _convert(command: Command, tokens: list[Token]) -> list[Any]:
    params = command.params
    required = len(params) - command.optional_params
    if len(tokens) > len(params):
        raise ScpiError(-108, f"{len(tokens)} parameters, at most {len(params)} allowed")
    if len(tokens) < required:
        raise ScpiError(-109, f"{required} parameter(s) needed")
    values = [param.convert(token) for param, token in zip(params, tokens, strict=False)]
    values.extend([None] * (len(params) - len(tokens)))
    return values
