"""qnode time tagger over SCPI (docs/contracts.md §2.4): picosecond tags streamed as blocks.

Channel 0 is the sync input (one tag per ``sync_period_slots`` slots), channels 1-4 the detectors
Z0, Z1, X0, X1 (§1.2). Tags travel as little-endian uint64 records ``(time_ps << 8) | channel``
inside definite-length blocks; decoding is two vectorised numpy operations.
"""

from __future__ import annotations

import numpy as np

from drivers.errors import InstrumentProtocolError
from drivers.instrument import Control, Measurement, ScpiInstrument, scpi_bool

_RECORD = np.dtype("<u8")


def decode_tags(payload: bytes | memoryview) -> tuple[np.ndarray, np.ndarray]:
    """Split tag records into ``(time_ps int64, channel uint8)`` without a Python loop."""
    if len(payload) % 8:
        raise ValueError(f"tag payload of {len(payload)} bytes is not a multiple of 8")
    raw = np.frombuffer(payload, dtype=_RECORD)
    time_ps = (raw >> np.uint64(8)).view(np.int64)
    channel = raw.astype(np.uint8)  # modular cast keeps the low byte: raw & 0xFF
    return time_ps, channel


def encode_tags(time_ps: np.ndarray, channel: np.ndarray) -> bytes:
    """Inverse of ``decode_tags`` (tests, recorders)."""
    raw = (np.asarray(time_ps, dtype=np.uint64) << np.uint64(8)) | np.asarray(
        channel, dtype=np.uint64
    )
    return raw.astype(_RECORD).tobytes()


class TimeTagger(ScpiInstrument):
    """qnode time tagger (``QNODE,TIME-TAGGER``): acquisition control, tag stream, count rates."""

    default_name = "timetagger"
    #: Fetches and rate queries make the emulated world simulate; real taggers buffer a lot.
    slow_timeout_s = 10.0

    acquiring = Measurement(":ACQ:STAT?", "Measure whether tagging is running.", cast=scpi_bool)
    tags_waiting = Measurement(":TAGS:COUN?", "Measure how many tags wait to be fetched.", cast=int)
    sync_period_slots = Control(
        ":SYNC:PER?",
        ":SYNC:PER {}",
        "Control the sync period: one channel-0 tag every this many slots.",
        cast=int,
    )

    def start(self) -> None:
        """Start tagging (``:ACQ:STAR``)."""
        self.set(":ACQ:STAR")

    def stop(self) -> None:
        """Stop tagging (``:ACQ:STOP``)."""
        self.set(":ACQ:STOP")

    def fetch_tags(self, max_tags: int = 1 << 20) -> tuple[np.ndarray, np.ndarray]:
        """Get the next tags (up to ``max_tags``) in time order: ``(time_ps, channel)`` arrays."""
        command = f":TAGS:FETC? {int(max_tags)}"
        with self.adapter.timeout(self.slow_timeout_s):
            payload = self.adapter.query_block(command)
        try:
            time_ps, channel = decode_tags(payload)
        except ValueError as exc:
            self.adapter.mark_broken()
            raise InstrumentProtocolError(self.name, command, str(exc)) from None
        if len(time_ps) > max_tags:
            raise InstrumentProtocolError(
                self.name, command, f"{len(time_ps)} tags returned for a maximum of {max_tags}"
            )
        return time_ps, channel

    def count_rate(self, channel: int) -> float:
        """Measure the counts per second on ``channel`` over the last simulated second."""
        with self.adapter.timeout(self.slow_timeout_s):
            return self.ask(f":COUN:RATE? {int(channel)}", float)

    def input_threshold_v(self, channel: int) -> float:
        """Measure the discriminator threshold of input ``channel`` in volts."""
        return self.ask(f":INP{int(channel)}:THR?", float)

    def set_input_threshold_v(self, channel: int, volts: float) -> None:
        """Set the discriminator threshold of input ``channel`` in volts."""
        self.set(f":INP{int(channel)}:THR {volts:.12g}", remember=(f"threshold{channel}", volts))

    def input_delay_ps(self, channel: int) -> float:
        """Measure the delay added to input ``channel`` in picoseconds."""
        return self.ask(f":INP{int(channel)}:DEL?", float)

    def set_input_delay_ps(self, channel: int, delay_ps: float) -> None:
        """Set the delay added to input ``channel`` in picoseconds."""
        self.set(f":INP{int(channel)}:DEL {delay_ps:.12g}", remember=(f"delay{channel}", delay_ps))
