"""Sifting: the numba stage against a plain Python reference, over the real loopback codec."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.bench.sifting import make_frame, sift_numpy, sift_qnode
from pipeline.channel import loopback_pair
from pipeline.sifting import SiftingAlice, SiftingBob, sift_loopback, symbol_bytes


def reference_sift(bob_basis, bob_bit, alice_basis, alice_bit, intensity):
    """The protocol spelled out event by event (X = 1 is the key basis, Z = 0 the test basis)."""
    alice_key, bob_key = [], []
    counts = np.zeros((2, 3), np.int64)
    errors = np.zeros(3, np.int64)
    for bb, bv, ab, av, k in zip(
        bob_basis, bob_bit, alice_basis, alice_bit, intensity, strict=True
    ):
        if bb != ab:
            continue
        counts[ab, k] += 1
        if ab == 1:
            alice_key.append(av)
            bob_key.append(bv)
        elif av != bv:
            errors[k] += 1
    return np.array(alice_key, np.uint8), np.array(bob_key, np.uint8), counts, errors


def random_frame(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    f = {
        "slot": np.cumsum(rng.integers(1, 1000, n)).astype(np.int64),
        "bob_basis": rng.integers(0, 2, n).astype(np.uint8),
        "bob_bit": rng.integers(0, 2, n).astype(np.uint8),
        "alice_basis": rng.integers(0, 2, n).astype(np.uint8),
        "alice_bit": rng.integers(0, 2, n).astype(np.uint8),
        "intensity": rng.integers(0, 3, n).astype(np.uint8),
    }
    f["symbols"] = symbol_bytes(f["alice_basis"], f["alice_bit"], f["intensity"])
    return f


def run_loopback(f: dict[str, np.ndarray], frame: int = 7):
    return sift_loopback(
        frame, f["slot"], f["bob_basis"], f["bob_bit"],
        f["alice_basis"], f["alice_bit"], f["intensity"],
    )  # fmt: skip


def check_against_reference(f: dict[str, np.ndarray], alice, bob) -> None:
    ref_a, ref_b, ref_counts, ref_errors = reference_sift(
        f["bob_basis"], f["bob_bit"], f["alice_basis"], f["alice_bit"], f["intensity"]
    )
    np.testing.assert_array_equal(alice.key_bits, ref_a, "Alice's key bits differ")
    np.testing.assert_array_equal(bob.key_bits, ref_b, "Bob's key bits differ")
    for side in (alice, bob):
        np.testing.assert_array_equal(side.counts, ref_counts, "counts differ")
        np.testing.assert_array_equal(side.test_errors, ref_errors, "test errors differ")
        assert side.key_bits.dtype == np.uint8


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 300), seed=st.integers(0, 2**32 - 1), frame=st.integers(0, 2**40))
def test_sifting_matches_python_reference(n: int, seed: int, frame: int) -> None:
    f = random_frame(np.random.default_rng(seed), n)
    alice, bob = run_loopback(f, frame)
    assert alice.frame == bob.frame == frame
    check_against_reference(f, alice, bob)


@pytest.mark.parametrize("n", [63, 64, 65, 65536 + 1, 3 * 65536 + 77])
def test_sifting_across_word_and_chunk_boundaries(n: int) -> None:
    f = random_frame(np.random.default_rng(n), n)
    check_against_reference(f, *run_loopback(f))


def test_numpy_peer_agrees_with_stage() -> None:
    frame = make_frame(100_003, seed=3)
    for x, y in zip(sift_qnode(frame), sift_numpy(frame), strict=True):
        np.testing.assert_array_equal(x, y)


def test_messages_carry_frame_ids_and_bit_planes() -> None:
    f = random_frame(np.random.default_rng(1), 100)
    bob, alice = SiftingBob(), SiftingAlice()
    announce = bob.announce(42, f["slot"], f["bob_basis"], f["bob_bit"])
    assert announce["type"] == "sift_announce" and announce["frame"] == 42
    assert announce["basis"].nbytes == 16  # 100 events -> two 64-bit words
    np.testing.assert_array_equal(
        np.unpackbits(announce["basis"], bitorder="little", count=100), f["bob_basis"]
    )
    request = alice.symbol_request(announce)
    assert (request.frame, request.n, request.first) == (42, 100, f["slot"][0])
    assert request.gaps is announce["slot_delta"] and request.slots is None  # passed through
    np.testing.assert_array_equal(request.slot_list(), f["slot"])
    reply, _ = alice.on_announce(announce, f["symbols"])
    assert reply["type"] == "sift_reply" and reply["frame"] == 42
    match = np.unpackbits(reply["match"], bitorder="little", count=100).astype(bool)
    np.testing.assert_array_equal(match, f["bob_basis"] == f["alice_basis"])


def test_bob_keeps_several_frames_in_flight() -> None:
    rng = np.random.default_rng(5)
    frames = {k: random_frame(rng, 500) for k in (3, 4, 5)}
    a_end, b_end = loopback_pair()
    bob, alice = SiftingBob(), SiftingAlice()
    for k, f in frames.items():
        b_end.send(bob.announce(k, f["slot"], f["bob_basis"], f["bob_bit"]))
    replies = {}
    for _ in frames:
        msg = a_end.recv()
        f = frames[msg["frame"]]
        replies[msg["frame"]], _ = alice.on_announce(msg, f["symbols"])
    for k in (5, 3, 4):  # replies may come back in any order
        result = bob.on_reply(replies[k])
        ref = reference_sift(*(frames[k][x] for x in ("bob_basis", "bob_bit", "alice_basis", "alice_bit", "intensity")))  # fmt: skip  # noqa: E501
        np.testing.assert_array_equal(result.key_bits, ref[1])
    with pytest.raises(ValueError, match="not announced"):
        bob.on_reply(replies[3])  # a replayed reply is refused


# --------------------------------------------------------------------------- bad input


def _good():
    f = random_frame(np.random.default_rng(9), 200)
    return f, f["slot"], f["bob_basis"], f["bob_bit"]


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda s, b, v: (s.astype(np.int32), b, v), "dtype int64"),
        (lambda s, b, v: (s, b.astype(np.int64), v), "dtype uint8"),
        (lambda s, b, v: (s, b[:-1], v), "length"),
        (lambda s, b, v: (s[:0], b[:0], v[:0]), "no events"),
        (lambda s, b, v: (s, np.where(b == 1, 2, b).astype(np.uint8), v), "0/1"),
        (lambda s, b, v: (s[::-1].copy(), b, v), "strictly increasing"),
        (lambda s, b, v: (np.repeat(s[:100], 2), b, v), "strictly increasing"),
        (lambda s, b, v: (s.reshape(2, 100), b, v), "one-dimensional"),
        (lambda s, b, v: (list(s), b, v), "numpy array"),
    ],
)
def test_bob_rejects_bad_events(change, match) -> None:
    _, slot, basis, bit = _good()
    with pytest.raises(ValueError, match=match):
        SiftingBob().announce(0, *change(slot, basis, bit))


def test_bad_frame_ids_and_duplicates() -> None:
    _, slot, basis, bit = _good()
    bob = SiftingBob()
    for bad in (-1, 1.5, True, "3", None):
        with pytest.raises(ValueError, match="frame id"):
            bob.announce(bad, slot, basis, bit)
    bob.announce(1, slot, basis, bit)
    with pytest.raises(ValueError, match="already announced"):
        bob.announce(1, slot, basis, bit)


def test_alice_rejects_bad_symbols_and_announcements() -> None:
    f, slot, basis, bit = _good()
    announce = SiftingBob().announce(0, slot, basis, bit)
    alice = SiftingAlice()
    for bad in (0x13, 0x0C, 0xFF):  # a bit above 3 set, intensity class 3
        symbols = f["symbols"].copy()
        symbols[117] = bad
        with pytest.raises(ValueError, match="bits 4-7 set or intensity class 3"):
            alice.on_announce(announce, symbols)
    with pytest.raises(ValueError, match="length"):
        alice.on_announce(announce, f["symbols"][:-1])
    with pytest.raises(ValueError, match="dtype uint8"):
        alice.on_announce(announce, f["symbols"].astype(np.int16))
    delta = announce["slot_delta"]
    shape_errors = (
        ("type", "sift_reply"),
        ("n", 0),
        ("n", 201),
        ("slot", slot[:-1]),
        ("slot_delta", delta[:-1]),
        ("slot_delta", delta.astype(np.int32)),
        ("slot_delta", [1] * 199),
        ("slot0", -1),
        ("slot0", 2**62),
        ("slot0", True),
        ("basis", announce["basis"][:-1]),
        ("test_bits", announce["test_bits"][:-1]),
        ("frame", -4),
    )
    value_errors = (  # found by the one pass over the slots, in the symbol request
        ("slot", slot[::-1].copy()),
        ("slot", slot - slot[1]),
        ("slot_delta", np.concatenate([delta[:-1], np.zeros(1, delta.dtype)])),
        ("slot_delta", delta.astype(np.int64) - 1000),
        ("slot_delta", np.full(199, 2**62 // 150, np.int64)),  # the last slot passes 2^62
        ("slot0", 2**62 - int(delta.astype(np.int64).sum())),
    )
    for key, value in shape_errors + value_errors:
        with pytest.raises(ValueError):
            alice.symbol_request({**announce, key: value})
    for key, value in shape_errors:
        with pytest.raises(ValueError):
            alice.on_announce({**announce, key: value}, f["symbols"])
    last = 2**62 - 1 - int(delta.astype(np.int64).sum())  # the largest slot0 still in range
    assert alice.symbol_request({**announce, "slot0": last}).slot_list()[-1] == 2**62 - 1


@pytest.mark.parametrize("gap", [1, 70_000, 5_000_000_000])
def test_announced_slots_travel_as_narrow_gaps(gap: int) -> None:
    """uint16 gaps on bright links (passed through to the source), wider ones when a gap needs
    them (Alice builds the slots for a list query); the same slots arrive either way."""
    rng = np.random.default_rng(gap)
    slot = 12_345 + np.cumsum(rng.integers(1, 50, 300))
    slot[150:] += gap
    ones = np.ones(300, np.uint8)
    announce = SiftingBob().announce(0, slot, ones, ones)
    want = {1: np.uint16, 70_000: np.uint32, 5_000_000_000: np.int64}[gap]
    assert announce["slot_delta"].dtype == want and "slot" not in announce
    bob_end, alice_end = loopback_pair()
    bob_end.send(announce)  # through the codec: the dtype travels with the array
    sent = alice_end.recv()
    request = SiftingAlice.symbol_request(sent)
    assert request.first == slot[0]
    if gap == 1:
        assert request.slots is None and request.gaps.dtype == np.uint16
        np.testing.assert_array_equal(request.gaps, np.diff(slot))
    else:
        assert request.gaps is None
        np.testing.assert_array_equal(request.slots, slot)
    np.testing.assert_array_equal(request.slot_list(), slot)
    plain = {k: v for k, v in sent.items() if k not in ("slot0", "slot_delta")}
    listed = SiftingAlice.symbol_request({**plain, "slot": slot})
    assert listed.gaps is None
    np.testing.assert_array_equal(listed.slots, slot)


def test_bob_rejects_inconsistent_replies() -> None:
    f, slot, basis, bit = _good()

    def fresh():
        bob = SiftingBob()
        announce = bob.announce(0, slot, basis, bit)
        return bob, SiftingAlice().on_announce(announce, f["symbols"])[0]

    _, reply = fresh()
    past_end = reply["match"].copy()
    past_end[-1] |= 0x80  # a match flag for event 255 of a 200-event frame
    both = reply["intensity_lo"] | reply["intensity_hi"]
    z_detections = sum(reply["test_errors"]) + 1000
    bad_replies = [
        ({"match": past_end}, "inconsistent"),
        ({"intensity_lo": both, "intensity_hi": both}, "inconsistent"),
        ({"intensity_lo": ~reply["match"]}, "inconsistent"),
        ({"test_errors": [z_detections, 0, 0]}, "more test errors"),
        ({"test_errors": [1, 2]}, "3 non-negative"),
        ({"match": reply["match"][:8]}, "length"),
        ({"n": 199}, "announced 200"),
        ({"failed": True, "reason": "no symbols"}, "could not sift it \\(no symbols\\)"),
    ]
    for change, match in bad_replies:
        bob, reply = fresh()
        with pytest.raises(ValueError, match=match):
            bob.on_reply({**reply, **change})
        with pytest.raises(ValueError, match="not announced"):
            bob.on_reply(reply)  # the frame is gone: a second reply cannot replace the first
    bob, reply = fresh()
    for change, match in (({"type": "sift_announce"}, "expected a sift_reply"),
                          ({"frame": 9}, "not announced")):  # fmt: skip
        with pytest.raises(ValueError, match=match):
            bob.on_reply({**reply, **change})
    assert bob.on_reply(reply).frame == 0  # a stray message does not cost the frame


def test_perf_rows_measure_both_impls_on_the_same_frame() -> None:
    from pipeline.bench.sifting import perf_rows

    assert perf_rows(quick=True, stages=["toeplitz"]) == []
    rows = perf_rows(quick=True, stages=["sifting"])
    assert [r["impl"] for r in rows] == ["qnode", "numpy"]
    for row in rows:
        assert row["stage"] == "sifting" and row["agree"] is True and "note" not in row
        assert row["events_per_s"] > 0 and row["n"] == rows[0]["n"]


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32, np.int64])
def test_gap_checks_across_chunks(dtype) -> None:
    """Frames longer than a kernel chunk: Bob's fused pass encodes every gap, Alice's one pass
    refuses a zero gap anywhere (first, middle or last chunk) or a last slot reaching 2^62, and
    the slots she builds for a list query are exact."""
    from pipeline.sifting import _CHUNK, SymbolRequest, _checked_gaps

    rng = np.random.default_rng(3)
    n = 3 * _CHUNK + 17
    slot = 5 + np.cumsum(rng.integers(1, 40, n)).astype(np.int64)
    ones = np.ones(n, np.uint8)
    gaps = SiftingBob().announce(0, slot, ones, ones)["slot_delta"]
    assert gaps.dtype == np.uint16
    np.testing.assert_array_equal(gaps, np.diff(slot))
    gaps = gaps.astype(dtype)
    _checked_gaps(int(slot[0]), gaps)
    built = SymbolRequest(0, n, int(slot[0]), gaps=gaps).slot_list()
    np.testing.assert_array_equal(built, slot)
    for at in (0, _CHUNK + 3, n - 2):
        bad = gaps.copy()
        bad[at] = 0
        with pytest.raises(ValueError, match="positive"):
            _checked_gaps(int(slot[0]), bad)
    total = int(gaps.astype(np.int64).sum())
    with pytest.raises(ValueError, match="in range"):
        _checked_gaps(2**62 - total, gaps)
    _checked_gaps(2**62 - 1 - total, gaps)
    if dtype is np.int64:
        for huge in (2**62, 2**63 - 1, -1):
            wide = gaps.copy()
            wide[_CHUNK + 1] = huge
            with pytest.raises(ValueError):
                _checked_gaps(0, wide)
    if dtype is np.uint32:  # gaps of 2^31 and more: the high parts of the sum count
        wide = np.full(4, 2**32 - 1, np.uint32)
        _checked_gaps(2**62 - 1 - 4 * (2**32 - 1), wide)
        with pytest.raises(ValueError, match="in range"):
            _checked_gaps(2**62 - 4 * (2**32 - 1), wide)


def test_no_kernel_compiles_after_warm_up() -> None:
    """The node warms sifting up for read-only (received) and writable arrays: a frame that
    then comes in through the codec and zmq-like buffers compiles nothing."""
    import pipeline.sifting as sifting

    sifting.warm_up()
    kernels = [
        getattr(sifting, k) for k in dir(sifting) if hasattr(getattr(sifting, k), "signatures")
    ]
    before = {k.__name__: len(k.signatures) for k in kernels}
    frozen = {
        k: np.frombuffer(v.tobytes(), v.dtype)
        for k, v in random_frame(np.random.default_rng(2), 999).items()
    }  # noqa: E501
    bob_end, alice_end = loopback_pair()
    bob = SiftingBob()
    bob_end.send(bob.announce(1, frozen["slot"], frozen["bob_basis"], frozen["bob_bit"]))
    announce = alice_end.recv()
    SiftingAlice.symbol_request(announce)
    reply, _ = SiftingAlice().on_announce(announce, frozen["symbols"])
    alice_end.send(reply)
    bob.on_reply(bob_end.recv())
    assert {k.__name__: len(k.signatures) for k in kernels} == before
