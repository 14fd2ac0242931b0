"""``qnode link --sim``: a simulated world, Alice's and Bob's nodes, a live view and a verdict.

Steps: start ``qnode sim serve --json`` (one world for the link), write a bench file and a node
config per side into a work directory (Bob's bench gets the clock and the fibre delay of the
world's link), start Alice's node, wait until her source emits (switching the source on starts a
new run of the world), start Bob's node, watch both telemetry hubs until the duration or key
count is reached, then pause both nodes, let the last commits settle (until Bob has no frame or
block in flight), stop the nodes and compare the two key stores as they are left: the same
committed blocks, and a SHA-256 over all key material in block order on each side.
Processes are separate (``python -m qnode node``), exactly as on two hosts.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from qnode import linkmodel
from qnode.bus import Subscriber
from qnode.codec import packb, unpackb
from qnode.keystore import KeyStore

# Default post-processing block: small enough that a default run yields keys within a minute.
DEFAULT_BLOCK_BITS = 200_000
# Alice's source settings for a link run on a preset, per preset: the finite-key optimum for
# the default 2e5-bit blocks (``pipeline.keyrate.expected_key_rate`` optimising intensities,
# class probabilities and basis bias at f 1.16, eps_sec 1e-10), rounded. snspd at 10 km: the
# optimiser picks mu 0.547/0.208/0, p 0.11/0.58/0.31, p_basis_z 0.21; this point is predicted at
# 10.9 of the optimum's 11.0 Mbit/s (pipeline.keyrate_node, 8.8x the old p_basis_z 0.7 with the
# preset's intensities); at the preset's 50 km 2.3 of 2.5. Z is the test basis (the key comes
# from X, pipeline/sifting.py): p_basis_z 0.2 leaves ~1.4e4 Z events (~150 errors) per block,
# enough for the phase-error bound and for the QBER bound the LDPC rate is planned at.
OPERATING_POINTS: dict[str, dict[str, float]] = {
    "snspd": {"mu_signal": 0.55, "mu_decoy": 0.2, "mu_vacuum": 0.0, "p_signal": 0.1,
              "p_decoy": 0.6, "p_vacuum": 0.3, "p_basis_z": 0.2},
}  # fmt: skip
# Alice's basis bias for link files and presets without an operating point: the presets set
# p_basis_z 0.1, which suits blocks of millions of bits; 2e5-bit blocks need more Z events.
DEFAULT_P_BASIS_Z = 0.7
SOURCE_SETTINGS = ("mu_signal", "mu_decoy", "mu_vacuum", "p_signal", "p_decoy", "p_vacuum",
                   "p_basis_z")  # fmt: skip


class LinkError(RuntimeError):
    """The link could not be brought up (a process did not start, a file is wrong)."""


@dataclass
class LinkOptions:
    preset: str | None = "snspd"
    link_file: Path | None = None
    distance_km: float | None = None
    duration_s: float | None = 30.0
    keys: int | None = None  # stop once this many key blocks are committed on both sides
    block_bits: int = DEFAULT_BLOCK_BITS
    frame_slots: int = 0  # 0: chosen from the link (auto_frame_slots)
    seed: int = 1
    # None: the preset's operating point (OPERATING_POINTS), else DEFAULT_P_BASIS_Z
    p_basis_z: float | None = None
    # Source settings over the preset's or link file's (None: the preset's operating point;
    # {} keeps the preset's or file's own source)
    source: dict[str, float] | None = None
    auth: str = "hmac"
    workdir: Path | None = None
    start_timeout_s: float = 90.0
    # HOOK for the controller: a CONTROLLER.toml per role ("alice", "bob"), e.g. written by
    # controller.link_setup.attach_controllers; each such node then starts
    # `qnode controller --config CONFIG` as its third process (qnode.node.controller_process,
    # which passes the node's telemetry, hub and command endpoints on the command line).
    controller_configs: dict[str, Path] = field(default_factory=dict)
    # Or a function called once the nodes' endpoints are fixed (``endpoints[role]``:
    # "telemetry", "snapshot", "command", "keystore") returning such configs.
    controller_hook: Callable[[dict[str, dict[str, str]], Path], dict[str, Path]] | None = None
    channel_port: int = 0  # Alice's channel port (0: any free port)
    bob_connect: str | None = None  # Bob's channel endpoint if not Alice's (a test proxy)


TARGET_KEY_BITS_PER_FRAME = 8_000


def auto_frame_slots(params: linkmodel.LinkParams) -> int:
    """A power-of-two frame giving about 8 k key-basis (X) bits per frame.

    Blocks end on frame boundaries and the bits past the last whole LDPC frame are paid for bit
    by bit in the key length (pipeline/block_stages.py), so frames must be small against an LDPC
    frame (~1.3e5 bits) yet large enough that one sifting round trip per frame is cheap.
    """
    eta = linkmodel.total_transmittance(params)
    src = params.source
    clicks = sum(src.p_class(k) * linkmodel.gain_poisson(src.mu(k), eta, 0.0) for k in range(3))
    key_fraction = (1.0 - src.p_basis_z) * (1.0 - params.p_bob_z)
    per_slot = max(clicks * key_fraction, 1e-12)
    slots = TARGET_KEY_BITS_PER_FRAME / per_slot
    return int(min(1 << 26, max(1 << 16, 1 << round(math.log2(slots)))))


def link_params(opts: LinkOptions) -> linkmodel.LinkParams:
    """The link a run simulates: preset or link file, distance, then Alice's source settings
    (``opts.source``, else the preset's operating point), then ``opts.p_basis_z``."""
    params = (
        linkmodel.load_link(opts.link_file)
        if opts.link_file
        else linkmodel.preset(opts.preset or "snspd")
    )
    if opts.distance_km is not None:
        params = params.with_distance(opts.distance_km)
    source = opts.source
    if source is None:
        source = {} if opts.link_file else OPERATING_POINTS.get(opts.preset or "snspd", {})
    if source:
        params = params.with_changes(source=dict(source))
    p_z = opts.p_basis_z
    if p_z is None and "p_basis_z" not in source:
        p_z = DEFAULT_P_BASIS_Z
    if p_z is not None:
        params = params.with_changes(source={"p_basis_z": p_z})
    return params


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))


