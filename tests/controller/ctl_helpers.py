"""Shared helpers for controller tests: real key stores, real controllers, real TLS clients."""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from pathlib import Path

import httpx

from controller.config import ControllerConfig, parse_config
from controller.node_controller import NodeController
from controller.tls import client_ssl_context
from qnode.keystore import KeyStore
from qnode.ports import free_port as qnode_free_port


def free_port() -> int:
    return qnode_free_port()


def seed_blocks(
    paths: list[Path], n_blocks: int, block_bytes: int, first_seq: int = 0
) -> list[str]:
    """Commit identical random blocks into every key store (as issue 4's commit leaves them)."""
    ids = []
    stores = [KeyStore(p) for p in paths]
    try:
        for i in range(n_blocks):
            block_id = str(uuid.uuid4())
            key = os.urandom(block_bytes)
            for store in stores:
                store.add_committed(block_id, first_seq + i, "peer", key, {"qber": 0.02})
            ids.append(block_id)
    finally:
        for store in stores:
            store.close()
    return ids


def controller_config(
    tmp: Path, pki: Path, node: str, peer: str, local: list[str], remote: list[str], **extra
) -> dict:
    index = 0 if node == "alice" else 1
    cfg = {
        "node": node,
        "role": node,
        "keystore": str(tmp / f"{node}.db"),
        "kms": {
            "kme_id": node,
            "peer_kme_id": peer,
            "cert": str(pki / f"{node}.pem"),
            "key": str(pki / f"{node}.key"),
            "ca": str(pki / "ca.pem"),
            "local_saes": local,
            "peer_saes": remote,
            "port": 0,
            "share_index": index,
            "max_key_per_request": 16,
            "max_key_size": 1024,
            "sync_bind": f"tcp://127.0.0.1:{extra.pop('sync_port')}",
            "sync_peer": f"tcp://127.0.0.1:{extra.pop('peer_sync_port')}",
            "sync_timeout_ms": 1000,
        },
        "security": {"curve": False},
        "http": {"port": 0},
    }
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key].update(value)
        else:
            cfg[key] = value
    return cfg


class ControllerThread:
    """A real NodeController running its asyncio loop in a background thread."""

    def __init__(self, cfg: ControllerConfig | dict, config_path: Path | None = None) -> None:
        if isinstance(cfg, dict):
            cfg = parse_config(cfg)
        self.controller = NodeController(cfg, config_path)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # surfaced by start()
            self.error = exc

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        await self.controller.run()

    def start(self, timeout_s: float = 20.0) -> ControllerThread:
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while self.loop is None or not self.controller.started.is_set():
            if self.error is not None:
                raise self.error
            if time.monotonic() > deadline:
                raise TimeoutError("controller did not start")
            time.sleep(0.01)
        return self

    @property
    def endpoints(self) -> dict[str, str]:
        return self.controller.endpoints

    def call(self, coro, timeout_s: float = 10.0):
        """Run a coroutine on the controller's loop and return its result."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def stop(self) -> None:
        if self.loop is not None and self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.controller.stop)
        self.thread.join(15)


def sae_client(pki: Path, name: str, **kwargs) -> httpx.Client:
    """An httpx client presenting SAE ``name``'s certificate and trusting the test CA."""
    ctx = client_ssl_context(pki / f"{name}.pem", pki / f"{name}.key", pki / "ca.pem")
    return httpx.Client(verify=ctx, timeout=10.0, **kwargs)


class FakeNodeCommandSocket:
    """The node's command ROUTER as qnode/node.py speaks it ({cmd, args, rid} -> {ok, result,
    rid}), recording what the controller forwards. A real socket on loopback."""

    def __init__(self, refuse: set[str] | None = None) -> None:
        import zmq

        from qnode.codec import packb, unpackb

        self._packb, self._unpackb = packb, unpackb
        self.ctx = zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.linger = 0
        self.sock.bind("tcp://127.0.0.1:0")
        self.endpoint = self.sock.last_endpoint.decode()
        self.received: list[dict] = []
        self.refuse = refuse or set()
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self.sock.poll(50):
                continue
            frames = self.sock.recv_multipart()
            msg = self._unpackb(frames[-1])
            self.received.append(msg)
            if msg.get("cmd") in self.refuse:
                reply = {"ok": False, "error": "refused by test node", "rid": msg.get("rid")}
            else:
                reply = {"ok": True, "result": {"done": msg.get("cmd")}, "rid": msg.get("rid")}
            self.sock.send_multipart([*frames[:-1], self._packb(reply)])

    def commands(self) -> list[str]:
        return [m.get("cmd") for m in self.received]

    def close(self) -> None:
        self._stop.set()
        self.thread.join(2)
        self.sock.close(0)


def wait_for(predicate, timeout_s: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)
