"""ETSI GS QKD 014 V1.1.1 key delivery over HTTPS with mutual TLS (FastAPI).

Three resources, one router each (FastAPI "bigger applications"):
``GET /api/v1/keys/{slave_SAE_ID}/status``, ``GET|POST /api/v1/keys/{slave_SAE_ID}/enc_keys``,
``GET|POST /api/v1/keys/{master_SAE_ID}/dec_keys``. The calling SAE is identified by the CN of
its TLS client certificate (``controller.tls``), never by anything in the request. Errors are the
spec's codes (400, 401, 503) and always carry an Error body with ``message`` (the normative
strings of §1.4 where the spec gives one). The hot request, a well-formed ``POST enc_keys``,
is answered by ``KmsApp`` in front of FastAPI with the same service call (see its docstring).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
import uuid
from collections import defaultdict
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from controller.config import KmsConfig
from controller.keypool import Key, KeyPool, PoolError
from controller.kme_link import PeerKmeClient
from controller.kms_models import Error, KeyContainer, KeyIDs, KeyRequest, Status

log = logging.getLogger("qnode.controller.kms")

MSG_SIZE_MULTIPLE_OF_8 = "size shall be a multiple of 8"
MSG_EXT_MANDATORY_UNSUPPORTED = "not all extension_mandatory parameters are supported"
MSG_KEYS_NOT_FOUND = "one or more keys specified are not found on KME"

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": Error, "description": "Bad request format"},
    401: {"model": Error, "description": "Unauthorized"},
    503: {"model": Error, "description": "Error on server side"},
}


class KmsError(Exception):
    """An ETSI 014 error response: HTTP status, normative message, optional details."""

    def __init__(self, status: int, message: str, details: list[dict] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.details = status, message, details


class KmsService:
    """The KME's request logic, independent of HTTP: limits, SAE pairs, pool and peer KME."""

    def __init__(self, cfg: KmsConfig, pool: KeyPool, peer: PeerKmeClient | None) -> None:
        self.cfg, self.pool, self.peer = cfg, pool, peer
        self._lock = threading.Lock()
        # (master, slave) -> [keys, bits] delivered by this KME, for qkd_applications telemetry.
        self.consumed: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])

    def _account(self, master: str, slave: str, keys: list[Key]) -> None:
        with self._lock:
            entry = self.consumed[(master, slave)]
            entry[0] += len(keys)
            entry[1] += sum(8 * len(k.material) for k in keys)

    def check_peer_sae(self, sae_id: str, role: str) -> None:
        if sae_id not in self.cfg.peer_saes:
            raise KmsError(400, f"{role} SAE ID {sae_id!r} is unknown to KME {self.cfg.kme_id}")

    def status(self, requester: str, slave: str) -> Status:
        self.check_peer_sae(slave, "slave")
        stored = min(self.pool.stored_key_count(self.cfg.key_size), self.cfg.max_key_count)
        return Status(
            source_KME_ID=self.cfg.kme_id,
            target_KME_ID=self.cfg.peer_kme_id,
            master_SAE_ID=requester,
            slave_SAE_ID=slave,
            key_size=self.cfg.key_size,
            stored_key_count=stored,
            max_key_count=self.cfg.max_key_count,
            max_key_per_request=self.cfg.max_key_per_request,
            max_key_size=self.cfg.max_key_size,
            min_key_size=self.cfg.min_key_size,
            max_SAE_ID_count=0,
        )

    async def enc_keys(self, requester: str, slave: str, req: KeyRequest) -> list[Key]:
        """Validate against the advertised limits, then cut keys in the pool's next group
        commit (awaited, so the event loop serves other SAEs meanwhile)."""
        self.check_peer_sae(slave, "slave")
        number = 1 if req.number is None else req.number
        size = self.cfg.key_size if req.size is None else req.size
        if req.extension_mandatory:
            names = [name for ext in req.extension_mandatory for name in ext]
            raise KmsError(
                400,
                MSG_EXT_MANDATORY_UNSUPPORTED,
                [{"extension_mandatory_unsupported": f"{n} is not supported"} for n in names],
            )
        if req.additional_slave_SAE_IDs:
            raise KmsError(400, "additional_slave_SAE_IDs not supported (max_SAE_ID_count is 0)")
        if number < 1:
            raise KmsError(400, "number shall be a positive integer")
        if number > self.cfg.max_key_per_request:
            raise KmsError(
                400, f"number exceeds max_key_per_request ({self.cfg.max_key_per_request})"
            )
        if size % 8:
            raise KmsError(400, MSG_SIZE_MULTIPLE_OF_8)
        if size < self.cfg.min_key_size or size > self.cfg.max_key_size:
            raise KmsError(
                400,
                f"size shall be between min_key_size ({self.cfg.min_key_size}) and "
                f"max_key_size ({self.cfg.max_key_size})",
            )
        keys = await asyncio.wrap_future(self.pool.issue_future(requester, slave, number, size))
        self._account(requester, slave, keys)
        log.debug(
            "enc_keys: %d keys of %d bits issued to %s for %s", len(keys), size, requester, slave
        )
        return keys

    def dec_keys(self, requester: str, master: str, key_ids: list[str]) -> list[Key]:
        self.check_peer_sae(master, "master")
        if not key_ids:
            raise KmsError(400, "key_IDs shall contain at least one key_ID")
        if len(key_ids) > self.cfg.max_key_per_request:
            raise KmsError(
                400,
                f"number of key_IDs exceeds max_key_per_request ({self.cfg.max_key_per_request})",
            )
        if len(set(key_ids)) != len(key_ids):
            raise KmsError(400, "key_IDs shall not repeat a key_ID")
        for key_id in key_ids:
            try:
                uuid.UUID(key_id)
            except ValueError:
                raise KmsError(400, MSG_KEYS_NOT_FOUND) from None
        if self.peer is None:
            raise KmsError(503, "no peer KME configured")
        records = self.peer.lookup(key_ids)
        keys = self.pool.deliver(requester, master, key_ids, records)
        self._account(master, requester, keys)
        log.debug("dec_keys: %d keys delivered to %s (master %s)", len(keys), requester, master)
        return keys


