"""A tag fetch builds its block straight from the buffered pieces: same bytes as one array."""

from __future__ import annotations

import numpy as np

from qnode import linkmodel
from sim_hw.world import World


def test_fetch_block_spans_pieces_and_keeps_the_rest() -> None:
    world = World(linkmodel.preset("snspd"), seed=1, read_ahead=False)
    tagger = world.timetagger
    pieces = [
        np.arange(a, b, dtype=np.uint64) << np.uint64(8) for a, b in ((0, 5), (5, 9), (9, 30))
    ]
    for p in pieces:
        tagger._pending.append(p)
        tagger._n_pending += p.size
    block = tagger.execute(b":TAGS:FETC? 12")  # all of the first two pieces, 3 of the third
    digits = int(block[1:2])
    assert block[2 : 2 + digits] == b"96" and block.endswith(b"\n")
    got = np.frombuffer(block[2 + digits : -1], dtype="<u8")
    assert np.array_equal(got, np.arange(12, dtype=np.uint64) << np.uint64(8))
    assert tagger.execute(b":TAGS:COUN?") == b"18\n"
    rest = tagger.take(100)
    assert np.array_equal(rest, np.arange(12, 30, dtype=np.uint64) << np.uint64(8))
    empty = tagger.execute(b":TAGS:FETC? 10")
    assert empty == b"#10\n"
