"""SCPI parameter types and error codes for the emulated instruments (``sim_hw.scpi``).

Each parameter type converts one raw token (``data`` text, quoted ``string`` or ``block`` bytes)
and raises ``ScpiError`` with the standard code: -104 wrong kind of data, -131 unknown unit,
-222 number out of range, -224 value not among the allowed ones.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

ERROR_TEXTS: dict[int, str] = {
    0: "No error",
    -100: "Command error",
    -102: "Syntax error",
    -104: "Data type error",
    -108: "Parameter not allowed",
    -109: "Missing parameter",
    -113: "Undefined header",
    -131: "Invalid suffix",
    -200: "Execution error",
    -221: "Settings conflict",
    -222: "Data out of range",
    -224: "Illegal parameter value",
    -350: "Queue overflow",
    -410: "Query INTERRUPTED",
}


class ScpiError(Exception):
    """An SCPI error with its standard code; ``detail`` is the device-dependent part."""

    def __init__(self, code: int, detail: str = "") -> None:
        self.code = code
        self.detail = detail
        super().__init__(self.text)

    @property
    def text(self) -> str:
        base = ERROR_TEXTS.get(self.code, "Error")
        return f"{base};{self.detail}" if self.detail else base


@dataclass(frozen=True)
class Token:
    """A raw parameter: ``kind`` is ``data`` (text), ``string`` (unquoted text) or ``block``."""

    kind: str
    value: Any


# Unit suffixes with their multipliers to the parameter's base unit (SCPI-99 vol. 1 §7.7.3).
# "MHZ"/"MAHZ" is megahertz and "MOHM" megaohm by SCPI's special rule; not needed here.
DECIBEL = {"DB": 1.0, "MDB": 1e-3}
METRE = {"M": 1.0, "MM": 1e-3, "UM": 1e-6, "NM": 1e-9, "PM": 1e-12}
HERTZ = {"HZ": 1.0, "KHZ": 1e3, "MHZ": 1e6, "MAHZ": 1e6, "GHZ": 1e9}
VOLT = {"V": 1.0, "MV": 1e-3, "UV": 1e-6}
PICOSECOND = {"PS": 1.0, "NS": 1e3, "US": 1e6, "MS": 1e9, "S": 1e12}

_NUMBER = re.compile(r"([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)\s*([A-Za-z]*)")
_INT = re.compile(r"[+-]?\d+")
_NONDECIMAL = {"H": 16, "B": 2, "Q": 8}
_LIMIT_WORDS = {"MIN": "min", "MINIMUM": "min", "MAX": "max", "MAXIMUM": "max"}
_LIMIT_WORDS.update({"DEF": "default", "DEFAULT": "default"})


class Param:
    """Base of the parameter types."""

    def convert(self, token: Token) -> Any:
        raise NotImplementedError

    def limit_param(self) -> Param | None:
        """The type accepted by the query form (``X? MIN``), or None when it takes nothing."""
        return None


def _data(token: Token, what: str) -> str:
    if token.kind != "data":
        raise ScpiError(-104, f"{what} expected, got {token.kind}")
    return token.value


def parse_number(text: str, units: dict[str, float] | None = None) -> float:
    """NRf with an optional unit suffix, or ``#H``/``#B``/``#Q`` non-decimal numeric data."""
    if text[:1] == "#" and text[1:2].upper() in _NONDECIMAL:
        try:
            return float(int(text[2:], _NONDECIMAL[text[1:2].upper()]))
        except ValueError:
            raise ScpiError(-104, f"bad non-decimal number {text!r}") from None
    m = _NUMBER.fullmatch(text)
    if m is None:
        raise ScpiError(-104, f"number expected, got {text!r}")
    value = float(m.group(1))
    unit = m.group(2).upper()
    if unit:
        if not units or unit not in units:
            raise ScpiError(-131, f"unit {m.group(2)!r}")
        value *= units[unit]
    return value


