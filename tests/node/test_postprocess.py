"""The post-processing process's message handling: nonsense from the peer never crashes it."""

from __future__ import annotations

import numpy as np
import pytest

from qnode.config import parse_config


@pytest.fixture
def alice_pp(tmp_path, monkeypatch):
    from pipeline.postprocess import PostProcess

    monkeypatch.setenv("QNODE_TEST_SECRET", "ab" * 32)
    cfg = parse_config(
        {
            "node": "alice",
            "role": "alice",
            "bench": "bench.toml",
            "peer": {"id": "bob", "bind": "tcp://127.0.0.1:0", "secret_env": "QNODE_TEST_SECRET"},
            "keystore": {"path": str(tmp_path / "a.db")},
        }  # fmt: skip
    )
    pp = PostProcess(cfg, f"ipc://{tmp_path}/hub.ipc")
    yield pp
    pp.channel.close()
    pp.store.close()


@pytest.mark.parametrize(
    "message",
    [
        {"type": "commit_query", "block_ids": 5},
        {"type": "commit_status", "status": "everything"},
        {"type": "commit_propose", "block": "x", "block_id": None, "seq": "y"},
        {"type": "reset", "epoch": 7},
        {"type": "block_close", "epoch": 7, "block": 1, "frames": ["x", None]},
        {"type": "block_close", "epoch": 7, "block": 2, "frames": [1, 2]},
        {"type": "sift_announce", "epoch": 7, "frame": 3, "n": 5, "slot": "nope"},
        {
            "type": "sift_announce",
            "epoch": 7,
            "frame": -1,
            "n": 2,
            "slot": np.array([1, 2]),
            "basis": b"\x00",
            "test_bits": b"\x00",
        },  # fmt: skip
        {"type": "ldpc_syndrome", "epoch": 7, "block": 99},
        {"type": "pa_seed", "epoch": 7, "block": 1, "n": -1},
        {"type": "block_failed", "epoch": 7, "block": "z"},
        {"type": "weird", "epoch": 7},
        {"type": "sift_reply", "epoch": 7, "frame": {}},
    ],
)
def test_nonsense_from_the_peer_is_dropped_not_raised(alice_pp, message):
    alice_pp.on_peer({"type": "reset", "epoch": 7})
    alice_pp.on_peer(message)  # must not raise
    assert alice_pp.store.blocks() == []
    assert alice_pp.blocks == {}


def test_commands_answer_errors_for_bad_input(alice_pp):
    assert alice_pp._apply("state", {})["block_bits"] == alice_pp.cfg.pipeline.block_bits
    assert alice_pp._apply("set_block_size", {"n_bits": 4096})["block_bits"] == 4096
    with pytest.raises(ValueError):
        alice_pp._apply("set_block_size", {"n_bits": 3})
    with pytest.raises(ValueError):
        alice_pp._apply("fly", {})
    assert alice_pp._apply("stop", {})["paused"] is True


_SHOW_OPENMP = """
import ctypes, sys
from pipeline.postprocess import passive_openmp_workers
passive_openmp_workers()
import numba
numba.set_num_threads(1)  # numba loads its threading layer (libgomp) here at the latest
ctypes.CDLL("libgomp.so.1").omp_display_env(1)  # the settings in force, on stderr
"""


@pytest.mark.parametrize("preset, spincount", [(None, "'0'"), ("active", "'30000000000'")])
def test_openmp_workers_sleep_after_a_parallel_region(preset, spincount):
    """The post-processing process sets OMP_WAIT_POLICY=passive before numba loads libgomp (a
    spinning worker costs the other processes on the machine their core); an explicit policy in
    the environment is kept."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    if preset:
        env["OMP_WAIT_POLICY"] = preset
    proc = subprocess.run(
        [sys.executable, "-c", _SHOW_OPENMP], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"GOMP_SPINCOUNT = {spincount}" in proc.stderr, proc.stderr[-2000:]


def test_alice_passes_bob_gaps_to_acquisition_and_sifts_the_symbols(alice_pp):
    """A sift_announce becomes one request on the acquisition socket holding Bob's uint16 gaps
    byte for byte ({frame, first} + gaps); the symbol bytes that come back are sifted. A
    malformed announcement is counted and never reaches the source."""
    import zmq

    from pipeline.postprocess import _ipc
    from pipeline.sifting import SiftingBob
    from qnode.codec import packb, unpackb

    ctx = zmq.Context.instance()
    acq_in = ctx.socket(zmq.PULL)
    acq_in.connect(_ipc(alice_pp.cfg, "requests"))
    acq_out = ctx.socket(zmq.PUSH)
    acq_out.connect(_ipc(alice_pp.cfg, "symbols"))
    try:
        rng = np.random.default_rng(4)
        slot = 500 + np.cumsum(rng.integers(1, 60, 400)).astype(np.int64)
        ones = np.ones(400, np.uint8)
        announce = {**SiftingBob().announce(3, slot, ones, ones), "epoch": 7}
        alice_pp.on_peer({"type": "reset", "epoch": 7})
        bad = {**announce, "slot_delta": np.zeros(399, np.uint16)}
        alice_pp.on_peer(bad)
        assert alice_pp.stats.malformed_peer == 1 and alice_pp.waiting_symbols == {}
        alice_pp.on_peer(announce)
        assert acq_in.poll(5000)
        head, gaps = acq_in.recv_multipart()
        assert unpackb(head) == {"frame": 3, "first": int(slot[0])}
        assert gaps == announce["slot_delta"].tobytes() == np.diff(slot).astype("<u2").tobytes()
        symbols = (rng.integers(0, 2, 400) | 2 * rng.integers(0, 2, 400)).astype(np.uint8)
        reply_head = {"frame": 3, "ok": True, "n": 400, "source": {}}
        acq_out.send_multipart([packb(reply_head), symbols.tobytes()])
        for _ in range(100):
            alice_pp._alice_symbols()
            if alice_pp.stats.frames_sifted:
                break
            alice_pp.symbols_in.poll(50)  # let the ipc message arrive
        assert alice_pp.stats.frames_sifted == 1 and alice_pp.waiting_symbols == {}
        assert alice_pp.stats.counts[1].sum() == int((symbols & 1).sum())  # Bob: all X
    finally:
        acq_in.close(0)
        acq_out.close(0)
