"""Technician commands: ``qnode instruments list|identify|query`` and ``qnode bench check``."""

from __future__ import annotations

from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from drivers.errors import InstrumentError

instruments_app = typer.Typer(help="Find, identify and talk to instruments (real or simulated).")
bench_app = typer.Typer(help="Bench files: check a bench end to end.")

SIM_ENV = "QNODE_SIM_CONTROL"


def _fail(message: str, code: int = 1) -> None:
    # escape: messages hold "[timetagger]"-like text that rich would take for markup
    Console(stderr=True).print(f"[red]error:[/red] {escape(message)}")
    raise typer.Exit(code)


@instruments_app.command("list")
def list_instruments(
    sim: str = typer.Option(
        None, "--sim", envvar=SIM_ENV, help="Control address of a running simulated world."
    ),
) -> None:
    """List the VISA resources pyvisa-py finds, and a running simulated world's instruments."""
    from drivers.transports import resource_manager

    table = Table(title="instruments")
    table.add_column("source")
    table.add_column("name")
    table.add_column("resource")
    import warnings

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            found = resource_manager().list_resources("?*")
        for note in caught:
            if issubclass(note.category, ResourceWarning):  # pyvisa-py's own discovery sockets
                continue
            table.add_row("pyvisa-py", "note", escape(str(note.message)))
    except Exception as exc:  # discovery is best effort: report, go on with the world
        found = ()
        table.add_row("pyvisa-py", "", escape(f"listing failed: {exc!r}"))
    for res in found:
        table.add_row("pyvisa-py", "", res)
    sim = sim or _latest_world()
    if sim:
        from hal.bench import BenchError, attach_world

        try:
            for name, res in attach_world(sim).items():
                table.add_row(f"sim {sim}", name, res)
        except BenchError as exc:
            _fail(str(exc))
    Console().print(table)


def _latest_world() -> str | None:
    """Control address of the newest running world (``qnode sim serve`` records its ready line
    in ``$TMPDIR/qnode-sim-<uid>/latest.json``), if it still answers."""
    import json
    import os
    import tempfile
    from pathlib import Path

    from hal.bench import BenchError, world_request

    path = Path(tempfile.gettempdir()) / f"qnode-sim-{os.getuid()}" / "latest.json"
    try:
        control = json.loads(path.read_text().splitlines()[0])["control"]
        world_request(control, {"op": "ping"}, timeout_s=0.5)
    except (OSError, ValueError, KeyError, IndexError, BenchError):
        return None
    return control


def _adapter(resource: str, timeout_s: float):
    from drivers.transports import make_adapter

    return make_adapter(resource, "cli", timeout_s=timeout_s)


@instruments_app.command("identify")
def identify(
    resource: str,
    timeout_s: float = typer.Option(2.0, "--timeout", help="Seconds to wait for the answer."),
) -> None:
    """Ask one instrument who it is (``*IDN?``)."""
    adapter = _adapter(resource, timeout_s)
    try:
        typer.echo(adapter.query("*IDN?"))
    except InstrumentError as exc:
        _fail(str(exc))
    finally:
        adapter.close()


@instruments_app.command("query")
def query(
    resource: str,
    command: str,
    block: bool = typer.Option(False, "--block", help="The reply is a binary block."),
    timeout_s: float = typer.Option(2.0, "--timeout", help="Seconds to wait for the answer."),
) -> None:
    """Send one command; print its reply (queries) or the error-queue entry (SCPI sets)."""
    adapter = _adapter(resource, timeout_s)
    serial_like = not resource.upper().startswith("TCPIP")
    try:
        if block:
            payload = adapter.query_block(command)
            typer.echo(f"block of {len(payload)} bytes: {payload[:32].hex(' ')}")
        elif "?" in command or serial_like:  # the serial module answers every command
            reply = adapter.query(command)
            typer.echo(reply)
            if serial_like and reply.lstrip().upper().startswith("ERROR "):
                raise typer.Exit(1)  # the module's in-line error (contracts §2.3)
        else:
            adapter.write(command)
            entry = adapter.query("SYST:ERR?")
            typer.echo(entry)
            if not entry.lstrip("+").startswith("0"):
                raise typer.Exit(1)
    except InstrumentError as exc:
        _fail(str(exc))
    finally:
        adapter.close()


