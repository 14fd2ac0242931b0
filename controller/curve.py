"""CurveZMQ with ZAP for the controller's sockets (telemetry PUB, control ROUTER, KME channel).

Pattern: one ``ThreadAuthenticator`` per process (ZAP, ZeroMQ RFC 27) with an explicit table of
allowed client public keys, each mapped to a name and a role. The ZAP domain of a socket says
which roles may connect to it; the authenticated name comes back on every received message as
the ``User-Id`` property, which the control plane uses for per-client authorisation. A rejected
key is logged (its public z85 form only) and the client receives nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

log = logging.getLogger("qnode.controller.curve")

# Which roles may connect on which ZAP domain.
DOMAIN_ROLES: dict[str, frozenset[str]] = {
    "telemetry": frozenset({"read", "operator"}),
    "control": frozenset({"read", "operator"}),
    "kme": frozenset({"kme"}),
    # qnode.bus.Publisher binds without a ZAP domain: it is the telemetry PUB.
    "": frozenset({"read", "operator"}),
}


@dataclass(frozen=True)
class Client:
    """An allowed CURVE client: its name (the User-Id) and its role."""

    name: str
    role: str


def load_public_key(path: Path) -> bytes:
    """The z85 public key from a ``zmq.auth`` key file (``NAME.key`` or ``NAME.key_secret``)."""
    public, _ = zmq.auth.load_certificate(str(path))
    return public


def load_key_pair(secret_path: Path) -> tuple[bytes, bytes]:
    """(public, secret) z85 keys from a ``NAME.key_secret`` file."""
    public, secret = zmq.auth.load_certificate(str(secret_path))
    if secret is None:
        raise ValueError(f"{secret_path} holds no secret key")
    return public, secret


class RoleAuthenticator(ThreadAuthenticator):
    """ZAP handler: allow a CURVE client only if its key is listed with a role the domain takes."""

    def __init__(self, context: zmq.Context, clients: dict[bytes, Client]) -> None:
        super().__init__(context, log=logging.getLogger("qnode.controller.zap"))
        self.clients = dict(clients)
        self.rejected = 0

    async def _authenticate_curve(self, domain: str, client_key: bytes) -> tuple[bool, bytes]:
        z85_key = z85.encode(client_key)
        client = self.clients.get(z85_key)
        roles = DOMAIN_ROLES.get(domain, frozenset())
        if client is not None and client.role in roles:
            return True, b"OK"
        self.rejected += 1
        log.warning(
            "CURVE client rejected on %s: key %s is %s",
            domain or "<no domain>",
            z85_key.decode("ascii"),
            "not allowed here" if client else "unknown",
        )
        return False, b"Unknown key"

    def curve_user_id(self, client_public_key: bytes) -> str:
        client = self.clients.get(z85.encode(client_public_key))
        return client.name if client else "unknown"

    def role_of(self, user_id: str) -> str | None:
        """The role of an authenticated User-Id (``None`` if unknown)."""
        for client in self.clients.values():
            if client.name == user_id:
                return client.role
        return None


def make_server(socket: zmq.Socket, secret_path: Path, domain: str) -> None:
    """Turn ``socket`` into a CURVE server in ZAP ``domain`` (call before bind)."""
    public, secret = load_key_pair(secret_path)
    socket.curve_secretkey = secret
    socket.curve_publickey = public
    socket.zap_domain = domain.encode()
    socket.curve_server = True


def make_client(socket: zmq.Socket, secret_path: Path, server_public: bytes) -> None:
    """Turn ``socket`` into a CURVE client of the server with ``server_public`` (before connect)."""
    public, secret = load_key_pair(secret_path)
    socket.curve_secretkey = secret
    socket.curve_publickey = public
    socket.curve_serverkey = server_public
