"""ETSI GS QKD 014 V1.1.1 conformance over a real mutual-TLS uvicorn server with httpx clients."""

from __future__ import annotations

import base64
import ssl
import uuid

import httpx
import pytest
from ctl_helpers import sae_client

from controller.kms_api import MSG_EXT_MANDATORY_UNSUPPORTED, MSG_KEYS_NOT_FOUND
from controller.pki import init_pki

STATUS_FIELDS = {
    "source_KME_ID",
    "target_KME_ID",
    "master_SAE_ID",
    "slave_SAE_ID",
    "key_size",
    "stored_key_count",
    "max_key_count",
    "max_key_per_request",
    "max_key_size",
    "min_key_size",
    "max_SAE_ID_count",
}


def _urls(link):
    alice, bob = link
    return alice.endpoints["kms"], bob.endpoints["kms"]


def _check_container(body: dict, number: int, size_bits: int) -> list[tuple[str, bytes]]:
    assert set(body) == {"keys"}, body
    assert len(body["keys"]) == number
    out = []
    for item in body["keys"]:
        assert set(item) == {"key_ID", "key"}, item
        uuid.UUID(item["key_ID"])
        material = base64.b64decode(item["key"], validate=True)
        assert len(material) * 8 == size_bits
        out.append((item["key_ID"], material))
    return out


def _error(resp: httpx.Response, status: int, message: str | None = None) -> dict:
    assert resp.status_code == status, (resp.status_code, resp.text)
    body = resp.json()
    assert isinstance(body.get("message"), str) and body["message"], body
    if message is not None:
        assert body["message"] == message, body
    return body


def test_status(fresh_link, pki):
    alice_url, _ = _urls(fresh_link)
    with sae_client(pki, "sae-alice") as c:
        resp = c.get(f"{alice_url}/api/v1/keys/sae-bob/status")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert STATUS_FIELDS <= set(body)
    assert body["source_KME_ID"] == "alice" and body["target_KME_ID"] == "bob"
    assert body["master_SAE_ID"] == "sae-alice" and body["slave_SAE_ID"] == "sae-bob"
    assert body["key_size"] == 256 and body["max_key_per_request"] == 16
    assert body["max_key_size"] == 1024 and body["min_key_size"] == 64
    assert body["max_SAE_ID_count"] == 0
    # Alice's share is blocks with even seq: 4 blocks x 4096 bytes / 32 bytes per key.
    assert body["stored_key_count"] == 4 * 4096 // 32


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"json": {}}, {"content": b"null", "headers": {"content-type": "application/json"}}],
    ids=["empty-body", "empty-object", "null"],
)
def test_enc_keys_post_defaults(link, pki, kwargs):
    alice_url, _ = _urls(link)
    with sae_client(pki, "sae-alice") as c:
        resp = c.post(f"{alice_url}/api/v1/keys/sae-bob/enc_keys", **kwargs)
    assert resp.status_code == 200, resp.text
    _check_container(resp.json(), 1, 256)


def test_enc_then_dec_post_and_get_forms(link, pki):
    alice_url, bob_url = _urls(link)
    with sae_client(pki, "sae-alice") as a, sae_client(pki, "sae-bob") as b:
        r = a.post(f"{alice_url}/api/v1/keys/sae-bob/enc_keys", json={"number": 3, "size": 512})
        assert r.status_code == 200, r.text
        issued = _check_container(r.json(), 3, 512)
        r = a.get(f"{alice_url}/api/v1/keys/sae-bob/enc_keys", params={"number": 2, "size": 128})
        assert r.status_code == 200, r.text
        issued_get = _check_container(r.json(), 2, 128)
        ids = [k for k, _ in issued]
        assert len(set(ids + [k for k, _ in issued_get])) == 5

        r = b.post(
            f"{bob_url}/api/v1/keys/sae-alice/dec_keys",
            json={"key_IDs": [{"key_ID": k} for k in ids]},
        )
        assert r.status_code == 200, r.text
        assert _check_container(r.json(), 3, 512) == issued, "slave must get the master's keys"

        key_id, material = issued_get[0]
        r = b.get(f"{bob_url}/api/v1/keys/sae-alice/dec_keys", params={"key_ID": key_id})
        assert r.status_code == 200, r.text
        assert _check_container(r.json(), 1, 128) == [(key_id, material)]

        # Each key is delivered once to the slave: a second request finds nothing.
        r = b.get(f"{bob_url}/api/v1/keys/sae-alice/dec_keys", params={"key_ID": key_id})
        _error(r, 400, MSG_KEYS_NOT_FOUND)
        r = b.post(
            f"{bob_url}/api/v1/keys/sae-alice/dec_keys", json={"key_IDs": [{"key_ID": ids[0]}]}
        )
        _error(r, 400, MSG_KEYS_NOT_FOUND)