def _toml(tables: dict[str, Any]) -> str:
    lines: list[str] = []
    for key, value in tables.items():
        if not isinstance(value, dict):
            lines.append(f"{key} = {_toml_value(value)}")
    for key, value in tables.items():
        if isinstance(value, dict):
            lines.append(f"\n[{key}]")
            for k, v in value.items():
                if isinstance(v, dict):
                    inner = ", ".join(f"{ik} = {_toml_value(iv)}" for ik, iv in v.items())
                    lines.append(f"{k} = {{ {inner} }}")
                else:
                    lines.append(f"{k} = {_toml_value(v)}")
    return "\n".join(lines) + "\n"


def write_configs(
    workdir: Path, params: linkmodel.LinkParams, world_file: Path, opts: LinkOptions
) -> dict[str, Path]:
    """Bench files, node configs and the shared secret for both nodes; returns config paths."""
    workdir.mkdir(parents=True, exist_ok=True)
    secret = workdir / "link.secret"
    if not secret.exists():
        fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(os.urandom(32).hex())
    delay_ps = (
        params.fibre.length_km * linkmodel.FIBRE_DELAY_PS_PER_KM + params.receiver.cable_delay_ps
    )
    benches = {
        "alice": {
            "node": "alice", "simulated": True, "sim": {"attach": str(world_file)},
            "source": {"driver": "qnode-pulse-source",
                       "settings": {k: getattr(params.source, k) for k in SOURCE_SETTINGS}},
            "attenuator": {"driver": "keysight-8156a"},
        },
        "bob": {
            "node": "bob", "simulated": True, "sim": {"attach": str(world_file)},
            "timetagger": {"driver": "qnode-time-tagger"},
            "detector": {"driver": "id120"},  # polled for health (hal.monitor)
            "timing": {"clock_hz": params.source.clock_hz, "delay_ps": delay_ps},
        },
    }  # fmt: skip
    paths = {}
    port = opts.channel_port or free_port()

    # Fixed ports only when a controller must be told them in advance; otherwise the nodes bind
    # any free port and report it in their ready files (no race with other programs).
    def _ep() -> str:
        return f"tcp://127.0.0.1:{free_port() if opts.controller_hook else 0}"

    endpoints = {
        role: {
            "telemetry": _ep(),
            "snapshot": _ep(),
            "command": _ep(),
            "keystore": str(workdir / f"{role}-keys.db"),
        }  # fmt: skip
        for role in ("alice", "bob")
    }
    controllers = dict(opts.controller_configs)
    if opts.controller_hook:
        controllers.update(opts.controller_hook(endpoints, workdir))
    for role in ("alice", "bob"):
        bench = workdir / f"bench-{role}.toml"
        bench.write_text(_toml(benches[role]))
        peer = {"id": "bob" if role == "alice" else "alice", "secret_file": str(secret),
                "auth": opts.auth}  # fmt: skip
        if role == "alice":
            peer["bind"] = f"tcp://127.0.0.1:{port}"
        else:
            peer["connect"] = opts.bob_connect or f"tcp://127.0.0.1:{port}"
        node = {
            "node": role,
            "role": role,
            "bench": str(bench),
            "peer": peer,
            "keystore": {"path": str(workdir / f"{role}-keys.db")},
            "telemetry": {
                "endpoint": endpoints[role]["telemetry"],
                "snapshot": endpoints[role]["snapshot"],
            },
            "command": {"endpoint": endpoints[role]["command"]},
            "pipeline": {
                "block_bits": opts.block_bits,
                "frame_slots": opts.frame_slots or auto_frame_slots(params),
            },
        }
        if role in controllers:
            node["controller"] = str(controllers[role])
        paths[role] = (workdir / f"{role}.toml", node)
    return paths  # written by the caller once Alice's channel endpoint is known


