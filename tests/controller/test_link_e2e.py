"""End to end: `qnode link --sim` machinery with a controller per node; an application fetches
matching keys on both sides over mutual TLS with the certificates of `qnode pki init`."""

from __future__ import annotations

import os
import time

import httpx
import pytest

from controller.link_setup import attach_controllers, write_ready
from controller.pki import init_pki
from controller.tls import client_ssl_context


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("QNODE_E2E") == "0",
    reason="QNODE_E2E=0: skip the whole-link test (about 35 s, set by the node's block rate)",
)
@pytest.mark.timeout(300)
def test_keys_from_a_simulated_link_match_on_both_sides(tmp_path):
    from qnode.link import Link, LinkOptions

    pki = tmp_path / "pki"
    init_pki(pki, ["alice", "bob"], ["app-a", "app-b"])
    opts = LinkOptions(duration_s=240, workdir=tmp_path / "link")  # default preset and block
    link = Link(opts)
    attach_controllers(link, pki)
    try:
        link.start()
        ready = write_ready(link, tmp_path / "ready.json")
        assert ready["sae"] == {"alice": "app-a", "bob": "app-b"}
        ca = pki / "ca.pem"
        a = httpx.Client(verify=client_ssl_context(pki / "app-a.pem", pki / "app-a.key", ca))
        b = httpx.Client(verify=client_ssl_context(pki / "app-b.pem", pki / "app-b.key", ca))
        status_url = f"{ready['kms']['alice']}/api/v1/keys/app-b/status"
        deadline = time.monotonic() + 240
        while a.get(status_url).json()["stored_key_count"] < 2:
            assert time.monotonic() < deadline, "no committed key block in Alice's share"
            link.poll(1.0)
        r = a.post(f"{ready['kms']['alice']}/api/v1/keys/app-b/enc_keys", json={"number": 2})
        assert r.status_code == 200, r.text
        ids = [{"key_ID": k["key_ID"]} for k in r.json()["keys"]]
        deadline = time.monotonic() + 30
        while True:  # Bob commits a block a moment after Alice: 503 until then
            d = b.post(f"{ready['kms']['bob']}/api/v1/keys/app-a/dec_keys", json={"key_IDs": ids})
            if d.status_code != 503 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert d.status_code == 200, d.text
        assert d.json() == r.json(), "Bob's application must receive Alice's keys"
        tree = httpx.get(f"{ready['state']['alice']}/restconf/data/etsi-qkd-sdn-node:qkd_node")
        assert tree.json()["etsi-qkd-sdn-node:qkd_node"]["qkd_links"]["qkd_link"]
        # A sim_hw fault on Bob's time tagger reaches Bob's controller as an alarm.
        import json

        from sim_hw.serve_cli import control_request

        world = json.loads((link.workdir / "world.json").read_text())
        reply = control_request(world["control"], {"op": "inject", "instrument": "timetagger",
                                "kind": "drop", "count": 1})  # fmt: skip
        assert reply.get("ok"), reply

        def fault_alarm() -> dict:
            alarms = httpx.get(f"{ready['state']['bob']}/alarms").json()["alarms"]
            return next(x for x in alarms if x["alarm"] == "instrument_fault")

        deadline = time.monotonic() + 30
        while fault_alarm()["count"] < 1:
            assert time.monotonic() < deadline, "the tagger fault never raised an alarm"
            time.sleep(0.2)
        assert "timetagger" in fault_alarm()["message"]
        a.close()
        b.close()
    finally:
        link.stop()
