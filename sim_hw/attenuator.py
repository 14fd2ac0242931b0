"""Emulated variable optical attenuator, Keysight/HP 8156A command set (contracts §2.2).

Commands from the 8156A / 8163 programming guides (reference/instruments.md §3.6):
``:INPut:ATTenuation <dB>|MIN|MAX|DEF`` (0-60 dB; units DB, MDB), ``:INPut:OFFSet``,
``:INPut:WAVelength <m>`` (units PM..M; 1200-1650 nm), ``:OUTPut[:STATe]`` (the shutter).
The node suffix ``INP1`` is accepted (a one-channel module); other suffixes are -113.
Replies use the HP number format ``+2.50000000E+000``. Attenuation + offset add to the link's
extra loss in the shared world; a closed shutter blocks all light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sim_hw.scpi import CommandTree, ScpiDevice, ScpiError
from sim_hw.scpi_params import DECIBEL, METRE, Boolean, Number

if TYPE_CHECKING:
    from sim_hw.world import World

ATTENUATION = Number(0.0, 60.0, 0.0, DECIBEL)
OFFSET = Number(-60.0, 60.0, 0.0, DECIBEL)
WAVELENGTH = Number(1200e-9, 1650e-9, 1550e-9, METRE)


def hp_float(value: float) -> str:
    """HP/Keysight style: sign, 8 decimals, three-digit exponent (``+1.55000000E-006``)."""
    mantissa, exponent = f"{value:+.8E}".split("E")
    return f"{mantissa}E{int(exponent):+04d}"


class Attenuator(ScpiDevice):
    """One attenuator channel with its shutter."""

    idn = "HEWLETT-PACKARD,HP8156A,3325G01234,4.14"

    def __init__(self, world: World) -> None:
        self._world = world
        self.attenuation_db = 0.0
        self.offset_db = 0.0
        self.wavelength_m = 1550e-9
        self.shutter_open = True
        super().__init__("attenuator")

    def reset(self) -> None:
        self.attenuation_db = 0.0
        self.offset_db = 0.0
        self.wavelength_m = 1550e-9
        self.shutter_open = True
        self._world.settings_changed()

    def format_float(self, value: float) -> str:
        return hp_float(value)

    def build(self, tree: CommandTree) -> None:
        tree.setting(":INPut<n>:ATTenuation", ATTENUATION, self._get("attenuation_db"),
                     self._set("attenuation_db"))  # fmt: skip
        tree.setting(":INPut<n>:OFFSet", OFFSET, self._get("offset_db"), self._set("offset_db"))
        tree.setting(":INPut<n>:WAVelength", WAVELENGTH, self._get("wavelength_m"),
                     self._set("wavelength_m"))  # fmt: skip
        tree.setting(":OUTPut<n>[:STATe]", Boolean(), self._get("shutter_open"),
                     self._set("shutter_open"))  # fmt: skip

    def _get(self, attr: str):
        def get(n: int) -> float | bool:
            _check_channel(n)
            return getattr(self, attr)

        return get

    def _set(self, attr: str):
        def set_(n: int, value: float | bool) -> None:
            _check_channel(n)
            setattr(self, attr, value)
            self._world.settings_changed()

        return set_

    @property
    def loss_db(self) -> float:
        """What this attenuator adds to the link's loss (never below zero)."""
        return max(0.0, self.attenuation_db + self.offset_db)


def _check_channel(n: int) -> None:
    if n != 1:
        raise ScpiError(-113, f"channel {n}: this module has one channel")