def key_container(keys: list[Key]) -> Response:
    """A Key container (Table 11) as a ready JSON response.

    The same document ``KeyContainer`` describes (``exclude_none``: ``keys`` of ``key_ID`` and
    ``key``), encoded directly: the keys come from the pool, not from the client, so validating
    them again through pydantic on every request only costs CPU. The routes keep
    ``response_model=KeyContainer`` for the OpenAPI document.
    """
    body = json.dumps({"keys": [{"key_ID": k.key_id, "key": k.b64} for k in keys]})
    return Response(body.encode(), media_type="application/json")


async def sae_identity(request: Request) -> str:
    """The calling SAE's ID: CN of the verified TLS client certificate, registered on this KME."""
    service: KmsService = request.app.state.kms
    sae = request.scope.get("state", {}).get("tls_client_cn")
    if not sae:
        raise KmsError(401, "no verified client certificate: SAE cannot be identified")
    if sae not in service.cfg.local_saes:
        raise KmsError(401, f"SAE {sae!r} is not registered on KME {service.cfg.kme_id}")
    return sae


async def _service(request: Request) -> KmsService:
    return request.app.state.kms


SaeId = Annotated[str, Depends(sae_identity)]
Service = Annotated[KmsService, Depends(_service)]

status_router = APIRouter(prefix="/api/v1/keys", tags=["status"], responses=_ERRORS)
enc_router = APIRouter(prefix="/api/v1/keys", tags=["enc_keys"], responses=_ERRORS)
dec_router = APIRouter(prefix="/api/v1/keys", tags=["dec_keys"], responses=_ERRORS)


@status_router.get(
    "/{slave_SAE_ID}/status", response_model=Status, response_model_exclude_none=True
)
async def get_status(slave_SAE_ID: str, sae: SaeId, kms: Service) -> Status:
    """Get status: key availability for the pair (calling master SAE, ``slave_SAE_ID``)."""
    return kms.status(sae, slave_SAE_ID)


@enc_router.post(
    "/{slave_SAE_ID}/enc_keys", response_model=KeyContainer, response_model_exclude_none=True
)
async def post_enc_keys(
    slave_SAE_ID: str,
    sae: SaeId,
    kms: Service,
    body: Annotated[KeyRequest | None, Body()] = None,
) -> Response:
    """Get key: new keys for the calling master SAE to share with ``slave_SAE_ID``."""
    return key_container(await kms.enc_keys(sae, slave_SAE_ID, body or KeyRequest()))


@enc_router.get(
    "/{slave_SAE_ID}/enc_keys", response_model=KeyContainer, response_model_exclude_none=True
)
async def get_enc_keys(
    slave_SAE_ID: str,
    sae: SaeId,
    kms: Service,
    number: Annotated[int | None, Query()] = None,
    size: Annotated[int | None, Query()] = None,
) -> Response:
    """Get key, simple GET form (``?number=&size=`` only)."""
    return key_container(
        await kms.enc_keys(sae, slave_SAE_ID, KeyRequest(number=number, size=size))
    )


@dec_router.post(
    "/{master_SAE_ID}/dec_keys", response_model=KeyContainer, response_model_exclude_none=True
)
def post_dec_keys(
    master_SAE_ID: str, sae: SaeId, kms: Service, body: Annotated[KeyIDs, Body()]
) -> Response:
    """Get key with key IDs: the keys a master SAE obtained for the calling slave SAE."""
    return key_container(kms.dec_keys(sae, master_SAE_ID, [item.key_ID for item in body.key_IDs]))


