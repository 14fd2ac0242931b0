"""A small synchronous client for the controller's control socket (CLI, tests, scripts)."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import zmq

from controller.curve import load_public_key, make_client
from qnode.codec import packb, unpackb

_rids = itertools.count(1)


def send_command(
    endpoint: str,
    command: dict[str, Any],
    curve_secret: Path | None = None,
    server_key: Path | None = None,
    timeout_ms: int = 5000,
    context: zmq.Context | None = None,
) -> dict[str, Any]:
    """Send one command (a map with ``cmd``) and return the reply map.

    On timeout the reply is ``{"ok": False, "error": "no reply ..."}`` (a CURVE client with an
    unknown key never gets an answer: ZAP drops it before any message is read).
    """
    ctx = context or zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    try:
        if curve_secret is not None and server_key is not None:
            make_client(sock, curve_secret, load_public_key(server_key))
        sock.sndtimeo = timeout_ms  # a DEALER with no usable peer (e.g. CURVE refused) blocks
        sock.connect(endpoint)
        rid = command.get("rid", next(_rids))
        try:
            sock.send(packb({**command, "rid": rid}))
        except zmq.Again:
            return {"ok": False, "error": f"no reply from {endpoint}: could not send"}
        if not sock.poll(timeout_ms):
            return {"ok": False, "error": f"no reply from {endpoint} in {timeout_ms} ms"}
        return unpackb(sock.recv())
    finally:
        sock.close(0)


def send_raw(endpoint: str, raw: bytes, timeout_ms: int = 5000) -> dict[str, Any] | None:
    """Send raw bytes (tests of malformed input); the reply map or None on timeout."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.linger = 0
    try:
        sock.sndtimeo = timeout_ms
        sock.connect(endpoint)
        try:
            sock.send(raw)
        except zmq.Again:
            return None
        if not sock.poll(timeout_ms):
            return None
        return unpackb(sock.recv())
    finally:
        sock.close(0)
