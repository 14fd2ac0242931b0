"""Emulated SPAD detector module (ID120-like line protocol, contracts §2.3), over serial.

One module holds Bob's four detectors (channels 1-4 = Z0, Z1, X0, X1, the tagger's inputs).
``CHANNEL 1|2|3|4|ALL`` selects the detector the following commands address (power-on: ALL);
with ALL a set applies to all four and a query answers four comma-separated values.

Line protocol, ``\\n`` terminated, keywords case-insensitive, **one reply line per command**:
a query answers its value, a set answers ``OK``, a failure answers ``ERROR <code>,<text>`` with
SCPI codes (-113 unknown command, -109 missing value, -104 not a number, -222 out of range,
-224 illegal value); ``ERROR?`` returns the last error (``0,No error`` when none) and clears it.

Commands (units as the ID120 driver declares them; reference/instruments.md §3.1):
``*IDN?``, ``CHANNEL <1-4|ALL>`` / ``?``, ``DEADTIME:TIME <ns>`` (0-1,000,000), ``THRESHOLD:VOLTAGE
<uV>`` (0-1,047,000), ``BIAS:VOLTAGE <uV>`` (0-500,000,000), ``EFFICIENCY <percent>`` (0-100),
``REG:TEMP_SET_POINT <m°C>`` (-50,000 to -10,000), ``REG:MEASURED_TEMP?``, ``REG:RUN TRUE|FALSE``,
``REG:STATE?`` (``LOCKED``, ``SETTLING`` or ``OFF``), ``COUNTERS:INTEGRATION_TIME <ms>``
(200-100,000), ``COUNTERS:DETECTION_FREQ?`` (Hz), ``COUNTERS:DETECTION_COUNT?`` (counts in one
integration time), ``ERROR?``, ``*RST``.

A detector clicks only when armed: bias > 0, threshold below its 800 mV avalanche pulses, and
the temperature regulation running and locked (within 0.5 °C of the set point). The
temperature relaxes exponentially (time constant ``TEMP_TAU_S`` of wall time) toward the set
point while regulation runs and toward 25 °C when it does not.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sim_hw.faults import FaultInjector
from sim_hw.scpi import MessageFramer
from sim_hw.scpi_params import ScpiError

if TYPE_CHECKING:
    from qnode.linkmodel import ReceiverParams
    from sim_hw.world import World

log = logging.getLogger(__name__)

N_DETECTORS = 4
AMBIENT_MC = 25_000
LOCK_TOLERANCE_MC = 500
TEMP_TAU_S = 0.2
AVALANCHE_UV = 800_000


@dataclass
class _Thermal:
    """Exponential relaxation of one detector's temperature, evaluated lazily."""

    set_point_mc: int = -40_000
    running: bool = True
    t0: float = field(default_factory=time.monotonic)
    temp0_mc: float = -40_000.0

    def measured_mc(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        target = self.set_point_mc if self.running else AMBIENT_MC
        return target + (self.temp0_mc - target) * math.exp(-(now - self.t0) / TEMP_TAU_S)

    def change(self, set_point_mc: int | None = None, running: bool | None = None) -> None:
        now = time.monotonic()
        self.temp0_mc, self.t0 = self.measured_mc(now), now
        if set_point_mc is not None:
            self.set_point_mc = set_point_mc
        if running is not None:
            self.running = running

    def state(self) -> str:
        if not self.running:
            return "OFF"
        locked = abs(self.measured_mc() - self.set_point_mc) <= LOCK_TOLERANCE_MC
        return "LOCKED" if locked else "SETTLING"


@dataclass
class _Detector:
    dead_time_ns: int
    efficiency_pct: float
    threshold_uv: int = 100_000
    bias_uv: int = 45_000_000
    integration_ms: int = 1000
    thermal: _Thermal = field(default_factory=_Thermal)

    @property
    def armed(self) -> bool:
        return (
            self.bias_uv > 0
            and self.threshold_uv < AVALANCHE_UV
            and self.thermal.state() == "LOCKED"
        )


@dataclass(frozen=True)
class _Setting:
    """A per-detector setting: integer/float range and how to read and write it."""

    lo: float
    hi: float
    get: Callable[[_Detector], object]
    put: Callable[[_Detector, float], None]
    integer: bool = True


_SETTINGS: dict[str, _Setting] = {
    "DEADTIME:TIME": _Setting(0, 1_000_000, lambda d: d.dead_time_ns,
                              lambda d, v: setattr(d, "dead_time_ns", v)),
    "THRESHOLD:VOLTAGE": _Setting(0, 1_047_000, lambda d: d.threshold_uv,
                                  lambda d, v: setattr(d, "threshold_uv", v)),
    "BIAS:VOLTAGE": _Setting(0, 500_000_000, lambda d: d.bias_uv,
                             lambda d, v: setattr(d, "bias_uv", v)),
    "EFFICIENCY": _Setting(0, 100, lambda d: d.efficiency_pct,
                           lambda d, v: setattr(d, "efficiency_pct", v), integer=False),
    "REG:TEMP_SET_POINT": _Setting(-50_000, -10_000, lambda d: d.thermal.set_point_mc,
                                   lambda d, v: d.thermal.change(set_point_mc=v)),
    "COUNTERS:INTEGRATION_TIME": _Setting(200, 100_000, lambda d: d.integration_ms,
                                          lambda d, v: setattr(d, "integration_ms", v)),
}  # fmt: skip


class DetectorModule:
    """Four SPADs behind one serial line; settings feed the world's receiver model."""

    idn = "QNODE,SPAD-MODULE-4CH,SIM0001,1.0"

    def __init__(self, world: World, defaults: ReceiverParams) -> None:
        self.name = "detector"
        self.faults = FaultInjector()
        self._world = world
        self._defaults = defaults
        self.detectors: list[_Detector] = []
        self.selected: list[int] = []
        self.last_error = (0, "No error")
        self.reset()

    def reset(self) -> None:
        eff = self._defaults.efficiencies()
        dead = int(round(self._defaults.dead_time_ns))
        self.detectors = [_Detector(dead, round(100 * e, 6)) for e in eff]
        self.selected = list(range(N_DETECTORS))
        self._world.settings_changed()

    # --- transport interface ---------------------------------------------------------------
    def new_framer(self) -> MessageFramer:
        return MessageFramer(max_block=0)  # plain lines: no binary blocks on this protocol

    def execute(self, msg: bytes) -> bytes | None:
        line = msg.decode("ascii", "replace").strip()
        if not line:
            return None
        try:
            reply = self._dispatch(line)
        except Exception as exc:  # a bug must not take the module down: report it as -200
            error = exc if isinstance(exc, ScpiError) else ScpiError(-200, type(exc).__name__)
            if not isinstance(exc, ScpiError):
                log.exception("detector: %r failed", line)
            self.last_error = (error.code, error.text)
            reply = f"ERROR {error.code},{error.text}"
        return reply.encode() + b"\n"

    def report_injected_error(self, code: int, text: str, reply: bytes | None) -> bytes | None:
        """The ``error`` fault: the command's reply is replaced by an error line."""
        self.last_error = (code, text)
        return f"ERROR {code},{text}\n".encode()

    # --- commands --------------------------------------------------------------------------
    def _dispatch(self, line: str) -> str:
        head, _, arg = line.partition(" ")
        head, arg = head.upper(), arg.strip()
        query = head.endswith("?")
        key = head[:-1] if query else head
        if query and arg:
            raise ScpiError(-108, f"{head} takes no value")
        if key == "*IDN" and query:
            return self.idn
        if key == "*RST" and not query:
            self.reset()
            return "OK"
        if key == "ERROR" and query:
            code, text = self.last_error
            self.last_error = (0, "No error")
            return f"{code},{text}"
        if key == "CHANNEL":
            return self._channel(query, arg)
        if key in _SETTINGS:
            return self._setting(_SETTINGS[key], query, arg)
        if key == "REG:RUN" and not query:
            running = _bool(arg)
            for d in self._chosen():
                d.thermal.change(running=running)
            self._world.settings_changed()
            return "OK"
        if query and key in _READOUTS:
            return ",".join(_READOUTS[key](self, i) for i in self.selected)
        raise ScpiError(-113, head)

    def _chosen(self) -> list[_Detector]:
        return [self.detectors[i] for i in self.selected]

    def _channel(self, query: bool, arg: str) -> str:
        if query:
            return "ALL" if len(self.selected) == N_DETECTORS else str(self.selected[0] + 1)
        if not arg:
            raise ScpiError(-109, "CHANNEL needs 1-4 or ALL")
        if arg.upper() == "ALL":
            self.selected = list(range(N_DETECTORS))
        elif arg in ("1", "2", "3", "4"):
            self.selected = [int(arg) - 1]
        else:
            raise ScpiError(-224, f"channel {arg!r}: 1, 2, 3, 4 or ALL")
        return "OK"

    def _setting(self, setting: _Setting, query: bool, arg: str) -> str:
        if query:
            return ",".join(_fmt(setting.get(d)) for d in self._chosen())
        if not arg:
            raise ScpiError(-109, "value missing")
        try:
            value = float(arg)
        except ValueError:
            raise ScpiError(-104, f"{arg!r} is not a number") from None
        if not (math.isfinite(value) and setting.lo <= value <= setting.hi):
            raise ScpiError(-222, f"{arg} not in [{setting.lo:g}, {setting.hi:g}]")
        for d in self._chosen():
            setting.put(d, int(round(value)) if setting.integer else value)
        self._world.settings_changed()
        return "OK"

    # --- what the world reads --------------------------------------------------------------
    def efficiencies(self) -> tuple[float, ...]:
        return tuple(d.efficiency_pct / 100.0 for d in self.detectors)

    def dead_time_ns(self) -> float:
        """The receiver model has one dead time: the longest of the four."""
        return float(max(d.dead_time_ns for d in self.detectors))

    def armed(self) -> list[bool]:
        return [d.armed for d in self.detectors]


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:g}" if value != int(value) else str(int(value))
    return str(value)


def _bool(arg: str) -> bool:
    word = arg.upper()
    if word in ("TRUE", "1", "ON"):
        return True
    if word in ("FALSE", "0", "OFF"):
        return False
    raise ScpiError(-224 if word else -109, f"{arg!r}: TRUE or FALSE")


def _freq(module: DetectorModule, i: int) -> str:
    return str(int(round(module._world.count_rate(i + 1))))


def _count(module: DetectorModule, i: int) -> str:
    rate = module._world.count_rate(i + 1)
    return str(int(round(rate * module.detectors[i].integration_ms / 1000.0)))


_READOUTS: dict[str, Callable[[DetectorModule, int], str]] = {
    "REG:MEASURED_TEMP": lambda m, i: str(int(round(m.detectors[i].thermal.measured_mc()))),
    "REG:STATE": lambda m, i: m.detectors[i].thermal.state(),
    "REG:RUN": lambda m, i: "TRUE" if m.detectors[i].thermal.running else "FALSE",
    "COUNTERS:DETECTION_FREQ": _freq,
    "COUNTERS:DETECTION_COUNT": _count,
}