def test_reverse_direction_uses_the_other_share(link, pki):
    alice_url, bob_url = _urls(link)
    with sae_client(pki, "sae-alice") as a, sae_client(pki, "sae-bob") as b:
        r = b.post(f"{bob_url}/api/v1/keys/sae-alice/enc_keys", json={"number": 4})
        from_bob = _check_container(r.json(), 4, 256)
        r = a.post(f"{alice_url}/api/v1/keys/sae-bob/enc_keys", json={"number": 4})
        from_alice = _check_container(r.json(), 4, 256)
        assert not {m for _, m in from_bob} & {m for _, m in from_alice}
        r = a.post(
            f"{alice_url}/api/v1/keys/sae-bob/dec_keys",
            json={"key_IDs": [{"key_ID": k} for k, _ in from_bob]},
        )
        assert r.status_code == 200, r.text
        assert _check_container(r.json(), 4, 256) == from_bob


@pytest.mark.parametrize(
    ("method", "params", "body", "message"),
    [
        ("post", None, {"size": 100}, "size shall be a multiple of 8"),
        ("get", {"size": 100}, None, "size shall be a multiple of 8"),
        ("post", None, {"number": 17}, None),
        ("get", {"number": 17}, None, None),
        ("post", None, {"number": 0}, None),
        ("post", None, {"size": 2048}, None),
        ("post", None, {"size": 32}, None),
        ("post", None, {"number": "many"}, None),
        ("get", {"number": "many"}, None, None),
        ("post", None, {"colour": "blue"}, None),
        ("post", None, {"additional_slave_SAE_IDs": ["sae-bob2"]}, None),
        ("post", None, {"extension_mandatory": [{"abc_route_type": "direct"}]},
         MSG_EXT_MANDATORY_UNSUPPORTED),
    ],
    ids=["size-mult8-post", "size-mult8-get", "too-many-post", "too-many-get", "zero",
         "above-max-size", "below-min-size", "number-type", "number-type-get", "unknown-field",
         "multicast", "extension-mandatory"],
)  # fmt: skip
def test_enc_keys_bad_requests(link, pki, method, params, body, message):
    alice_url, _ = _urls(link)
    with sae_client(pki, "sae-alice") as c:
        url = f"{alice_url}/api/v1/keys/sae-bob/enc_keys"
        resp = c.post(url, json=body) if method == "post" else c.get(url, params=params)
    err = _error(resp, 400, message)
    if message == MSG_EXT_MANDATORY_UNSUPPORTED:
        assert err["details"] == [
            {"extension_mandatory_unsupported": "abc_route_type is not supported"}
        ]


def test_extension_optional_is_ignored(link, pki):
    alice_url, _ = _urls(link)
    with sae_client(pki, "sae-alice") as c:
        resp = c.post(
            f"{alice_url}/api/v1/keys/sae-bob/enc_keys",
            json={"number": 1, "extension_optional": [{"abc_key_life": 60}]},
        )
    assert resp.status_code == 200
    _check_container(resp.json(), 1, 256)


def test_malformed_json_and_empty_bodies(link, pki):
    alice_url, bob_url = _urls(link)
    json_header = {"content-type": "application/json"}
    with sae_client(pki, "sae-alice") as a, sae_client(pki, "sae-bob") as b:
        r = a.post(f"{alice_url}/api/v1/keys/sae-bob/enc_keys", content=b'{"number": 2',
                   headers=json_header)  # fmt: skip
        assert "bad request format" in _error(r, 400)["message"]
        r = b.post(f"{bob_url}/api/v1/keys/sae-alice/dec_keys", content=b"{nope",
                   headers=json_header)  # fmt: skip
        _error(r, 400)
        r = b.post(f"{bob_url}/api/v1/keys/sae-alice/dec_keys")  # empty body
        _error(r, 400)
        r = b.post(f"{bob_url}/api/v1/keys/sae-alice/dec_keys", json={"key_IDs": []})
        _error(r, 400)
        r = b.post(f"{bob_url}/api/v1/keys/sae-alice/dec_keys", json={"keys": []})
        _error(r, 400)
        r = b.get(f"{bob_url}/api/v1/keys/sae-alice/dec_keys")  # GET without key_ID
        _error(r, 400)


