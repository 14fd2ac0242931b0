"""One simulated world per link: the physics state that all emulated instruments share.

The world owns the link parameters (``qnode.linkmodel``), the photon simulation
(``sim_hw.physics.LinkSimulator``) and the four instruments. Each instrument keeps its own
settings and tells the world when they change; the world folds them into the parameters it
simulates with (design-notes "One simulated world per link"):
- source: clock, intensities, class and basis probabilities, key, output (light on/off);
- attenuator: attenuation + offset add to ``fibre.extra_loss_db``; a closed shutter is dark;
- detector module: per-detector efficiency, dead time; a disarmed detector (bias 0, threshold
  too high, regulation off or not locked) gives no clicks.
Physical impairments set over the control endpoint (``impair``: receiver misalignment, Raman
noise from a co-propagating classical channel) override the link's own values the same way.
Simulated time advances only when the tagger asks for tags (chunks of slots); with ``realtime``
it never passes wall clock x clock rate since the run began. ``current_slot`` is the next slot to
be delivered; switching the source on starts a new run at slot 0. While the tagger acquires, a
worker thread simulates the next few chunks ahead (``sim_hw.readahead``), so the simulation runs
while tags travel and the instruments stay responsive; the tags delivered are the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import json
import logging
import math
import shutil
import tempfile
import threading
import time

import numpy as np
import zmq
import zmq.asyncio

from qnode.linkmodel import LinkConfigError, LinkParams
from sim_hw import symbols
from sim_hw.attenuator import Attenuator
from sim_hw.detector import DetectorModule
from sim_hw.faults import FaultError
from sim_hw.physics import LinkSimulator, SimState
from sim_hw.readahead import MAX_AHEAD_CHUNKS, Chunk, ReadAhead, threadsafe_numba
from sim_hw.source import PulseSource
from sim_hw.timetagger import RATE_WINDOW_S, RateMeter, TimeTagger
from sim_hw.timetagger import warm_up as timetagger_warm_up
from sim_hw.transport import PtyEndpoint, TcpEndpoint

log = logging.getLogger(__name__)

MIN_CHUNK_SLOTS = 1 << 16
MAX_CHUNK_SLOTS = 1 << 28
TARGET_CHUNK_TAGS = 1 << 19
DENSITY_SPAN = 8  # a chunk is at most this many times longer than p_max alone would make it
MAX_EXTRA_LOSS_DB = 300.0
MIN_RATE_WINDOW_S = 0.01
RATE_BUDGET_S = 0.3
# glibc mallopt: large blocks from the heap, and freed memory kept for reuse (see reuse_memory).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD = 1 << 30
_TRIM_THRESHOLD = 1 << 29
# Impairments the control endpoint may set, and the link section each one overrides.
IMPAIRMENTS = {"misalignment": "receiver", "classical_power_dbm": "fibre"}


class World:
    """The shared physics state of one link and its four instruments."""

    def __init__(
        self, params: LinkParams, seed: int = 1, realtime: bool = False, read_ahead: bool = True
    ) -> None:
        self.base = params
        self.seed = int(seed)
        self.realtime = realtime
        self.detector_meter = RateMeter()  # clicks per detector, before the tagger's inputs
        self._dirty = True
        self._run_wall_start = time.monotonic()
        self._sim: LinkSimulator | None = None
        self._sim_lock = threading.Lock()  # the simulator: event loop or read-ahead worker
        self.ahead = ReadAhead(self._produce, MAX_AHEAD_CHUNKS if read_ahead else 0)
        self.impairments: dict[str, float] = {}  # see impair()
        self.timetagger = TimeTagger(self)
        self.source = PulseSource(self, params.source)
        self.attenuator = Attenuator(self)
        self.detector = DetectorModule(self, params.receiver)
        self.instruments = {
            "source": self.source,
            "attenuator": self.attenuator,
            "detector": self.detector,
            "timetagger": self.timetagger,
        }

    def warm_up(self) -> None:
        """Compile (or load from cache) the numba kernels before anyone waits on a reply."""
        probe = LinkSimulator(self.effective_params(), 0, self.seed)
        probe.simulate(0, 1 << 17)
        symbols.symbols_range(0, 0, 16, 0.5, 0.8, 0.1)
        slots = np.arange(16, dtype=np.int64)
        symbols.symbols_for_slots(0, slots, 0.5, 0.8, 0.1)
        slots.flags.writeable = False  # numba types a command's np.frombuffer payload apart
        symbols.symbols_for_slots(0, slots, 0.5, 0.8, 0.1)
        gaps = np.frombuffer(np.ones(4, "<u2").tobytes(), "<u2")  # read-only, as SYMB:GAPS?
        symbols.symbols_for_gaps(0, 7, gaps, 0.5, 0.8, 0.1)
        timetagger_warm_up()
        threadsafe_numba()  # picks the threading layer the read-ahead worker asks about

    @property
    def current_slot(self) -> int:
        """The next slot to be delivered to the tagger."""
        return self.ahead.slot

    def read_ahead(self, on: bool) -> None:
        """Simulate ahead on the worker thread while the tagger acquires (started lazily)."""
        if on:
            self.ahead.start()
        self.ahead.enable(on)

    # --- instruments tell the world -------------------------------------------------------
    def settings_changed(self) -> None:
        """A setting changed: simulate with it from the next chunk; rates restart from now."""
        self._dirty = True
        self.ahead.invalidate()
        self.detector_meter.clear()
        self.timetagger.meter.clear()

    def start_run(self) -> None:
        """The source switched on: slot 0 of a new run, detector state and buffers cleared."""
        self._run_wall_start = time.monotonic()
        self._dirty = True
        self.ahead.restart()
        self.detector_meter.clear()
        self.timetagger.new_run()

    @property
    def light_on(self) -> bool:
        return self.source.output and self.attenuator.shutter_open

    def effective_params(self) -> LinkParams:
        """The base link with every instrument setting folded in."""
        extra = self.base.fibre.extra_loss_db + self.attenuator.loss_db
        fibre = {"extra_loss_db": min(MAX_EXTRA_LOSS_DB, extra)}
        receiver = {
            "efficiency": self.detector.efficiencies(),
            "dead_time_ns": self.detector.dead_time_ns(),
        }
        for name, value in self.impairments.items():
            (fibre if IMPAIRMENTS[name] == "fibre" else receiver)[name] = value
        source = self.source.source_params()
        try:
            return self.base.with_changes(source=source, fibre=fibre, receiver=receiver)
        except LinkConfigError:
            # Only while the output is off can the class probabilities be inconsistent (the
            # source refuses to switch on otherwise); the light is off, only the clock matters.
            source = {"clock_hz": source["clock_hz"]}
            return self.base.with_changes(source=source, fibre=fibre, receiver=receiver)

    def _simulator(self) -> LinkSimulator:
        if self._sim is None:
            self._sim = LinkSimulator(self.effective_params(), self.source.key, self.seed)
            self._dirty = True
        if self._dirty:
            self._sim.update(self.effective_params())
            if self._sim.key != self.source.key:
                self._sim.set_key(self.source.key)
            self._sim.light_on = self.light_on
            self._dirty = False
        return self._sim

    # --- simulated time -------------------------------------------------------------------
    def _chunk_slots(self, sim: LinkSimulator, first: int, state: SimState | None) -> int:
        """Slots of the chunk starting at ``first`` from ``state`` (<= 0: realtime forbids
        simulating now)."""
        # ~TARGET_CHUNK_TAGS per chunk: big blocks for throughput (fewer, larger fetches for the
        # tagger's client), bounded memory. p_max bounds the clicks per slot, so a dark link
        # gets long chunks and a bright one short ones; dead time removes many (half at 1 GHz,
        # 10 km, snspd), so the previous chunk's clicks per slot (carried in the state, so the
        # read-ahead cuts the same chunks as the event loop) refine it, by at most DENSITY_SPAN.
        rate = sim.p_max
        if state is not None and state.density >= 0.0:
            rate = min(rate, max(state.density, rate / DENSITY_SPAN))
        n = int(TARGET_CHUNK_TAGS / max(rate, 1e-12))
        n = min(n, TARGET_CHUNK_TAGS * self.timetagger.sync_period_slots)  # sync tags too
        n = max(MIN_CHUNK_SLOTS, min(MAX_CHUNK_SLOTS, n))
        if self.realtime:
            clock_hz = sim.params.source.clock_hz
            allowed = int((time.monotonic() - self._run_wall_start) * clock_hz)
            n = min(n, allowed - first)
        return n

    def _simulate(self, gen: int, first: int, n: int, state: SimState | None) -> Chunk:
        """One chunk from the detector state at ``first`` (caller holds ``_sim_lock``)."""
        sim = self._sim
        sim.restore(state)
        det = sim.simulate(first, n)  # one sequential kernel (sim_hw.physics)
        rx = sim.params.receiver
        counts = np.bincount(det.channel, minlength=5)
        return Chunk(gen, first, n, det.channel, det.time_ps, counts, sim.snapshot(),
                     sim.period_ps, rx.jitter_ps, sim.delay_ps)  # fmt: skip

    def _produce(self, gen: int, first: int, state: SimState | None) -> bool:
        """Read-ahead worker: queue the chunk at ``first``, unless settings wait to be applied
        or realtime forbids it (False)."""
        with self._sim_lock:
            if self._dirty or self._sim is None or gen != self.ahead.gen:
                return False
            n = self._chunk_slots(self._sim, first, state)
            if n <= 0:
                return False
            self.ahead.offer(self._simulate(gen, first, n, state))
            return True

    def advance_chunk(self) -> bool:
        """Deliver the next chunk of slots to the tagger (simulated ahead or now); False if
        realtime forbids it."""
        chunk = self.ahead.take()
        if chunk is None:
            with self._sim_lock:
                chunk = self.ahead.take()  # the worker may just have finished it
                if chunk is None:
                    sim = self._simulator()
                    first = self.ahead.slot
                    n = self._chunk_slots(sim, first, self.ahead.state)
                    if n <= 0:
                        return False
                    chunk = self._simulate(self.ahead.gen, first, n, self.ahead.state)
                    self.ahead.advance(chunk)
        armed = np.array([False, *self.detector.armed()])
        channel, time_ps, counts = chunk.channel, chunk.time_ps, chunk.counts
        if not armed[1:].all():
            keep = armed[channel]
            channel, time_ps = channel[keep], time_ps[keep]
            counts = np.bincount(channel, minlength=5)
        self.detector_meter.record(chunk.n * chunk.period_ps * 1e-12, counts)
        self.timetagger.ingest(chunk.first, chunk.n, chunk.period_ps, channel, time_ps,
                               chunk.jitter_ps, chunk.delay_ps)  # fmt: skip
        return True

    def available(self) -> bool:
        """Whether a chunk simulated ahead waits (delivering it costs no simulation)."""
        return self.ahead.queued > 0

    def ahead_busy(self) -> bool:
        """Whether the read-ahead worker is simulating the next chunk (settings applied)."""
        return self.ahead.running and not self._dirty

    def fill_meter(self, meter: RateMeter) -> None:
        """Advance until ``meter`` covers a simulated second, or at least ``MIN_RATE_WINDOW_S``
        once ``RATE_BUDGET_S`` of wall time is spent (a real counter's window fills as time
        passes; here time passes only by simulating)."""
        deadline = time.monotonic() + RATE_BUDGET_S
        while meter.covered_s < RATE_WINDOW_S * 0.999:
            enough = meter.covered_s >= MIN_RATE_WINDOW_S
            if enough and time.monotonic() > deadline:
                break
            if enough and self.ahead_busy() and not self.available():
                break  # tags stream: the window fills as they are fetched, never stall them
            if not self.advance_chunk():
                break

    def count_rate(self, channel: int) -> float:
        """Clicks/s of detector ``channel`` (1-4) over the last simulated second."""
        self.fill_meter(self.detector_meter)
        return self.detector_meter.rate(channel)

    # --- physical impairments ---------------------------------------------------------------
    def impair(self, values: dict[str, float | None] | None = None) -> dict[str, float]:
        """Set the link's physical impairments; they replace the previous set (none: cleared).

        ``misalignment`` (0 ... 0.5) becomes the receiver's optical error probability;
        ``classical_power_dbm`` (-100 ... 30) launches a co-propagating classical channel whose
        Raman noise reaches the detectors (``qnode.linkmodel.raman_photons_per_gate``). A field
        given as None is not impaired. Simulated from the next chunk on; a bad name or value
        raises ``ValueError`` naming the field and changes nothing.
        """
        new: dict[str, float] = {}
        for name, value in (values or {}).items():
            if name not in IMPAIRMENTS:
                known = ", ".join(IMPAIRMENTS)
                raise ValueError(f"unknown impairment {name!r}; known: {known}")
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name}: a number is required (got {value!r})")
            if not math.isfinite(value):
                raise ValueError(f"{name}: a finite number is required (got {value!r})")
            new[name] = float(value)
        sections: dict[str, dict[str, float]] = {}
        for name, value in new.items():
            sections.setdefault(IMPAIRMENTS[name], {})[name] = value
        try:
            self.base.with_changes(**sections)
        except LinkConfigError as exc:
            raise ValueError(str(exc)) from None
        self.impairments = new
        self.settings_changed()
        return dict(new)

    # --- faults ---------------------------------------------------------------------------
    def inject_fault(
        self,
        instrument: str,
        kind: str,
        count: int | None = None,
        delay_ms: float | None = None,
        code: int | None = None,
        text: str | None = None,
    ) -> dict:
        """Arm a fault on one instrument (see ``sim_hw.faults``); returns the fault armed."""
        if instrument not in self.instruments:
            raise FaultError(f"unknown instrument {instrument!r}; one of {list(self.instruments)}")
        fault = self.instruments[instrument].faults.inject(kind, count, delay_ms, code, text)
        return {"instrument": instrument, **vars(fault)}

    def clear_faults(self, instrument: str | None = None, kind: str | None = None) -> None:
        if instrument is not None and instrument not in self.instruments:
            raise FaultError(f"unknown instrument {instrument!r}; one of {list(self.instruments)}")
        names = [instrument] if instrument else list(self.instruments)
        for name in names:
            self.instruments[name].faults.clear(kind)

    def faults(self) -> dict[str, list[dict]]:
        return {name: inst.faults.active() for name, inst in self.instruments.items()}

    def state(self) -> dict:
        """A snapshot for the control endpoint and tests."""
        params = self.effective_params()
        return {
            "slot": self.current_slot,
            "light_on": self.light_on,
            "extra_loss_db": params.fibre.extra_loss_db,
            "clock_hz": params.source.clock_hz,
            "realtime": self.realtime,
            "faults": self.faults(),
            "read_ahead": self.ahead.stats(),
            "impairments": dict(self.impairments),
            "misalignment": params.receiver.misalignment,
            "classical_power_dbm": params.fibre.classical_power_dbm,
        }


def reuse_memory() -> bool:
    """Let a served world reuse freed memory instead of mapping fresh pages per chunk.

    Each chunk allocates arrays of a few MB (detections, records, the fetch reply); glibc maps
    blocks above its mmap threshold afresh and unmaps them on free, so every page is faulted
    in and zeroed again: 0.5-0.7 CPU-s of the world per simulated second at 1 GHz (snspd, 10
    km, measured). Served from the heap and kept there up to ``_TRIM_THRESHOLD``, they are
    reused. Process-wide, so only ``WorldServer.start`` calls it; False where not glibc.
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    ok = mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD) or mallopt(_M_MMAP_THRESHOLD, 32 << 20)
    return bool(ok and mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))


