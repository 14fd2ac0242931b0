from __future__ import annotations

from pathlib import Path

import pytest
from ctl_helpers import ControllerThread, controller_config, free_port, seed_blocks

from controller.pki import init_pki

KMES = ["alice", "bob"]
SAES = ["sae-alice", "sae-bob", "sae-bob2", "sae-eve"]


@pytest.fixture(scope="session")
def pki(tmp_path_factory) -> Path:
    """One test PKI for the whole session (EC keys: fast)."""
    directory = tmp_path_factory.mktemp("pki")
    init_pki(directory, KMES, SAES)
    return directory


def start_link(directory: Path, pki: Path, n_blocks: int = 8, block_bytes: int = 4096):
    """Alice's and Bob's controllers with KMEs over identical committed blocks (CURVE off)."""
    seed_blocks([directory / "alice.db", directory / "bob.db"], n_blocks, block_bytes)
    pa, pb = free_port(), free_port()
    alice = ControllerThread(
        controller_config(
            directory, pki, "alice", "bob", ["sae-alice"], ["sae-bob", "sae-bob2"],
            sync_port=pa, peer_sync_port=pb,
        )
    ).start()  # fmt: skip
    bob = ControllerThread(
        controller_config(
            directory, pki, "bob", "alice", ["sae-bob", "sae-bob2"], ["sae-alice"],
            sync_port=pb, peer_sync_port=pa,
        )
    ).start()  # fmt: skip
    return alice, bob


@pytest.fixture
def fresh_link(tmp_path, pki):
    """A link of our own (tests that drain the pool or stop a KME)."""
    alice, bob = start_link(tmp_path, pki)
    yield alice, bob
    alice.stop()
    bob.stop()


@pytest.fixture(scope="module")
def link(tmp_path_factory, pki):
    """A link shared by the tests of one module (they only take fresh keys from it)."""
    alice, bob = start_link(tmp_path_factory.mktemp("link"), pki, n_blocks=16)
    yield alice, bob
    alice.stop()
    bob.stop()