def test_unknown_key_ids(link, pki):
    _, bob_url = _urls(link)
    with sae_client(pki, "sae-bob") as b:
        r = b.get(f"{bob_url}/api/v1/keys/sae-alice/dec_keys", params={"key_ID": str(uuid.uuid4())})
        _error(r, 400, MSG_KEYS_NOT_FOUND)
        r = b.get(f"{bob_url}/api/v1/keys/sae-alice/dec_keys", params={"key_ID": "not-a-uuid"})
        _error(r, 400, MSG_KEYS_NOT_FOUND)
        too_many = {"key_IDs": [{"key_ID": str(uuid.uuid4())} for _ in range(17)]}
        _error(b.post(f"{bob_url}/api/v1/keys/sae-alice/dec_keys", json=too_many), 400)


def test_unknown_and_wrong_sae(link, pki):
    alice_url, bob_url = _urls(link)
    with sae_client(pki, "sae-alice") as a:
        # Unknown slave SAE in the URL.
        _error(a.get(f"{alice_url}/api/v1/keys/sae-nobody/status"), 400)
        _error(a.post(f"{alice_url}/api/v1/keys/sae-nobody/enc_keys", json={}), 400)
        r = a.post(f"{alice_url}/api/v1/keys/sae-bob/enc_keys", json={"number": 2})
        ids = [k["key_ID"] for k in r.json()["keys"]]
    body = {"key_IDs": [{"key_ID": k} for k in ids]}
    # A valid certificate whose SAE is registered nowhere: 401 with a message.
    with sae_client(pki, "sae-eve") as eve:
        _error(eve.get(f"{alice_url}/api/v1/keys/sae-bob/status"), 401)
        _error(eve.post(f"{bob_url}/api/v1/keys/sae-alice/dec_keys", json=body), 401)
    # An SAE of Bob's KME that the keys were not issued to: 401, and the keys stay available.
    with sae_client(pki, "sae-bob2") as other:
        _error(other.post(f"{bob_url}/api/v1/keys/sae-alice/dec_keys", json=body), 401)
    # The master SAE itself asking its own KME for dec_keys is not the slave either.
    with sae_client(pki, "sae-alice") as a:
        _error(a.post(f"{alice_url}/api/v1/keys/sae-alice/dec_keys", json=body), 400)
    with sae_client(pki, "sae-bob") as b:
        # Wrong master ID in the URL: the keys are not found under that master.
        _error(b.post(f"{bob_url}/api/v1/keys/sae-bob2/dec_keys", json=body), 400)
        r = b.post(f"{bob_url}/api/v1/keys/sae-alice/dec_keys", json=body)
        assert r.status_code == 200, r.text


def test_no_client_certificate_or_foreign_ca_is_refused(link, pki, tmp_path):
    alice_url, _ = _urls(link)
    ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    with httpx.Client(verify=ctx) as c, pytest.raises(httpx.TransportError):
        c.get(f"{alice_url}/api/v1/keys/sae-bob/status")
    init_pki(tmp_path / "rogue", [], ["sae-alice"])  # same SAE name, another CA
    rogue = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    rogue.load_cert_chain(
        tmp_path / "rogue" / "sae-alice.pem", tmp_path / "rogue" / "sae-alice.key"
    )
    with httpx.Client(verify=rogue) as c, pytest.raises(httpx.TransportError):
        c.get(f"{alice_url}/api/v1/keys/sae-bob/status")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_tls_below_1_2_is_refused(link, pki):
    alice_url, _ = _urls(link)
    ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    ctx.load_cert_chain(pki / "sae-alice.pem", pki / "sae-alice.key")
    try:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
        ctx.minimum_version = ssl.TLSVersion.TLSv1
    except ValueError:
        pytest.skip("this OpenSSL cannot even offer TLS 1.1")
    with httpx.Client(verify=ctx) as c, pytest.raises(httpx.TransportError):
        c.get(f"{alice_url}/api/v1/keys/sae-bob/status")


