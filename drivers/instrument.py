"""Driver base classes and small declarative properties (PyMeasure/QCoDeS style).

``Control`` (get and set), ``Measurement`` (get only) and ``Setting`` (set only) turn one SCPI
command pair into a Python attribute. A set goes through ``Instrument.set``, which checks the
instrument's error queue afterwards (``check_errors``, on by default) and raises
``InstrumentCommandError`` with the instrument's code and text. No I/O happens in ``__init__``:
the connection opens on first use or in ``open()`` / ``with``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from drivers.adapter import Adapter
from drivers.errors import InstrumentCommandError, InstrumentProtocolError
from drivers.transports import make_adapter

_SCPI_ERROR = re.compile(r'^\s*([+-]?\d+)\s*,\s*"?(.*?)"?\s*$')


def scpi_bool(text: str) -> bool:
    """Parse an SCPI boolean reply (``1``/``0``/``ON``/``OFF``)."""
    value = text.strip().upper()
    if value in ("1", "ON", "TRUE"):
        return True
    if value in ("0", "OFF", "FALSE"):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def on_off(value: Any) -> str:
    """Format a truth value as SCPI ``ON``/``OFF``."""
    return "ON" if bool(value) else "OFF"


def _num(value: Any) -> str:
    return format(value, ".12g") if isinstance(value, float) else str(value)


class _Property:
    """Base of the declarative properties: one command pair, a parser, a formatter."""

    def __init__(
        self,
        get_cmd: str | None,
        set_cmd: str | None,
        doc: str,
        *,
        cast: Callable[[str], Any] = float,
        fmt: Callable[[Any], str] = _num,
        timeout_s: float | None = None,
    ) -> None:
        self.get_cmd = get_cmd
        self.timeout_s = timeout_s  # at least this long for this query (slow readouts)
        self.set_cmd = set_cmd
        self.cast = cast
        self.fmt = fmt
        self.__doc__ = doc
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Instrument | None, owner: type | None = None) -> Any:
        if obj is None:
            return self
        if self.get_cmd is None:
            raise AttributeError(f"{self.name} is set-only")
        if self.timeout_s is None:
            return obj.ask(self.get_cmd, self.cast)
        with obj.adapter.timeout(self.timeout_s):
            return obj.ask(self.get_cmd, self.cast)

    def __set__(self, obj: Instrument, value: Any) -> None:
        if self.set_cmd is None:
            raise AttributeError(f"{self.name} is read-only")
        obj.set(self.set_cmd.format(self.fmt(value)), remember=(self.name, value))


class Control(_Property):
    """A parameter that can be read and set (``get_cmd``, ``set_cmd`` with ``{}``)."""

    def __init__(self, get_cmd: str, set_cmd: str, doc: str, **kwargs: Any) -> None:
        super().__init__(get_cmd, set_cmd, doc, **kwargs)


class Measurement(_Property):
    """A value that can only be read."""

    def __init__(self, get_cmd: str, doc: str, **kwargs: Any) -> None:
        super().__init__(get_cmd, None, doc, **kwargs)


class Setting(_Property):
    """A parameter that can only be set."""

    def __init__(self, set_cmd: str, doc: str, **kwargs: Any) -> None:
        super().__init__(None, set_cmd, doc, **kwargs)


class Instrument:
    """Base of every driver: an adapter, typed queries, checked sets, optional replay.

    ``resource`` is a resource string (see ``drivers.transports``) or an ``Adapter``.
    ``replay_on_reconnect`` re-sends every property set so far after a reconnect (for
    instruments that lose their state with the connection).
    """

    default_name = "instrument"

    def __init__(
        self,
        resource: str | Adapter,
        name: str | None = None,
        *,
        check_errors: bool = True,
        replay_on_reconnect: bool = False,
        **adapter_kwargs: Any,
    ) -> None:
        self.name = name or self.default_name
        if isinstance(resource, Adapter):
            self.adapter = resource
        else:
            self.adapter = make_adapter(resource, self.name, **adapter_kwargs)
        self.check_errors = check_errors
        self.replay_on_reconnect = replay_on_reconnect
        self._applied: dict[str, tuple[str, Any]] = {}
        self.adapter.on_reconnect(self._replay)

    # -- lifecycle --------------------------------------------------------------------------
    def open(self) -> Instrument:
        """Connect now (otherwise the first exchange connects)."""
        self.adapter.open()
        return self

    def close(self) -> None:
        """Disconnect."""
        self.adapter.close()

    def __enter__(self) -> Instrument:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- exchanges --------------------------------------------------------------------------
    def write(self, command: str) -> None:
        """Send a command without checking the error queue."""
        self.adapter.write(command)

    def ask(self, command: str, cast: Callable[[str], Any] = str) -> Any:
        """Query and parse the reply with ``cast``; a reply that does not parse is a protocol error."""
        with self.adapter.lock:
            reply = self.adapter.query(command)
            self._raise_if_error_reply(reply, command)
            try:
                return cast(reply)
            except (ValueError, TypeError) as exc:
                self.adapter.mark_broken()  # garbage: resynchronise before the next exchange
                raise InstrumentProtocolError(
                    self.name, command, f"cannot parse reply {reply[:60]!r}: {exc}"
                ) from None

    def set(self, command: str, remember: tuple[str, Any] | None = None) -> None:
        """Send a setting command, then raise if the instrument reports an error."""
        with self.adapter.lock:
            self.adapter.write(command)
            if self.check_errors:
                self.raise_errors(command)
            if remember is not None:
                self._applied[remember[0]] = (command, remember[1])

    def _raise_if_error_reply(self, reply: str, command: str) -> None:
        """Instruments that answer an error in-line (the detector) override this."""

    # -- error queue ------------------------------------------------------------------------
    def next_error(self) -> tuple[int, str]:
        """Pop one entry of the error queue: ``(code, text)``, ``(0, "No error")`` when empty."""
        raise NotImplementedError

    def raise_errors(self, command: str) -> None:
        """Drain the error queue; raise ``InstrumentCommandError`` for the first entry found."""
        first: tuple[int, str] | None = None
        more = 0
        for _ in range(64):  # a queue holds 32 entries + overflow: bounded drain
            code, text = self.next_error()
            if code == 0:
                break
            if first is None:
                first = (code, text)
            else:
                more += 1
        if first is not None:
            text = first[1] if not more else f"{first[1]} (+{more} more)"
            raise InstrumentCommandError(self.name, command, first[0], text)

    def errors(self) -> list[tuple[int, str]]:
        """Read and clear the whole error queue."""
        found = []
        for _ in range(64):
            code, text = self.next_error()
            if code == 0:
                break
            found.append((code, text))
        return found

    def _replay(self) -> None:
        if not self.replay_on_reconnect:
            return
        for command, _value in list(self._applied.values()):
            self.set(command)

    @property
    def applied(self) -> dict[str, Any]:
        """The property values set through this driver object, by property name."""
        return {name: value for name, (_cmd, value) in self._applied.items()}


class ScpiInstrument(Instrument):
    """An IEEE 488.2 / SCPI instrument with the ``SYST:ERR?`` FIFO error queue."""

    def next_error(self) -> tuple[int, str]:
        """Pop one entry of ``SYST:ERR?``."""
        return self.ask("SYST:ERR?", parse_scpi_error)

    @property
    def idn(self) -> str:
        """Measure the identification string (``*IDN?``: maker,model,serial,firmware)."""
        return self.ask("*IDN?")

    def clear_status(self) -> None:
        """Clear the status registers and the error queue (``*CLS``)."""
        self.write("*CLS")

    def reset(self) -> None:
        """Reset the instrument to its defaults (``*RST``) and check for errors."""
        self.set("*RST")

    def wait_complete(self) -> bool:
        """Block until pending operations finish (``*OPC?``)."""
        return self.ask("*OPC?", scpi_bool)


def parse_scpi_error(reply: str) -> tuple[int, str]:
    """Parse ``<code>,"<text>"``."""
    match = _SCPI_ERROR.match(reply)
    if not match:
        raise ValueError(f"not an SCPI error entry: {reply!r}")
    return int(match.group(1)), match.group(2)
