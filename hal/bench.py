"""Bench files: which instrument plays which role, where it is, and how it is set up.

A bench file (TOML) is validated with pydantic; unknown keys are refused with their name::

    node = "bob"                 # alice | bob | link (both roles against one world)
    simulated = true             # start `qnode sim serve --json` and use the resources it prints
    [sim]                        # optional: preset/link/distance, or `attach` to a running world
    preset = "gys"
    [timetagger]
    driver = "qnode-time-tagger" # registered name (hal.roles.REGISTRY)
    resource = "sim:timetagger"  # in a simulated bench, "sim:<instrument>" or omitted
    settings = { sync_period_slots = 1048576 }
    [timing]                     # Bob: clock, calibrated delay, gate, frames
    clock_hz = 1e9

Two nodes (two processes) share one world by attaching to it: ``[sim] attach =
"tcp://127.0.0.1:PORT"`` (the world's control address) in both benches.
``Bench.open()`` starts or attaches to the simulated world when asked, opens each role and
applies its settings (read back and compared). hal never imports sim_hw: the world is a
subprocess reached through the resources it prints.
"""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from hal.interfaces import Attenuator, Detector, Role, TimeTagger, Transmitter
from hal.roles import REGISTRY, ROLE_OF_FIELD

ROLE_FIELDS = ("source", "attenuator", "detector", "timetagger")
NEEDED = {"alice": ("source",), "bob": ("timetagger",), "link": ("source", "timetagger")}
SIM_PREFIX = "sim:"
# Bundled benches, found beside this module: importlib.resources.files("hal") can name another
# folder called hal (e.g. tests/hal when a test runner put tests/ on sys.path first).
BENCHES = Path(__file__).resolve().parent / "benches"


class BenchError(ValueError):
    """A bench file that cannot be used, with the key or role at fault named."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RoleConfig(_Strict):
    """One instrument: registered driver, resource string, settings applied at start-up."""

    driver: str
    resource: str | None = None
    name: str | None = None
    timeout_s: float = Field(2.0, gt=0)
    check_errors: bool = True
    settings: dict[str, float | int | bool | str] = {}


class SimConfig(_Strict):
    """The simulated world to start (preset or link file), or one to attach to."""

    preset: str | None = None
    link: str | None = None
    distance_km: float | None = Field(None, ge=0)
    seed: int | None = None
    realtime: bool = False  # never simulate ahead of wall clock x clock rate
    attach: str | None = None  # control address (tcp://host:port) or a file with its --json line


class TimingConfigModel(_Strict):
    """Bob's clock recovery, gate and framing (docs/contracts.md §1.2-1.3)."""

    clock_hz: float | None = Field(None, gt=0)
    delay_ps: float = 0.0
    gate_ps: float = Field(400.0, gt=0)
    sync_period_slots: int = Field(1 << 20, gt=0)
    sync_delay_ps: float = 0.0
    frame_slots: int = Field(1 << 24, gt=0)


class BenchConfig(_Strict):
    """A whole bench file."""

    node: Literal["alice", "bob", "link"]
    simulated: bool = False
    sim: SimConfig | None = None
    source: RoleConfig | None = None
    attenuator: RoleConfig | None = None
    detector: RoleConfig | None = None
    timetagger: RoleConfig | None = None
    timing: TimingConfigModel = TimingConfigModel()

    @model_validator(mode="after")
    def _check(self) -> BenchConfig:
        for field in NEEDED[self.node]:
            if getattr(self, field) is None:
                raise ValueError(f"node {self.node!r} needs a [{field}] table")
        simulated = self.simulated or self.sim is not None
        for field in ROLE_FIELDS:
            cfg: RoleConfig | None = getattr(self, field)
            if cfg is None:
                continue
            impl = REGISTRY.get(cfg.driver)
            if impl is None:
                raise ValueError(
                    f"[{field}] driver {cfg.driver!r} is not registered; known: {sorted(REGISTRY)}"
                )
            if not issubclass(impl, ROLE_OF_FIELD[field]):
                raise ValueError(f"[{field}] driver {cfg.driver!r} does not implement that role")
            unknown = sorted(set(cfg.settings) - impl.setting_names())
            if unknown:
                raise ValueError(
                    f"[{field}] unknown setting(s) {unknown} for driver {cfg.driver!r}; "
                    f"known: {sorted(impl.setting_names())}"
                )
            if cfg.resource is None and not simulated:
                raise ValueError(f"[{field}] needs a resource (the bench is not simulated)")
            if cfg.resource and cfg.resource.startswith(SIM_PREFIX) and not simulated:
                raise ValueError(f"[{field}] resource {cfg.resource!r} needs simulated = true")
        if self.node in ("bob", "link") and self.clock_hz is None:
            raise ValueError("timing.clock_hz is needed (or source.settings.clock_hz)")
        return self

    @property
    def clock_hz(self) -> float | None:
        if self.timing.clock_hz is not None:
            return self.timing.clock_hz
        if self.source is not None and "clock_hz" in self.source.settings:
            return float(self.source.settings["clock_hz"])
        return None