def free_port() -> int:
    """A TCP port free on loopback now, outside the ephemeral range (see ``qnode.ports``)."""
    from qnode.ports import free_port as _free

    return _free()


def _write_node(path: Path, node: dict[str, Any]) -> None:
    path.write_text(_toml(node))


def _start_node(config: Path, ready: Path, log: Path) -> subprocess.Popen:
    ready.unlink(missing_ok=True)
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "qnode", "node", "--config", str(config),
             "--ready-file", str(ready)],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip


def _wait_file(path: Path, proc: subprocess.Popen, timeout_s: float, what: str) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists():
            return json.loads(path.read_text())
        if proc.poll() is not None:
            raise LinkError(f"{what} exited with code {proc.returncode} before it was ready")
        time.sleep(0.05)
    raise LinkError(f"{what} not ready after {timeout_s} s")


def node_command(endpoint: str, cmd: str, args: dict | None = None, timeout_ms: int = 3000) -> dict:
    """Send one command to a node's command socket (as the controller does)."""
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(endpoint)
    try:
        sock.send_multipart([b"", packb({"cmd": cmd, "args": args or {}, "rid": 1})])
        if not sock.poll(timeout_ms):
            return {"ok": False, "error": "no answer"}
        return unpackb(sock.recv_multipart()[-1])
    finally:
        sock.close()


def store_summary(path: Path) -> dict[str, Any]:
    """Committed blocks, bits and the SHA-256 over all key material in block order."""
    if not path.exists():
        return {"key_blocks": 0, "key_bits": 0, "key_sha256": None, "block_ids": []}
    store = KeyStore(path)
    try:
        blocks, bits, digest = store.committed_digest()
        ids = [b.block_id for b in store.blocks("committed")]
        pending = len(store.blocks("pending"))
    finally:
        store.close()
    return {"key_blocks": blocks, "key_bits": bits, "key_sha256": digest if blocks else None,
            "block_ids": ids, "pending_blocks": pending}  # fmt: skip


