"""``qnode node``: start one node's processes and supervise them.

A node is three cooperating processes (docs/architecture.md): acquisition (``hal.acquisition``),
post-processing (``pipeline.postprocess``) and the node controller (``controller``). This
supervisor starts them as separate Python processes, runs the node's telemetry hub (XSUB/XPUB
proxy with the clone snapshot, :class:`qnode.bus.TelemetryHub`) and the node's command socket
(ROUTER; the controller forwards operator commands here and they go on to the process that owns
them), and restarts a process that dies. A restarted post-processing process resolves its pending
key blocks with the peer before it makes new ones (pipeline/commit.py).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import zmq

from qnode.bus import Publisher, TelemetryHub, topic
from qnode.codec import CodecError, packb, unpackb
from qnode.config import NodeConfig

log = logging.getLogger("qnode.node")

# Which process answers which command (the rest are the supervisor's or the controller's own).
ACQUISITION_COMMANDS = {"set_attenuation", "set_intensities", "set_probabilities"}
POSTPROCESS_COMMANDS = {"set_block_size", "hold"}  # hold: the closed QBER loop's pause
BOTH_COMMANDS = {"start", "stop", "pause", "resume", "state"}


def _ipc(cfg: NodeConfig, name: str) -> str:
    return f"ipc://{cfg.keystore.path.with_suffix('')}.{name}.ipc"


def _python() -> list[str]:
    return [sys.executable, "-m"]


def _die_with_parent() -> None:
    """In the child before exec: receive SIGTERM when the supervisor dies (Linux), so a killed
    supervisor never leaves orphaned node processes holding instruments and sockets."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class ChildProcess:
    """One supervised process, restarted (with a pause) when it exits unexpectedly."""

    def __init__(self, name: str, argv: list[str], log_path: Path | None) -> None:
        self.name, self.argv, self.log_path = name, argv, log_path
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self._log = None

    def start(self) -> None:
        if self.log_path is not None and self._log is None:
            self._log = open(self.log_path, "ab")  # noqa: SIM115 (kept open while we run)
        self.proc = subprocess.Popen(
            self.argv,
            stdout=self._log or subprocess.DEVNULL,
            stderr=self._log or None,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout_s: float = 5.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def controller_process(cfg: NodeConfig, ready: dict[str, Any]) -> ChildProcess | None:
    """HOOK for the controller: the node controller process, if the node config names one.

    ``qnode node`` (and so ``qnode link``) starts controllers only through this function, so
    the controller's command line lives in one place. The controller learns this node's
    endpoints from it: the hub's public endpoint (``--node-telemetry``), the command socket
    (``--node-command``) and the hub's internal endpoint to publish its alarms into (``--hub``);
    it writes its own endpoints to ``<keystore>.controller.ready``.
    """
    if cfg.controller is None:
        return None
    argv = [
        *_python(), "qnode", "controller", "--config", str(cfg.controller),
        "--ready-file", str(cfg.keystore.path.with_suffix(".controller.ready")),
        "--node-telemetry", ready["telemetry"], "--node-command", ready["command"],
        "--hub", ready["internal"],
    ]  # fmt: skip
    return ChildProcess("controller", argv, _log_path(cfg, "controller"))


def _log_path(cfg: NodeConfig, name: str) -> Path:
    return cfg.keystore.path.with_suffix(f".{name}.log")


class NodeSupervisor:
    """Owns a node's hub and command socket and keeps its processes running."""

    def __init__(self, cfg: NodeConfig, config_path: Path) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.ctx = zmq.Context.instance()
        internal = cfg.internal_endpoint()
        self.hub = TelemetryHub(
            internal, cfg.telemetry.endpoint, cfg.telemetry.snapshot, context=self.ctx
        )
        self.pub = Publisher(self.hub.internal, cfg.node, "node", context=self.ctx)
        self.command = self.ctx.socket(zmq.ROUTER)
        self.command.linger = 0
        self.command.bind(cfg.command.endpoint)
        self.ready: dict[str, Any] = {
            "node": cfg.node,
            "role": cfg.role,
            "telemetry": self.hub.public,
            "snapshot": self.hub.snapshot,
            "command": self.command.last_endpoint.decode(),
            "internal": self.hub.internal,
            "keystore": str(cfg.keystore.path),
            "pid": os.getpid(),
        }
        common = ["--config", str(config_path), "--hub", self.hub.internal]
        self.children = [
            ChildProcess(
                "acquisition",
                [*_python(), "hal.acquisition", *common],
                _log_path(cfg, "acquisition"),
            ),
            ChildProcess(
                "postprocess",
                [*_python(), "pipeline.postprocess", *common],
                _log_path(cfg, "postprocess"),
            ),
        ]
        ctl = controller_process(cfg, self.ready)
        if ctl is not None:
            self.children.append(ctl)
        self.running = True

    def start(self, ready_file: Path | None = None) -> None:
        for child in self.children:
            child.start()
        if ready_file is not None:
            tmp = ready_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.ready))
            tmp.replace(ready_file)
        self.pub.publish(
            topic("qfs", "mgmt", self.cfg.node, "node"),
            {"event": "started", "processes": [c.name for c in self.children]},
        )

    def _forward(self, endpoint: str, message: dict[str, Any], timeout_ms: int = 2000) -> dict:
        sock = self.ctx.socket(zmq.REQ)
        sock.linger = 0
        sock.connect(endpoint)
        try:
            sock.send(packb(message))
            if not sock.poll(timeout_ms):
                return {"ok": False, "error": "process did not answer"}
            return unpackb(sock.recv())
        finally:
            sock.close()

    def handle_command(self, message: Any) -> dict[str, Any]:
        """Route one command; every failure is an error reply, never an exception."""
        if not isinstance(message, dict) or not isinstance(message.get("cmd"), str):
            return {"ok": False, "error": "a command is a map with a string 'cmd'"}
        cmd, args = message["cmd"], message.get("args") or {}
        if not isinstance(args, dict):
            return {"ok": False, "error": "'args' must be a map"}
        targets = []
        if cmd in ACQUISITION_COMMANDS or cmd in BOTH_COMMANDS:
            targets.append(("acquisition", _ipc(self.cfg, "acq-cmd")))
        if cmd in POSTPROCESS_COMMANDS or cmd in BOTH_COMMANDS:
            targets.append(("postprocess", _ipc(self.cfg, "pp-cmd")))
        if not targets:
            return {"ok": False, "error": f"unknown command {cmd!r}"}
        result: dict[str, Any] = {}
        for name, endpoint in targets:
            reply = self._forward(endpoint, {"cmd": cmd, "args": args})
            if not reply.get("ok"):
                return {"ok": False, "error": f"{name}: {reply.get('error')}"}
            result[name] = reply.get("result")
        return {"ok": True, "result": result}

    def _serve_commands(self) -> None:
        while self.command.poll(0):
            frames = self.command.recv_multipart()
            envelope, body = frames[:-1], frames[-1]
            try:
                message = unpackb(body)
            except CodecError:
                message = None
            reply = self.handle_command(message)
            if isinstance(message, dict):
                reply["rid"] = message.get("rid")
            self.command.send_multipart([*envelope, packb(reply)])

    def run(self) -> None:
        """Serve commands and restart dead processes until SIGTERM/SIGINT."""
        last_check = 0.0
        while self.running:
            if self.command.poll(200):
                self._serve_commands()
            now = time.monotonic()
            if now - last_check < 0.5:
                continue
            last_check = now
            for child in self.children:
                if self.running and not child.alive():
                    code = child.proc.returncode if child.proc else None
                    child.restarts += 1
                    log.warning("%s exited (%s); restarting", child.name, code)
                    self.pub.publish(
                        topic("qfs", "mgmt", self.cfg.node, f"process/{child.name}"),
                        {"event": "restarted", "exit_code": code, "restarts": child.restarts},
                    )
                    time.sleep(0.5)
                    child.start()

    def stop(self) -> None:
        self.running = False
        # post-processing first (it finishes its commit exchange), then acquisition.
        for child in reversed(self.children):
            child.stop()
        self.pub.publish(topic("qfs", "mgmt", self.cfg.node, "node"), {"event": "stopped"})
        time.sleep(0.05)
        self.pub.close()
        self.command.close(0)
        self.hub.close()


def run_node(cfg: NodeConfig, config_path: Path, ready_file: Path | None = None) -> int:
    """Start the node and supervise it until SIGTERM or SIGINT."""
    sup = NodeSupervisor(cfg, config_path)

    def _stop(*_: object) -> None:
        sup.running = False

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    sup.start(ready_file)
    try:
        sup.run()
    finally:
        sup.stop()
    return 0
