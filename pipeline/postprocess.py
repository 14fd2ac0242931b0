"""The post-processing process of a node: event frames -> stages <-> twin -> key store.

It pulls event frames from the node's acquisition process (Bob) or asks it for symbols (Alice),
drives the sans-I/O stages (sifting per frame; estimation, reconciliation, verification and
privacy amplification per block, see :mod:`pipeline.blocks`), talks to its twin over the
authenticated classical channel (:class:`qnode.channel.ClassicalChannel`), commits final key
blocks on both sides or neither (:mod:`pipeline.commit`) and publishes results on the node's
telemetry hub. Key material never leaves this process except into the key store.

Agreement between the twins. Bob leads: he numbers frames (from acquisition) and blocks, and
every message carries the current ``epoch``, a random id Bob draws at each reset. A reset happens
on every new channel session and after any integrity event (a rejected message, a sequence gap):
both sides then drop all frames and blocks in flight (Alice asks for it with ``abort``), so a
block touched by a tampered, replayed or lost message is dropped on both sides alike, by id.
Key blocks already proposed for commit are never dropped that way; their fate is settled by the
commit protocol's status queries.

Bob:   frame -> ``sift_announce`` -> (Alice's ``sift_reply``) -> sifted frame -> block when
       ``block_bits`` sifted key bits are in -> ``block_close`` (the frame list) -> block stages.
Alice: ``sift_announce`` -> symbols from acquisition -> ``sift_reply``; ``block_close`` -> the
       same frames -> block stages -> final key offered to the commit responder.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import time
from collections import OrderedDict, deque
from collections.abc import Iterator
from typing import Any

import numba
import numpy as np
import zmq

from pipeline.blocks import BlockInput, make_block_side
from pipeline.commit import COMMIT_TYPES, CommitInitiator, CommitResponder
from pipeline.sifting import SiftedFrame, SiftingAlice, SiftingBob
from pipeline.sifting import warm_up as sifting_warm_up
from qnode.bus import Publisher, topic
from qnode.channel import ChannelError, ClassicalChannel, load_secret
from qnode.codec import CodecError, packb, unpackb
from qnode.config import NodeConfig, check_auth_downgrade, load_config
from qnode.keystore import KeyStore

log = logging.getLogger("qnode.postprocess")

EVENT_FIELDS = ("slot", "basis", "bit", "detector", "double")
MAX_FRAMES_IN_FLIGHT = 4  # announced, awaiting Alice's reply
MAX_UNBLOCKED_FRAMES = 4096
SIFT_TIMEOUT_S = 10.0
BLOCK_TIMEOUT_S = 120.0  # Alice: sifted frames kept for a block_close that may still come


@contextlib.contextmanager
def _one_numba_thread() -> Iterator[None]:
    """Sift an event frame on this thread alone (numba's thread count is per thread).

    A frame is one or two of the kernels' parallel chunks: waking the worker threads costs
    more than the work, and on a busy 2-core machine the main thread then waits for a worker
    to be scheduled (measured under load, 37 k events: Alice's sifting 5.5-8.9 ms per frame on
    2 threads, 0.4 ms on 1).
    """
    previous = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(previous)


def _ipc(cfg: NodeConfig, name: str) -> str:
    return f"ipc://{cfg.keystore.path.with_suffix('')}.{name}.ipc"


class Counters:
    """Running totals for telemetry (no key material)."""

    def __init__(self) -> None:
        self.frames_sifted = 0
        self.sifted_bits = 0
        self.reconciled_bits = 0
        self.secret_bits = 0
        self.leaked_bits = 0
        self.f_leak_bits = 0  # leak of the blocks with a known f, and its ideal (leak / f):
        self.f_ideal_bits = 0.0  # their ratio is the run's efficiency (one block's f is noisy)
        self.blocks_done = 0
        self.blocks_failed = 0
        self.ldpc_frames = 0
        self.ldpc_frames_failed = 0
        self.aborts = 0
        self.resets = 0
        self.malformed_peer = 0
        self.counts = np.zeros((2, 3), np.int64)  # matched detections [basis, intensity]
        self.test_errors = np.zeros(3, np.int64)  # Z errors per intensity
        self.last_block: dict[str, Any] = {}
        self.secret_window: deque[tuple[float, int]] = deque()
        self.sifted_window: deque[tuple[float, int]] = deque()


class PostProcess:
    """One node's post-processing loop (role from the node config)."""

    def __init__(self, cfg: NodeConfig, hub: str) -> None:
        self.cfg = cfg
        self.role = cfg.role
        self.ctx = zmq.Context.instance()
        downgrade = check_auth_downgrade(cfg)  # contracts §7: refused unless overridden
        if downgrade:
            log.warning("%s", downgrade)
        self.store = KeyStore(cfg.keystore.path, cfg.keystore.busy_timeout_ms)
        secret = load_secret(
            str(cfg.peer.secret_file) if cfg.peer.secret_file else None, cfg.peer.secret_env
        )
        wc = None
        if cfg.peer.auth == "wegman-carter":
            from qnode.wegman_carter import WegmanCarter

            wc = WegmanCarter(self.store, cfg.node, cfg.peer.id)
        self.channel = ClassicalChannel(
            cfg.node, cfg.peer.id, cfg.peer.bind or cfg.peer.connect, secret,
            bind=cfg.peer.bind is not None, heartbeat_s=cfg.peer.heartbeat_s,
            timeout_s=cfg.peer.timeout_s, context=self.ctx, wegman_carter=wc,
        )  # fmt: skip
        del secret
        wc_every = cfg.peer.wc_every_blocks if wc is not None else 0
        self.commit: CommitInitiator | CommitResponder
        if self.role == "bob":
            self.commit = CommitInitiator(self.store, cfg.peer.id, wc_every)
        else:
            self.commit = CommitResponder(self.store, cfg.peer.id, wc_every)
        self.pub = Publisher(hub, cfg.node, "postprocess", context=self.ctx)
        self.cmd = self.ctx.socket(zmq.REP)
        self.cmd.linger = 0
        self.cmd.bind(_ipc(cfg, "pp-cmd"))
        self.block_bits = cfg.pipeline.block_bits
        self.running = True
        self.paused = False
        # Closed QBER loop (docs/controller.md): frames are still sifted, so the test-basis QBER
        # keeps being estimated, but no block is closed: no key from a link judged too noisy.
        self.holding = False
        self.epoch: int | None = None
        self.stats = Counters()
        self._last_tel = 0.0
        self._query_outstanding = False
        self._pads_tried = 0
        # role state
        self.sift_bob = SiftingBob()
        self.sift_alice = SiftingAlice()
        self.announced: OrderedDict[int, float] = OrderedDict()
        self.sifted: OrderedDict[int, SiftedFrame] = OrderedDict()
        self.blocks: dict[int, Any] = {}
        self.next_block = 0
        self.waiting_symbols: dict[int, dict[str, Any]] = {}
        self.source_settings: dict[str, float] = {}  # Alice: from her acquisition process
        if self.role == "bob":
            self.frames_in = self.ctx.socket(zmq.PULL)
            self.frames_in.rcvhwm = cfg.pipeline.queue_frames
            self.frames_in.connect(_ipc(cfg, "frames"))
        else:
            self.requests_out = self.ctx.socket(zmq.PUSH)
            self.requests_out.sndhwm = cfg.pipeline.queue_frames
            self.requests_out.linger = 0
            self.requests_out.bind(_ipc(cfg, "requests"))
            self.symbols_in = self.ctx.socket(zmq.PULL)
            self.symbols_in.rcvhwm = cfg.pipeline.queue_frames
            self.symbols_in.bind(_ipc(cfg, "symbols"))

    # ------------------------------------------------------------------ channel and epochs
    def send(self, message: dict[str, Any]) -> bool:
        if self.epoch is not None and "epoch" not in message:
            message["epoch"] = self.epoch
        try:
            self.channel.send(message)
            return True
        except ChannelError as exc:
            log.info("could not send %s: %s", message.get("type"), exc)
            return False

    def _drop_in_flight(self, reason: str) -> None:
        """Forget every frame and block in flight (never a key block already proposed)."""
        for frame in list(self.announced):
            self.sift_bob.forget(frame)
        dropped = sorted(self.blocks)
        self.announced.clear()
        self.sifted.clear()
        self.waiting_symbols.clear()
        for block in dropped:
            self._block_finished(block, None, f"aborted: {reason}")
        if isinstance(self.commit, CommitResponder):
            for block in self.commit.in_flight():
                for reply in self.commit.drop(block):
                    self.send(reply)
        self.stats.resets += 1

    def _reset(self, reason: str) -> None:
        """Bob: new epoch, everything in flight dropped on both sides."""
        self._drop_in_flight(reason)
        self.epoch = int.from_bytes(os.urandom(6), "big")
        self.send({"type": "reset", "epoch": self.epoch, "reason": reason})
        self._resolve_pending()

    def _resolve_pending(self) -> None:
        query = self.commit.recovery_query()
        if query is not None and self.send(query):
            self._query_outstanding = True

    def on_channel_event(self, kind: str, detail: str) -> None:
        log.info("channel %s: %s", kind, detail)
        self.pub.publish(
            topic("qfs", "telemetry", self.cfg.node, "channel"),
            {"event": kind, "detail": detail, "peer_connected": self.channel.connected,
             **vars(self.channel.stats)},
        )  # fmt: skip
        if kind == "peer_lost":
            self._drop_in_flight(detail)
            self.epoch = None
            self._query_outstanding = False
        elif kind == "connected":
            if self.role == "bob":
                self._reset("new session")
            else:
                self._drop_in_flight("new session")
                self.epoch = None
                self._resolve_pending()
        elif self.channel.connected:  # rejected or gap: the affected block is unknown
            self.stats.aborts += 1
            if self.role == "bob":
                self._reset(f"integrity: {detail}")
            elif self.epoch is not None:
                self.send({"type": "abort", "epoch": self.epoch, "reason": detail})
                self._drop_in_flight(f"integrity: {detail}")
                self.epoch = None

    def on_peer(self, msg: dict[str, Any]) -> None:
        """One authenticated message from the twin; one that makes no sense is counted and
        dropped (with the block it names, on both sides), never raised into the loop."""
        try:
            self._on_peer(msg)
        except Exception as exc:  # noqa: BLE001 - the loop must survive any peer message
            self.stats.malformed_peer += 1
            log.warning("dropping a peer message %r: %s: %s", msg.get("type"),
                        type(exc).__name__, exc)  # fmt: skip
            block = msg.get("block")
            if isinstance(block, int) and block in self.blocks:
                self._block_failed_both(block, f"bad {msg.get('type')}: {exc}")

    def _on_peer(self, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        if kind in COMMIT_TYPES:
            for reply in self.commit.handle(msg):
                self.send(reply)
            if kind in ("commit_status", "commit_confirm"):
                self._query_outstanding = False
                self._publish_commits()
            return
        epoch = msg.get("epoch")
        if kind == "reset" and self.role == "alice":
            self._drop_in_flight(str(msg.get("reason")))
            self.epoch = epoch
            return
        if kind == "abort" and self.role == "bob":
            if epoch == self.epoch:
                self.stats.aborts += 1
                self._reset(f"peer abort: {msg.get('reason')}")
            return
        if self.epoch is None or epoch != self.epoch:
            return  # from a dropped epoch
        if kind == "sift_announce" and self.role == "alice":
            self._alice_announce(msg)
        elif kind == "sift_reply" and self.role == "bob":
            self._bob_reply(msg)
        elif kind == "block_close" and self.role == "alice":
            self._alice_block_close(msg)
        elif isinstance(msg.get("block"), int) and msg["block"] in self.blocks:
            side = self.blocks[msg["block"]]
            try:
                out = side.handle(msg)
            except Exception as exc:  # noqa: BLE001 - a stage refusing a message drops its block
                self._block_failed_both(msg["block"], f"{kind}: {type(exc).__name__}: {exc}")
                return
            self._after_block_step(msg["block"], out)
        elif kind == "block_failed" and isinstance(msg.get("block"), int):
            if msg["block"] in self.blocks:
                self._block_finished(msg["block"], None, f"peer: {msg.get('reason')}")
            elif isinstance(self.commit, CommitResponder):
                # finished here, failed at Bob's: its final key must never be committed
                for reply in self.commit.drop(msg["block"]):
                    self.send(reply)

    # ------------------------------------------------------------------ frames (sifting)
    def _bob_can_pull(self) -> bool:
        return (
            self.epoch is not None
            and not self.paused
            # no Wegman-Carter pad left: nothing could commit (contracts §7); frames wait upstream
            and not self.channel.stats.wc_pad_exhausted
            and len(self.announced) < MAX_FRAMES_IN_FLIGHT
            and len(self.blocks) < self.cfg.pipeline.max_blocks_in_flight
        )

    def _bob_pull_frames(self) -> None:
        while self._bob_can_pull() and self.frames_in.poll(0):
            parts = self.frames_in.recv_multipart(copy=False)
            try:
                header = unpackb(bytes(parts[0]))
                arrays = {
                    name: np.frombuffer(buf, dtype=np.dtype(dt))
                    for name, dt, buf in zip(EVENT_FIELDS, header["dtypes"], parts[1:], strict=True)
                }
                with _one_numba_thread():
                    announce = self.sift_bob.announce(
                        int(header["frame"]), arrays["slot"], arrays["basis"], arrays["bit"]
                    )
            except (CodecError, KeyError, ValueError, TypeError) as exc:
                log.warning("dropping a malformed event frame: %s", exc)
                continue
            if self.send(announce):
                self.announced[announce["frame"]] = time.monotonic()
            else:
                self.sift_bob.forget(announce["frame"])

    def _bob_reply(self, msg: dict[str, Any]) -> None:
        frame = msg.get("frame")
        if frame not in self.announced:
            return
        del self.announced[frame]
        try:
            with _one_numba_thread():
                sifted = self.sift_bob.on_reply(msg)
        except ValueError as exc:
            log.warning("bad sift_reply for frame %s: %s", frame, exc)
            return
        self._account_sifted(sifted)
        if self.holding:
            return  # counted for the test-basis estimate only, never part of a block
        self.sifted[frame] = sifted
        if sum(s.n_key for s in self.sifted.values()) >= self._close_target():
            frames = list(self.sifted)
            block = self.next_block
            self.next_block += 1
            if self.send({"type": "block_close", "block": block, "frames": frames}):
                self._start_block(block, [self.sifted.pop(f) for f in frames])
            else:
                self.sifted.clear()

    def _close_target(self) -> int:
        """Sifted bits that close a block: ``block_bits`` rounded up to whole LDPC frames, so
        the tail that no LDPC frame carries stays below one event frame's worth."""
        z = sum(int(s.counts[0].sum()) for s in self.sifted.values())
        errors = sum(int(s.test_errors.sum()) for s in self.sifted.values())
        try:
            from pipeline.block_stages import frame_key_bits, frame_key_bits_counts

            f_target = self.cfg.pipeline.f_target
            k = frame_key_bits_counts(errors, z, f_target) if z else frame_key_bits(0.05, f_target)
        except (ImportError, ValueError):
            return self.block_bits
        return -(-self.block_bits // k) * k

    def _alice_announce(self, msg: dict[str, Any]) -> None:
        try:
            request = self.sift_alice.symbol_request(msg)  # serial kernels: no thread setting
        except ValueError as exc:
            self.stats.malformed_peer += 1
            log.warning("bad sift_announce: %s", exc)
            return
        self.waiting_symbols[request.frame] = msg
        if request.gaps is not None:  # Bob's uint16 gaps go to the source as they came
            head, positions = {"frame": request.frame, "first": request.first}, request.gaps
        else:
            head, positions = {"frame": request.frame}, request.slots
        self.requests_out.send_multipart([packb(head), positions], copy=False)

    def _alice_symbols(self) -> None:
        while self.symbols_in.poll(0):
            parts = self.symbols_in.recv_multipart(copy=False)
            try:
                header = unpackb(bytes(parts[0]))
            except CodecError:
                continue
            if isinstance(header.get("source"), dict):
                self.source_settings = header["source"]
            msg = self.waiting_symbols.pop(header.get("frame"), None)
            if msg is None:
                continue  # from a dropped epoch
            if not header.get("ok"):
                self.send({"type": "sift_reply", "frame": msg["frame"], "n": 0, "failed": True})
                continue
            try:
                with _one_numba_thread():
                    reply, sifted = self.sift_alice.on_announce(
                        msg, np.frombuffer(parts[1], dtype=np.uint8)
                    )
            except ValueError as exc:  # symbols the source should not send: Bob drops it too
                log.warning("cannot sift frame %s: %s", msg["frame"], exc)
                self.send({"type": "sift_reply", "frame": msg["frame"], "n": 0, "failed": True,
                           "reason": str(exc)})  # fmt: skip
                continue
            self._account_sifted(sifted)
            self.sifted[sifted.frame] = sifted
            while len(self.sifted) > MAX_UNBLOCKED_FRAMES:
                self.sifted.popitem(last=False)
            self.send(reply)

    def _alice_block_close(self, msg: dict[str, Any]) -> None:
        block, frames = msg.get("block"), msg.get("frames")
        if not isinstance(block, int) or not isinstance(frames, list):
            return
        missing = [f for f in frames if f not in self.sifted]
        if missing:
            self.send({"type": "block_failed", "block": block,
                       "reason": f"frames {missing[:3]} unknown"})  # fmt: skip
            return
        for f in list(self.sifted):  # frames Bob skipped are never coming back
            if f not in frames and f < max(frames):
                del self.sifted[f]
        self._start_block(block, [self.sifted.pop(f) for f in frames])

    def _account_sifted(self, sifted: SiftedFrame) -> None:
        self.stats.frames_sifted += 1
        self.stats.sifted_bits += sifted.n_key
        self.stats.counts += sifted.counts
        self.stats.test_errors += sifted.test_errors
        self.stats.sifted_window.append((time.monotonic(), sifted.n_key))

    # ------------------------------------------------------------------ blocks
    def _start_block(self, block: int, frames: list[SiftedFrame]) -> None:
        data = BlockInput(
            block=block,
            frames=[f.frame for f in frames],
            key_bits=np.concatenate([f.key_bits for f in frames]),
            counts=np.sum([f.counts for f in frames], axis=0),
            test_errors=np.sum([f.test_errors for f in frames], axis=0),
            frame_slots=self.cfg.pipeline.frame_slots,
            eps_sec=self.cfg.pipeline.eps_sec,
            eps_cor=self.cfg.pipeline.eps_cor,
            qber_abort=self.cfg.pipeline.qber_abort,
            source=dict(self.source_settings),
            f_target=self.cfg.pipeline.f_target,
        )
        if isinstance(self.commit, CommitResponder):
            self.commit.expect(block)
        try:
            side = make_block_side(self.role, data)
            self.blocks[block] = side
            out = side.start()
        except ValueError as exc:
            self.blocks.pop(block, None)
            self._block_failed_both(block, f"start: {exc}")
            return
        self._after_block_step(block, out)

    def _after_block_step(self, block: int, out: list[dict[str, Any]]) -> None:
        for m in out:
            m.setdefault("block", block)
            self.send(m)
        side = self.blocks.get(block)
        if side is None or not side.finished:
            return
        if side.failure:
            self._block_finished(block, None, side.failure)
        else:
            self._block_finished(block, side, "ok")

    def _block_failed_both(self, block: int, reason: str) -> None:
        self.send({"type": "block_failed", "block": block, "reason": reason})
        self._block_finished(block, None, reason)

    def _block_finished(self, block: int, side: Any, reason: str) -> None:
        self.blocks.pop(block, None)
        info: dict[str, Any] = {"block": block, "status": "failed", "reason": reason}
        if side is None:
            self.stats.blocks_failed += 1
            if isinstance(self.commit, CommitResponder):
                for reply in self.commit.drop(block):
                    self.send(reply)
        else:
            key, meta, figures = side.result()
            self.stats.blocks_done += 1
            self.stats.reconciled_bits += figures.get("reconciled_bits", 0)
            self.stats.leaked_bits += figures.get("leaked_bits", 0)
            if figures.get("f"):
                self.stats.f_leak_bits += figures["leaked_bits"]
                self.stats.f_ideal_bits += figures["leaked_bits"] / figures["f"]
            self.stats.ldpc_frames += figures.get("ldpc_frames", 0)
            self.stats.ldpc_frames_failed += figures.get("ldpc_frames_failed", 0)
            # None kept: an unknown figure (qber null + qber_unknown) is published as null
            info.update(
                {k: v for k, v in figures.items() if v is None or isinstance(v, int | float | str)}
            )
            if key:
                self.stats.secret_bits += meta["n_bits"]
                self.stats.secret_window.append((time.monotonic(), meta["n_bits"]))
                info["status"] = "final"
                if isinstance(self.commit, CommitInitiator):
                    proposal = self.commit.propose(block, key, meta)
                    info["block_id"] = proposal["block_id"]
                    if not self.send(proposal):  # never left: Alice cannot hold it
                        self.commit.withdraw(proposal["block_id"])
                else:
                    for reply in self.commit.offer(block, key, meta):
                        self.send(reply)
                    self._publish_commits()
            else:
                info["status"] = "no_key"
                if isinstance(self.commit, CommitResponder):
                    self.commit.drop(block)
        self.stats.last_block = info
        self.pub.publish(topic("qfs", "telemetry", self.cfg.node, "block"), info)

    def _publish_commits(self) -> None:
        if self.cfg.peer.auth == "wegman-carter" and self.channel.mode == "hmac":
            # New pads exist on both sides (Alice commits before Bob confirms): Bob starts a new
            # session, which then runs on Wegman-Carter authentication if the pad suffices.
            auth_blocks = len(self.store.blocks("auth"))
            if auth_blocks > self._pads_tried and len(self.store.auth_pad_bytes()) >= 64 * 16:
                self._pads_tried = auth_blocks
                self.channel.renegotiate()
        for attr, event in (("committed", "committed"), ("discarded", "discarded")):
            ids: list[str] = getattr(self.commit, attr)
            while ids:
                block_id = ids.pop(0)
                info = self.store.block(block_id)  # one row, not a scan per commit
                payload = {"event": event, "block_id": block_id}
                if info is not None:
                    payload.update({"seq": info.seq, "n_bits": info.n_bits, "status": info.status})
                self.pub.publish(topic("qfs", "telemetry", self.cfg.node, "keyblock"), payload)

    # ------------------------------------------------------------------ telemetry, commands
    def _rate(self, window: deque[tuple[float, int]], now: float, span: float = 10.0) -> float:
        while window and now - window[0][0] > span:
            window.popleft()
        if not window:
            return 0.0
        elapsed = max(now - window[0][0], min(span, now - self._started))
        return sum(n for _, n in window) / max(elapsed, 1e-3)

    def telemetry(self, force: bool = False) -> None:
        now = time.monotonic()
        if now - self._last_tel < self.cfg.telemetry.interval_s and not force:
            return
        self._last_tel = now
        st = self.stats
        z = st.counts[0]
        qber_z = {f"qber_z_{name}": (float(st.test_errors[k] / z[k]) if z[k] else None)
                  for k, name in enumerate(("signal", "decoy", "vacuum"))}  # fmt: skip
        detected = {
            f"matched_{b}_{name}": int(st.counts[bi, k])
            for bi, b in enumerate("zx")
            for k, name in enumerate(("signal", "decoy", "vacuum"))
        }
        blocks, bits, _ = self._store_fill()
        payload = {
            "peer_connected": self.channel.connected,
            "channel_auth": self.channel.mode,
            "pad_bits_left": self.channel.stats.wc_pad_bits_left,
            "pad_bits_used": self.channel.stats.wc_pad_bits_used,
            "pad_bits_per_block": (
                self.channel.stats.wc_pad_bits_used / st.blocks_done if st.blocks_done else None
            ),
            "paused": self.paused,
            "holding": self.holding,
            "frames_sifted": st.frames_sifted,
            "sifted_bits": st.sifted_bits,
            "reconciled_bits": st.reconciled_bits,
            "secret_bits": st.secret_bits,
            "leaked_bits": st.leaked_bits,
            "sifted_bps": self._rate(st.sifted_window, now),
            "skr_bps": self._rate(st.secret_window, now, 60.0),
            "blocks_done": st.blocks_done,
            "blocks_failed": st.blocks_failed,
            "f_run": st.f_leak_bits / st.f_ideal_bits if st.f_ideal_bits else None,
            "fer": st.ldpc_frames_failed / st.ldpc_frames if st.ldpc_frames else None,
            "aborts": st.aborts,
            "malformed_peer": st.malformed_peer,
            "keystore_blocks": blocks,
            "keystore_bits": bits,
            **qber_z,
            **detected,
        }
        for key in ("qber", "f", "qber_x", "qber_unknown", "sifted_gain_signal",
                    "sifted_gain_decoy", "sifted_gain_vacuum"):  # fmt: skip
            if key in st.last_block:
                payload[key] = st.last_block[key]
        self.pub.publish(topic("qfs", "telemetry", self.cfg.node, "link"), payload)
        self.pub.publish(
            topic("qfs", "telemetry", self.cfg.node, "channel"),
            {"peer_connected": self.channel.connected, **vars(self.channel.stats)},
        )

    def _store_fill(self) -> tuple[int, int, int]:
        committed = self.store.blocks("committed")
        return len(committed), sum(b.n_bits for b in committed), len(self.store.blocks("pending"))

    def _commands(self) -> None:
        while self.cmd.poll(0):
            try:
                msg = unpackb(self.cmd.recv())
                result = self._apply(msg.get("cmd"), msg.get("args") or {})
                reply = {"ok": True, "result": result}
            except Exception as exc:  # a bad command gets an error reply, never a crash
                reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            self.cmd.send(packb(reply))

    def _apply(self, cmd: str, args: dict[str, Any]) -> dict[str, Any]:
        if cmd in ("pause", "stop"):  # stop: no new frames; the process stays for its state
            self.paused = True
        elif cmd in ("resume", "start"):
            self.paused = self.holding = False
        elif cmd == "hold":  # keep sifting and estimating, close no block (Bob leads blocks)
            self.paused, self.holding = False, True
            self.sifted.clear()  # frames not yet in a block were measured on the noisy link
        elif cmd == "set_block_size":
            n_bits = int(args["n_bits"])
            if not 1024 <= n_bits <= 1 << 28:
                raise ValueError("n_bits must be within 1024 .. 2^28")
            self.block_bits = n_bits
        elif cmd != "state":
            raise ValueError(f"unknown command {cmd!r}")
        blocks, bits, pending = self._store_fill()
        return {"paused": self.paused, "holding": self.holding, "block_bits": self.block_bits,
                "peer_connected": self.channel.connected, "keystore_blocks": blocks,
                "keystore_bits": bits, "pending_blocks": pending,
                "blocks_in_flight": len(self.blocks),
                "frames_in_flight": len(self.announced)}  # fmt: skip

    def _watchdog(self) -> None:
        """Bob: a frame or block that makes no progress is dropped on both sides (a reset)."""
        if self.epoch is None:
            return
        now = time.monotonic()
        if self.announced and now - next(iter(self.announced.values())) > SIFT_TIMEOUT_S:
            self._reset("no sift_reply in time")
        for block, side in list(self.blocks.items()):
            if now - side.started > BLOCK_TIMEOUT_S:
                self._reset(f"block {block} made no progress")
                break

    # ------------------------------------------------------------------ main loop
    def run(self) -> None:
        try:
            from pipeline.block_stages import warm_up

            t0 = time.monotonic()
            warm_up()
            sifting_warm_up()
            log.info("block stages warmed up in %.1f s", time.monotonic() - t0)
        except Exception as exc:  # noqa: BLE001 - a failed warm-up only costs time later
            log.warning("block stages could not be warmed up: %s: %s", type(exc).__name__, exc)
        self._started = time.monotonic()
        while self.running:
            poller = zmq.Poller()
            poller.register(self.channel._sock, zmq.POLLIN)  # noqa: SLF001 (same package family)
            poller.register(self.cmd, zmq.POLLIN)
            # Frames waiting while Bob may not take them must not wake the loop: it would spin.
            if self.role == "alice":
                poller.register(self.symbols_in, zmq.POLLIN)
            elif self._bob_can_pull():
                poller.register(self.frames_in, zmq.POLLIN)
            poller.poll(int(min(self.cfg.peer.heartbeat_s, 0.05) * 1000))
            self.channel.poll(0)
            for event in self.channel.take_events():
                self.on_channel_event(event.kind, event.detail)
            while (msg := self.channel.recv(0)) is not None:
                self.on_peer(msg)
            if self.role == "bob":
                self._bob_pull_frames()
                self._watchdog()
            else:
                self._alice_symbols()
            self._commands()
            self.telemetry()
        self.telemetry(force=True)
        self.channel.close()
        self.store.close()
        self.pub.close()


def passive_openmp_workers() -> None:
    """Let numba's OpenMP workers sleep as soon as a parallel region ends.

    libgomp's default is to spin for a while first: on a busy 2-core machine a spinning worker
    takes the core the other processes of the link need (measured: 400 parallel kernels of
    0.2 ms, 5 ms apart, cost 3.4 CPU-s with spinning workers and 0.1 CPU-s with sleeping ones).
    libgomp reads the setting once, when numba first loads it, so this runs before any kernel;
    a policy already in the environment wins.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "passive")


def main(argv: list[str] | None = None) -> int:
    passive_openmp_workers()
    parser = argparse.ArgumentParser(description="qnode post-processing (started by qnode node)")
    parser.add_argument("--config", required=True)
    parser.add_argument("--hub", required=True, help="the node's internal telemetry endpoint")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s postprocess %(message)s")
    cfg = load_config(args.config)
    pp = PostProcess(cfg, args.hub)
    signal.signal(signal.SIGTERM, lambda *_: setattr(pp, "running", False))
    pp.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
