"""Role implementations over the drivers, and the registry of driver names used in bench files.

Each implementation wraps one driver object. Settings are the driver's declarative properties
(``drivers.instrument.Control``): a bench ``settings`` key must name one of them, is set through
the driver (error queue checked) and read back.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import numpy as np

from drivers.errors import InstrumentCommandError, InstrumentError
from drivers.instrument import Control, Instrument
from drivers.keysight_8156a import Keysight8156A
from drivers.pulse_source import PulseSource
from drivers.spad import SpadDetector
from drivers.time_tagger import TimeTagger as TimeTaggerDriver
from hal.interfaces import Attenuator, Detector, Role, TimeTagger, Transmitter


class _DriverRole:
    """Shared plumbing of a role backed by one driver (mixed in before the role interface)."""

    driver_class: type[Instrument]

    def __init__(self, resource: str, name: str | None = None, **driver_kwargs: Any) -> None:
        self.driver = self.driver_class(resource, name or self.role, **driver_kwargs)  # type: ignore[attr-defined]

    @property
    def device(self) -> str:
        return self.driver.name

    def open(self) -> None:
        self.driver.open()

    def close(self) -> None:
        self.driver.close()

    def identify(self) -> str:
        return self.driver.idn

    def read_errors(self) -> list[tuple[int, str]]:
        return self.driver.errors()

    error_query = "SYST:ERR?"  # what a health poll's queued error is reported against

    def check_errors(self) -> None:
        self.driver.raise_errors(self.error_query)

    def clear_errors(self) -> None:
        clear = getattr(self.driver, "clear_status", None)
        if clear is not None:
            clear()
        else:
            self.driver.errors()

    def apply(self, name: str, value: Any) -> Any:
        if name not in self.setting_names():
            raise KeyError(f"{self.device}: unknown setting {name!r}")
        setattr(self.driver, name, value)
        return getattr(self.driver, name)

    @classmethod
    def setting_names(cls) -> set[str]:
        return {
            name
            for klass in cls.driver_class.__mro__
            for name, attr in vars(klass).items()
            if isinstance(attr, Control)
        }


class PulseSourceTransmitter(_DriverRole, Transmitter):
    """Transmitter role on the qnode pulse source (``drivers.pulse_source``)."""

    driver_class = PulseSource

    def apply_all(self, settings: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
        """Output off while the rest is set (the source freezes them while emitting), then
        ``output`` last."""
        rest = {k: v for k, v in settings.items() if k != "output"}
        if rest and self.driver.output:
            self.driver.output = False
        result = super().apply_all(rest)
        if "output" in settings:
            result["output"] = (settings["output"], self.apply("output", settings["output"]))
        return result

    @property
    def clock_hz(self) -> float:
        return self.driver.clock_hz

    @property
    def emitting(self) -> bool:
        return self.driver.output

    def set_emitting(self, on: bool) -> None:
        self.driver.output = on

    def set_symbol_key(self, key: int) -> None:
        self.driver.set_random_key(key)

    def symbol_bytes(self, slots: np.ndarray) -> np.ndarray:
        return self.driver.symbols_for_slots(slots)

    def symbol_bytes_for_gaps(self, first: int, gaps: np.ndarray) -> np.ndarray:
        return self.driver.symbols_for_gaps(first, gaps)

    def symbol_range(self, first: int, count: int) -> np.ndarray:
        return self.driver.symbols(first, count)

    def rates(self) -> dict[str, float]:
        return {"clock_hz": self.driver.clock_hz, "slot": float(self.driver.slot)}


class Keysight8156AAttenuator(_DriverRole, Attenuator):
    """Attenuator role on the Keysight 8156A driver."""

    driver_class = Keysight8156A

    @property
    def attenuation_db(self) -> float:
        return self.driver.attenuation_db

    def set_attenuation_db(self, value: float) -> None:
        self.driver.attenuation_db = value

    def set_shutter(self, open_: bool) -> None:
        self.driver.shutter_open = open_

    def rates(self) -> dict[str, float]:
        return {"attenuation_db": self.driver.attenuation_db}

    def monitor_figures(self) -> dict[str, float | str]:
        """The attenuation read back, checked against the value last set through this driver
        (an instrument that lost its setting changes the light leaving the node)."""
        with self.driver.adapter.lock:  # a set from another thread lands before or after both
            value = self.driver.attenuation_db
            wanted = self.driver.applied.get("attenuation_db")
        if wanted is not None and not math.isclose(value, wanted, rel_tol=1e-6, abs_tol=1e-9):
            raise InstrumentError(
                self.device, ":INP:ATT?", f"attenuation reads back {value} dB, set {wanted} dB"
            )
        return {"attenuation_db": value}


class SpadRole(_DriverRole, Detector):
    """Detector role on the ID120-like SPAD module driver."""

    driver_class = SpadDetector
    error_query = "ERROR?"

    @property
    def count_rate_hz(self) -> float:
        """Summed over the detectors the module addresses (all four after ``CHANNEL ALL``)."""
        rate = self.driver.detection_freq_hz
        return float(sum(rate)) if isinstance(rate, tuple) else float(rate)

    def rates(self) -> dict[str, float]:
        rate = self.driver.detection_freq_hz
        per = rate if isinstance(rate, tuple) else (rate,)
        out = {f"det{i + 1}_hz": float(r) for i, r in enumerate(per)}
        out["total_hz"] = float(sum(per))
        return out

    def monitor_figures(self) -> dict[str, float | str]:
        """Regulation state and the warmest diode's temperature (a detector out of regulation
        does not click). Count rates are left to the tagger's counts: on the emulated module
        they make the world simulate ahead. The module answers an error in-line (raised as
        ``InstrumentCommandError`` with the command); its ``ERROR?`` copy is then read away so
        the next poll does not report it twice."""
        try:
            regulation = self.driver.regulation_state
            temps = self.driver.measured_temperature_mc
        except InstrumentCommandError:
            with contextlib.suppress(InstrumentError):
                self.driver.errors()
            raise
        warmest = max(temps) if isinstance(temps, tuple) else temps
        return {"regulation": regulation, "temperature_mc": float(warmest)}


class QnodeTimeTagger(_DriverRole, TimeTagger):
    """Time-tagger role on the qnode time tagger driver."""

    driver_class = TimeTaggerDriver

    def start(self) -> None:
        self.driver.start()

    def stop(self) -> None:
        self.driver.stop()

    def fetch(self, max_tags: int) -> tuple[np.ndarray, np.ndarray]:
        return self.driver.fetch_tags(max_tags)

    def count_rate(self, channel: int) -> float:
        return self.driver.count_rate(channel)


# Registered driver names (bench files use these) -> role implementation.
REGISTRY: dict[str, type[Role]] = {
    "qnode-pulse-source": PulseSourceTransmitter,
    "keysight-8156a": Keysight8156AAttenuator,
    "id120": SpadRole,
    "qnode-time-tagger": QnodeTimeTagger,
}

ROLE_OF_FIELD = {
    "source": Transmitter,
    "attenuator": Attenuator,
    "detector": Detector,
    "timetagger": TimeTagger,
}