@dataclass
class Number(Param):
    """A numeric setting in ``[minimum, maximum]``, with ``MIN|MAX|DEF`` and unit suffixes."""

    minimum: float
    maximum: float
    default: float | None = None
    units: dict[str, float] | None = None
    integer: bool = False

    def convert(self, token: Token) -> float | int:
        text = _data(token, "number")
        limit = _LIMIT_WORDS.get(text.upper())
        if limit is not None:
            return self._limit(limit)
        if self.integer and _INT.fullmatch(text):
            value: float | int = int(text)  # exact beyond 2^53 (slot numbers)
        else:
            value = parse_number(text, self.units)
            if not math.isfinite(value):
                raise ScpiError(-222, f"{text} is not finite")
        if not self.minimum <= value <= self.maximum:
            raise ScpiError(-222, f"{text} not in [{self.minimum:g}, {self.maximum:g}]")
        if self.integer:
            return int(round(value))
        return float(value)

    def _limit(self, which: str) -> float | int:
        if which == "default" and self.default is None:
            raise ScpiError(-224, "no default value")
        value = {"min": self.minimum, "max": self.maximum, "default": self.default}[which]
        return int(value) if self.integer else float(value)

    def limit_param(self) -> Param:
        return _Limit(self)


@dataclass
class _Limit(Param):
    number: Number

    def convert(self, token: Token) -> float | int:
        limit = _LIMIT_WORDS.get(_data(token, "MIN|MAX|DEF").upper())
        if limit is None:
            raise ScpiError(-224, f"{token.value!r}: MIN, MAX or DEF expected")
        return self.number._limit(limit)


def Integer(minimum: int, maximum: int, default: int | None = None) -> Number:  # noqa: N802
    """An integer setting (rounded from NRf), with ``MIN|MAX|DEF``."""
    return Number(minimum, maximum, default, integer=True)


@dataclass
class Boolean(Param):
    """``ON|OFF|1|0`` (a number is rounded; non-zero is true, SCPI-99 §7.3)."""

    def convert(self, token: Token) -> bool:
        text = _data(token, "boolean").upper()
        if text == "ON":
            return True
        if text == "OFF":
            return False
        try:
            return round(float(text)) != 0
        except ValueError:
            raise ScpiError(-224, f"{token.value!r}: ON, OFF, 1 or 0 expected") from None


@dataclass
class Choice(Param):
    """Character data from a fixed set, each given as a pattern (``RISing`` = ``RIS|RISING``)."""

    options: tuple[str, ...]
    _table: dict[str, str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._table = {}
        for option in self.options:
            long = option.upper()
            short = "".join(ch for ch in option if ch.isupper() or ch.isdigit()) or long
            self._table[long] = long
            self._table[short] = long

    def convert(self, token: Token) -> str:
        text = _data(token, "character data").upper()
        if text not in self._table:
            raise ScpiError(-224, f"{token.value!r} not one of {', '.join(self.options)}")
        return self._table[text]


@dataclass
class Block(Param):
    """A definite- or indefinite-length block argument; ``multiple_of`` checks its length."""

    multiple_of: int = 1

    def convert(self, token: Token) -> bytes:
        if token.kind != "block":
            raise ScpiError(-104, "block data expected")
        if len(token.value) % self.multiple_of:
            raise ScpiError(
                -224, f"block length {len(token.value)} not a multiple of {self.multiple_of}"
            )
        return token.value


@dataclass
class Hex64(Param):
    """A 64-bit unsigned value given as ``#H<hex>``, ``0x<hex>``, bare hex or a quoted string."""

    def convert(self, token: Token) -> int:
        if token.kind == "block":
            raise ScpiError(-104, "hexadecimal value expected")
        text = str(token.value).strip()
        upper = text.upper()
        for prefix in ("#H", "0X"):
            if upper.startswith(prefix):
                text = text[2:]
                break
        if not text or len(text) > 16 or re.fullmatch(r"[0-9A-Fa-f]+", text) is None:
            raise ScpiError(
                -224, f"{len(token.value)} digits: up to 16 hexadecimal digits expected"
            )
        return int(text, 16)
