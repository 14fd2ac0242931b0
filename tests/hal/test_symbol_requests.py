"""Alice's symbol requests: grouping rules, merged queries against the simulated source, and a
fault in a merged query costing exactly one frame (as a single request's fault does)."""

import numpy as np
import pytest
import zmq

from hal.acquisition import Acquisition
from hal.roles import PulseSourceTransmitter
from hal.symbol_requests import (
    MAX_MERGED,
    SymbolRequest,
    group_requests,
    joined_gaps,
    parse_request,
    split_symbols,
)
from qnode.codec import packb, unpackb
from sim_hw.testing import running_world


def _gap_request(frame: int, slots: np.ndarray) -> SymbolRequest:
    gaps = np.diff(slots).astype("<u2")
    return SymbolRequest({"frame": frame, "first": int(slots[0])}, int(slots[0]), gaps)


def _frames(n: int, frame_slots: int = 1 << 17, seed: int = 0) -> list[np.ndarray]:
    """Sorted detected slots of ``n`` consecutive frames (~8 % of slots)."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        hits = np.flatnonzero(rng.random(frame_slots) < 0.08)
        out.append(hits.astype(np.int64) + k * frame_slots)
    return out


def test_parse_request_gaps_slots_and_malformed():
    gaps = np.array([1, 5, 65535], "<u2")
    req = parse_request([packb({"frame": 3, "first": 10}), gaps.tobytes()])
    assert req.first == 10 and req.count == 4 and req.last_slot() == 10 + 1 + 5 + 65535
    slots = np.array([4, 2, 9], "<i8")
    req = parse_request([packb({"frame": 4}), slots.tobytes()])
    assert req.first is None and req.count == 3 and list(req.positions) == [4, 2, 9]
    assert parse_request([packb({"frame": 5, "first": -1}), gaps.tobytes()]) is None
    assert parse_request([packb({"frame": 5, "first": 1 << 62}), gaps.tobytes()]) is None
    assert parse_request([b"\xc1", gaps.tobytes()]) is None  # not msgpack
    assert parse_request([packb({"frame": 5, "first": 0})]) is None  # no positions
    assert parse_request([packb({"frame": 5, "first": 0}), b"\x01\x02\x03"]) is None


def test_grouping_rules():
    a = _gap_request(0, np.array([10, 12, 20]))
    b = _gap_request(1, np.array([21, 30]))  # joins a with gap 1
    c = _gap_request(2, np.array([30 + 65536, 30 + 65540]))  # gap 65536 does not fit 16 bits
    d = _gap_request(3, np.array([30 + 65541]))  # joins c with gap 1 (a one-slot frame)
    slots = SymbolRequest({"frame": 4}, None, np.array([1, 2], "<i8"))
    e = _gap_request(5, np.array([30 + 65542, 30 + 65543]))  # after a slot request: new group
    f = _gap_request(6, np.array([30 + 65543, 30 + 65550]))  # overlaps e (gap 0): new group
    assert [[r.header["frame"] for r in g] for g in group_requests([a, b, c, d, slots, e, f])] == [
        [0, 1],
        [2, 3],
        [4],
        [5],
        [6],
    ]
    chain = [_gap_request(k, np.array([10 * k, 10 * k + 3])) for k in range(MAX_MERGED + 2)]
    assert [len(g) for g in group_requests(chain)] == [MAX_MERGED, 2]
    assert group_requests([]) == []


def test_joined_gaps_rebuild_every_slot_and_split_per_frame():
    frames = _frames(3, frame_slots=1 << 12, seed=1)
    group = [_gap_request(k, s) for k, s in enumerate(frames)]
    assert len(group_requests(group)) == 1
    gaps = joined_gaps(group)
    assert gaps.dtype == np.dtype("<u2")
    rebuilt = group[0].first + np.concatenate([[0], np.cumsum(gaps.astype(np.int64))])
    np.testing.assert_array_equal(rebuilt, np.concatenate(frames))
    parts = split_symbols(group, rebuilt)  # any per-slot array splits the same way
    for part, slots in zip(parts, frames, strict=True):
        np.testing.assert_array_equal(part, slots)
    with pytest.raises(ValueError, match="symbols for"):
        split_symbols(group, rebuilt[:-1])


@pytest.fixture(scope="module")
def source():
    """The simulated world's pulse source through the HAL role, emitting with a fresh key."""
    with running_world(preset="snspd", seed=5) as world:
        tx = PulseSourceTransmitter(world.resources["source"], timeout_s=2.0)
        tx.open()
        tx.set_symbol_key(0x0123456789ABCDEF)
        tx.set_emitting(False)
        tx.set_emitting(True)
        yield world, tx
        tx.close()


