"""Integration: ``qnode link --sim`` in a subprocess produces identical keys on both sides.

Everything real: the simulated world behind SCPI/TCP and a pty, Alice's and Bob's node processes
(acquisition, post-processing), the authenticated channel, SQLite key stores.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from qnode import linkmodel
from qnode.keystore import KeyStore


def _fast_link_file(tmp_path):
    # The SNSPD preset over 10 km with Z (the test basis) at 70 %: 9 % of the detections are
    # key-basis (X) bits, so a two-LDPC-frame block fills in seconds and still yields key.
    params = linkmodel.preset("snspd").with_distance(10).with_changes(source={"p_basis_z": 0.7})
    path = tmp_path / "link.toml"
    path.write_text(linkmodel.dump_toml(params))
    return path


@pytest.mark.timeout(150)
def test_qnode_link_sim_produces_identical_keys(tmp_path):
    out = tmp_path / "result.json"
    work = tmp_path / "work"
    cmd = [
        sys.executable, "-m", "qnode", "link", "--sim", "--link", str(_fast_link_file(tmp_path)),
        "--keys", "1", "--duration", "50", "--block-bits", "200000", "--quiet",
        "--json", str(out), "--workdir", str(work),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=140)
    assert proc.returncode == 0, f"qnode link failed:\n{proc.stderr[-3000:]}"
    result = json.loads(out.read_text())
    for key in ("qber", "f", "sifted_mbps", "skr_mbps", "duration_s"):
        assert key in result
    alice, bob = result["alice"], result["bob"]
    assert alice["key_blocks"] >= 1 and alice["key_bits"] > 0
    assert alice == bob, "the two nodes hold different keys"
    assert 0 < result["qber"] < 0.05
    assert 1.0 < result["f"] < 2.0  # the run's efficiency: leak above Shannon's bound, not absurd
    # the digests in the JSON are those of the stores on disk
    stores = [KeyStore(work / f"{r}-keys.db") for r in ("alice", "bob")]
    digests = [s.committed_digest() for s in stores]
    for s in stores:
        s.close()
    assert digests[0] == digests[1] == (alice["key_blocks"], alice["key_bits"], alice["key_sha256"])
    assert "Traceback" not in (work / "alice-keys.postprocess.log").read_text()
    assert "Traceback" not in (work / "bob-keys.postprocess.log").read_text()
