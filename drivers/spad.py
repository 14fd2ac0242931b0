"""ID120-like SPAD detector module over a serial line (docs/contracts.md §2.3, sim_hw/detector.py).

Line protocol, ``\\n`` terminated, one reply line per command: a query answers its value (with
``CHANNEL ALL`` selected, one comma-separated value per detector), a set answers ``OK``, a
failure answers ``ERROR <code>,<text>`` (the driver raises ``InstrumentCommandError``). Units
are the ID120's: thresholds and bias in uV, temperatures in m°C, integration time in ms.
"""

from __future__ import annotations

import re
from typing import Any

from drivers.errors import InstrumentCommandError, InstrumentProtocolError
from drivers.instrument import Control, Instrument, Measurement

_ERROR_LINE = re.compile(r"^\s*ERROR\s+([+-]?\d+)\s*,\s*\"?(.*?)\"?\s*$", re.IGNORECASE)
_QUEUE_ENTRY = re.compile(r"^\s*([+-]?\d+)\s*,\s*\"?(.*?)\"?\s*$")


def values(text: str) -> float | tuple[float, ...]:
    """One number, or a tuple of numbers when the module answers for several detectors."""
    parts = [float(p) for p in text.split(",")]
    return parts[0] if len(parts) == 1 else tuple(parts)


def int_values(text: str) -> int | tuple[int, ...]:
    """Like ``values`` for integer readouts."""
    parts = [int(p) for p in text.split(",")]
    return parts[0] if len(parts) == 1 else tuple(parts)


def _true_false(value: object) -> str:
    return "TRUE" if value else "FALSE"


class SpadDetector(Instrument):
    """ID120-like single-photon avalanche diode module (one line, up to four detectors)."""

    default_name = "detector"

    channel = Control(
        "CHANNEL?",
        "CHANNEL {}",
        "Control which detector the next commands address: 1-4 or ALL.",
        cast=str,
        fmt=str,
    )
    dead_time_ns = Control(
        "DEADTIME:TIME?", "DEADTIME:TIME {}", "Control the dead time in ns.", cast=values
    )
    threshold_uv = Control(
        "THRESHOLD:VOLTAGE?",
        "THRESHOLD:VOLTAGE {}",
        "Control the discriminator threshold in uV.",
        cast=values,
    )
    bias_uv = Control(
        "BIAS:VOLTAGE?", "BIAS:VOLTAGE {}", "Control the bias voltage in uV.", cast=values
    )
    efficiency_percent = Control(
        "EFFICIENCY?",
        "EFFICIENCY {}",
        "Control the detection efficiency setting in percent.",
        cast=values,
    )
    temperature_setpoint_mc = Control(
        "REG:TEMP_SET_POINT?",
        "REG:TEMP_SET_POINT {}",
        "Control the cooling set point in milli-degrees Celsius.",
        cast=values,
    )
    integration_time_ms = Control(
        "COUNTERS:INTEGRATION_TIME?",
        "COUNTERS:INTEGRATION_TIME {}",
        "Control the counters' integration time in ms.",
        cast=values,
    )
    measured_temperature_mc = Measurement(
        "REG:MEASURED_TEMP?", "Measure the diode temperature in milli-degrees Celsius.", cast=values
    )
    regulation_state = Measurement(
        "REG:STATE?", "Measure the regulation state (LOCKED, SETTLING or OFF).", cast=str
    )
    # Counter readouts may wait for an integration time (the emulator simulates one second).
    detection_freq_hz = Measurement(
        "COUNTERS:DETECTION_FREQ?",
        "Measure the detection rate in counts per second.",
        cast=values,
        timeout_s=10.0,
    )
    detection_count = Measurement(
        "COUNTERS:DETECTION_COUNT?",
        "Measure the detections counted in one integration time.",
        cast=int_values,
        timeout_s=10.0,
    )

    @property
    def idn(self) -> str:
        """Measure the identification string (``*IDN?``)."""
        return self.ask("*IDN?")

    def reset(self) -> None:
        """Reset the module to its power-on settings (``*RST``)."""
        self.set("*RST")

    def set_regulation(self, on: bool) -> None:
        """Set temperature regulation running (``REG:RUN TRUE``) or stopped."""
        self.set(f"REG:RUN {_true_false(on)}")

    def set(self, command: str, remember: tuple[str, Any] | None = None) -> None:
        """Send a setting; the module answers ``OK`` or an ``ERROR`` line (raised)."""
        reply = self.ask(command)
        if reply.strip().upper() != "OK":
            self.adapter.mark_broken()
            raise InstrumentProtocolError(self.name, command, f"expected OK, got {reply[:60]!r}")
        if remember is not None:
            self._applied[remember[0]] = (command, remember[1])

    def next_error(self) -> tuple[int, str]:
        """Pop the module's last error (``ERROR?``): ``(0, "No error")`` when none."""
        reply = self.adapter.query("ERROR?")
        match = _QUEUE_ENTRY.match(reply)
        if not match:
            self.adapter.mark_broken()
            raise InstrumentProtocolError(self.name, "ERROR?", f"cannot parse {reply[:60]!r}")
        return int(match.group(1)), match.group(2)

    def _raise_if_error_reply(self, reply: str, command: str) -> None:
        match = _ERROR_LINE.match(reply)
        if match:
            raise InstrumentCommandError(self.name, command, int(match.group(1)), match.group(2))