def _format_validation(exc: ValidationError, where: str) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            lines.append(f"unknown key {loc!r}")
        else:
            msg = err["msg"].removeprefix("Value error,").strip()  # pydantic prefix of our checks
            lines.append(f"{loc + ': ' if loc else ''}{msg}")
    return f"{where}: " + "; ".join(lines)


def load_config(path: str | Path) -> BenchConfig:
    """Read and validate a bench file (a path, or the name of a bundled bench in hal/benches)."""
    path = Path(path)
    if not path.exists() and not path.suffix:
        path = BENCHES / f"{path}.toml"
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise BenchError(f"{path}: no such bench file") from None
    except tomllib.TOMLDecodeError as exc:
        raise BenchError(f"{path}: not valid TOML: {exc}") from None
    return parse_config(data, str(path))


def parse_config(data: dict[str, Any], where: str = "bench") -> BenchConfig:
    """Validate a bench given as a dict."""
    try:
        return BenchConfig.model_validate(data)
    except ValidationError as exc:
        raise BenchError(_format_validation(exc, where)) from None


class SimWorld:
    """A `qnode sim serve --json` subprocess (or an attached running world) and its resources."""

    def __init__(self, cfg: SimConfig | None, start_timeout_s: float = 60.0) -> None:
        self.cfg = cfg or SimConfig()
        self.start_timeout_s = start_timeout_s
        self.proc: subprocess.Popen | None = None
        self.instruments: dict[str, str] = {}

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "qnode", "sim", "serve", "--json"]
        if self.cfg.link:
            cmd += ["--link", self.cfg.link]
        else:
            cmd += ["--preset", self.cfg.preset or "gys"]
        if self.cfg.distance_km is not None:
            cmd += ["--distance", str(self.cfg.distance_km)]
        if self.cfg.seed is not None:
            cmd += ["--seed", str(self.cfg.seed)]
        if self.cfg.realtime:
            cmd.append("--realtime")
        return cmd

    def start(self) -> dict[str, str]:
        if self.cfg.attach:
            self.instruments = attach_world(self.cfg.attach)
            return self.instruments
        # stderr goes to a file, not a pipe: an undrained pipe would freeze a chatty world.
        self._stderr = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(
            self.command(), stdout=subprocess.PIPE, stderr=self._stderr, text=True
        )
        line = _readline_timeout(self.proc, self.start_timeout_s)
        if not line:
            err = ""
            if self.proc.poll() is not None:
                self._stderr.seek(0)
                err = self._stderr.read()
            self.stop()
            raise BenchError(f"`{' '.join(self.command()[2:])}` printed no resources. {err[-500:]}")
        self.instruments = _parse_world_line(line, "qnode sim serve")
        return self.instruments

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _readline_timeout(proc: subprocess.Popen, timeout_s: float) -> str:
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    ready = sel.select(timeout_s)
    sel.close()
    return proc.stdout.readline() if ready else ""


def _parse_world_line(line: str | dict, where: str) -> dict[str, str]:
    """Resources from the world's ready line; the pty's stable link replaces its current path
    (a ``drop`` on a pty is an unplug: the slave path changes, the link follows it)."""
    try:
        info = json.loads(line) if isinstance(line, str) else line
        instruments = dict(info["instruments"])
    except (ValueError, KeyError, TypeError):
        raise BenchError(
            f"{where}: expected {{'instruments': {{...}}}}, got {line!r:.200}"
        ) from None
    instruments.update(info.get("pty_links") or {})
    for name, res in (info.get("serial_socket") or {}).items():
        instruments[f"{name}_socket"] = res
    if info.get("control"):
        instruments["control"] = info["control"]
    return {str(k): str(v) for k, v in instruments.items()}


def world_request(control: str, request: dict, timeout_s: float = 5.0) -> dict:
    """One JSON request to a running world's control endpoint (ZeroMQ REQ)."""
    import zmq

    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, int(timeout_s * 1000))
    sock.setsockopt(zmq.SNDTIMEO, int(timeout_s * 1000))
    try:
        sock.connect(control)
        sock.send(json.dumps(request).encode())
        reply = json.loads(sock.recv())
    except zmq.Again:
        raise BenchError(f"simulated world at {control}: no answer within {timeout_s} s") from None
    finally:
        sock.close(0)
    if not reply.get("ok"):
        raise BenchError(f"simulated world at {control}: {reply.get('error')}")
    return reply


