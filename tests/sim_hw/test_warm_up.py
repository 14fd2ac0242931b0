"""After ``World.warm_up()`` no instrument command compiles a numba kernel.

A command that compiles on its first call stalls for a second or more with a cold cache (a fresh
clone), longer than a driver's timeout. Numba types a read-only array (``np.frombuffer`` of a
command's block payload) apart from a writable one, so a warm-up with writable arrays alone left
``SYMB:LIST?`` compiling on its first call: a CI run timed out on it.
"""

from __future__ import annotations

import sys

import numpy as np
from numba.core.registry import CPUDispatcher

from qnode import linkmodel
from sim_hw.world import World


def _block(payload: bytes) -> bytes:
    size = str(len(payload)).encode()
    return b"#" + str(len(size)).encode() + size + payload


def _signatures() -> dict[str, int]:
    """Compiled signatures of every numba kernel in the loaded ``sim_hw`` modules."""
    out = {}
    for name, module in list(sys.modules.items()):
        if not name.startswith("sim_hw"):
            continue
        for attr, value in vars(module).items():
            if isinstance(value, CPUDispatcher):
                out[f"{name}.{attr}"] = len(value.signatures)
    return out


def test_no_command_compiles_after_warm_up():
    world = World(linkmodel.preset("snspd").with_distance(10.0), seed=3)
    world.warm_up()
    before = _signatures()
    assert before, "no numba kernels found: the check would be vacuous"
    src, tagger = world.source, world.timetagger
    assert src.execute(b":SOUR:RAND:KEY #H0000000000C0FFEE;:OUTP ON") is None
    assert tagger.execute(b":SYNC:PER 65536;:ACQ:STAR") is None
    fetched = tagger.execute(b":TAGS:FETC? 200000")
    assert fetched.startswith(b"#")
    assert src.execute(b":SOUR:SYMB? 1000,4096").startswith(b"#")
    slots = np.array([5000, 17, 123456], dtype="<i8").tobytes()
    listed = src.execute(b":SOUR:SYMB:LIST? " + _block(slots))
    gaps = np.array([1, 7, 300], dtype="<u2").tobytes()
    gapped = src.execute(b":SOUR:SYMB:GAPS? 17," + _block(gaps))
    assert listed.startswith(b"#3") or listed.startswith(b"#1")
    assert gapped.startswith(b"#1")
    tagger.execute(b":ACQ:STOP")
    after = _signatures()
    compiled = {k: (before.get(k, 0), n) for k, n in after.items() if n != before.get(k, 0)}
    assert not compiled, f"kernels compiled by a command after warm-up: {compiled}"