class WorldServer:
    """Serves a world's instruments on loopback and its control endpoint (ZeroMQ REP, JSON).

    Control requests (one JSON object each, answered with ``{"ok": true, ...}`` or
    ``{"ok": false, "error": "..."}``): ``{"op": "ping"}``, ``{"op": "resources"}``,
    ``{"op": "state"}``, ``{"op": "faults"}``, ``{"op": "inject", "instrument": I, "kind": K,
    "count": N|null, "delay_ms": D, "code": C, "text": T}``, ``{"op": "clear", "instrument":
    I|null, "kind": K|null}``, ``{"op": "impair", "misalignment": M, "classical_power_dbm":
    P}`` (physical impairments, each optional; the set replaces the previous one, so
    ``{"op": "impair"}`` clears them; see ``World.impair``).
    """

    def __init__(
        self, world: World, control: str = "tcp://127.0.0.1:0", base_port: int = 0
    ) -> None:
        self.world = world
        self.base_port = base_port  # 0: ephemeral ports; else source, attenuator, tagger, +3
        self._control_address = control
        self.control = ""
        self._workdir = ""
        self._endpoints: list[TcpEndpoint | PtyEndpoint] = []
        self._ctx: zmq.asyncio.Context | None = None
        self._rep: zmq.asyncio.Socket | None = None
        self._task: asyncio.Task | None = None

    async def start(self) -> dict:
        """Open every endpoint; return the ``--json`` ready line's content."""
        w = self.world
        reuse_memory()
        self._workdir = tempfile.mkdtemp(prefix="qnode-sim-")
        roles = ("source", "attenuator", "timetagger")
        port = (lambda k: self.base_port + k) if self.base_port else (lambda k: 0)
        tcp = {name: TcpEndpoint(w.instruments[name], port=port(k)) for k, name in enumerate(roles)}
        serial_tcp = TcpEndpoint(w.detector, port=port(3))
        pty = PtyEndpoint(w.detector, f"{self._workdir}/detector")
        self._endpoints = [*tcp.values(), serial_tcp, pty]
        for endpoint in self._endpoints:
            await endpoint.start()
        self._ctx = zmq.asyncio.Context()
        self._rep = self._ctx.socket(zmq.REP)
        self._rep.setsockopt(zmq.LINGER, 0)
        address = self._control_address
        if address.endswith(":0"):
            port = self._rep.bind_to_random_port(address.rsplit(":", 1)[0])
            self.control = f"{address.rsplit(':', 1)[0]}:{port}"
        else:
            self._rep.bind(address)
            self.control = address
        self._task = asyncio.get_running_loop().create_task(self._serve_control())
        self._pty = pty
        self._serial_tcp = serial_tcp
        self._tcp = tcp
        return self.ready_info()

    def ready_info(self) -> dict:
        return {
            "instruments": {
                "source": self._tcp["source"].scpi_resource,
                "attenuator": self._tcp["attenuator"].scpi_resource,
                "detector": self._pty.resource,
                "timetagger": self._tcp["timetagger"].scpi_resource,
            },
            "serial_socket": {"detector": self._serial_tcp.serial_resource},
            "pty_links": {"detector": self._pty.link_resource},
            "control": self.control,
            "seed": self.world.seed,
            "realtime": self.world.realtime,
        }

    async def _serve_control(self) -> None:
        while True:
            raw = await self._rep.recv()
            try:
                request = json.loads(raw)
                if not isinstance(request, dict):
                    raise ValueError("request must be a JSON object")
                reply = {"ok": True, **self.handle(request)}
            except (ValueError, TypeError, KeyError, FaultError) as exc:
                reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            await self._rep.send(json.dumps(reply).encode())

    def handle(self, request: dict) -> dict:
        """One control request (also callable in-process)."""
        op = request.get("op")
        w = self.world
        if op == "ping":
            return {}
        if op == "resources":
            return self.ready_info()
        if op == "state":
            return w.state()
        if op == "faults":
            return {"faults": w.faults()}
        if op == "inject":
            fault = w.inject_fault(
                request["instrument"], request["kind"], request.get("count"),
                request.get("delay_ms"), request.get("code"), request.get("text"),
            )  # fmt: skip
            return {"fault": fault}
        if op == "clear":
            w.clear_faults(request.get("instrument"), request.get("kind"))
            return {}
        if op == "impair":
            return {"impairments": w.impair({k: v for k, v in request.items() if k != "op"})}
        raise ValueError(f"unknown op {op!r}")

    async def close(self) -> None:
        self.world.ahead.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        for endpoint in self._endpoints:
            await endpoint.close()
        if self._rep is not None:
            self._rep.close(0)
        if self._ctx is not None:
            self._ctx.term()
        if self._workdir:
            shutil.rmtree(self._workdir, ignore_errors=True)
