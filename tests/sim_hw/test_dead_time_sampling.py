"""The physics kernel draws only the clicks of live detectors (thinning at the live set's rate,
revivals folded into the draw); here it is checked against a plain slot-by-slot reference that
draws every detector in every slot and then applies dead time and afterpulses, in a regime
where the detectors are dead most of the time (1 GHz, 10 km, snspd: 30 ns dead time)."""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from qnode import linkmodel as lm
from sim_hw.physics import LinkSimulator
from sim_hw.symbols import symbols_range

KEY = 0x5EED
N_SLOTS = 10_000_000


@njit(cache=True)
def _reference(syms, probs, p_bob_z, n_dead, p_ap, window, seed):  # pragma: no cover - numba
    """Clicks per (detector, symbol): every slot, Bob's basis, both gated detectors drawn,
    then dead time (non-paralysable) and first-order afterpulses, exactly as the model says."""
    np.random.seed(seed)
    n = syms.size
    hist = np.zeros((4, 12), np.int64)
    dead_until = np.full(4, -(2**62), np.int64)
    pending = np.zeros((4, n + n_dead + window + 2), np.bool_)
    for s in range(n):
        sym = syms[s]
        b = 0 if np.random.random() < p_bob_z else 1
        for d in range(4):
            prim = d >> 1 == b and np.random.random() < probs[sym, d]
            if not (prim or pending[d, s]) or s <= dead_until[d]:
                continue
            dead_until[d] = s + n_dead
            hist[d, sym] += 1
            if prim and np.random.random() < p_ap:
                pending[d, s + n_dead + 1 + int(np.random.random() * window)] = True
    return hist


def _params() -> lm.LinkParams:
    return lm.preset("snspd").with_changes(
        source={"clock_hz": 1e9},
        fibre={"length_km": 10.0},
        receiver={"afterpulse_prob": 0.05, "afterpulse_window_ns": 20.0},
    )


def test_live_detector_sampling_matches_the_slot_by_slot_reference() -> None:
    params = _params()
    src = params.source
    syms = symbols_range(KEY, 0, N_SLOTS, src.p_basis_z, src.p_signal, src.p_decoy)
    probs = np.zeros((12, 4))
    for sym in range(12):
        a_basis, a_bit, cls = sym & 1, (sym >> 1) & 1, sym >> 2
        for b in (0, 1):
            p = lm.click_probs(params, cls, a_basis, a_bit, b)
            probs[sym, 2 * b : 2 * b + 2] = p[2 * b : 2 * b + 2]
    n_dead, window = lm.dead_slots(params), lm.afterpulse_window_slots(params)
    assert (n_dead, window) == (29, 20)
    ref = _reference(syms, probs, params.p_bob_z, n_dead, 0.05, window, 7)

    det = LinkSimulator(params, key=KEY, seed=3).simulate(0, N_SLOTS)
    got = np.zeros((4, 12), np.int64)
    np.add.at(got, (det.channel.astype(np.int64) - 1, syms[det.slot].astype(np.int64)), 1)

    # Dead time matters here: it removes about half of the primary clicks.
    primary = N_SLOTS * np.array([probs[:, d] @ np.bincount(syms, minlength=12) / N_SLOTS
                                  * (params.p_bob_z if d < 2 else 1 - params.p_bob_z)
                                  for d in range(4)])  # fmt: skip
    assert got.sum() < 0.7 * primary.sum()
    assert got.sum() > 500_000
    # Two independent samples of the same process: each cell within 5 sigma.
    for d in range(4):
        for sym in range(12):
            a, b = got[d, sym], ref[d, sym]
            tol = 5.0 * math.sqrt(a + b) + 5.0
            assert abs(a - b) <= tol, f"detector {d + 1}, symbol {sym}: {a} vs reference {b}"
    for d in range(4):
        a, b = got[d].sum(), ref[d].sum()
        assert abs(a - b) <= 5.0 * math.sqrt(a + b), f"detector {d + 1}: {a} vs {b}"


def test_snapshot_and_restore_continue_the_same_stream() -> None:
    """The read-ahead rewinds with snapshot/restore: the stream position and the pending
    candidate are part of the state, so a restored simulator continues identically."""
    params = _params()
    sim = LinkSimulator(params, key=KEY, seed=5)
    sim.simulate(0, 1_000_003)
    state = sim.snapshot()
    ahead = sim.simulate(1_000_003, 777_777)
    sim.simulate(1_777_780, 500_000)  # simulate further, then rewind
    sim.restore(state)
    again = sim.simulate(1_000_003, 777_777)
    assert ahead.slot.size > 10_000
    assert all(np.array_equal(a, b) for a, b in zip(ahead, again, strict=True))
    # New rates between snapshot and restore: the pending candidate is drawn again, so the
    # continuation follows the new parameters (and is still reproducible).
    darker = params.with_changes(fibre={"extra_loss_db": 10.0})
    sim.update(darker)
    sim.restore(state)
    dim = sim.simulate(1_000_003, 777_777)
    sim.restore(state)
    dim2 = sim.simulate(1_000_003, 777_777)
    assert all(np.array_equal(a, b) for a, b in zip(dim, dim2, strict=True))
    assert dim.slot.size < 0.5 * ahead.slot.size
