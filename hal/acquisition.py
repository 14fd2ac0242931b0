"""The acquisition process of a node: instruments (through the HAL) -> ZeroMQ -> post-processing.

Bob: fetch time tags, turn them into detection events (``hal.events``), cut them into frames and
PUSH each frame as ``[header, slot, basis, bit, detector, double]``: a msgpack header plus the raw
numpy buffers, sent without copying. The PUSH socket's high-water mark bounds the frames in
flight; when post-processing falls behind, ``send`` blocks, acquisition stops fetching, and the
simulated tagger's time stops with it (real hardware would overflow its buffer and report it).

Alice: PULL symbol requests (``[header, slot int64 buffer]``: the slots Bob detected in a frame)
from post-processing and PUSH the answers ``[header, symbol bytes]`` (contracts §1.1), read from
the transmitter for exactly those slots (queued requests of consecutive frames in one query,
``hal.symbol_requests``).

Both publish instrument telemetry (detections/s per detector, instrument state and faults) on
the node's telemetry hub, and answer commands (pause, resume, settings) on a REP socket.
An instrument fault is reported, the affected frames are dropped (Bob restarts framing, so a frame
with missing tags is never announced and Alice never sees it), and acquisition carries on once
the driver has reconnected.
"""

from __future__ import annotations

import argparse
import logging
import secrets
import sys
import time
from typing import Any

import numpy as np
import zmq

from hal.bench import Bench
from hal.events import EventBuilder, Events, TimingConfig
from hal.monitor import InstrumentMonitor, SharedPublisher
from hal.symbol_requests import (
    MAX_MERGED,
    SymbolRequest,
    group_requests,
    joined_gaps,
    parse_request,
    split_symbols,
)
from qnode.bus import Publisher, topic
from qnode.codec import CodecError, packb, unpackb
from qnode.config import NodeConfig, load_config

log = logging.getLogger("qnode.acquisition")

EVENT_FIELDS = ("slot", "basis", "bit", "detector", "double")
FETCH_TAGS = 1 << 22  # per fetch: 2.6 M tags/s at 2^20, 6.5 M tags/s at 2^22 (measured, loaded)


def endpoints(cfg: NodeConfig) -> dict[str, str]:
    """The node-internal endpoints joining acquisition and post-processing (ipc, per node)."""
    base = cfg.keystore.path.with_suffix("")
    return {
        "frames": f"ipc://{base}.frames.ipc",  # Bob: acquisition PUSH -> post-processing PULL
        "requests": f"ipc://{base}.requests.ipc",  # Alice: post-processing PUSH -> acquisition
        "symbols": f"ipc://{base}.symbols.ipc",  # Alice: acquisition PUSH -> post-processing
        "acq_cmd": f"ipc://{base}.acq-cmd.ipc",
        "pp_cmd": f"ipc://{base}.pp-cmd.ipc",
    }


def encode_frame(index: int, frame_slots: int, events: Any, dropped: int) -> list[Any]:
    """Frames of one PUSH message: header + one raw buffer per event field."""
    header = {
        "frame": int(index),
        "frame_slots": int(frame_slots),
        "n": len(events.slot),
        "dropped_outside_gate": int(dropped),
        "t_ns": time.time_ns(),
    }
    arrays = [np.ascontiguousarray(getattr(events, name)) for name in EVENT_FIELDS]
    header["dtypes"] = [a.dtype.str for a in arrays]
    return [packb(header), *arrays]


