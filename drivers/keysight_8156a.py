"""Keysight (HP) 8156A variable optical attenuator over SCPI (docs/contracts.md §2.2).

The attenuator sits in Alice's output; its attenuation plus offset add to the link's loss, which
is how a technician sets the mean photon number leaving the node.
"""

from __future__ import annotations

from drivers.instrument import Control, ScpiInstrument, on_off, scpi_bool


class Keysight8156A(ScpiInstrument):
    """HP/Keysight 8156A optical attenuator (``:INPut`` / ``:OUTPut`` SCPI tree)."""

    default_name = "attenuator"

    attenuation_db = Control(
        ":INP:ATT?", ":INP:ATT {}", "Control the attenuation in dB (0 ... 60, DEF = 0)."
    )
    offset_db = Control(
        ":INP:OFFS?", ":INP:OFFS {}", "Control the calibration offset in dB added to the display."
    )
    wavelength_m = Control(
        ":INP:WAV?",
        ":INP:WAV {}",
        "Control the calibration wavelength in metres (1200e-9 ... 1650e-9).",
    )
    shutter_open = Control(
        ":OUTP:STAT?",
        ":OUTP:STAT {}",
        "Control the output shutter: True lets light through, False blocks it.",
        cast=scpi_bool,
        fmt=on_off,
    )

    def set_attenuation_limit(self, which: str) -> None:
        """Set the attenuation to ``MIN``, ``MAX`` or ``DEF`` (the default, 0 dB)."""
        which = which.upper()
        if which not in ("MIN", "MAX", "DEF"):
            raise ValueError(f"attenuation limit must be MIN, MAX or DEF, not {which!r}")
        self.set(f":INP:ATT {which}")
