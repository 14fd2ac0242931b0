"""``SYMB:GAPS?``: a sorted slot list as first slot + uint16 gaps gives what ``SYMB:LIST?`` gives."""

from __future__ import annotations

import numpy as np
import pytest

from qnode import linkmodel
from sim_hw import symbols
from sim_hw.scpi_parse import definite_block
from sim_hw.world import World


@pytest.fixture
def source():
    world = World(linkmodel.preset("snspd"), seed=2, read_ahead=False)
    src = world.source
    assert src.execute(b":SOUR:RAND:KEY #H0000000000C0FFEE;:OUTP ON") is None
    return src


def _block(reply: bytes) -> np.ndarray:
    digits = int(reply[1:2])
    return np.frombuffer(reply[2 + digits : -1], np.uint8)


def test_gaps_answer_like_the_slot_list(source):
    rng = np.random.default_rng(5)
    slots = 7_000_000_123 + np.cumsum(rng.integers(1, 65536, 5000))
    gaps = np.diff(slots).astype("<u2")
    by_gaps = source.execute(b":SYMB:GAPS? %d," % slots[0] + definite_block(gaps.tobytes()))
    by_list = source.execute(b":SYMB:LIST? " + definite_block(slots.astype("<i8").tobytes()))
    assert by_gaps == by_list and _block(by_gaps).size == slots.size
    single = source.execute(b":SYMB:GAPS? %d," % slots[0] + definite_block(b""))
    assert _block(single).tolist() == _block(by_list)[:1].tolist()


@pytest.mark.parametrize(
    "args, code",
    [
        (b"5," + definite_block(np.array([3, 0, 2], "<u2").tobytes()), -222),  # not increasing
        (b"5," + definite_block(b"\x01\x00\x02"), -224),  # odd length
        (b"%d," % ((1 << 62) - 2) + definite_block(np.array([9], "<u2").tobytes()), -222),
        (b"-1," + definite_block(np.array([1], "<u2").tobytes()), -222),
    ],
)
def test_bad_gap_queries_are_refused(source, args, code):
    assert source.execute(b":SYMB:GAPS? " + args) is None
    errors = source.execute(b":SYST:ERR?").decode()
    assert errors.startswith(str(code)), errors


def test_gap_kernel_matches_the_slot_list():
    rng = np.random.default_rng(5)
    gaps = rng.integers(1, 1 << 16, 5000).astype(np.uint16)
    first = 123_456_789
    slots = first + np.concatenate([[0], np.cumsum(gaps, dtype=np.int64)])
    want = symbols.symbols_for_slots(0xC0FFEE, slots, 0.2, 0.1, 0.6)
    got = symbols.symbols_for_gaps(0xC0FFEE, first, gaps, 0.2, 0.1, 0.6)
    np.testing.assert_array_equal(got, want)
    assert symbols.symbols_for_gaps(1, 9, gaps[:0], 0.5, 0.5, 0.5).size == 1  # the first slot
    with pytest.raises(symbols.SlotRangeError, match="at least 1"):
        symbols.symbols_for_gaps(1, 9, np.array([4, 0, 1], np.uint16), 0.5, 0.5, 0.5)
    with pytest.raises(symbols.SlotRangeError, match="beyond"):
        symbols.symbols_for_gaps(1, 100, np.array([4, 9], np.uint16), 0.5, 0.5, 0.5, max_slot=110)
    with pytest.raises(ValueError, match="uint16"):
        symbols.symbols_for_gaps(1, 9, np.array([4, 9], np.int64), 0.5, 0.5, 0.5)