class Link:
    """The running link: world, two nodes, their telemetry."""

    def __init__(self, opts: LinkOptions) -> None:
        self.opts = opts
        self.params = link_params(opts)
        if opts.workdir is None:
            import tempfile

            opts.workdir = Path(tempfile.mkdtemp(prefix="qnode-link-"))
        self.workdir = opts.workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.procs: dict[str, subprocess.Popen] = {}
        self.ready: dict[str, dict] = {}
        self.latest: dict[str, dict[str, dict]] = {"alice": {}, "bob": {}}
        self.subs: dict[str, Subscriber] = {}
        self.t0 = time.monotonic()
        self.t_end: float | None = None  # when the run ended (settle paused the nodes)

    def _start_world(self) -> Path:
        cmd = [sys.executable, "-m", "qnode", "sim", "serve", "--json", "--seed",
               str(self.opts.seed)]  # fmt: skip
        if self.opts.link_file:
            cmd += ["--link", str(self.opts.link_file)]
        else:
            cmd += ["--preset", self.opts.preset or "snspd"]
        if self.opts.distance_km is not None:
            cmd += ["--distance", str(self.opts.distance_km)]
        log = open(self.workdir / "world.log", "ab")  # noqa: SIM115
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True,
                                start_new_session=True)  # fmt: skip
        self.procs["world"] = proc
        import selectors

        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(self.opts.start_timeout_s):
            raise LinkError("qnode sim serve printed nothing")
        line = proc.stdout.readline()
        if not line.strip():
            raise LinkError(f"qnode sim serve failed (see {self.workdir / 'world.log'})")
        world_file = self.workdir / "world.json"
        world_file.write_text(line)
        return world_file

    def start(self, on_progress=None) -> None:
        say = on_progress or (lambda text: None)
        say("starting the simulated world")
        world_file = self._start_world()
        configs = write_configs(self.workdir, self.params, world_file, self.opts)
        a_path, a_node = configs["alice"]
        _write_node(a_path, a_node)
        say("starting Alice")
        self.procs["alice"] = _start_node(a_path, self.workdir / "alice.ready",
                                          self.workdir / "alice.log")  # fmt: skip
        self.ready["alice"] = _wait_file(self.workdir / "alice.ready", self.procs["alice"],
                                         self.opts.start_timeout_s, "Alice's node")  # fmt: skip
        self._subscribe("alice")
        say("waiting for Alice's source")
        self._wait_for(lambda: self._source_running(), self.opts.start_timeout_s,
                       "Alice's source never reported running")  # fmt: skip
        b_path, b_node = configs["bob"]
        _write_node(b_path, b_node)
        say("starting Bob")
        self.procs["bob"] = _start_node(b_path, self.workdir / "bob.ready",
                                        self.workdir / "bob.log")  # fmt: skip
        self.ready["bob"] = _wait_file(self.workdir / "bob.ready", self.procs["bob"],
                                       self.opts.start_timeout_s, "Bob's node")  # fmt: skip
        self._subscribe("bob")
        self.t0 = time.monotonic()

    def _subscribe(self, role: str) -> None:
        self.subs[role] = Subscriber(self.ready[role]["telemetry"],
                                     snapshot_endpoint=self.ready[role]["snapshot"])  # fmt: skip

    def _source_running(self) -> bool:
        inst = self.latest["alice"].get("con/resource/alice/instrument/source/")
        return bool(inst and inst.get("state") == "running")

    def _wait_for(self, cond, timeout_s: float, message: str) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.poll(0.05)
            if cond():
                return
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise LinkError(f"{name} exited with code {proc.returncode}: {message}")
        raise LinkError(message)

    def poll(self, timeout_s: float) -> None:
        """Fold telemetry from both nodes into ``latest`` (topic -> payload)."""
        deadline = time.monotonic() + timeout_s
        while True:
            for role, sub in self.subs.items():
                while (msg := sub.recv(0)) is not None:
                    self.latest[role][msg.topic] = msg.payload
            if time.monotonic() >= deadline:
                return
            time.sleep(min(0.02, max(0.0, deadline - time.monotonic())))

    def link_payload(self, role: str) -> dict[str, Any]:
        return self.latest[role].get(f"qfs/telemetry/{role}/link/", {})

    def committed_blocks(self) -> int:
        return min(int(self.link_payload(r).get("keystore_blocks", 0)) for r in ("alice", "bob"))

    def done(self) -> bool:
        elapsed = time.monotonic() - self.t0
        if self.opts.keys is not None and self.committed_blocks() >= self.opts.keys:
            return True
        return self.opts.duration_s is not None and elapsed >= self.opts.duration_s

    def settle(self, timeout_s: float = 15.0) -> bool:
        """Pause both nodes (the run ends here: ``duration_s``), then wait until Bob's
        post-processing has no frame or block in flight (a block closed from frames sifted
        before the pause may still be reconciling: it would commit after a summary read now),
        Bob has no pending block and the stores agree. False if that did not happen in time."""
        if self.t_end is None:
            self.t_end = time.monotonic()
        for role in ("bob", "alice"):
            if role in self.ready:
                node_command(self.ready[role]["command"], "pause")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._bob_idle():
                a = store_summary(self.workdir / "alice-keys.db")
                b = store_summary(self.workdir / "bob-keys.db")
                if not b.get("pending_blocks") and a["block_ids"] == b["block_ids"]:
                    return True
            time.sleep(0.2)
        return False

    def _bob_idle(self) -> bool:
        """Bob (he leads blocks and commits) has nothing in flight; a node that does not answer
        (stopped or killed) has nothing in flight either."""
        if "bob" not in self.ready:
            return True
        reply = node_command(self.ready["bob"]["command"], "state", timeout_ms=2000)
        if not reply.get("ok"):
            return True
        pp = (reply.get("result") or {}).get("postprocess") or {}
        return not pp.get("blocks_in_flight") and not pp.get("frames_in_flight")

    def stop(self) -> None:
        """Nodes first (Bob, then Alice), the world last, so no driver loses its instrument."""
        for sub in self.subs.values():
            sub.close()
        self.subs.clear()
        for name in ("bob", "alice", "world"):
            proc = self.procs.get(name)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM if name != "world" else signal.SIGINT)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def result(self) -> dict[str, Any]:
        """The run's figures; the key figures are read from the stores now (``qnode link``
        calls this after :meth:`stop`, so they are exactly what the stores keep)."""
        duration = (self.t_end or time.monotonic()) - self.t0
        sides = {r: store_summary(self.workdir / f"{r}-keys.db") for r in ("alice", "bob")}
        bob_link = self.link_payload("bob")
        qber = bob_link.get("qber")
        out: dict[str, Any] = {
            r: {k: sides[r][k] for k in ("key_blocks", "key_bits", "key_sha256")}
            for r in ("alice", "bob")
        }
        sifted = bob_link.get("sifted_bits", 0)
        out.update({
            "qber": qber,
            # the run's efficiency (total leak over its ideal); one block's f is noisy
            "f": bob_link.get("f_run", bob_link.get("f")),
            "sifted_mbps": sifted / duration / 1e6 if duration > 0 else 0.0,
            "skr_mbps": sides["bob"]["key_bits"] / duration / 1e6 if duration > 0 else 0.0,
            "duration_s": round(duration, 2),
            "same_blocks": sides["alice"]["block_ids"] == sides["bob"]["block_ids"],
            "preset": self.opts.preset if not self.opts.link_file else None,
            "distance_km": self.params.fibre.length_km,
            "block_bits": self.opts.block_bits,
            "workdir": str(self.workdir),
        })  # fmt: skip
        if qber is None and bob_link.get("qber_unknown"):
            out["qber_unknown"] = bob_link["qber_unknown"]  # the last block decoded no frame
        out["keys_match"] = bool(
            out["alice"]["key_blocks"] > 0
            and out["same_blocks"]
            and out["alice"]["key_sha256"] == out["bob"]["key_sha256"]
        )
        return out
