"""Review addition to test_wegman_carter_pad.py: proposals lost before Alice stored them (Bob's
block pending until a commit query makes both sides discard it) among pad blocks settling out of
order, restarts, forged and lost checkpoints. At every step Bob's pad stream is a prefix of
Alice's, no unit is used twice, and every genuine checkpoint delivered verifies."""

from __future__ import annotations

import os
import random
import uuid

import pytest

from qnode.wegman_carter import UNIT

from . import test_wegman_carter_pad as pad
from .test_wegman_carter_pad import takes  # noqa: F401  (fixture)


class _Blocks(pad.PadBlocks):
    """As PadBlocks, but 30 % of the proposals never reach Alice; their query answer is
    ``discarded`` (Alice tombstones the id, Bob drops the block)."""

    def add(self, pad_block: bool, units: int) -> None:
        block_id, key = str(uuid.uuid4()), os.urandom(units * UNIT)
        seq = self.bob.store.max_seq() + 1
        self.bob.store.add_pending(block_id, seq, "alice", key)
        if self.rng.random() < 0.3:
            self.waiting.append((block_id, "discarded"))
            return
        self.alice.store.add_committed(block_id, seq, "bob", key, for_channel=pad_block)
        self.waiting.append((block_id, "auth" if pad_block else "committed"))

    def settle_one(self, newest_first: bool) -> None:
        if self.waiting:
            block_id, status = self.waiting.pop(-1 if newest_first else 0)
            if status == "discarded":
                self.alice.store.discard(block_id)
                self.bob.store.discard(block_id)
            else:
                self.bob.store.commit(block_id, for_channel=status == "auth")


@pytest.mark.parametrize("seed", range(12))
def test_lost_proposals_keep_bobs_pad_stream_a_prefix_of_alices(tmp_path, takes, seed):  # noqa: F811
    rng = random.Random(seed)
    alice, bob = pad._nodes(tmp_path, 10)
    hash_key = alice.store.auth_pad_bytes()[:UNIT]
    blocks = _Blocks(alice, bob, rng)

    def prefix() -> None:
        assert alice.store.auth_pad_bytes().startswith(bob.store.auth_pad_bytes())

    _, verified, genuine_failed = pad.random_walk(alice, bob, blocks, rng, takes, hash_key,
                                                  each=prefix)  # fmt: skip
    assert genuine_failed == 0, "a genuine checkpoint failed: the pads differ"
    while blocks.waiting:
        blocks.settle_one(newest_first=False)
    assert bob.store.auth_pad_bytes() == alice.store.auth_pad_bytes()
    assert verified >= 5
