"""The world's read-ahead (sim_hw.readahead): the tags delivered are exactly those of a world
that simulates only when asked, also across settings changes, and the queue stays bounded."""

from __future__ import annotations

import time

import numpy as np

from qnode import linkmodel
from sim_hw.readahead import MAX_AHEAD_CHUNKS
from sim_hw.world import World

FETCH = b":TAGS:FETC? %d"


def _world(read_ahead: bool) -> World:
    params = linkmodel.preset("snspd").with_distance(10.0)
    world = World(params, seed=11, read_ahead=read_ahead)
    assert world.source.execute(b":SOUR:RAND:KEY #H0000000000C0FFEE;:OUTP ON") is None
    assert world.timetagger.execute(b":SYNC:PER 65536;:ACQ:STAR") is None
    return world


def _records(block: bytes) -> np.ndarray:
    digits = int(block[1:2])
    return np.frombuffer(block[2 + digits : -1], dtype="<u8")


def _wait_full(world: World, timeout_s: float = 30.0) -> None:
    """Until the worker filled its queue (not after a settings change: the event loop applies
    new settings with the next chunk it delivers, only then may the worker go on)."""
    if not world.ahead_busy():
        return
    deadline = time.monotonic() + timeout_s
    while world.ahead.queued < MAX_AHEAD_CHUNKS and time.monotonic() < deadline:
        time.sleep(0.01)
    assert world.ahead.queued == MAX_AHEAD_CHUNKS, world.ahead.stats()


def _ahead_session(world: World) -> tuple[np.ndarray, int]:
    """Fetches of varied sizes, each once the worker filled its queue; an attenuation change
    after the third. Returns the tags and the slot from which the new setting applies."""
    out = []
    for step, size in enumerate((1000, 400_000, 50_000, 700_000, 300_000, 900_000)):
        if step:  # the first fetch applies the settings; then the worker may run
            _wait_full(world)
        if step == 3:  # a setting changes mid-run: chunks simulated ahead are void
            change_at = world.current_slot
            assert world.attenuator.execute(b":INP:ATT 3") is None
        out.append(_records(world.timetagger.execute(FETCH % size)))
    return np.concatenate(out), change_at


def _plain_session(world: World, change_at: int, n_tags: int) -> np.ndarray:
    """The same settings at the same slot, fetched one chunk at a time."""
    out, n = [], 0
    while n < n_tags:
        if world.current_slot == change_at:
            assert world.attenuator.execute(b":INP:ATT 3") is None
        out.append(_records(world.timetagger.execute(FETCH % 100_000)))
        n += out[-1].size
    return np.concatenate(out)


def test_read_ahead_delivers_the_same_tags_and_stays_bounded():
    plain, ahead = _world(read_ahead=False), _world(read_ahead=True)
    try:
        got_ahead, change_at = _ahead_session(ahead)
        stats = ahead.ahead.stats()
    finally:
        ahead.timetagger.execute(b":ACQ:STOP")
        ahead.ahead.close()
    assert stats["taken"] > 0 and stats["dropped"] > 0  # it did simulate ahead, and rewound
    assert stats["queued"] <= MAX_AHEAD_CHUNKS
    assert got_ahead.size > 1_000_000
    got_plain = _plain_session(plain, change_at, got_ahead.size)
    assert plain.ahead.stats()["taken"] == 0 and not plain.ahead.running
    np.testing.assert_array_equal(got_plain[: got_ahead.size], got_ahead)
    stopped = ahead.timetagger.execute(b":ACQ:STAT?")
    assert stopped == b"0\n" and not ahead.ahead.running
