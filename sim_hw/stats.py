"""Per-class statistics of the simulated link beside the closed-form model.

Runs ``sim_hw.physics`` alone (no instruments, no transports) and counts, for each intensity
class, the pulses, the slots with at least one click, the sifted ones (Bob's basis = Alice's) and
their errors against Alice's symbols from ``sim_hw.symbols``. Bob's view of a slot follows the
model of ``qnode.linkmodel.expected_stats``: his basis is that of the clicked channels (clicks in
both bases: one at random), a double click in his basis gets a random bit.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from qnode import linkmodel as lm
from sim_hw.physics import Detections, LinkSimulator
from sim_hw.symbols import class_counts, decode, symbols_for_slots

CHUNK_SLOTS = 1 << 30  # simulate in pieces so memory stays bounded for any --pulses


def bob_view(det: Detections, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Collapse detections to one event per slot: ``(slot, basis, bit)``, sorted by slot."""
    order = np.argsort(det.slot, kind="stable")
    slots = det.slot[order]
    bits = (np.uint8(1) << (det.channel[order] - 1)).astype(np.uint8)
    starts = np.flatnonzero(np.r_[True, slots[1:] != slots[:-1]])
    uniq = slots[starts]
    mask = np.bitwise_or.reduceat(bits, starts) if bits.size else bits
    has_z = (mask & 3) != 0
    has_x = (mask & 12) != 0
    coin_basis = rng.integers(0, 2, size=uniq.size, dtype=np.uint8)
    basis = np.where(has_z & has_x, coin_basis, has_x.astype(np.uint8)).astype(np.uint8)
    pair = (mask >> (2 * basis)) & 3  # 1: bit 0 clicked, 2: bit 1, 3: both
    coin_bit = rng.integers(0, 2, size=uniq.size, dtype=np.uint8)
    bit = np.where(pair == 3, coin_bit, (pair == 2).astype(np.uint8)).astype(np.uint8)
    return uniq, basis, bit


def simulate_stats(
    params: lm.LinkParams, pulses: int, seed: int = 0, key: int = 0x5EED_0F_A11CE
) -> dict[str, Any]:
    """Simulate ``pulses`` slots from slot 0 and count per class; add the model's values."""
    if pulses <= 0:
        raise ValueError(f"pulses must be > 0 (got {pulses})")
    sim = LinkSimulator(params, key=key, seed=seed)
    rng = np.random.default_rng(seed)
    src = params.source
    counts = {name: dict(detections=0, sifted=0, errors=0) for name in lm.CLASSES}
    n_clicks = 0
    for first in range(0, pulses, CHUNK_SLOTS):
        n = min(CHUNK_SLOTS, pulses - first)
        det = sim.simulate(first, n)
        n_clicks += det.slot.size
        slots, b_basis, b_bit = bob_view(det, rng)
        a_basis, a_bit, cls = decode(
            symbols_for_slots(key, slots, src.p_basis_z, src.p_signal, src.p_decoy)
        )
        sifted = a_basis == b_basis
        wrong = sifted & (a_bit != b_bit)
        for k, name in enumerate(lm.CLASSES):
            in_k = cls == k
            counts[name]["detections"] += int(np.count_nonzero(in_k))
            counts[name]["sifted"] += int(np.count_nonzero(in_k & sifted))
            counts[name]["errors"] += int(np.count_nonzero(in_k & wrong))
    n_pulses = class_counts(key, 0, pulses, src.p_signal, src.p_decoy)
    model = lm.expected_stats(params)
    classes = {}
    for k, name in enumerate(lm.CLASSES):
        c = counts[name]
        n_k = int(n_pulses[k])
        m = model[name]
        classes[name] = {
            "mu": src.mu(k),
            "pulses": n_k,
            "detections": c["detections"],
            "gain": c["detections"] / n_k if n_k else 0.0,
            "model_gain": m.gain,
            "sifted": c["sifted"],
            "model_sifted": m.sifted * n_k,
            "errors": c["errors"],
            "qber": c["errors"] / c["sifted"] if c["sifted"] else 0.0,
            "model_qber": m.qber,
        }
    return {
        "pulses": pulses,
        "seed": seed,
        "distance_km": params.fibre.length_km,
        "transmittance": lm.total_transmittance(params),
        "clicks": n_clicks,
        "classes": classes,
    }