def decode_frame(parts: list[Any]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Inverse of :func:`encode_frame`; raise ValueError on anything malformed."""
    if len(parts) != 1 + len(EVENT_FIELDS):
        raise ValueError(f"event frame has {len(parts)} parts")
    try:
        header = unpackb(bytes(parts[0]))
    except CodecError as exc:
        raise ValueError(str(exc)) from exc
    n = int(header["n"])
    out = {}
    for name, dtype, buf in zip(EVENT_FIELDS, header["dtypes"], parts[1:], strict=True):
        arr = np.frombuffer(buf, dtype=np.dtype(dtype))
        if arr.size != n:
            raise ValueError(f"field {name}: {arr.size} values, header says {n}")
        out[name] = arr
    return header, out


class FrameSplitter:
    """Cut time-ordered event batches into whole frames in one pass (``np.searchsorted``).

    Same contract as :class:`hal.events.FrameAssembler` (the frame in progress when acquisition
    started is skipped; a frame is complete once the tag stream passed its end), but linear in
    the events per batch: the assembler concatenates everything pending once per frame, which
    costs more than the tag conversion when a batch spans tens of small frames.
    """

    def __init__(self, frame_slots: int) -> None:
        self.frame_slots = frame_slots
        self._pending: Events | None = None
        self._next: int | None = None

    def add(self, events: Events, horizon_slot: int) -> list[tuple[int, Events]]:
        if self._next is None:
            first = int(events.slot[0]) if len(events) else horizon_slot
            self._next = -(-first // self.frame_slots)
        if self._pending is not None and len(self._pending):
            events = Events.concat([self._pending, events])
        last = (horizon_slot + 1) // self.frame_slots  # frames [next, last) are complete
        done: list[tuple[int, Events]] = []
        if last > self._next:
            edges = np.searchsorted(
                events.slot, np.arange(self._next, last + 1, dtype=np.int64) * self.frame_slots
            )
            for i, index in enumerate(range(self._next, last)):
                lo, hi = int(edges[i]), int(edges[i + 1])
                done.append((index, events.select(slice(lo, hi))))
            events = events.select(slice(int(edges[-1]), None))
            self._next = last
        self._pending = events
        return done


class Acquisition:
    """One node's acquisition loop (role from the node config)."""

    def __init__(self, cfg: NodeConfig, hub: str) -> None:
        self.cfg = cfg
        self.ctx = zmq.Context.instance()
        self.eps = endpoints(cfg)
        # Shared with the instrument monitor's threads (one socket, one lock).
        self.pub = SharedPublisher(Publisher(hub, cfg.node, "acquisition", context=self.ctx))
        self.cmd = self.ctx.socket(zmq.REP)
        self.cmd.linger = 0
        self.cmd.bind(self.eps["acq_cmd"])
        self.paused = False
        self.running = True
        self.bench = Bench.load(cfg.bench)
        self.monitor: InstrumentMonitor | None = None
        self.source_settings: dict[str, float] = {}
        self.frames_out = 0
        self.frames_failed = 0  # Alice: symbol requests answered as failed (instrument fault)
        self.symbol_queries = 0  # Alice: source queries (one per request, or per merged group)
        self._source_faulted = False
        self.push_wait_s = 0.0  # time spent waiting for post-processing (back-pressure)
        self.fetch_s = 0.0  # time spent fetching tags from the instrument
        self.detections = np.zeros(5, np.int64)
        self._last_tel = time.monotonic()
        self._last_counts = self.detections.copy()

    # -- telemetry -----------------------------------------------------------------------------
    @property
    def faults(self) -> int:
        """Instrument faults since start, all roles (frame loop and health polls)."""
        return self.monitor.faults if self.monitor is not None else 0

    def _instrument(self, role: str, state: str, exc: BaseException | None = None) -> None:
        """The frame loop's instrument events, through the monitor (hal.monitor)."""
        if self.monitor is None:
            return
        if state == "fault" and exc is not None:
            self.monitor.fault(role, exc, by="loop")
        else:
            self.monitor.running(role, by="loop")

    def _telemetry(self, force: bool = False) -> None:
        now = time.monotonic()
        dt = now - self._last_tel
        if dt < self.cfg.telemetry.interval_s and not force:
            return
        rates = (self.detections - self._last_counts) / max(dt, 1e-9)
        payload: dict[str, Any] = {
            "frames": self.frames_out,
            "frame_slots": self.cfg.pipeline.frame_slots,
            "push_wait_s": round(self.push_wait_s, 3),
            "fetch_s": round(self.fetch_s, 3),
            "paused": self.paused,
            "faults": self.faults,
        }
        if self.cfg.role == "alice":
            payload["frames_failed"] = self.frames_failed
            payload["symbol_queries"] = self.symbol_queries
        if self.cfg.role == "bob":
            payload.update({f"det{ch}_per_s": float(rates[ch]) for ch in range(1, 5)})
            payload["detections_per_s"] = float(rates[1:].sum())
        self.pub.publish(topic("qfs", "telemetry", self.cfg.node, "acquisition"), payload)
        self._last_tel, self._last_counts = now, self.detections.copy()

    # -- commands ------------------------------------------------------------------------------
    def _commands(self) -> None:
        while self.cmd.poll(0):
            try:
                msg = unpackb(self.cmd.recv())
                reply = {"ok": True, "result": self._apply(msg.get("cmd"), msg.get("args", {}))}
            except Exception as exc:  # a bad command gets an error reply, never a crash
                reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            self.cmd.send(packb(reply))

    def _apply(self, cmd: str, args: dict[str, Any]) -> Any:
        if cmd in ("pause", "stop"):  # stop: no new frames; the process stays for its state
            self.paused = True
        elif cmd in ("resume", "start"):
            self.paused = False
        elif cmd == "set_attenuation":
            self.bench.attenuator.set_attenuation_db(float(args["db"]))
            return {"attenuation_db": self.bench.attenuator.attenuation_db}
        elif cmd == "set_intensities":
            settings = {f"mu_{k}": float(v) for k, v in args.items()}
            out = {k: v[1] for k, v in self.bench.transmitter.apply_all(settings).items()}
            self._read_source_settings()
            return out
        elif cmd == "set_probabilities":
            settings = {
                ("p_basis_z" if k == "basis_z" else f"p_{k}"): float(v) for k, v in args.items()
            }
            out = {k: v[1] for k, v in self.bench.transmitter.apply_all(settings).items()}
            self._read_source_settings()
            return out
        elif cmd == "state":
            return {"paused": self.paused, "frames": self.frames_out, "faults": self.faults}
        else:
            raise ValueError(f"unknown command {cmd!r}")
        return {"paused": self.paused}

    def _read_source_settings(self) -> None:
        """Alice's intensities and class probabilities (the finite-key bound needs them)."""
        driver = getattr(self.bench.transmitter, "driver", None)
        names = ("mu_signal", "mu_decoy", "mu_vacuum", "p_signal", "p_decoy", "p_vacuum",
                 "p_basis_z", "clock_hz")  # fmt: skip
        self.source_settings = {n: float(getattr(driver, n)) for n in names if driver is not None}

    # -- main loops ----------------------------------------------------------------------------
    def run(self) -> None:
        self.bench.open()
        self.monitor = InstrumentMonitor(
            self.bench.roles, self.cfg.node, self.pub.publish, self.cfg.telemetry.interval_s
        ).start()
        try:
            if self.cfg.role == "bob":
                self._run_bob()
            else:
                self._run_alice()
        finally:
            self.monitor.stop()
            self.bench.close()
            self.pub.close()

    def _timing(self) -> TimingConfig:
        tcfg = self.bench.config.timing
        clock = self.bench.config.clock_hz
        return TimingConfig(
            period_ps=1e12 / clock,
            delay_ps=tcfg.delay_ps,
            gate_ps=tcfg.gate_ps,
            sync_period_slots=tcfg.sync_period_slots,
            sync_delay_ps=tcfg.sync_delay_ps,
            frame_slots=self.cfg.pipeline.frame_slots,
        )

    def _run_bob(self) -> None:
        from drivers.errors import InstrumentError

        out = self.ctx.socket(zmq.PUSH)
        out.sndhwm = self.cfg.pipeline.queue_frames
        out.linger = 0
        out.bind(self.eps["frames"])
        tagger = self.bench.tagger
        timing = self._timing()
        builder = EventBuilder(timing)
        assembler = FrameSplitter(timing.frame_slots)
        tagger.start()
        self._instrument("timetagger", "running")
        while self.running:
            self._commands()
            self._telemetry()
            if self.paused:
                time.sleep(0.05)
                continue
            try:
                t_fetch = time.monotonic()
                time_ps, channel = tagger.fetch(FETCH_TAGS)
                self.fetch_s += time.monotonic() - t_fetch
            except InstrumentError as exc:
                self._instrument("timetagger", "fault", exc)
                # Frames that overlap the fault may miss tags: never announce them.
                builder = EventBuilder(timing)
                assembler = FrameSplitter(timing.frame_slots)
                time.sleep(0.2)
                try:
                    tagger.start()
                    self._instrument("timetagger", "running")
                except InstrumentError:
                    pass
                continue
            if len(time_ps) == 0:
                time.sleep(0.01)
                continue
            self.detections += np.bincount(np.minimum(channel, 4), minlength=5)[:5]
            gate_before = builder.dropped_outside_gate
            events = builder.convert(time_ps, channel)
            dropped = builder.dropped_outside_gate - gate_before
            # Slot of the latest tag, less a guard for jitter: frames before it are complete.
            horizon = int((int(time_ps[-1]) - timing.delay_ps) // timing.period_ps) - 4
            for index, frame_events in assembler.add(events, horizon):
                if len(frame_events) == 0:
                    continue
                parts = encode_frame(index, timing.frame_slots, frame_events, dropped)
                dropped = 0
                waited = time.monotonic()
                while self.running:  # block here when post-processing is behind (back-pressure)
                    if out.poll(200, zmq.POLLOUT):
                        self.push_wait_s += time.monotonic() - waited
                        out.send_multipart(parts, copy=False)
                        self.frames_out += 1
                        break
                    self._commands()
                    self._telemetry()
        try:
            tagger.stop()
        except InstrumentError:
            pass  # the instrument went away first; nothing left to stop

    def _run_alice(self) -> None:
        requests = self.ctx.socket(zmq.PULL)
        requests.rcvhwm = self.cfg.pipeline.queue_frames
        requests.connect(self.eps["requests"])
        out = self.ctx.socket(zmq.PUSH)
        out.sndhwm = self.cfg.pipeline.queue_frames
        out.linger = 0
        out.connect(self.eps["symbols"])
        tx = self.bench.transmitter
        self._read_source_settings()
        # The source's symbol generator key: secret, fresh per run (simulation only; a real
        # transmitter draws from a physical random source and reports its choices).
        tx.set_symbol_key(secrets.randbits(64))
        if not tx.emitting:
            tx.set_emitting(True)
        self._instrument("source", "running")
        self._source_faulted = False
        while self.running:
            self._commands()
            self._telemetry()
            if not requests.poll(100):
                continue
            batch = [requests.recv_multipart(copy=False)]
            while len(batch) < MAX_MERGED and requests.poll(0):  # the rest of a burst
                batch.append(requests.recv_multipart(copy=False))
            parsed = [parse_request(parts) for parts in batch]
            for group in group_requests([req for req in parsed if req is not None]):
                self._answer_group(tx, group, out)

    def _answer_group(self, tx: Any, group: list[SymbolRequest], out: zmq.Socket) -> None:
        """One source query for the group, its reply split per frame and pushed in order.

        A fault costs one frame, as for a single request: the group's first frame is answered
        as failed, and the others are asked for again one by one (after the reconnect)."""
        from drivers.errors import InstrumentError

        try:
            if len(group) == 1:
                symbols = [self._query_one(tx, group[0])]
            else:
                self.symbol_queries += 1
                joined = tx.symbol_bytes_for_gaps(group[0].first, joined_gaps(group))
                symbols = split_symbols(group, joined)
        except InstrumentError as exc:
            self._instrument("source", "fault", exc)
            self._symbol_reply(out, group[0], None)
            for req in group[1:]:
                self._answer_group(tx, [req], out)
            return
        for req, sym in zip(group, symbols, strict=True):
            self._symbol_reply(out, req, sym)

    def _query_one(self, tx: Any, req: SymbolRequest) -> np.ndarray:
        self.symbol_queries += 1
        if req.first is None:
            return tx.symbol_bytes(req.positions)
        return tx.symbol_bytes_for_gaps(req.first, req.positions)

    def _symbol_reply(self, out: zmq.Socket, req: SymbolRequest, symbols: Any) -> None:
        """Push ``[header, symbol bytes]``; ``symbols=None``: failed (Bob drops it too)."""
        ok = symbols is not None
        if not ok:
            symbols = np.empty(0, np.uint8)
            self.frames_failed += 1  # Bob drops this frame too (sift_reply failed)
        reply = {"frame": req.header.get("frame"), "ok": ok, "n": int(len(symbols)),
                 "source": self.source_settings}  # fmt: skip
        out.send_multipart([packb(reply), np.ascontiguousarray(symbols, np.uint8)], copy=False)
        self.frames_out += 1
        if ok and self._source_faulted:
            self._instrument("source", "running")
        self._source_faulted = not ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="qnode acquisition process (started by qnode node)"
    )
    parser.add_argument("--config", required=True)
    parser.add_argument("--hub", required=True, help="the node's internal telemetry endpoint")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s acquisition %(message)s")
    cfg = load_config(args.config)
    acq = Acquisition(cfg, args.hub)
    import signal

    signal.signal(signal.SIGTERM, lambda *_: setattr(acq, "running", False))
    acq.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
