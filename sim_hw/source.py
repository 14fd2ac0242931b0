"""Emulated pulsed QKD transmitter (docs/contracts.md §2.1), SCPI over TCP.

Its settings feed the shared world (clock, intensities, class and basis probabilities, output).
Alice learns her symbols from it: each slot's symbol is a pure function of the key she set
(``sim_hw.symbols``), so ``SYMB?``, ``SYMB:LIST?`` and ``SYMB:GAPS?`` answer for any slots without
storing the stream. Simulation only: a production transmitter must draw from a physical random source.

Settings that change which symbol a slot carries (key, probabilities, basis) or the slot timing
(clock) are refused with -221 while the output is on, so the symbols of a run never change under
Alice's feet; intensities may change at any time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from sim_hw import symbols
from sim_hw.scpi import CommandTree, ScpiDevice, ScpiError, definite_block
from sim_hw.scpi_params import HERTZ, Block, Boolean, Hex64, Integer, Number

if TYPE_CHECKING:
    from qnode.linkmodel import SourceParams
    from sim_hw.world import World

MAX_SYMBOLS = 1 << 26  # per query: 64 MiB of symbol bytes
MAX_SLOT = (1 << 62) - 1

# SCPI header -> (SourceParams field, parameter type, frozen while the output is on)
_SETTINGS: list[tuple[str, str, Number, bool]] = [
    ("[:SOURce]:CLOCk[:FREQuency]", "clock_hz", Number(1e6, 1e10, 1e9, HERTZ), True),
    ("[:SOURce]:INTensity:SIGNal", "mu_signal", Number(0, 10, 0.5), False),
    ("[:SOURce]:INTensity:DECoy", "mu_decoy", Number(0, 10, 0.1), False),
    ("[:SOURce]:INTensity:VACuum", "mu_vacuum", Number(0, 10, 0.0), False),
    ("[:SOURce]:PROBability:SIGNal", "p_signal", Number(0, 1, 0.8), True),
    ("[:SOURce]:PROBability:DECoy", "p_decoy", Number(0, 1, 0.1), True),
    ("[:SOURce]:PROBability:VACuum", "p_vacuum", Number(0, 1, 0.1), True),
    ("[:SOURce]:BASis:PROBability", "p_basis_z", Number(0, 1, 0.5), True),
]


class PulseSource(ScpiDevice):
    """The transmitter: settings, output state and the symbol oracle."""

    idn = "QNODE,PULSE-SOURCE,SIM0001,1.0"

    def __init__(self, world: World, defaults: SourceParams) -> None:
        self._world = world
        self._defaults = defaults
        self.values: dict[str, float] = {}
        self.key = 0
        self.output = False
        super().__init__("source")
        self.reset()

    def reset(self) -> None:
        self.values = {field: float(getattr(self._defaults, field)) for _, field, _, _ in _SETTINGS}
        self.key = 0
        self.output = False
        self._world.settings_changed()

    def build(self, tree: CommandTree) -> None:
        for header, field, param, frozen in _SETTINGS:
            tree.setting(
                header,
                param,
                get=lambda f=field: self.values[f],
                set=lambda v, f=field, fr=frozen: self._set(f, v, fr),
            )
        tree.add("[:SOURce]:RANDom:KEY", self._set_key, [Hex64()])
        tree.setting(":OUTPut[:STATe]", Boolean(), lambda: self.output, self._set_output)
        tree.add("[:SOURce]:SLOT?", lambda: self._world.current_slot)
        count = Integer(0, MAX_SYMBOLS)
        tree.add("[:SOURce]:SYMBols?", self._symbols_range, [Integer(0, MAX_SLOT), count])
        tree.add("[:SOURce]:SYMBols:LIST?", self._symbols_list, [Block(multiple_of=8)])
        tree.add("[:SOURce]:SYMBols:GAPS?", self._symbols_gaps,
                 [Integer(0, MAX_SLOT), Block(multiple_of=2)])  # fmt: skip

    # --- settings ------------------------------------------------------------------------
    def _set(self, field: str, value: float, frozen: bool) -> None:
        if frozen and self.output:
            raise ScpiError(-221, f"{field} cannot change while the output is on")
        self.values[field] = value
        self._world.settings_changed()  # the clock drives sync tags even with the output off

    def _set_key(self, key: int) -> None:
        if self.output:
            raise ScpiError(-221, "the key cannot change while the output is on")
        self.key = key

    def _set_output(self, on: bool) -> None:
        if on:
            total = self.values["p_signal"] + self.values["p_decoy"] + self.values["p_vacuum"]
            if abs(total - 1.0) > 1e-9:
                raise ScpiError(-221, f"class probabilities sum to {total:.12g}, not 1")
            self.output = True
            self._world.start_run()  # every switch-on starts slot 0 of a new run
        elif self.output:
            self.output = False
            self._world.settings_changed()

    def source_params(self) -> dict[str, Any]:
        """The ``[source]`` section the world simulates with."""
        return dict(self.values)

    # --- symbols -------------------------------------------------------------------------
    def symbols_for(self, slots: np.ndarray) -> np.ndarray:
        v = self.values
        try:
            return symbols.symbols_for_slots(
                self.key, slots, v["p_basis_z"], v["p_signal"], v["p_decoy"]
            )
        except ValueError as exc:
            raise ScpiError(-221, str(exc)) from None

    def _symbols_range(self, first: int, count: int) -> bytes:
        if first + count > MAX_SLOT:
            raise ScpiError(-222, "slot range beyond the counter")
        v = self.values
        try:
            out = symbols.symbols_range(
                self.key, first, count, v["p_basis_z"], v["p_signal"], v["p_decoy"]
            )
        except ValueError as exc:
            raise ScpiError(-221, str(exc)) from None
        return definite_block(out.tobytes())

    def _symbols_list(self, payload: bytes) -> bytes:
        slots = np.frombuffer(payload, dtype="<i8")
        if slots.size > MAX_SYMBOLS:
            raise ScpiError(-222, f"{slots.size} slots, at most {MAX_SYMBOLS} per query")
        if slots.size and slots.min() < 0:
            raise ScpiError(-222, "negative slot index")
        return definite_block(self.symbols_for(slots).tobytes())

    def _symbols_gaps(self, first: int, payload: bytes) -> bytes:
        """Symbols of the slots ``first, first + g1, first + g1 + g2, ...`` (uint16 LE gaps, each
        at least 1): a sorted slot list in a quarter of the bytes of ``SYMB:LIST?``."""
        gaps = np.frombuffer(payload, dtype="<u2")
        if gaps.size >= MAX_SYMBOLS:
            raise ScpiError(-222, f"{gaps.size + 1} slots, at most {MAX_SYMBOLS} per query")
        v = self.values
        try:
            out = symbols.symbols_for_gaps(
                self.key, first, gaps, v["p_basis_z"], v["p_signal"], v["p_decoy"], MAX_SLOT
            )
        except symbols.SlotRangeError as exc:
            raise ScpiError(-222, str(exc)) from None
        except ValueError as exc:  # the probabilities (a settings conflict)
            raise ScpiError(-221, str(exc)) from None
        return definite_block(out.tobytes())
