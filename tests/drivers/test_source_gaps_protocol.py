"""The source driver sends a sorted slot list with small gaps as ``SYMB:GAPS?``."""

from __future__ import annotations

import numpy as np
import pytest

from drivers.errors import InstrumentProtocolError
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


def test_gaps_pass_through_unchanged():
    """``symbols_for_gaps`` sends the caller's uint16 gaps as the block, byte for byte."""
    gaps = np.array([1, 65535, 300], "<u2")
    sent = b":SOUR:SYMB:GAPS? 7,#16" + gaps.tobytes() + b"\n"
    with expected_protocol(PulseSource, [(sent, b"#14\x01\x06\x09\x00\n")]) as src:
        assert src.symbols_for_gaps(7, gaps).tolist() == [1, 6, 9, 0]
    with expected_protocol(PulseSource, [(b":SOUR:SYMB:GAPS? 9,#10\n", b"#11\x05\n")]) as src:
        assert src.symbols_for_gaps(9, np.empty(0, np.uint16)).tolist() == [5]


def test_gaps_of_another_type_or_a_bad_first_slot_are_refused_before_sending():
    with expected_protocol(PulseSource, []) as src:
        for first, gaps in ((0, np.array([1, 2], np.int64)), (0, [1, 2]),
                            (0, np.ones((2, 2), np.uint16)), (-1, np.ones(2, np.uint16)),
                            (1 << 62, np.ones(2, np.uint16))):  # fmt: skip
            with pytest.raises(ValueError):
                src.symbols_for_gaps(first, gaps)


def test_a_short_symbol_reply_to_gaps_is_a_protocol_error():
    gaps = np.array([2, 2], "<u2")
    sent = b":SOUR:SYMB:GAPS? 0,#14" + gaps.tobytes() + b"\n"
    with expected_protocol(PulseSource, [(sent, b"#12\x01\x06\n")]) as src:
        with pytest.raises(InstrumentProtocolError, match="expected 3 symbol bytes"):
            src.symbols_for_gaps(0, gaps)
