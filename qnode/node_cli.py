"""``qnode node``, ``qnode link`` and ``qnode telemetry watch``."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import typer

telemetry_app = typer.Typer(help="The telemetry bus: watch a node's topics.")


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 1e5 or abs(value) < 1e-3:
            return f"{value:.3g}"
        return f"{value:.4f}".rstrip("0").rstrip(".")
    return str(value)


def node_command(
    config: Path = typer.Option(..., "--config", help="Node configuration (NODE.toml)."),
    ready_file: Path | None = typer.Option(
        None, "--ready-file", help="Write the node's endpoints here as JSON once it runs."
    ),
) -> None:
    """Run one node (acquisition + post-processing [+ controller]) until SIGTERM/SIGINT."""
    import logging

    from qnode.channel import load_secret
    from qnode.config import NodeConfigError, check_auth_downgrade, load_config
    from qnode.node import run_node

    logging.basicConfig(level=logging.INFO, format="%(asctime)s node %(message)s")
    try:
        cfg = load_config(config)
        load_secret(
            str(cfg.peer.secret_file) if cfg.peer.secret_file else None, cfg.peer.secret_env
        )
        # contracts §7: no HMAC on a Wegman-Carter store (post-processing records an override)
        downgrade = check_auth_downgrade(cfg, record=False)
    except (NodeConfigError, ValueError, OSError) as exc:
        typer.echo(f"qnode node: {exc}", err=True)
        raise typer.Exit(2) from None
    if downgrade:
        logging.getLogger("qnode.node").warning("%s", downgrade)
    raise typer.Exit(run_node(cfg, config.resolve(), ready_file))


def _live_table(link: Any) -> Any:
    from rich.table import Table

    table = Table(title=f"qnode link  t = {time.monotonic() - link.t0:5.1f} s")
    table.add_column("")
    table.add_column("alice", justify="right")
    table.add_column("bob", justify="right")
    rows = [
        ("detections/s", "acquisition", "detections_per_s"),
        ("sifted bit/s", "link", "sifted_bps"),
        ("QBER (block)", "link", "qber"),
        ("QBER Z signal", "link", "qber_z_signal"),
        ("f", "link", "f"),
        ("FER", "link", "fer"),
        ("secret bit/s", "link", "skr_bps"),
        ("blocks done / failed", "link", ("blocks_done", "blocks_failed")),
        ("keys stored (blocks)", "link", "keystore_blocks"),
        ("keys stored (bits)", "link", "keystore_bits"),
        ("channel rejected", "channel", "rejected_auth"),
        ("peer connected", "link", "peer_connected"),
    ]
    for label, obj, key in rows:
        cells = []
        for role in ("alice", "bob"):
            payload = link.latest[role].get(f"qfs/telemetry/{role}/{obj}/", {})
            if isinstance(key, tuple):
                cells.append(" / ".join(_fmt(payload.get(k)) for k in key))
            elif key in ("qber", "f") and payload.get(key) is None and payload.get("qber_unknown"):
                cells.append("unknown")  # the last block decoded no frame (docs/telemetry.md)
            else:
                cells.append(_fmt(payload.get(key)))
        table.add_row(label, *cells)
    faults = []
    for role in ("alice", "bob"):
        for t, payload in link.latest[role].items():
            if "/instrument/" in t and payload.get("state") == "fault":
                faults.append(f"{role}: {payload.get('instrument')}: {payload.get('fault')}")
    table.caption = ("faults: " + "; ".join(faults)) if faults else "no instrument faults"
    return table


def _summary_table(result: dict[str, Any]) -> Any:
    from rich.table import Table

    table = Table(title="qnode link summary")
    table.add_column("")
    table.add_column("alice", justify="right")
    table.add_column("bob", justify="right")
    for key in ("key_blocks", "key_bits", "key_sha256"):
        a, b = result["alice"][key], result["bob"][key]
        table.add_row(key, _fmt(a)[:16], _fmt(b)[:16])
    for key in ("qber", "f", "sifted_mbps", "skr_mbps", "duration_s", "keys_match"):
        value = result.get(key)
        unknown = key in ("qber", "f") and value is None and result.get("qber_unknown")
        table.add_row(key, f"unknown ({result['qber_unknown']})" if unknown else _fmt(value), "")
    return table


def link_command(
    sim: bool = typer.Option(False, "--sim", help="Simulated instruments (required for now)."),
    preset: str | None = typer.Option(None, "--preset", help="Link preset (gys, lim2014, snspd)."),
    link_file: Path | None = typer.Option(None, "--link", help="Link file (TOML)."),
    distance: float | None = typer.Option(None, "--distance", help="Fibre length in km."),
    duration: float | None = typer.Option(
        None, "--duration", help="Run for S seconds (default 30; with --keys: a time limit)."
    ),
    keys: int | None = typer.Option(None, "--keys", help="Run until N key blocks are stored."),
    block_bits: int = typer.Option(0, "--block-bits", help="Sifted bits per finite-key block."),
    auth: str = typer.Option("hmac", "--auth", help="Classical channel: hmac | wegman-carter."),
    json_file: Path | None = typer.Option(None, "--json", help="Write the figures here (JSON)."),
    workdir: Path | None = typer.Option(None, "--workdir", help="Keep configs and stores here."),
    seed: int = typer.Option(1, "--seed", help="Seed of the photon simulation."),
    p_basis_z: float | None = typer.Option(
        None,
        "--p-basis-z",
        help="Alice's probability of Z, the test basis (0 < p < 1); default: the preset's "
        "operating point (snspd 0.2), else 0.7.",
    ),
    quiet: bool = typer.Option(False, "--quiet", help="No live view."),
    pki: Path | None = typer.Option(
        None, "--pki", help="PKI from `qnode pki init` for ETSI 014 (default: one in the workdir)."
    ),
    ready_file: Path | None = typer.Option(
        None, "--ready-file", help="Write KMS URLs, SAE IDs, telemetry and control endpoints."
    ),
) -> None:
    """Run a simulated link: world + Alice + Bob; exit 0 only if both hold the same keys."""
    from rich.console import Console
    from rich.live import Live

    from controller.link_setup import attach_controllers, write_ready
    from qnode.link import DEFAULT_BLOCK_BITS, Link, LinkError, LinkOptions

    console = Console(stderr=True)
    if not sim:
        console.print("qnode link: only --sim is supported (real benches: run qnode node twice)")
        raise typer.Exit(2)
    if preset and link_file:
        console.print("qnode link: give --preset or --link, not both")
        raise typer.Exit(2)
    if p_basis_z is not None and not 0.0 < p_basis_z < 1.0:
        console.print(f"qnode link: --p-basis-z must be within (0, 1), not {p_basis_z}")
        raise typer.Exit(2)
    if auth not in ("hmac", "wegman-carter"):
        console.print(f"qnode link: --auth must be hmac or wegman-carter, not {auth!r}")
        raise typer.Exit(2)
    for name, value in (("--duration", duration), ("--keys", keys)):
        if value is not None and not value > 0:  # NaN too
            console.print(f"qnode link: {name} must be positive, not {value}")
            raise typer.Exit(2)
    if distance is not None and not 0 <= distance < math.inf:
        console.print(f"qnode link: --distance must be a length in km (>= 0), not {distance}")
        raise typer.Exit(2)
    if block_bits < 0:
        console.print(f"qnode link: --block-bits must be positive, not {block_bits}")
        raise typer.Exit(2)
    opts = LinkOptions(
        preset=None if link_file else (preset or "snspd"), link_file=link_file,
        distance_km=distance, duration_s=duration if keys is not None else (duration or 30.0),
        keys=keys, block_bits=block_bits or DEFAULT_BLOCK_BITS, seed=seed, auth=auth,
        p_basis_z=p_basis_z,
        workdir=workdir,
    )  # fmt: skip
    try:
        link = Link(opts)
        attach_controllers(link, pki)  # a node controller (ETSI 014 KME) per node
    except (ValueError, KeyError, OSError) as exc:
        console.print(f"qnode link: {exc}")
        raise typer.Exit(2) from None
    result: dict[str, Any] | None = None
    if ready_file is not None and pki is None:
        console.print("qnode link: --ready-file needs --pki (the controllers write it)")
        raise typer.Exit(2)
    try:
        if pki is not None:
            # the controllers (controller/link_setup.py) start through the node's hook
            from controller.link_setup import attach_controllers

            attach_controllers(link, pki)
        link.start(on_progress=lambda text: console.print(f"[dim]{text}[/dim]"))
        if pki is not None and ready_file is not None:
            from controller.link_setup import write_ready

            write_ready(link, ready_file)
        if ready_file is not None:
            write_ready(link, ready_file)
            console.print(f"[dim]ready file: {ready_file}[/dim]")
        if quiet:
            while not link.done():
                link.poll(0.5)
        else:
            with Live(_live_table(link), console=console, refresh_per_second=2) as live:
                while not link.done():
                    link.poll(0.5)
                    live.update(_live_table(link))
        link.settle()
        link.poll(0.2)
        link.stop()  # the figures are those of the stores once both nodes have stopped
        result = link.result()
    except (LinkError, TimeoutError) as exc:
        console.print(f"qnode link: {exc} (logs in {link.workdir})")
    except KeyboardInterrupt:
        link.settle(5)
        link.stop()
        result = link.result()
    finally:
        link.stop()
    if result is None:
        raise typer.Exit(1)
    console.print(_summary_table(result))
    if json_file is not None:
        json_file.write_text(json.dumps(result, indent=2) + "\n")
    if not result["keys_match"]:
        console.print("[red]no identical keys on both sides[/red]")
        raise typer.Exit(1)


def _watch_curve_keys(
    server_key: str | None, key_dir: Path | None, client: str, secret_file: Path | None
) -> tuple[bytes, bytes, bytes] | None:
    """(public, secret, server public) for a CURVE subscriber, from ``qnode pki init`` files.

    ``server_key`` is the server's ``NAME.key`` file, a name looked up as ``KEY_DIR/NAME.key``,
    or the 40-character z85 key itself; the client pair is ``--curve-secret-file`` or
    ``KEY_DIR/CLIENT.key_secret``.
    """
    if server_key is None and key_dir is None and secret_file is None:
        return None
    from controller.curve import load_key_pair, load_public_key

    if server_key is None:
        raise typer.BadParameter(
            "CURVE needs the server's public key", param_hint="--curve-server-key"
        )
    if secret_file is None:
        if key_dir is None:
            raise typer.BadParameter(
                "give --curve-key-dir DIR (with --curve-client NAME) or --curve-secret-file F",
                param_hint="--curve-secret-file",
            )
        secret_file = key_dir / f"{client}.key_secret"
    candidates = [Path(server_key)] + ([key_dir / f"{server_key}.key"] if key_dir else [])
    if not secret_file.is_file():
        raise typer.BadParameter(f"no CURVE key pair at {secret_file}", param_hint="CURVE keys")
    try:
        public, secret = load_key_pair(secret_file)
        found = next((c for c in candidates if c.is_file()), None)
        if found is not None:
            server_public = load_public_key(found)
        elif len(server_key) == 40:
            server_public = server_key.encode("ascii")
        else:
            raise typer.BadParameter(
                f"{server_key!r} is neither a key file, a name in the key directory nor a z85 key",
                param_hint="--curve-server-key",
            )
    except (OSError, ValueError) as exc:
        raise typer.BadParameter(str(exc), param_hint="CURVE keys") from exc
    if server_public is None or len(server_public) != 40:
        raise typer.BadParameter(
            "no z85 public key in the server key", param_hint="--curve-server-key"
        )
    return public, secret, server_public


def watch(
    endpoint: str = typer.Argument(..., help="A node's telemetry endpoint (tcp://host:port)."),
    topic_prefix: list[str] = typer.Option(None, "--topic", help="Topic prefix (repeatable)."),
    json_lines: bool = typer.Option(False, "--json", help="Print JSON lines."),
    snapshot: str | None = typer.Option(None, "--snapshot", help="Clone snapshot endpoint."),
    count: int = typer.Option(0, "--count", help="Stop after N messages (0 = never)."),
    duration: float = typer.Option(0.0, "--duration", help="Stop after S seconds (0 = never)."),
    curve_server_key: str | None = typer.Option(
        None,
        "--curve-server-key",
        help="CURVE: the server's NAME.key, a NAME in --curve-key-dir, or z85.",
    ),
    curve_key_dir: Path | None = typer.Option(
        None, "--curve-key-dir", help="CURVE: a key directory (qnode pki init: PKI/curve)."
    ),
    curve_client: str = typer.Option(
        "monitor", "--curve-client", help="CURVE: our key pair's NAME in --curve-key-dir."
    ),
    curve_secret_file: Path | None = typer.Option(
        None, "--curve-secret-file", help="CURVE: our NAME.key_secret (instead of the key dir)."
    ),
) -> None:
    """Print a node's telemetry: a live rich table (latest per topic) or JSON lines.

    With the CURVE options the subscriber (and the snapshot request) authenticates with a client
    key pair; a server that refuses the key ends the command with exit code 2.
    """
    import zmq
    from rich.console import Console
    from rich.live import Live
    from rich.table import Table
    from zmq.utils.monitor import recv_monitor_message

    from qnode.bus import Subscriber

    curve = _watch_curve_keys(curve_server_key, curve_key_dir, curve_client, curve_secret_file)
    sub = Subscriber(
        endpoint, topic_prefix or [""], snapshot_endpoint=snapshot, curve_client_keys=curve
    )
    monitor = (
        sub.socket.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_SUCCEEDED
        )
        if curve
        else None
    )
    t_hint = time.monotonic() + 5.0
    handshaken = False

    def check_curve() -> None:
        """Exit on a refused key; hint once if no handshake succeeded after a few seconds."""
        nonlocal handshaken, t_hint
        while monitor is not None and monitor.poll(0):
            event = recv_monitor_message(monitor)["event"]
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                handshaken = True
            elif event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                sys.stderr.write(f"CURVE: {endpoint} refused our key (not an allowed client)\n")
                raise typer.Exit(2)
        if monitor is not None and not handshaken and time.monotonic() > t_hint:
            t_hint = float("inf")
            sys.stderr.write(
                f"CURVE: no handshake with {endpoint} yet (wrong --curve-server-key?)\n"
            )

    latest: dict[str, tuple[dict, dict]] = {}
    seen = 0
    t_end = time.monotonic() + duration if duration else None

    def emit(msg: Any) -> None:
        nonlocal seen
        seen += 1
        if json_lines:
            sys.stdout.write(
                json.dumps(
                    {"topic": msg.topic, "header": msg.header, "payload": msg.payload}, default=str
                )
                + "\n"  # fmt: skip
            )
            sys.stdout.flush()
        latest[msg.topic] = (msg.header, msg.payload)

    def table() -> Table:
        t = Table(title=f"telemetry {endpoint}  (gaps {sub.stats.gaps}, "
                        f"malformed {sub.stats.malformed})")  # fmt: skip
        t.add_column("topic")
        t.add_column("seq", justify="right")
        t.add_column("payload")
        for name in sorted(latest):
            header, payload = latest[name]
            text = ", ".join(f"{k}={_fmt(v)}" for k, v in payload.items())
            t.add_row(name, str(header.get("seq")), text[:160])
        return t

    def finished() -> bool:
        return bool((count and seen >= count) or (t_end and time.monotonic() >= t_end))

    try:
        if snapshot:
            for prefix in topic_prefix or [""]:
                for msg in sub.snapshot(prefix):
                    emit(msg)
        if json_lines:
            while not finished():
                check_curve()
                msg = sub.recv(200)
                if msg is not None:
                    emit(msg)
        else:
            with Live(table(), console=Console(), refresh_per_second=4) as live:
                while not finished():
                    check_curve()
                    msg = sub.recv(200)
                    if msg is not None:
                        emit(msg)
                        live.update(table())
    except KeyboardInterrupt:
        pass
    finally:
        if monitor is not None:
            sub.socket.disable_monitor()
            monitor.close(0)
        sub.close()


def register(app: typer.Typer) -> None:
    app.command("node")(node_command)
    app.command("link")(link_command)
    telemetry_app.command("watch")(watch)
    app.add_typer(telemetry_app, name="telemetry")