@dec_router.get(
    "/{master_SAE_ID}/dec_keys", response_model=KeyContainer, response_model_exclude_none=True
)
def get_dec_keys(
    master_SAE_ID: str, sae: SaeId, kms: Service, key_ID: Annotated[str, Query()]
) -> Response:
    """Get key with key IDs, simple GET form for a single ``?key_ID=``."""
    return key_container(kms.dec_keys(sae, master_SAE_ID, [key_ID]))


def _error(status: int, message: str, details: list[dict] | None = None) -> JSONResponse:
    return JSONResponse(
        Error(message=message, details=details).model_dump(exclude_none=True), status
    )


FAST_PATH_MAX_BODY = 64 * 1024  # bytes the fast path buffers before leaving a body to FastAPI
_ENC_KEYS_PATH = re.compile(r"/api/v1/keys/([^/]+)/enc_keys")


class KmsApp:
    """The FastAPI app behind a fast path for its hot request, ``POST .../enc_keys``.

    A well-formed POST with a JSON object body that validates as ``KeyRequest``, from a
    registered SAE, is answered here with the same service call, the same checks and the same
    documents as the FastAPI route, without FastAPI's middleware, routing and dependency layers
    (about a third of the KME's CPU per request). Everything else, including any request the
    fast path cannot parse, goes to FastAPI unchanged (the body already read is replayed), so
    error handling stays in one place. ``state``, ``openapi`` etc. are the FastAPI app's.
    """

    def __init__(self, app: FastAPI, service: KmsService) -> None:
        self.app, self.service = app, service

    def __getattr__(self, name: str) -> Any:
        return getattr(self.app, name)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        match = None
        if scope["type"] == "http" and scope["method"] == "POST":
            match = _ENC_KEYS_PATH.fullmatch(scope["path"])
        if match is None or not _is_json(scope):
            return await self.app(scope, receive, send)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # client went away: let FastAPI see it
                return await self.app(scope, _replay(chunks, True, receive, message), send)
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if more and size > FAST_PATH_MAX_BODY:  # no key request is this big: FastAPI's
                return await self.app(scope, _replay(chunks, True, receive), send)
        body = b"".join(chunks)
        sae = scope.get("state", {}).get("tls_client_cn")
        try:
            data = json.loads(body) if body else None
            req = KeyRequest.model_validate(data) if isinstance(data, dict) else None
        except ValueError:  # JSON or pydantic error: FastAPI phrases the 400
            req = None
        if req is None or not sae or sae not in self.service.cfg.local_saes:
            return await self.app(scope, _replay([body], False, receive), send)
        try:
            response = key_container(await self.service.enc_keys(sae, match.group(1), req))
        except KmsError as exc:
            response = _error(exc.status, exc.message, exc.details)
        except PoolError as exc:
            response = _error(exc.http_status, str(exc))
        except Exception as exc:
            log.error("KME internal error: %s", type(exc).__name__)
            response = _error(503, "key data access error")
        await response(scope, receive, send)


def _is_json(scope: dict) -> bool:
    for name, value in scope["headers"]:
        if name == b"content-type":
            return value.split(b";", 1)[0].strip().lower() == b"application/json"
    return False


def _replay(chunks: list[bytes], more: bool, receive: Any, last: dict | None = None) -> Any:
    """An ASGI ``receive`` that first hands back the body already read (``more``: the request
    goes on), then ``last`` if given, then defers to ``receive``."""
    pending = [{"type": "http.request", "body": b"".join(chunks), "more_body": more}]
    if last is not None:
        pending.append(last)

    async def replay() -> dict:
        return pending.pop(0) if pending else await receive()

    return replay


def create_kms_app(service: KmsService) -> KmsApp:
    """The ETSI 014 ASGI app; serve it with ``controller.tls.mtls_uvicorn_config``."""
    app = FastAPI(
        title=f"qnode KME {service.cfg.kme_id}: ETSI GS QKD 014 V1.1.1 key delivery",
        version="1.1.1",
        description="REST-based key delivery API (ETSI GS QKD 014 V1.1.1). Mutual TLS required; "
        "the SAE ID is the CN of the client certificate.",
    )
    app.state.kms = service
    for router in (status_router, enc_router, dec_router):
        app.include_router(router)

    @app.exception_handler(KmsError)
    async def _kms_error(_: Request, exc: KmsError) -> JSONResponse:
        return _error(exc.status, exc.message, exc.details)

    @app.exception_handler(PoolError)
    async def _pool_error(_: Request, exc: PoolError) -> JSONResponse:
        return _error(exc.http_status, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        details = [
            {".".join(str(p) for p in err.get("loc", ())): err.get("msg", "invalid")}
            for err in exc.errors()
        ]
        first = next(iter(details[0].items())) if details else ("request", "invalid")
        return _error(400, f"bad request format: {first[0]}: {first[1]}", details)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.error("KME internal error: %s", type(exc).__name__)
        return _error(503, "key data access error")

    return KmsApp(app, service)
