"""The KME's ``POST enc_keys`` fast path (``controller.kms_api.KmsApp``) against its FastAPI route.

Driven at the ASGI level over a real ``KeyPool`` on SQLite: the fast path must answer exactly as
the FastAPI route does, hand everything it does not fully understand to FastAPI with the body
intact, and never deliver a key twice across the two paths.
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from pathlib import Path

import pytest
from ctl_helpers import seed_blocks

from controller.config import KmsConfig
from controller.keypool import KeyPool
from controller.kms_api import KmsApp, KmsService, create_kms_app

PATH = "/api/v1/keys/sae-bob/enc_keys"


@pytest.fixture()
def kms(tmp_path: Path):
    seed_blocks([tmp_path / "a.db"], n_blocks=4, block_bytes=1024)
    pool = KeyPool(tmp_path / "a.db", 0, 2)
    cfg = KmsConfig(
        kme_id="alice",
        peer_kme_id="bob",
        cert=tmp_path / "x.pem",
        key=tmp_path / "x.key",
        ca=tmp_path / "ca.pem",
        local_saes=["sae-alice"],
        peer_saes=["sae-bob"],
        max_key_per_request=16,
        max_key_size=1024,
    )
    service = KmsService(cfg, pool, peer=None)
    app = create_kms_app(service)
    yield app, service
    pool.close()


def _call(
    app: KmsApp,
    chunks: list[bytes],
    content_type: bytes | None = b"application/json",
    sae: str | None = "sae-alice",
    path: str = PATH,
    calls: list[str] | None = None,
    method: str = "POST",
    query: bytes = b"",
) -> tuple[int, dict]:
    """One ASGI request; the body arrives in ``chunks``. Counts FastAPI calls in ``calls``."""
    headers = [(b"host", b"kme")]
    if content_type is not None:
        headers.append((b"content-type", content_type))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "https",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": query,
        "headers": headers,
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8443),
        "state": {"tls_client_cn": sae} if sae else {},
    }
    messages = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
        for i, c in enumerate(chunks)
    ]
    sent: list[dict] = []

    async def receive() -> dict:
        if messages:
            return messages.pop(0)
        await asyncio.sleep(3600)  # a real server would wait for the disconnect
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    if calls is not None:
        inner = app.app

        async def counting(scope, receive, send):
            calls.append(scope["path"])
            await inner(scope, receive, send)

        app.app = counting
    try:
        asyncio.run(asyncio.wait_for(app(scope, receive, send), 30))
    finally:
        if calls is not None:
            app.app = inner
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], json.loads(body)


def _keys(body: dict, number: int, size_bits: int) -> list[tuple[str, bytes]]:
    assert set(body) == {"keys"}, body
    assert len(body["keys"]) == number
    out = []
    for item in body["keys"]:
        assert set(item) == {"key_ID", "key"}
        uuid.UUID(item["key_ID"])
        material = base64.b64decode(item["key"], validate=True)
        assert len(material) * 8 == size_bits
        out.append((item["key_ID"], material))
    return out


def test_fast_path_serves_keys_without_fastapi(kms):
    app, service = kms
    calls: list[str] = []
    status, body = _call(app, [b'{"number": 3, "size": 512}'], calls=calls)
    assert status == 200
    assert len(_keys(body, 3, 512)) == 3
    assert calls == []  # answered by the fast path
    assert service.consumed[("sae-alice", "sae-bob")] == [3, 3 * 512]
    # The body may arrive in several ASGI messages.
    status, body = _call(app, [b'{"numb', b'er": 2}', b""], calls=calls)
    assert status == 200 and len(_keys(body, 2, 256)) == 2 and calls == []


def test_fallbacks_reach_fastapi_with_the_body(kms):
    app, _ = kms
    calls: list[str] = []
    # A "+json" media type: not the fast path's, FastAPI parses it.
    ctype = b"application/vnd.test+json"
    status, body = _call(app, [b'{"number": 2}'], content_type=ctype, calls=calls)
    assert calls == [PATH]
    assert status == 200 and len(_keys(body, 2, 256)) == 2
    # Empty body: one default key, through FastAPI.
    status, body = _call(app, [b""], calls=calls)
    assert status == 200 and len(_keys(body, 1, 256)) == 1 and len(calls) == 2
    # Malformed JSON (split over two messages) and unknown fields: FastAPI's 400.
    status, body = _call(app, [b'{"number":', b" 2"], calls=calls)
    assert status == 400 and body["message"].startswith("bad request format")
    status, body = _call(app, [b'{"numbr": 2}'], calls=calls)
    assert status == 400 and body["message"].startswith("bad request format")
    # A body that is not declared JSON is not parsed as JSON (FastAPI's strict content type).
    for ctype in (b"text/plain", None):
        status, body = _call(app, [b'{"number": 2}'], content_type=ctype, calls=calls)
        assert status == 400 and body["message"].startswith("bad request format")
    assert len(calls) == 6
    # A body beyond what the fast path buffers, arriving in pieces: FastAPI gets all of it.
    padding = b" " * (70 * 1024)
    status, body = _call(app, [b'{"number": 2', padding, b"}"], calls=calls)
    assert len(calls) == 7
    assert status == 200 and len(_keys(body, 2, 256)) == 2


def test_identity_and_limits_match_the_route(kms):
    app, _ = kms
    # No certificate CN, an SAE not registered here: 401 with a message, via FastAPI.
    status, body = _call(app, [b'{"number": 1}'], sae=None)
    assert status == 401 and body["message"]
    status, body = _call(app, [b'{"number": 1}'], sae="sae-eve")
    assert status == 401 and "sae-eve" in body["message"]
    # The service's checks, answered by the fast path with the normative message.
    status, body = _call(app, [b'{"size": 100}'])
    assert (status, body) == (400, {"message": "size shall be a multiple of 8"})
    status, body = _call(app, [b'{"number": 17}'])
    assert status == 400 and "max_key_per_request" in body["message"]
    status, body = _call(app, [b"{}"], path="/api/v1/keys/sae-nobody/enc_keys")
    assert status == 400 and "sae-nobody" in body["message"]
    # More than the pool holds: 503 from the pool, nothing consumed.
    status, body = _call(app, [b'{"number": 16, "size": 1024}'])
    assert status == 200
    status, body = _call(app, [b'{"number": 1, "size": 1024}'])
    assert status == 503 and "insufficient" in body["message"]


def test_no_key_twice_across_both_paths(kms):
    app, _ = kms
    seen: list[tuple[str, bytes]] = []
    for i in range(20):
        if i % 2:  # the fast path
            status, body = _call(app, [b'{"number": 4, "size": 128}'])
        else:  # FastAPI's GET form
            status, body = _call(app, [b""], method="GET", query=b"number=4&size=128")
        assert status == 200
        seen.extend(_keys(body, 4, 128))
    assert len({k for k, _ in seen}) == len(seen) == 80
    assert len({m for _, m in seen}) == 80