def attach_world(address: str) -> dict[str, str]:
    """Resources of a running world: its control address, or a file holding its ready line."""
    if "://" in address:
        return _parse_world_line(world_request(address, {"op": "resources"}), address)
    try:
        line = Path(address).read_text().strip().splitlines()[0]
    except (OSError, IndexError):
        raise BenchError(f"sim.attach: cannot read a ready line from {address!r}") from None
    return _parse_world_line(line, address)


class Bench:
    """An opened bench: role objects by name, the world subprocess when simulated."""

    def __init__(self, config: BenchConfig) -> None:
        self.config = config
        self.world: SimWorld | None = None
        self.roles: dict[str, Role] = {}
        self.applied: dict[str, dict[str, tuple[Any, Any]]] = {}

    @classmethod
    def load(cls, path: str | Path) -> Bench:
        """Bench from a file (nothing opened yet)."""
        return cls(load_config(path))

    @property
    def simulated(self) -> bool:
        return self.config.simulated or self.config.sim is not None

    def resolve(self, field: str, cfg: RoleConfig) -> str:
        """The resource string of one role (a simulated one from the world's printed line)."""
        resource = cfg.resource or SIM_PREFIX + field
        if resource.startswith(SIM_PREFIX):
            key = resource[len(SIM_PREFIX) :] or field
            if self.world is None or key not in self.world.instruments:
                known = sorted(self.world.instruments) if self.world else []
                raise BenchError(f"[{field}] simulated instrument {key!r} not in the world {known}")
            return self.world.instruments[key]
        return resource

    def build(self) -> None:
        """Start/attach the world and create the role objects (no instrument I/O)."""
        if self.simulated and self.world is None:
            self.world = SimWorld(self.config.sim)
            self.world.start()
        for field in ROLE_FIELDS:
            cfg: RoleConfig | None = getattr(self.config, field)
            if cfg is None or field in self.roles:
                continue
            impl = REGISTRY[cfg.driver]
            self.roles[field] = impl(
                self.resolve(field, cfg),
                cfg.name or field,
                timeout_s=cfg.timeout_s,
                check_errors=cfg.check_errors,
            )

    def open(self, apply_settings: bool = True) -> Bench:
        """Build, connect every role and apply its settings (read back, compared)."""
        try:
            self.build()
            for field, role in self.roles.items():
                role.open()
                if apply_settings:
                    self.apply_settings(field)
        except BaseException:
            self.close()
            raise
        return self

    def apply_settings(self, field: str) -> dict[str, tuple[Any, Any]]:
        """Apply one role's settings; raise BenchError if a value does not read back."""
        cfg: RoleConfig = getattr(self.config, field)
        role = self.roles[field]
        result = role.apply_all(cfg.settings)
        self.applied[field] = result
        for name, (wanted, got) in result.items():
            if not same_value(wanted, got):
                raise BenchError(f"{role.device}: setting {name} = {wanted!r} read back as {got!r}")
        return result

    def close(self) -> None:
        """Disconnect every role and stop the world we started."""
        for role in self.roles.values():
            role.close()
        if self.world is not None:
            self.world.stop()
            self.world = None

    def __enter__(self) -> Bench:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # Typed accessors for the roles.
    @property
    def transmitter(self) -> Transmitter:
        return self._role("source", Transmitter)

    @property
    def attenuator(self) -> Attenuator:
        return self._role("attenuator", Attenuator)

    @property
    def detector(self) -> Detector:
        return self._role("detector", Detector)

    @property
    def tagger(self) -> TimeTagger:
        return self._role("timetagger", TimeTagger)

    def _role(self, field: str, kind: type) -> Any:
        role = self.roles.get(field)
        if not isinstance(role, kind):
            raise BenchError(f"this bench has no [{field}] role")
        return role


def same_value(wanted: Any, got: Any) -> bool:
    """Whether a read-back value matches what was set (relative 1e-6 for numbers)."""
    if isinstance(got, tuple | list):  # one value per detector of a module
        return len(got) > 0 and all(same_value(wanted, g) for g in got)
    if isinstance(wanted, bool) or isinstance(got, bool):
        return bool(wanted) == bool(got)
    if isinstance(wanted, int | float) and isinstance(got, int | float):
        return math.isclose(float(wanted), float(got), rel_tol=1e-6, abs_tol=1e-12)
    return str(wanted).strip().upper() == str(got).strip().upper()


def bundled_benches() -> list[str]:
    """Names of the example benches shipped in hal/benches."""
    folder = BENCHES
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))
