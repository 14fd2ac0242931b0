"""The node controller process: state, ETSI 014 key delivery, control and management planes.

One asyncio loop runs everything (zmq.asyncio sockets and two uvicorn servers):
- telemetry: SUB to the node's telemetry hub; folds messages into ``NodeState``, counts gaps
  and malformed messages, feeds the QBER closed loop;
- control: ROUTER for operator commands (``controller.commands``), authorised per CURVE client,
  forwarded to the node's command socket over a DEALER (request id + timeout);
- KME channel: ROUTER answering the peer KME's key-ID lookups (``controller.kme_link``);
- HTTPS (mutual TLS) ETSI 014 server and a plain-HTTP read-only state/metrics server;
- a 1 s tick: key-pool statistics, pool-low / silent-node / peer-lost alarms, the loop's recheck.
Alarms and pool statistics are published on ``svc/mgmt/<node>/alarm/<name>/`` and
``svc/telemetry/<node>/kms/`` (identifiers and counts only, never key material).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import time
from pathlib import Path
from typing import Any

import uvicorn
import zmq
import zmq.asyncio

from controller import commands as cmds
from controller.config import ControllerConfig, load_config
from controller.curve import Client, RoleAuthenticator, load_key_pair, load_public_key, make_server
from controller.keypool import KeyPool
from controller.kme_link import PeerKmeClient
from controller.kme_link import serve as serve_kme_link
from controller.kms_api import KmsService, create_kms_app
from controller.node_client import NodeCommandClient
from controller.qber_loop import QberLoop, aborted_block_qber
from controller.state import NodeState
from controller.state_api import create_state_app
from controller.tls import bound_port, mtls_uvicorn_config
from qnode.bus import Publisher, decode_frames, parse_topic
from qnode.codec import CodecError, packb

log = logging.getLogger("qnode.controller")


class _Server(uvicorn.Server):
    """uvicorn server that leaves signal handling to the controller (two servers, one loop)."""

    def capture_signals(self) -> contextlib.AbstractContextManager[None]:  # type: ignore[override]
        return contextlib.nullcontext()


class NodeController:
    """A node's controller; ``await run()`` until ``stop()``; ``endpoints`` once started."""

    def __init__(self, cfg: ControllerConfig, config_path: Path | None = None) -> None:
        self.cfg = cfg
        self.config_path = config_path
        kms = cfg.kms
        self.state = NodeState(
            node=cfg.node,
            role=cfg.role,
            peer=(kms.peer_kme_id if kms else "") or "peer",
            local_saes=list(kms.local_saes) if kms else [],
            peer_saes=list(kms.peer_saes) if kms else [],
            key_size=kms.key_size if kms else 256,
            capacity_keys=kms.max_key_count if kms else 0,
        )
        self.ctx = zmq.asyncio.Context()
        self.auth: RoleAuthenticator | None = None
        self.pool: KeyPool | None = None
        self.peer: PeerKmeClient | None = None
        self.kms: KmsService | None = None
        self.publisher: Publisher | None = None
        self.endpoints: dict[str, str] = {}
        self._stop = asyncio.Event()
        self._servers: list[_Server] = []
        self.node: NodeCommandClient | None = None
        self.loop = QberLoop(
            lambda: self.cfg.loop, self.state, self._forward_safe, self._publish_alarm
        )
        self._last_issued = (0, time.monotonic())
        self.started = asyncio.Event()

    # -- set-up ------------------------------------------------------------------------------
    def _curve_on(self) -> bool:
        return self.cfg.security.curve

    def _start_auth(self) -> None:
        sec = self.cfg.security
        clients: dict[bytes, Client] = {}
        for client in sec.clients:
            clients[load_public_key(client.public_key)] = Client(client.name, client.role)
        if sec.peer_kme_public is not None and self.cfg.kms is not None:
            clients[load_public_key(sec.peer_kme_public)] = Client(self.cfg.kms.peer_kme_id, "kme")
        self.auth = RoleAuthenticator(self.ctx, clients)
        self.auth.start()

    def _bind(self, kind: int, endpoint: str, domain: str) -> zmq.asyncio.Socket:
        sock = self.ctx.socket(kind)
        sock.linger = 0
        if self._curve_on():
            assert self.cfg.security.server_secret is not None
            make_server(sock, self.cfg.security.server_secret, domain)
        sock.bind(endpoint)
        return sock

    def _client_keys(self, server_public_path: Path | None) -> tuple[bytes, bytes, bytes] | None:
        sec = self.cfg.security
        if not self._curve_on() or server_public_path is None or sec.server_secret is None:
            return None
        public, secret = load_key_pair(sec.server_secret)
        return public, secret, load_public_key(server_public_path)

    def _setup(self) -> None:
        cfg = self.cfg
        if self._curve_on():
            self._start_auth()
        tel = cfg.telemetry
        # Our own messages (alarms, pool statistics): into the node's hub if it has one, else
        # on a PUB socket of our own (CURVE server like the other sockets).
        if tel.publish_mode == "connect":
            self.publisher = Publisher(tel.publish, cfg.node, "controller", connect=True)
            self.endpoints["publish"] = tel.publish
        else:
            keys = None
            if self._curve_on():
                assert cfg.security.server_secret is not None
                keys = load_key_pair(cfg.security.server_secret)
            sync_ctx = zmq.Context.shadow(self.ctx.underlying)
            self.publisher = Publisher(
                tel.publish,
                cfg.node,
                "controller",
                connect=False,
                context=sync_ctx,
                curve_server_keys=keys,
            )
            self.endpoints["publish"] = self.publisher.endpoint
        self.relay: zmq.asyncio.Socket | None = None
        if tel.relay:
            self.relay = self._bind(zmq.PUB, tel.relay, "telemetry")
            self.relay.sndhwm = 100_000
            self.endpoints["relay"] = self.relay.last_endpoint.decode()
        self.control = self._bind(zmq.ROUTER, cfg.control.bind, "control")
        self.endpoints["control"] = self.control.last_endpoint.decode()
        if cfg.kms is not None and cfg.kms.enabled:
            self.pool = KeyPool(cfg.keystore, cfg.kms.share_index, cfg.kms.share_count)
            self.kme_sync = self._bind(zmq.ROUTER, cfg.kms.sync_bind, "kme")
            self.endpoints["kme_sync"] = self.kme_sync.last_endpoint.decode()
            if cfg.kms.sync_peer:
                curve_secret = cfg.security.server_secret if self._curve_on() else None
                peer_public = (
                    load_public_key(cfg.security.peer_kme_public)
                    if self._curve_on() and cfg.security.peer_kme_public
                    else None
                )
                self.peer = PeerKmeClient(
                    cfg.kms.sync_peer, cfg.kms.sync_timeout_ms, None, curve_secret, peer_public
                )
            self.kms = KmsService(cfg.kms, self.pool, self.peer)
            self.state.consumed = self.kms.consumed  # shared dict: the tree reads live counts

    # -- telemetry ---------------------------------------------------------------------------
    async def _telemetry_loop(self) -> None:
        endpoint = self.cfg.telemetry.node_endpoint
        if not endpoint:
            return
        sub = self.ctx.socket(zmq.SUB)
        sub.linger = 0
        sub.rcvhwm = 100_000
        keys = self._client_keys(self.cfg.security.node_server_public)
        if keys:
            sub.curve_publickey, sub.curve_secretkey, sub.curve_serverkey = keys
        # Our node only; subscriptions end with '/' so 'alice' never matches 'alice2'.
        for stratum in ("con", "qfs", "svc"):
            for plane in ("telemetry", "resource", "control", "mgmt"):
                sub.subscribe(f"{stratum}/{plane}/{self.cfg.node}/".encode())
        sub.connect(endpoint)
        # Synchronous views of the same sockets (no future per message): each wake-up drains
        # what is ready with non-blocking recv until EAGAIN, at most INGEST_BATCH messages,
        # then yields to the loop (HTTP, control, tick) before polling or draining again.
        sub_now = zmq.Socket.shadow(sub.underlying)
        relay = zmq.Socket.shadow(self.relay.underlying) if self.relay is not None else None
        last_seq: dict[tuple[str, str], int] = {}
        try:
            while not self._stop.is_set():
                if not await sub.poll(200):
                    continue
                for _ in range(self.INGEST_BATCH):
                    try:
                        frames = sub_now.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    await self._ingest(frames, last_seq, relay)
                await asyncio.sleep(0)
        finally:
            sub.close(0)

    INGEST_BATCH = 256  # messages per wake-up of the telemetry loop (then other tasks run)

    async def _ingest(
        self, frames: list[bytes], last_seq: dict[tuple[str, str], int], relay: Any
    ) -> None:
        """One telemetry message: validate, relay, count gaps, fold into the state."""
        try:
            msg = decode_frames(frames)
            _, plane, _, obj = parse_topic(msg.topic)
        except (ValueError, CodecError):
            self.state.telemetry_malformed += 1
            return
        if relay is not None:
            relay.send_multipart(frames)  # PUB: never blocks, drops at its high-water mark
        if msg.src == "controller":
            return  # our own alarms, echoed back through the hub
        key = (msg.node, msg.src)
        seq = msg.seq
        if key in last_seq and seq > last_seq[key] + 1:
            self.state.telemetry_gaps += seq - last_seq[key] - 1
        last_seq[key] = seq
        self.state.telemetry_received += 1
        self.state.last_telemetry_ns = time.time_ns()
        try:
            await self.on_telemetry(plane, obj, msg.payload)
        except Exception:  # one odd payload must never stop the controller
            self.state.telemetry_malformed += 1
            log.exception("telemetry payload on %s not understood", msg.topic)

    async def on_telemetry(self, plane: str, obj: str, payload: dict[str, Any]) -> None:
        """Fold one message into the state; block QBER feeds the closed loop."""
        self.state.absorb(obj, payload)
        if self.state.link_status == "PENDING":
            self.state.link_status = "ACTIVE"
        fault = payload.get("fault")
        if fault or payload.get("state") == "fault":
            what = payload.get("instrument") or obj
            if self.state.set_alarm("instrument_fault", True, f"{what}: {fault or 'fault'}"):
                self._publish_alarm("instrument_fault")
        elif obj.startswith("instrument") and payload.get("state") in ("ok", "running"):
            if not any(i.get("fault") for i in self.state.instruments.values()):
                if self.state.set_alarm("instrument_fault", False):
                    self._publish_alarm("instrument_fault")
        peer_up = payload.get("peer_connected")
        if isinstance(peer_up, bool):
            if self.state.set_alarm("peer_lost", not peer_up, "classical channel to peer down"):
                self._publish_alarm("peer_lost")
        if obj.split("/")[0] == "link":  # the periodic summary: the loop's check while held
            await self.loop.on_link(payload)
            return
        qber = payload.get("qber")
        if qber is None and obj.split("/")[0] == "block":
            qber = aborted_block_qber(payload)  # over the pipeline's abort threshold: no figures
        if isinstance(qber, int | float) and not isinstance(qber, bool):
            is_block = (
                obj.split("/")[0] in ("block", "key_block", "keyblock") or "block_id" in payload
            )
            if is_block:
                self.state.blocks_seen += 1
                await self.loop.on_block(float(qber))
            else:
                await self.loop.on_estimate(float(qber))

    # -- node command socket -----------------------------------------------------------------
    async def forward(self, message: dict[str, Any]) -> dict[str, Any]:
        """Send a command to the node's command socket and return its reply map."""
        if self.node is None:
            self.node = NodeCommandClient(
                self.ctx,
                self.cfg.control.node_endpoint,
                self.cfg.control.node_timeout_ms,
                self._client_keys(self.cfg.security.node_command_public),
            )
        return await self.node.call(message)

    async def _forward_safe(self, message: dict[str, Any]) -> dict[str, Any] | None:
        try:
            return await self.forward(message)
        except cmds.CommandError as exc:
            log.warning("could not send %s to the node: %s", message.get("cmd"), exc)
            return None

    # -- control plane -----------------------------------------------------------------------
    async def _control_loop(self) -> None:
        while not self._stop.is_set():
            if not await self.control.poll(200):
                continue
            frames = await self.control.recv_multipart(copy=False)
            identity = frames[0].bytes
            user = None
            if self._curve_on():
                with contextlib.suppress(zmq.ZMQError, KeyError):
                    user = frames[-1].get("User-Id")
            reply = await self.handle_command(frames[-1].bytes, user)
            envelope = [identity] + ([b""] if len(frames) > 2 and not frames[1].bytes else [])
            await self.control.send_multipart([*envelope, packb(reply)])

    async def handle_command(self, raw: bytes, user: str | None = None) -> dict[str, Any]:
        """Validate, authorise and execute one command; always returns a reply map."""
        rid = None
        try:
            cmd = cmds.parse_command(raw)
            rid = cmd.rid
            role = None
            if self._curve_on():
                role = self.auth.role_of(user) if (self.auth and user) else "none"
            cmds.authorise(cmd.cmd, role)
            result = await self._execute(cmd)
            self.state.commands["ok"] += 1
            log.info("command %s by %s: ok", cmd.cmd, user or "local")
            return {"rid": rid, "ok": True, "result": result}
        except cmds.CommandError as exc:
            self.state.commands["error"] += 1
            log.info("command refused (%s): %s", user or "local", exc)
            return {"rid": exc.rid if exc.rid is not None else rid, "ok": False, "error": str(exc)}
        except Exception as exc:  # never let a command take the controller down
            self.state.commands["error"] += 1
            log.exception("command failed")
            return {"rid": rid, "ok": False, "error": f"internal error: {type(exc).__name__}"}

    async def _execute(self, cmd: Any) -> dict[str, Any]:
        name = cmd.cmd
        if name == "ping":
            return {"node": self.cfg.node}
        if name == "state":
            return self.state.summary()
        if name == "alarms":
            return {"alarms": [a.as_dict() for a in self.state.alarms.values()]}
        if name == "set_thresholds":
            for field in ("qber_threshold", "qber_blocks", "pool_low_keys"):
                value = getattr(cmd, field)
                if value is not None:
                    setattr(self.cfg.loop, field, value)
            return {"loop": self.cfg.loop.model_dump()}
        if name == "reload":
            return self.reload()
        reply = await self.forward(cmds.node_message(cmd))
        if not reply.get("ok", False):
            raise cmds.CommandError(f"node refused {name}: {reply.get('error', 'no reason')}")
        if name in ("pause", "stop"):
            self.state.paused = True
            self.state.link_status = "OFF" if name == "stop" else self.state.link_status
        elif name in ("resume", "start"):
            self.state.paused = self.state.paused_by_loop = False
            self.loop.note_resume()  # the node may report 'holding' a moment longer
            self.state.link_status = "ACTIVE" if name == "start" else self.state.link_status
        return {"node_reply": reply.get("result", {})}

    def reload(self) -> dict[str, Any]:
        """Re-read the config file; apply thresholds, limits and CURVE clients in place."""
        if self.config_path is None:
            raise cmds.CommandError("no configuration file to reload")
        try:
            new = load_config(self.config_path)
        except ValueError as exc:
            raise cmds.CommandError(str(exc)) from None
        self.cfg.loop = new.loop
        if self.kms is not None and new.kms is not None:
            for field in (
                "key_size", "min_key_size", "max_key_size", "max_key_per_request", "max_key_count"
            ):  # fmt: skip
                setattr(self.kms.cfg, field, getattr(new.kms, field))
        if self.auth is not None:
            clients = {
                load_public_key(c.public_key): Client(c.name, c.role) for c in new.security.clients
            }
            for key, client in self.auth.clients.items():
                if client.role == "kme":
                    clients[key] = client
            self.auth.clients = clients
        restart = [
            name
            for name in ("telemetry", "control", "http", "security")
            if getattr(new, name).model_dump() != getattr(self.cfg, name).model_dump()
            and name != "security"
        ]
        return {"applied": ["loop", "kms limits", "curve clients"], "need_restart": restart}

    # -- management tick ---------------------------------------------------------------------
    def _publish_alarm(self, name: str) -> None:
        if self.publisher is None:
            return
        alarm = self.state.alarms[name]
        self.publisher.publish(f"svc/mgmt/{self.cfg.node}/alarm/{name}/", alarm.as_dict())

    async def _tick(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop.wait(), 1.0)
            if self._stop.is_set():
                break
            try:
                await self._tick_once()
            except Exception:
                log.exception("management tick failed")

    async def _tick_once(self) -> None:
        loop_cfg = self.cfg.loop
        if self.pool is not None and self.kms is not None:
            stats = await asyncio.to_thread(self.pool.stats)
            stored = await asyncio.to_thread(self.pool.stored_key_count, self.kms.cfg.key_size)
            now = time.monotonic()
            bits = stats["issued_bytes"] * 8 + stats["delivered_bytes"] * 8
            prev_bits, prev_t = self._last_issued
            if now > prev_t:
                self.state.metrics["kms.consumed_bps"] = max(bits - prev_bits, 0) / (now - prev_t)
            self._last_issued = (bits, now)
            self.state.pool = stats
            self.state.stored_keys = stored
            low = stored < loop_cfg.pool_low_keys
            if self.state.set_alarm(
                "pool_low", low, f"{stored} keys of {self.kms.cfg.key_size} bits left"
            ):
                self._publish_alarm("pool_low")
            if self.publisher is not None:
                self.publisher.publish(
                    f"svc/telemetry/{self.cfg.node}/kms/", {**stats, "stored_keys": stored}
                )
            if self.peer is not None:
                up = await asyncio.to_thread(self.peer.ping)
                if self.state.set_alarm("peer_lost", not up, "peer KME does not answer"):
                    self._publish_alarm("peer_lost")
        if self.cfg.telemetry.node_endpoint and self.state.last_telemetry_ns:
            silent_s = (time.time_ns() - self.state.last_telemetry_ns) / 1e9
            silent = silent_s > self.cfg.telemetry.peer_lost_s
            if self.state.set_alarm("node_silent", silent, f"no telemetry for {silent_s:.1f} s"):
                self._publish_alarm("node_silent")
        await self.loop.recheck()

    # -- life cycle --------------------------------------------------------------------------
    async def _start_http(self, app: Any, config: uvicorn.Config) -> int:
        server = _Server(config)
        self._servers.append(server)
        self._tasks.append(asyncio.create_task(server.serve()))
        while not server.started:
            if self._tasks[-1].done():
                self._tasks[-1].result()
                raise RuntimeError("HTTP server exited during start-up")
            await asyncio.sleep(0.01)
        return bound_port(server)

    async def run(self) -> None:
        """Start everything, run until ``stop()``, then shut down cleanly."""
        self._tasks: list[asyncio.Task] = []
        cfg = self.cfg
        try:
            # Inside the try: a failed set-up (a port taken) still closes what it opened. A
            # context left open would otherwise block forever in term() when the garbage
            # collector finalises it (at any later allocation, e.g. during an import).
            self._setup()
            if self.kms is not None and cfg.kms is not None:
                app = create_kms_app(self.kms)
                conf = mtls_uvicorn_config(
                    app, cfg.kms.host, cfg.kms.port, cfg.kms.cert, cfg.kms.key, cfg.kms.ca
                )
                port = await self._start_http(app, conf)
                self.endpoints["kms"] = f"https://{_url_host(cfg.kms.host)}:{port}"
            if cfg.http.enabled:
                app = create_state_app(self.state)
                conf = uvicorn.Config(
                    app,
                    host=cfg.http.host,
                    port=cfg.http.port,
                    lifespan="off",
                    log_level="warning",
                    access_log=False,
                )
                port = await self._start_http(app, conf)
                self.endpoints["http"] = f"http://{_url_host(cfg.http.host)}:{port}"
            self._tasks += [
                asyncio.create_task(self._telemetry_loop()),
                asyncio.create_task(self._control_loop()),
                asyncio.create_task(self._tick()),
            ]
            if self.pool is not None:
                self._tasks.append(
                    asyncio.create_task(
                        serve_kme_link(
                            self.kme_sync,
                            self.pool,
                            cfg.kms.kme_id if cfg.kms else "",
                            self._stop.is_set,
                        )
                    )
                )
            self.started.set()
            log.info("controller %s up: %s", cfg.node, json.dumps(self.endpoints))
            await self._stop.wait()
        finally:
            self._stop.set()
            for server in self._servers:
                server.should_exit = True
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self._close()

    def stop(self) -> None:
        self._stop.set()

    def _close(self) -> None:
        for sock in (
            getattr(self, "control", None),
            getattr(self, "kme_sync", None),
            getattr(self, "relay", None),
        ):
            if sock is not None:
                sock.close(0)
        if self.node is not None:
            self.node.close()
        if self.publisher is not None:
            self.publisher.close()
        if self.peer is not None:
            self.peer.close()
        if self.pool is not None:
            self.pool.close()
        if self.auth is not None:
            self.auth.stop()
        self.ctx.destroy(linger=0)  # closes any socket still open, so it cannot block


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def run_controller(
    config_path: Path, ready_file: Path | None = None, overrides: dict[str, Any] | None = None
) -> None:
    """Entry point of ``qnode controller``: run until SIGINT/SIGTERM.

    ``overrides`` maps dotted keys (``telemetry.node_endpoint``) to values that replace the
    file's; ``qnode node`` passes the endpoints it bound, which the file cannot know in advance.
    """
    cfg = load_config(config_path)
    for dotted, value in (overrides or {}).items():
        section, _, name = dotted.partition(".")
        setattr(getattr(cfg, section), name, value)
    controller = NodeController(cfg, config_path)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, controller.stop)
        task = asyncio.create_task(controller.run())
        started = asyncio.create_task(controller.started.wait())
        await asyncio.wait({task, started}, return_when=asyncio.FIRST_COMPLETED)
        if controller.started.is_set() and ready_file is not None:
            tmp = ready_file.with_suffix(".tmp")
            tmp.write_text(json.dumps({"node": cfg.node, **controller.endpoints}))
            tmp.replace(ready_file)
        await task

    asyncio.run(main())