class _Answering:
    """The pieces of an Acquisition that answer symbol requests (no node config, no bench)."""

    def __init__(self) -> None:
        acq = Acquisition.__new__(Acquisition)
        acq.monitor = None
        acq.source_settings = {"mu_signal": 0.5}
        acq.frames_out = acq.frames_failed = acq.symbol_queries = 0
        acq._source_faulted = False
        self.acq = acq
        self.ctx = zmq.Context()
        self.push = self.ctx.socket(zmq.PUSH)
        self.pull = self.ctx.socket(zmq.PULL)
        self.pull.bind("inproc://symbols")
        self.push.connect("inproc://symbols")

    def replies(self, n: int) -> list[tuple[dict, np.ndarray]]:
        out = []
        for _ in range(n):
            header, body = self.pull.recv_multipart()
            out.append((unpackb(header), np.frombuffer(body, np.uint8)))
        assert not self.pull.poll(0)
        return out

    def close(self) -> None:
        self.push.close(0)
        self.pull.close(0)
        self.ctx.term()


def test_merged_query_answers_each_frame_as_its_own_query_would(source):
    _, tx = source
    frames = _frames(MAX_MERGED, seed=2)
    expected = [tx.symbol_bytes_for_gaps(int(s[0]), np.diff(s).astype("<u2")) for s in frames]
    group = [_gap_request(k, s) for k, s in enumerate(frames)]
    assert len(group_requests(group)) == 1
    answering = _Answering()
    try:
        answering.acq._answer_group(tx, group, answering.push)
        got = answering.replies(MAX_MERGED)
    finally:
        answering.close()
    assert answering.acq.symbol_queries == 1 and answering.acq.frames_out == MAX_MERGED
    for k, (header, symbols) in enumerate(got):
        assert header["frame"] == k and header["ok"] and header["n"] == len(frames[k])
        assert header["source"] == {"mu_signal": 0.5}
        np.testing.assert_array_equal(symbols, expected[k])


@pytest.mark.parametrize("kind", ["drop", "garbage"])
def test_fault_in_a_merged_query_costs_exactly_one_frame(source, kind):
    """The group's first frame is answered as failed; the rest are asked again and correct."""
    world, tx = source
    frames = _frames(3, seed=3)
    expected = [tx.symbol_bytes_for_gaps(int(s[0]), np.diff(s).astype("<u2")) for s in frames]
    group = [_gap_request(10 + k, s) for k, s in enumerate(frames)]
    answering = _Answering()
    try:
        world.inject_fault("source", kind, count=1)
        answering.acq._answer_group(tx, group, answering.push)
        got = answering.replies(3)
    finally:
        answering.close()
        world.clear_faults()
    assert answering.acq.frames_failed == 1 and answering.acq.frames_out == 3
    assert [h["frame"] for h, _ in got] == [10, 11, 12]
    assert not got[0][0]["ok"] and got[0][0]["n"] == 0 and len(got[0][1]) == 0
    for k in (1, 2):
        assert got[k][0]["ok"]
        np.testing.assert_array_equal(got[k][1], expected[k])
    assert answering.acq.symbol_queries == 3  # the merged one, then one per remaining frame
