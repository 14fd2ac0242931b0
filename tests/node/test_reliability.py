"""Reliability of a running link (real processes, sockets, instruments, SQLite):

- the node's command socket answers bad commands with an error; each node's post-processing
  process is killed with SIGKILL in the middle of the run and restarted by its supervisor; at the
  end both key stores hold the same blocks (instrument faults: test_fault_matrix.py);
- a man-in-the-middle flips a bit of a reconciliation message: it is rejected, the block it
  belonged to is dropped on both sides, later blocks commit, both stores stay identical.
"""

from __future__ import annotations

import os
import signal
import time

import psutil
import pytest
import zmq

from qnode import linkmodel
from qnode.bus import Subscriber
from qnode.codec import unpackb
from qnode.link import Link, LinkOptions, free_port, node_command, store_summary

from .mitm import MitmProxy

pytestmark = pytest.mark.timeout(240)


def _options(tmp_path, **kw) -> LinkOptions:
    params = linkmodel.preset("snspd").with_distance(10).with_changes(source={"p_basis_z": 0.7})
    link_file = tmp_path / "link.toml"
    link_file.write_text(linkmodel.dump_toml(params))
    return LinkOptions(preset=None, link_file=link_file, duration_s=None, block_bits=100_000,
                       workdir=tmp_path / "work", **kw)  # fmt: skip


def _wait(link: Link, cond, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        link.poll(0.3)
        if cond():
            return
        for name, proc in link.procs.items():
            assert proc.poll() is None, f"{name} exited while waiting for: {what}"
    raise AssertionError(f"timed out waiting for: {what}")


def _stores_equal(link: Link) -> tuple[dict, dict]:
    link.settle(20)
    a = store_summary(link.workdir / "alice-keys.db")
    b = store_summary(link.workdir / "bob-keys.db")
    assert a["block_ids"] == b["block_ids"], "committed blocks differ between the nodes"
    assert a["key_sha256"] == b["key_sha256"], "key material differs between the nodes"
    assert b["pending_blocks"] == 0
    return a, b


def _postprocess_pid(link: Link, role: str) -> int | None:
    for child in psutil.Process(link.procs[role].pid).children():
        try:
            if child.status() != psutil.STATUS_ZOMBIE and "pipeline.postprocess" in " ".join(
                child.cmdline()
            ):
                return child.pid
        except psutil.Error:
            continue
    return None


def test_killed_postprocess_recovers_with_identical_stores(tmp_path):
    link = Link(_options(tmp_path))
    try:
        link.start()
        _wait(link, lambda: link.committed_blocks() >= 1, 90, "a first committed block")
        # 0. the node's command socket answers, and answers bad commands with an error
        cmd = link.ready["bob"]["command"]
        state = node_command(cmd, "state")
        assert state["ok"] and state["result"]["postprocess"]["peer_connected"] is True
        assert "unknown command" in node_command(cmd, "warp")["error"]
        assert not node_command(cmd, "set_block_size", {"n_bits": 5})["ok"]
        raw = zmq.Context.instance().socket(zmq.DEALER)
        raw.linger = 0
        raw.connect(cmd)
        raw.send_multipart([b"", b"\xc1 not msgpack"])
        assert raw.poll(5000), "no reply to a malformed command"
        assert unpackb(raw.recv_multipart()[-1])["ok"] is False
        raw.close()
        # 1. each node's post-processing is killed in the middle of whatever it is doing
        for role in ("bob", "alice"):
            before = link.committed_blocks()
            victim = _postprocess_pid(link, role)
            assert victim is not None, f"{role}'s post-processing process not found"
            os.kill(victim, signal.SIGKILL)
            _wait(link, lambda r=role, v=victim: _postprocess_pid(link, r) not in (None, v), 30,
                  f"{role}'s restarted process")  # fmt: skip
            _wait(link, lambda b=before: link.committed_blocks() > b, 90,
                  f"a block after {role}'s restart")  # fmt: skip
        a, b = _stores_equal(link)
        assert a["key_blocks"] >= 3
    finally:
        link.stop()


def test_tampered_reconciliation_message_drops_its_block_on_both_sides(tmp_path):
    port = free_port()
    ctx = zmq.Context.instance()
    proxy = MitmProxy(f"tcp://127.0.0.1:{port}", ctx)
    link = Link(_options(tmp_path, channel_port=port, bob_connect=proxy.endpoint))
    blocks: dict[str, dict[int, dict]] = {"alice": {}, "bob": {}}
    subs = {}
    try:
        # Alice -> Bob travels "down" through the proxy: flip the first syndrome message.
        proxy.attack_type("down", "ldpc_syndrome", "flip")
        link.start()
        for role in ("alice", "bob"):
            subs[role] = Subscriber(link.ready[role]["telemetry"], [f"qfs/telemetry/{role}/block/"])

        def collect() -> None:
            for role, sub in subs.items():
                while (msg := sub.recv(0)) is not None:
                    blocks[role][msg.payload["block"]] = msg.payload

        def progressed() -> bool:
            collect()
            return link.committed_blocks() >= 1

        _wait(link, progressed, 120, "a committed block after the attack")
        assert proxy.done_types == [("down", "ldpc_syndrome", "flip")]
        assert link.latest["bob"]["qfs/telemetry/bob/channel/"]["rejected_auth"] >= 1
        a, b = _stores_equal(link)
        collect()
        dropped = [n for n, p in blocks["bob"].items() if p["status"] == "failed"]
        assert dropped, f"no block was dropped on Bob's side: {blocks['bob']}"
        for n in dropped:
            assert blocks["alice"].get(n, {}).get("status") in (None, "failed"), (
                f"block {n} went on at Alice after Bob dropped it"
            )
        assert a["key_blocks"] >= 1
    finally:
        for sub in subs.values():
            sub.close()
        link.stop()
        proxy.close()
