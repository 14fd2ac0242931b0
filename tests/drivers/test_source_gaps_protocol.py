"""The source driver sends a sorted slot list with small gaps as ``SYMB:GAPS?``."""

from __future__ import annotations

import numpy as np

from drivers.protocol import expected_protocol
from drivers.pulse_source import PulseSource


def test_sorted_slots_with_small_gaps_go_as_gaps():
    slots = np.array([1000, 1003, 1003 + 65535], dtype=np.int64)
    gaps = np.array([3, 65535], "<u2").tobytes()
    sent = b":SOUR:SYMB:GAPS? 1000,#14" + gaps + b"\n"
    with expected_protocol(PulseSource, [(sent, b"#13\x01\x06\x09\n")]) as src:
        assert src.symbols_for_slots(slots).tolist() == [1, 6, 9]


def test_unsorted_or_wide_gaps_go_as_a_list():
    for slots in (np.array([7, 5], np.int64), np.array([0, 65536], np.int64),
                  np.array([4, 4], np.int64), np.array([9], np.int64)):  # fmt: skip
        sent = b":SOUR:SYMB:LIST? #%d%d" % (len(str(8 * slots.size)), 8 * slots.size)
        sent += slots.astype("<i8").tobytes() + b"\n"
        reply = b"#1%d" % slots.size + b"\x01" * slots.size + b"\n"
        with expected_protocol(PulseSource, [(sent, reply)]) as src:
            assert src.symbols_for_slots(slots).tolist() == [1] * slots.size
