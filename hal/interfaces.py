"""Role interfaces of a QKD node's instruments (qudi's interface style).

Each role declares, as abstract members, what every implementation must give; conveniences built
on those are concrete. Callers (Alice's and Bob's acquisition, ``qnode bench check``) see roles
only, so a simulated bench and a real one are the same code: only the bench file differs.
An implementation wraps one driver (``hal.roles``) and is chosen by its registered name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np


class Role(ABC):
    """An instrument in a named role: identity, error queue, settings with read-back."""

    role: ClassVar[str] = ""

    @abstractmethod
    def open(self) -> None:
        """Connect to the instrument."""

    @abstractmethod
    def close(self) -> None:
        """Disconnect."""

    @abstractmethod
    def identify(self) -> str:
        """The instrument's identification string."""

    @abstractmethod
    def read_errors(self) -> list[tuple[int, str]]:
        """Read and clear the instrument's error queue."""

    @abstractmethod
    def clear_errors(self) -> None:
        """Clear the error queue and status (``*CLS`` where the instrument has it)."""

    @abstractmethod
    def apply(self, name: str, value: Any) -> Any:
        """Set one setting, check the error queue, and return the value read back."""

    @abstractmethod
    def rates(self) -> dict[str, float]:
        """Count rates (or other live figures) a technician checks, by name."""

    @abstractmethod
    def check_errors(self) -> None:
        """Drain the error queue; raise ``InstrumentCommandError`` (device, the error query,
        code, text) for the first entry found."""

    def monitor_figures(self) -> dict[str, float | str]:
        """Cheap live figures read by the health poll (default: none, the error queue only)."""
        return {}

    def poll(self) -> dict[str, float | str]:
        """Health check between uses (the acquisition's monitor calls it every interval): the
        cheap live figures, then the error queue. Any failure raises the driver's named
        exception (``drivers.errors``), so a dropped, stalled, garbled or erring instrument is
        seen even when nothing else talks to it."""
        figures = self.monitor_figures()
        self.check_errors()
        return figures

    @classmethod
    @abstractmethod
    def setting_names(cls) -> set[str]:
        """Names accepted in the bench file's ``settings`` table for this implementation."""

    @property
    @abstractmethod
    def device(self) -> str:
        """The device name used in errors and logs."""

    def apply_all(self, settings: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
        """Apply settings in order; return ``{name: (wanted, read_back)}``."""
        return {name: (value, self.apply(name, value)) for name, value in settings.items()}

    def __enter__(self) -> Role:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Transmitter(Role):
    """Alice's pulsed photon source: clock, emission, and her own symbols per slot."""

    role = "source"

    @property
    @abstractmethod
    def clock_hz(self) -> float:
        """Pulse clock rate in Hz."""

    @property
    @abstractmethod
    def emitting(self) -> bool:
        """Whether pulses are being emitted."""

    @abstractmethod
    def set_emitting(self, on: bool) -> None:
        """Start (a new run from slot 0) or stop emission."""

    @abstractmethod
    def set_symbol_key(self, key: int) -> None:
        """Key the source's symbol generator (64 bits, secret)."""

    @abstractmethod
    def symbol_bytes(self, slots: np.ndarray) -> np.ndarray:
        """Symbol bytes (docs/contracts.md §1.1) of the given slots."""

    @abstractmethod
    def symbol_range(self, first: int, count: int) -> np.ndarray:
        """Symbol bytes of the contiguous slots ``first ... first + count - 1``."""

    def symbol_bytes_for_gaps(self, first: int, gaps: np.ndarray) -> np.ndarray:
        """Symbol bytes of the slots ``first, first + gaps[0], ...`` (uint16 gaps, each >= 1, as
        Bob's sifting announcement carries them). This default builds the slot list; a source
        that takes gaps (``SYMB:GAPS?``) passes them through."""
        steps = np.asarray(gaps, dtype=np.int64)
        slots = np.empty(steps.size + 1, np.int64)
        slots[0] = first
        np.cumsum(steps, out=slots[1:])
        slots[1:] += first
        return self.symbol_bytes(slots)

    def symbols(self, slots: np.ndarray) -> dict[str, np.ndarray]:
        """Alice's ``basis``, ``bit``, ``intensity`` (uint8 arrays) for the given slots."""
        sym = self.symbol_bytes(np.asarray(slots, dtype=np.int64))
        return {"basis": sym & 1, "bit": (sym >> 1) & 1, "intensity": (sym >> 2) & 3}


class Attenuator(Role):
    """A variable optical attenuator with a shutter."""

    role = "attenuator"

    @property
    @abstractmethod
    def attenuation_db(self) -> float:
        """Attenuation in dB."""

    @abstractmethod
    def set_attenuation_db(self, value: float) -> None:
        """Set the attenuation in dB."""

    @abstractmethod
    def set_shutter(self, open_: bool) -> None:
        """Open (light passes) or close the shutter."""

    def block_light(self) -> None:
        """Close the shutter."""
        self.set_shutter(False)


class Detector(Role):
    """A single-photon detector module: efficiency, dead time, live count rate."""

    role = "detector"

    @property
    @abstractmethod
    def count_rate_hz(self) -> float:
        """Detection rate in counts per second."""

    def rates(self) -> dict[str, float]:
        return {"count_rate_hz": self.count_rate_hz}


class TimeTagger(Role):
    """A time tagger: picosecond tags of the sync (channel 0) and detector channels (1-4)."""

    role = "timetagger"
    channels: ClassVar[tuple[int, ...]] = (0, 1, 2, 3, 4)

    @abstractmethod
    def start(self) -> None:
        """Start tagging."""

    @abstractmethod
    def stop(self) -> None:
        """Stop tagging."""

    @abstractmethod
    def fetch(self, max_tags: int) -> tuple[np.ndarray, np.ndarray]:
        """Next tags in time order: ``(time_ps int64, channel uint8)``."""

    @abstractmethod
    def count_rate(self, channel: int) -> float:
        """Counts per second on one channel."""

    def rates(self) -> dict[str, float]:
        return {f"ch{ch}_hz": self.count_rate(ch) for ch in self.channels}
