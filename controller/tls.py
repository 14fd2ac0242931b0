"""Mutual-TLS serving for the KME: uvicorn with client certificates required and the SAE ID
(certificate CN) handed to the app per connection.

uvicorn does not put the peer certificate in the ASGI scope, so ``SaeIdentityProtocol`` (an h11
protocol subclass) reads it from the TLS transport when the connection is made and places the
CN in the per-connection ``scope["state"]``. The handshake itself rejects a client without a
certificate signed by the configured CA (``ssl.CERT_REQUIRED``), before any HTTP is spoken.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol


def _peer_common_name(transport: asyncio.Transport) -> str | None:
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    cert = ssl_object.getpeercert()
    if not cert:
        return None
    for rdn in cert.get("subject", ()):
        for name, value in rdn:
            if name == "commonName":
                return value
    return None


class _SaeIdentity:
    """Mixin for a uvicorn HTTP protocol: the verified client certificate's CN becomes
    ``scope["state"]["tls_client_cn"]`` for every request on the connection."""

    app_state: dict[str, Any]

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        # Per-connection copy: the scope's "state" is built from this dict for every request.
        self.app_state = {**self.app_state, "tls_client_cn": _peer_common_name(transport)}


class SaeIdentityH11(_SaeIdentity, H11Protocol):
    """Pure-Python h11 parser with SAE identities."""


SaeIdentityProtocol: type = SaeIdentityH11
try:  # httptools (C parser) when installed: less CPU per request
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class SaeIdentityHttpTools(_SaeIdentity, HttpToolsProtocol):
        """httptools parser with SAE identities."""

    SaeIdentityProtocol = SaeIdentityHttpTools
except ImportError:  # pragma: no cover - depends on the environment
    pass


def server_ssl_context(cert: Path, key: Path, ca: Path) -> ssl.SSLContext:
    """TLS 1.2+ server context that requires a client certificate signed by ``ca``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert), str(key))
    ctx.load_verify_locations(str(ca))
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_ssl_context(cert: Path, key: Path, ca: Path) -> ssl.SSLContext:
    """TLS 1.2+ client context for an SAE: verifies the KME against ``ca``, presents ``cert``."""
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


def mtls_uvicorn_config(
    app: Any, host: str, port: int, cert: Path, key: Path, ca: Path, **kwargs: Any
) -> uvicorn.Config:
    """uvicorn configuration serving ``app`` over mutual TLS with SAE identities."""

    def factory(_config: uvicorn.Config, _default: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
        return server_ssl_context(cert, key, ca)

    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=SaeIdentityProtocol,
        ssl_certfile=str(cert),
        ssl_keyfile=str(key),
        ssl_ca_certs=str(ca),
        ssl_cert_reqs=ssl.CERT_REQUIRED,
        ssl_context_factory=factory,
        lifespan="off",
        log_level=kwargs.pop("log_level", "warning"),
        access_log=False,
        # SAEs connect directly: X-Forwarded-* headers are never trusted (and not parsed).
        proxy_headers=False,
        **kwargs,
    )


def bound_port(server: uvicorn.Server) -> int:
    """The TCP port a started uvicorn server listens on (for ``port=0``)."""
    for srv in server.servers:
        for sock in srv.sockets:
            return sock.getsockname()[1]
    raise RuntimeError("server has no listening socket")


class ServerThread:
    """Run a uvicorn server in a background thread (tests, perf, the controller's HTTP side)."""

    def __init__(self, config: uvicorn.Config) -> None:
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.port = 0

    def start(self, timeout_s: float = 20.0) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn server did not start")
            time.sleep(0.01)
        self.port = bound_port(self.server)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
