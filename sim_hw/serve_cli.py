"""``qnode sim serve`` (the simulated world on loopback) and ``qnode sim fault`` (its faults).

``serve --json`` prints, once every instrument listens, exactly one line::

    {"instruments": {"source": "TCPIP::127.0.0.1::P::SOCKET", "attenuator": ...,
     "detector": "ASRL/dev/pts/N::INSTR", "timetagger": ...},
     "serial_socket": {"detector": "ASRLsocket://127.0.0.1:P::INSTR"},
     "pty_links": {"detector": "ASRL/tmp/qnode-sim-XXXX/detector::INSTR"},
     "control": "tcp://127.0.0.1:P", "seed": S, "realtime": false, "pid": PID}

and serves until SIGINT or SIGTERM, then exits 0 (1 if it cannot start, e.g. ``--base-port``
in use; 2 on bad arguments). The ready line is also written to
``$TMPDIR/qnode-sim-<uid>/latest.json`` so that ``qnode sim fault`` finds the newest world
when neither ``--control`` nor ``QNODE_SIM_CONTROL`` names one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import tempfile
from pathlib import Path

import typer
import zmq

from sim_hw.cli import sim_app

LATEST = Path(tempfile.gettempdir()) / f"qnode-sim-{os.getuid()}" / "latest.json"


def load_params(preset: str | None, link: Path | None, distance_km: float | None):
    """The link parameters from ``--preset`` or ``--link`` (exactly one), at ``--distance``."""
    from qnode import linkmodel

    if (preset is None) == (link is None):
        raise typer.BadParameter("give exactly one of --preset NAME or --link FILE")
    try:
        params = linkmodel.preset(preset) if preset else linkmodel.load_link(link)
        if distance_km is not None:
            params = params.with_distance(distance_km)
    except (linkmodel.LinkConfigError, KeyError, ValueError) as exc:
        raise typer.BadParameter(str(exc)) from None
    return params


@sim_app.command("serve")
def serve(
    preset: str | None = typer.Option(None, help="Link preset (gys, lim2014, snspd)."),
    link: Path | None = typer.Option(None, help="Link file (TOML)."),
    distance: float | None = typer.Option(None, "--distance", help="Fibre length in km."),
    seed: int = typer.Option(1, help="Seed of the photon simulation."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON line once ready."),
    realtime: bool = typer.Option(False, help="Never simulate ahead of wall clock."),
    control: str = typer.Option("tcp://127.0.0.1:0", help="Control endpoint (ZeroMQ REP)."),
    base_port: int = typer.Option(
        0, help="Fixed ports: source, attenuator, timetagger, detector socket from here on."
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log every exchange (stderr)."),
) -> None:
    """Start the emulated instruments of one link on loopback and serve until SIGINT/SIGTERM."""
    params = load_params(preset, link, distance)
    if verbose:
        logging.basicConfig(level=logging.DEBUG, stream=sys.stderr,
                            format="%(asctime)s %(name)s %(message)s")  # fmt: skip
    if not 0 <= base_port <= 65532:
        raise typer.BadParameter(f"--base-port {base_port}: 1 ... 65532, or 0 for ephemeral")
    try:
        asyncio.run(_serve(params, seed, realtime, control, json_out, base_port))
    except (OSError, zmq.ZMQError) as exc:  # a fixed port in use, no ptys, ...
        typer.echo(f"qnode sim serve: {exc}", err=True)
        raise typer.Exit(1) from None
    raise typer.Exit(0)


async def _serve(
    params, seed: int, realtime: bool, control: str, json_out: bool, base_port: int
) -> None:
    from sim_hw.world import World, WorldServer

    world = World(params, seed=seed, realtime=realtime)
    world.warm_up()
    server = WorldServer(world, control, base_port)
    info = await server.start()
    info["pid"] = os.getpid()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    line = json.dumps(info)
    _write_latest(line)
    if json_out:
        sys.stdout.write(line + "\n")
    else:
        for name, resource in info["instruments"].items():
            sys.stdout.write(f"{name:<11} {resource}\n")
        sys.stdout.write(f"{'detector':<11} {info['serial_socket']['detector']} (socket)\n")
        sys.stdout.write(f"{'control':<11} {info['control']}\n")
    sys.stdout.flush()
    try:
        await stop.wait()
    finally:
        await server.close()
        _remove_latest(line)


def _write_latest(line: str) -> None:
    try:
        LATEST.parent.mkdir(mode=0o700, exist_ok=True)
        tmp = LATEST.with_suffix(f".{os.getpid()}")
        tmp.write_text(line + "\n")
        tmp.replace(LATEST)
    except OSError:
        pass  # discovery is a convenience; --control always works


def _remove_latest(line: str) -> None:
    try:
        if LATEST.read_text().strip() == line:
            LATEST.unlink()
    except OSError:
        pass


def control_request(endpoint: str, request: dict, timeout_ms: int = 3000) -> dict:
    """Send one JSON request to a world's control endpoint and return its reply."""
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, timeout_ms)
    sock.setsockopt(zmq.SNDTIMEO, timeout_ms)
    try:
        sock.connect(endpoint)
        sock.send(json.dumps(request).encode())
        return json.loads(sock.recv())
    except zmq.Again:
        raise TimeoutError(f"no answer from the world's control endpoint {endpoint}") from None
    finally:
        sock.close(0)


def report_control(endpoint: str, request: dict) -> None:
    """CLI side of one control request: print the world's reply (JSON); exit 1 if it refused,
    did not answer, or ``endpoint`` is not a ZeroMQ endpoint (a message, not a traceback)."""
    try:
        reply = control_request(endpoint, request)
    except TimeoutError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    except zmq.ZMQError as exc:
        typer.echo(f"--control {endpoint!r}: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(json.dumps(reply))
    if not reply.get("ok"):
        raise typer.Exit(1)


def find_control(control: str | None) -> str:
    """``--control``, else ``QNODE_SIM_CONTROL``, else the newest running world's endpoint."""
    if control:
        return control
    if os.environ.get("QNODE_SIM_CONTROL"):
        return os.environ["QNODE_SIM_CONTROL"]
    try:
        return json.loads(LATEST.read_text())["control"]
    except (OSError, ValueError, KeyError):
        raise typer.BadParameter(
            "no running world found: give --control ENDPOINT or set QNODE_SIM_CONTROL"
        ) from None


@sim_app.command("fault")
def fault(
    instrument: str = typer.Argument(..., help="source, attenuator, detector, timetagger or all"),
    kind: str = typer.Argument(..., help="drop, stall, garbage, error, slow, or clear"),
    count: int | None = typer.Option(None, help="Next N commands (default: until cleared)."),
    delay_ms: float | None = typer.Option(None, "--delay-ms", help="Delay of a 'slow' fault."),
    code: int | None = typer.Option(None, help="Error code of an 'error' fault (-200)."),
    text: str | None = typer.Option(None, help="Error text of an 'error' fault."),
    control: str | None = typer.Option(None, help="The world's control endpoint."),
) -> None:
    """Inject a fault into a running world's instrument, or clear its faults."""
    endpoint = find_control(control)
    target = None if instrument == "all" else instrument
    if kind == "clear":
        request = {"op": "clear", "instrument": target}
    else:
        if target is None:
            raise typer.BadParameter("name one instrument to inject a fault into")
        request = {"op": "inject", "instrument": target, "kind": kind, "count": count,
                   "delay_ms": delay_ms, "code": code, "text": text}  # fmt: skip
    report_control(endpoint, request)
