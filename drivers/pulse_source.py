"""qnode pulsed QKD transmitter over SCPI (docs/contracts.md §2.1).

The source emits weak coherent pulses at the clock rate, each slot carrying a basis, a bit and an
intensity class (signal, decoy, vacuum). Alice's node learns its own symbols by asking the source
for the slots Bob reported, as definite-length binary blocks (one byte per slot, §1.1).
"""

from __future__ import annotations

import numpy as np

from drivers.errors import InstrumentProtocolError
from drivers.instrument import Control, Measurement, ScpiInstrument, on_off, scpi_bool

# Symbol byte layout (§1.1): bit 0 basis (0 = Z, 1 = X), bit 1 bit value, bits 2-3 intensity class.
INTENSITY_CLASSES = ("signal", "decoy", "vacuum")


def split_symbols(symbols: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unpack symbol bytes into ``(basis, bit, intensity)`` uint8 arrays."""
    symbols = np.asarray(symbols, dtype=np.uint8)
    return symbols & 1, (symbols >> 1) & 1, (symbols >> 2) & 3


class PulseSource(ScpiInstrument):
    """qnode pulsed source (``QNODE,PULSE-SOURCE``): clock, decoy intensities, symbol read-back."""

    default_name = "source"

    clock_hz = Control(":SOUR:CLOC?", ":SOUR:CLOC {}", "Control the pulse clock rate in Hz.")
    mu_signal = Control(
        ":SOUR:INT:SIGN?", ":SOUR:INT:SIGN {}", "Control the mean photon number of signal pulses."
    )
    mu_decoy = Control(
        ":SOUR:INT:DEC?", ":SOUR:INT:DEC {}", "Control the mean photon number of decoy pulses."
    )
    mu_vacuum = Control(
        ":SOUR:INT:VAC?", ":SOUR:INT:VAC {}", "Control the mean photon number of vacuum pulses."
    )
    p_signal = Control(
        ":SOUR:PROB:SIGN?", ":SOUR:PROB:SIGN {}", "Control the probability of a signal pulse."
    )
    p_decoy = Control(
        ":SOUR:PROB:DEC?", ":SOUR:PROB:DEC {}", "Control the probability of a decoy pulse."
    )
    p_vacuum = Control(
        ":SOUR:PROB:VAC?", ":SOUR:PROB:VAC {}", "Control the probability of a vacuum pulse."
    )
    p_basis_z = Control(
        ":SOUR:BAS:PROB?", ":SOUR:BAS:PROB {}", "Control the probability of preparing basis Z."
    )
    output = Control(
        ":OUTP?",
        ":OUTP {}",
        "Control emission: True starts a new run at slot 0, False stops it.",
        cast=scpi_bool,
        fmt=on_off,
    )
    slot = Measurement(":SOUR:SLOT?", "Measure the current slot counter of the run.", cast=int)

    def set_random_key(self, key: int) -> None:
        """Set the 64-bit key of the source's symbol generator (set-only, never read back)."""
        if not 0 <= key < 1 << 64:
            raise ValueError("the symbol key is a 64-bit unsigned integer")
        self.set(f":SOUR:RAND:KEY #H{key:016X}")

    def symbols(self, first: int, count: int) -> np.ndarray:
        """Get the symbol bytes of slots ``first ... first + count - 1`` (uint8 array)."""
        command = f":SOUR:SYMB? {int(first)},{int(count)}"
        payload = self.adapter.query_block(command)
        return self._checked(payload, count, command)

    def symbols_for_slots(self, slots: np.ndarray) -> np.ndarray:
        """Get the symbol bytes of an arbitrary slot list (int64, any order) as a uint8 array.

        A strictly increasing list whose gaps fit 16 bits goes as ``:SOUR:SYMB:GAPS?`` (see
        :meth:`symbols_for_gaps`, which takes the gaps without a slot list), any other as the
        int64 list of ``:SOUR:SYMB:LIST?``.
        """
        slots = np.ascontiguousarray(slots, dtype="<i8")
        if slots.size >= 2:
            gaps = np.diff(slots)
            if gaps.min() >= 1 and gaps.max() <= 0xFFFF:
                return self.symbols_for_gaps(int(slots[0]), gaps.astype("<u2"))
        command = ":SOUR:SYMB:LIST? "
        payload = self.adapter.query_block(command, slots.tobytes())
        return self._checked(payload, len(slots), command)

    def symbols_for_gaps(self, first: int, gaps: np.ndarray) -> np.ndarray:
        """Get the symbol bytes of the slots ``first, first + g1, first + g1 + g2, ...``.

        ``gaps`` (uint16, each >= 1) go unchanged as the block of ``:SOUR:SYMB:GAPS?``: a
        caller holding a sorted list as gaps (Bob's sifting announcement) never builds the
        slots. Returns ``len(gaps) + 1`` bytes; a zero gap or a slot past the source's counter
        is refused by the source (-222, ``InstrumentCommandError``).
        """
        if not isinstance(gaps, np.ndarray) or gaps.dtype != np.dtype("<u2") or gaps.ndim != 1:
            raise ValueError("gaps must be a one-dimensional little-endian uint16 array")
        if not 0 <= first < 1 << 62:
            raise ValueError(f"first slot {first} outside 0 ... 2^62 - 1")
        command = f":SOUR:SYMB:GAPS? {int(first)},"
        payload = self.adapter.query_block(command, gaps.tobytes())
        return self._checked(payload, gaps.size + 1, command)

    def _checked(self, payload: bytes, count: int, command: str) -> np.ndarray:
        if len(payload) != count:
            self.adapter.mark_broken()
            raise InstrumentProtocolError(
                self.name, command, f"expected {count} symbol bytes, got {len(payload)}"
            )
        return np.frombuffer(payload, dtype=np.uint8)
