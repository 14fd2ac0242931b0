"""``qnode link``'s end of run: the summary reports exactly the blocks both stores keep.

A block closed from frames sifted before the pause may still be reconciling when the stores
first agree; settling must wait for it (Bob's post-processing reports its blocks and frames in
flight in its ``state`` reply), or the JSON trails the stores by that block. Real SQLite stores;
Bob's node command socket is a real ZeroMQ ROUTER that answers like the node supervisor.
"""

from __future__ import annotations

import threading
import time

import zmq

from qnode.codec import packb, unpackb
from qnode.keystore import KeyStore
from qnode.link import Link, LinkOptions


class FakeNodeCommands:
    """A node's command socket: answers ``state`` with ``in_flight`` blocks, ``pause`` ok."""

    def __init__(self) -> None:
        self.ctx = zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.linger = 0
        self.sock.bind("tcp://127.0.0.1:0")
        self.endpoint = self.sock.last_endpoint.decode()
        self.in_flight = 0
        self.commands: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            if not self.sock.poll(50):
                continue
            frames = self.sock.recv_multipart()
            cmd = unpackb(frames[-1])["cmd"]
            self.commands.append(cmd)
            pp = {"paused": True, "blocks_in_flight": self.in_flight, "frames_in_flight": 0}
            self.sock.send_multipart([*frames[:-1], packb({"ok": True, "result": {
                "acquisition": {}, "postprocess": pp}})])  # fmt: skip

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close(0)


def _commit_both(work, block_id: str, seq: int, key: bytes) -> None:
    for role in ("alice", "bob"):
        store = KeyStore(work / f"{role}-keys.db")
        store.add_committed(block_id, seq, "peer", key, {"n_bits": 8 * len(key)})
        store.close()


def test_summary_waits_for_the_block_in_flight_and_matches_the_stores(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    _commit_both(work, "b0", 0, b"\x01" * 32)
    bob, alice = FakeNodeCommands(), FakeNodeCommands()
    bob.in_flight = 1  # the stores agree already, but Bob is still reconciling block 1
    try:
        link = Link(LinkOptions(workdir=work))
        link.ready = {"alice": {"command": alice.endpoint}, "bob": {"command": bob.endpoint}}

        def finish_block() -> None:
            time.sleep(1.0)
            _commit_both(work, "b1", 1, b"\x02" * 32)
            bob.in_flight = 0

        worker = threading.Thread(target=finish_block)
        worker.start()
        assert link.settle(20)
        worker.join()
        result = link.result()
    finally:
        bob.close()
        alice.close()
    assert "pause" in bob.commands and "pause" in alice.commands and "state" in bob.commands
    for role in ("alice", "bob"):
        store = KeyStore(work / f"{role}-keys.db")
        blocks, bits, digest = store.committed_digest()
        store.close()
        assert blocks == 2  # the block in flight committed before the summary was read
        assert (result[role]["key_blocks"], result[role]["key_bits"], result[role]["key_sha256"]) == (
            blocks, bits, digest)  # fmt: skip
    assert result["keys_match"]
    assert result["duration_s"] < 1.0  # the run ended at the pause, not when settling did


def test_settle_gives_up_while_bob_stays_busy(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    bob = FakeNodeCommands()
    bob.in_flight = 2
    try:
        link = Link(LinkOptions(workdir=work))
        link.ready = {"bob": {"command": bob.endpoint}}
        t0 = time.monotonic()
        assert not link.settle(1.0)
        assert time.monotonic() - t0 >= 1.0
    finally:
        bob.close()
