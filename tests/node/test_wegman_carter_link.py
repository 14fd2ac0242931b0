"""A real link with Wegman-Carter authentication stays on it: the pad is spent per committed
block (two checkpoint tags), refilled from committed key, and the net key stays positive."""

from __future__ import annotations

import time

import pytest

from qnode import linkmodel
from qnode.keystore import KeyStore
from qnode.link import Link, LinkOptions, store_summary

pytestmark = pytest.mark.timeout(240)

TAG_BITS = 128  # one pad unit per checkpoint tag (qnode.wegman_carter.UNIT * 8)
BLOCKS = 6


def test_link_stays_on_wegman_carter_and_pad_per_block_is_two_tags(tmp_path):
    params = linkmodel.preset("snspd").with_distance(10).with_changes(source={"p_basis_z": 0.7})
    link_file = tmp_path / "link.toml"
    link_file.write_text(linkmodel.dump_toml(params))
    opts = LinkOptions(preset=None, link_file=link_file, duration_s=None, block_bits=100_000,
                       workdir=tmp_path / "work", auth="wegman-carter")  # fmt: skip
    link = Link(opts)
    modes: list[str] = []
    try:
        link.start()
        deadline = time.monotonic() + 180
        wc_from = None
        while time.monotonic() < deadline:
            link.poll(0.3)
            for proc in link.procs.values():
                assert proc.poll() is None, "a node exited"
            mode = link.link_payload("bob").get("channel_auth")
            if mode:
                modes.append(mode)
            if wc_from is None and mode == "wegman-carter":
                wc_from = link.committed_blocks()
            if wc_from is not None and link.committed_blocks() >= wc_from + BLOCKS:
                break
        assert wc_from is not None, f"the channel never ran on Wegman-Carter: {modes[-5:]}"
        assert link.committed_blocks() >= wc_from + BLOCKS, "too few blocks in time"
        link.settle(20)
        link.poll(1.0)
        # never back to HMAC once the first pad was there
        first = modes.index("wegman-carter")
        assert set(modes[first:]) == {"wegman-carter"}, modes[first:]
        stores = [KeyStore(link.workdir / f"{r}-keys.db") for r in ("alice", "bob")]
        try:
            auth = [s.blocks("auth") for s in stores]
            pad_bits = [s.auth_pad_len() * 8 for s in stores]
            cursors = [s.pad_cursor("units") for s in stores]
        finally:
            for s in stores:
                s.close()
        a = store_summary(link.workdir / "alice-keys.db")
        b = store_summary(link.workdir / "bob-keys.db")
        assert a["block_ids"] == b["block_ids"] and a["key_sha256"] == b["key_sha256"]
        assert [x.block_id for x in auth[0]] == [x.block_id for x in auth[1]]
        for role in ("alice", "bob"):
            ch = link.latest[role][f"qfs/telemetry/{role}/channel/"]
            assert ch["wc_sessions"] == 1 and ch["rejected_auth"] == 0, ch
            # every block committed in the session: one tag each way, nothing per message
            committed_in_wc = link.committed_blocks() + len(auth[0]) - wc_from
            assert ch["wc_checkpoints_sent"] >= BLOCKS
            assert ch["wc_pad_bits_used"] <= 2 * TAG_BITS * (committed_in_wc + 1), ch
            assert ch["sent"] > 20 * ch["wc_checkpoints_sent"], "most messages must be plain"
            lp = link.link_payload(role)
            assert lp["pad_bits_per_block"] <= 2 * TAG_BITS, lp
            assert lp["pad_bits_left"] > 0
        # the pad actually used (cursor, in 16-byte units) is a small part of the pad stream,
        # and the key served (committed, never auth) outweighs all the pad drawn from the link
        assert max(cursors) * TAG_BITS <= pad_bits[0]
        assert a["key_blocks"] >= BLOCKS and a["key_bits"] > pad_bits[0] > 0, (a, pad_bits)
        assert pad_bits[0] == pad_bits[1]
    finally:
        link.stop()