@bench_app.command("check")
def check(
    bench_file: str = typer.Argument(..., help="Bench TOML file (or a bundled bench's name)."),
    sim: str = typer.Option(
        None,
        "--sim",
        envvar=SIM_ENV,
        help="Attach a simulated bench to this running world (control address) instead.",
    ),
) -> None:
    """Identify each role, clear and read its errors, set and read back settings, count rates."""
    from hal.bench import Bench, BenchError, SimConfig, load_config

    try:
        config = load_config(bench_file)
        if sim and (config.simulated or config.sim is not None):
            config = config.model_copy(update={"sim": SimConfig(attach=sim)})
        bench = Bench(config)
        bench.build()
    except BenchError as exc:
        _fail(str(exc))
    try:
        rows, failed = run_checks(bench)
    finally:
        bench.close()
    table = Table(title=f"bench check {bench_file}")
    for col in ("role", "device", "check", "value", "result"):
        table.add_column(col)
    for row in rows:
        style = "green" if row[-1] == "ok" else "red"
        table.add_row(*map(escape, row[:-1]), f"[{style}]{row[-1]}[/{style}]")
    Console(width=max(120, Console().width)).print(table)
    if failed:
        for role, device, what, value, _ in rows:
            if _ != "ok":
                Console(stderr=True).print(escape(f"FAILED {role} ({device}) {what}: {value}"))
        raise typer.Exit(1)


def run_checks(bench: Any) -> tuple[list[tuple[str, ...]], int]:
    """Run the bench checks; return table rows ``(role, device, check, value, result)``."""

    rows: list[tuple[str, ...]] = []
    failed = 0

    def step(field: str, device: str, what: str, fn) -> Any:
        nonlocal failed
        try:
            value, ok = fn()
        except InstrumentError as exc:
            rows.append((field, device, what, str(exc), "FAIL"))
            failed += 1
            return None
        rows.append((field, device, what, _show(value), "ok" if ok else "FAIL"))
        failed += 0 if ok else 1
        return value

    for field, role in bench.roles.items():
        device = role.device
        if step(field, device, "identify", lambda r=role: (r.identify(), True)) is None:
            continue  # nothing else will answer either
        step(field, device, "errors (cleared)", lambda r=role: (r.read_errors() or "none", True))
        step(field, device, "errors after clear", lambda r=role: _empty_queue(r))
        settings = getattr(bench.config, field).settings
        applied = step(field, device, "settings", lambda r=role, s=settings: (r.apply_all(s), True))
        if applied is not None:
            rows.pop()  # one row per setting instead
        for name, (wanted, got) in (applied or {}).items():
            rows.append(
                (field, device, f"set {name}", f"{wanted!r} -> {_show(got)}", _ok(wanted, got))
            )
            failed += _ok(wanted, got) != "ok"
        step(field, device, "rates", lambda r=role: (r.rates(), True))
    return rows, failed


def _ok(wanted: Any, got: Any) -> str:
    from hal.bench import same_value

    return "ok" if same_value(wanted, got) else "FAIL"


def _empty_queue(role: Any) -> tuple[Any, bool]:
    role.clear_errors()
    left = role.read_errors()
    return (left or "empty"), not left


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={_show(v)}" for k, v in value.items())
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, tuple | list):
        return ",".join(_show(v) for v in value)
    return str(value)


def register(app: typer.Typer) -> None:
    """Mount ``qnode instruments`` and ``qnode bench``."""
    app.add_typer(instruments_app, name="instruments")
    app.add_typer(bench_app, name="bench")