def test_insufficient_keys_is_503_and_peer_down_is_503(fresh_link, pki):
    alice, bob = fresh_link
    alice_url, bob_url = _urls(fresh_link)
    with sae_client(pki, "sae-alice") as a:
        drained = 0
        while True:
            r = a.post(
                f"{alice_url}/api/v1/keys/sae-bob/enc_keys", json={"number": 16, "size": 1024}
            )
            if r.status_code != 200:
                break
            drained += 16
        _error(r, 503)
        assert drained == 4 * 4096 * 8 // 1024
        assert a.get(f"{alice_url}/api/v1/keys/sae-bob/status").json()["stored_key_count"] == 0
        r = a.post(f"{alice_url}/api/v1/keys/sae-bob/enc_keys", json={"number": 1, "size": 64})
        _error(r, 503)
    ids = []
    with sae_client(pki, "sae-bob") as b:
        r = b.post(f"{bob_url}/api/v1/keys/sae-alice/enc_keys", json={"number": 1})
        ids = [r.json()["keys"][0]["key_ID"]]
    bob.stop()  # Bob's KME gone: Alice cannot learn where Bob's key lives.
    with sae_client(pki, "sae-alice") as a:
        r = a.get(f"{alice_url}/api/v1/keys/sae-bob/dec_keys", params={"key_ID": ids[0]})
        _error(r, 503)


def test_unknown_path_and_openapi(link, pki):
    alice_url, _ = _urls(link)
    with sae_client(pki, "sae-alice") as c:
        _error(c.get(f"{alice_url}/api/v1/nothing"), 404)
        _error(c.delete(f"{alice_url}/api/v1/keys/sae-bob/status"), 405)
        spec = c.get(f"{alice_url}/openapi.json").json()
        assert c.get(f"{alice_url}/docs").status_code == 200
    paths = spec["paths"]
    assert set(paths["/api/v1/keys/{slave_SAE_ID}/enc_keys"]) == {"get", "post"}
    assert set(paths["/api/v1/keys/{master_SAE_ID}/dec_keys"]) == {"get", "post"}
    assert set(paths["/api/v1/keys/{slave_SAE_ID}/status"]) == {"get"}
    for name in ("Status", "KeyRequest", "KeyContainer", "KeyIDs", "Error"):
        assert name in spec["components"]["schemas"]


def test_concurrent_https_clients_never_share_a_key(link, pki):
    """16 SAE clients on loopback at once; every key ID and every key delivered exactly once."""
    import threading

    alice_url, bob_url = _urls(link)
    results: list[tuple[str, bytes]] = []
    errors: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        with sae_client(pki, "sae-alice") as c:
            for _ in range(6):
                r = c.post(f"{alice_url}/api/v1/keys/sae-bob/enc_keys", json={"number": 4})
                if r.status_code != 200:
                    with lock:
                        errors.append(r.text)
                    return
                with lock:
                    results.extend(_check_container(r.json(), 4, 256))

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    assert len(results) == 16 * 6 * 4
    assert len({k for k, _ in results}) == len(results), "a key ID was delivered twice"
    assert len({m for _, m in results}) == len(results), "key material was delivered twice"
    sample = results[::24]
    with sae_client(pki, "sae-bob") as b:
        r = b.post(
            f"{bob_url}/api/v1/keys/sae-alice/dec_keys",
            json={"key_IDs": [{"key_ID": k} for k, _ in sample]},
        )
    assert r.status_code == 200, r.text
    assert _check_container(r.json(), len(sample), 256) == sample


def test_key_material_is_never_logged(link, pki, caplog):
    import logging

    alice_url, bob_url = _urls(link)
    with caplog.at_level(logging.DEBUG):
        with sae_client(pki, "sae-alice") as a, sae_client(pki, "sae-bob") as b:
            r = a.post(f"{alice_url}/api/v1/keys/sae-bob/enc_keys", json={"number": 3})
            keys = _check_container(r.json(), 3, 256)
            b.post(
                f"{bob_url}/api/v1/keys/sae-alice/dec_keys",
                json={"key_IDs": [{"key_ID": k} for k, _ in keys]},
            )
    text = "\n".join(rec.getMessage() for rec in caplog.records)
    assert any("enc_keys" in rec.getMessage() for rec in caplog.records), "nothing logged?"
    for _, material in keys:
        assert base64.b64encode(material).decode() not in text
        assert material.hex() not in text
