"""A node process that only commits key blocks (for kill -9 reliability tests).

Usage: ``python commit_peer.py alice|bob ENDPOINT DB SECRET_HEX N_BLOCKS``. Both sides derive the
final key of pipeline block ``n`` the same way (standing in for the post-processing result), and
run the real two-phase commit (pipeline/commit.py) over the real classical channel and key store.
"""

from __future__ import annotations

import hashlib
import sys

from pipeline.commit import CommitInitiator, CommitResponder
from qnode.channel import ChannelError, ClassicalChannel
from qnode.keystore import KeyStore


def final_key(block: int) -> bytes:
    return hashlib.sha256(b"block-%d" % block).digest() * 4


def main() -> None:
    role, endpoint, db, secret_hex, n_blocks = sys.argv[1:6]
    store = KeyStore(db)
    secret = bytes.fromhex(secret_hex)
    peer = "bob" if role == "alice" else "alice"
    ch = ClassicalChannel(
        role, peer, endpoint, secret, bind=role == "alice", heartbeat_s=0.05, timeout_s=0.5
    )
    side = CommitResponder(store, peer) if role == "alice" else CommitInitiator(store, peer)
    waiting = False
    while True:
        ch.poll(5)
        for event in ch.take_events():
            if event.kind == "connected":
                waiting = False
                query = side.recovery_query()
                if query:
                    ch.send(query)
                    waiting = True
            elif event.kind == "peer_lost":
                waiting = False
        while (msg := ch.recv(0)) is not None:
            if role == "alice" and msg["type"] == "commit_propose":
                side.offer(msg["block"], final_key(msg["block"]), {"qber": 0.01})
            for reply in side.handle(msg):
                ch.send(reply)
            if msg["type"] in ("commit_confirm", "commit_status"):
                waiting = False
        if role == "bob" and ch.connected and not waiting:
            if store.blocks("pending"):
                ch.send(side.recovery_query())
                waiting = True
            elif len(store.blocks("committed")) < int(n_blocks):
                block = store.max_seq() + 1
                try:
                    ch.send(side.propose(block, final_key(block), {"qber": 0.01}))
                    waiting = True
                except ChannelError:
                    pass


if __name__ == "__main__":
    main()
