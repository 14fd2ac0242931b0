"""Fault injection for the emulated instruments (docs/contracts.md §2.5).

Kinds, each for the next ``count`` commands or until cleared (``count=None``):
- ``drop``: close the connection when a command arrives (on a pty: hang up, see transport.py);
- ``stall``: swallow the command, never answer (the client times out);
- ``garbage``: replace the next reply with bytes that do not parse (counted per reply);
- ``error``: after the command, report an error (SCPI: pushed on the error queue; the serial
  detector: an ``ERROR <code>,<text>`` line instead of its reply);
- ``slow``: answer after ``delay_ms``.
The transport asks the injector, command by command, what to do (``sim_hw.transport``).
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass

FAULT_KINDS = ("drop", "stall", "garbage", "error", "slow")

# Bytes that no SCPI reply parser accepts: not a number, not a block (no leading '#'),
# an unbalanced quote, and a terminator so the client reads it at once.
GARBAGE = b'~\x15?!garbage"%\x7f\n'


class FaultError(ValueError):
    """An invalid fault request (unknown kind, negative count)."""


@dataclass
class Fault:
    """One active fault: ``remaining`` commands left, or None until cleared."""

    kind: str
    remaining: int | None = None
    delay_ms: float = 500.0
    code: int = -200
    text: str = "injected fault"


class FaultInjector:
    """The faults active on one instrument; thread-safe (the control endpoint may run apart)."""

    def __init__(self) -> None:
        self._faults: dict[str, Fault] = {}
        self._lock = threading.Lock()

    def inject(
        self,
        kind: str,
        count: int | None = None,
        delay_ms: float | None = None,
        code: int | None = None,
        text: str | None = None,
    ) -> Fault:
        """Arm ``kind`` for ``count`` commands (None: until cleared); replaces the same kind."""
        if kind not in FAULT_KINDS:
            raise FaultError(f"unknown fault kind {kind!r}; expected one of {FAULT_KINDS}")
        if count is not None and count < 1:
            raise FaultError(f"count must be >= 1 (or None for until cleared), got {count}")
        if delay_ms is not None and delay_ms < 0:
            raise FaultError(f"delay_ms must be >= 0, got {delay_ms}")
        fault = Fault(kind, count)
        if delay_ms is not None:
            fault.delay_ms = float(delay_ms)
        if code is not None:
            fault.code = int(code)
        if text is not None:
            fault.text = text
        with self._lock:
            self._faults[kind] = fault
        return fault

    def clear(self, kind: str | None = None) -> None:
        """Clear one kind, or every fault."""
        with self._lock:
            if kind is None:
                self._faults.clear()
            else:
                self._faults.pop(kind, None)

    def active(self) -> list[dict]:
        with self._lock:
            return [asdict(f) for f in self._faults.values()]

    def _take(self, kind: str) -> Fault | None:
        with self._lock:
            fault = self._faults.get(kind)
            if fault is None:
                return None
            if fault.remaining is not None:
                fault.remaining -= 1
                if fault.remaining <= 0:
                    del self._faults[kind]
            return fault

    # The transport's questions, in the order it asks them for each command.
    def take_drop_or_stall(self) -> str | None:
        """``drop`` or ``stall`` if one applies to this command (drop first)."""
        for kind in ("drop", "stall"):
            if self._take(kind) is not None:
                return kind
        return None

    def take_delay_s(self) -> float:
        fault = self._take("slow")
        return fault.delay_ms / 1000.0 if fault else 0.0

    def take_error(self) -> Fault | None:
        return self._take("error")

    def take_garbage(self) -> bool:
        return self._take("garbage") is not None
