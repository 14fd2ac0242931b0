"""CLI: ``qnode controller``, ``qnode pki init``, ``qnode keys zmq``, ``qnode ctl``."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import typer

pki_app = typer.Typer(help="Test PKI for ETSI 014 mutual TLS and CurveZMQ.", no_args_is_help=True)
keys_app = typer.Typer(help="Key material for the buses.", no_args_is_help=True)


def _names(values: list[str] | None) -> list[str]:
    out: list[str] = []
    for value in values or []:
        out.extend(v for v in value.replace(",", " ").split() if v)
    return out


def parse_pki_args(tokens: list[str]) -> tuple[Path, list[str], list[str]]:
    """``DIR --kme A B --sae C,D --kme=E`` -> (DIR, [A, B, E], [C, D])."""
    directory: Path | None = None
    names: dict[str, list[str]] = {"--kme": [], "--sae": []}
    mode: str | None = None
    for token in tokens:
        flag, eq, value = token.partition("=")
        if flag in names:
            mode = flag
            if eq:
                names[flag].extend(_names([value]))
        elif token.startswith("-"):
            raise typer.BadParameter(f"unknown option {token!r} (use --kme and --sae)")
        elif mode is None:
            if directory is not None:
                raise typer.BadParameter(f"unexpected argument {token!r} before --kme/--sae")
            directory = Path(token)
        else:
            names[mode].extend(_names([token]))
    if directory is None:
        raise typer.BadParameter("give the directory first: qnode pki init DIR --kme ... --sae ...")
    return directory, names["--kme"], names["--sae"]


@pki_app.command(
    "init", context_settings={"allow_extra_args": True, "ignore_unknown_options": True}
)
def pki_init(
    args: list[str] = typer.Argument(
        ..., metavar="DIR --kme NAME... --sae NAME...", help="Directory, then KME and SAE names."
    ),
) -> None:
    """Write a test CA, KME server and SAE client certificates, and CurveZMQ key pairs.

    ``DIR/ca.pem``, ``DIR/NAME.pem``, ``DIR/NAME.key`` (KMEs: serverAuth, SANs localhost and
    127.0.0.1; SAEs: clientAuth, CN = SAE ID) and ``DIR/curve/NAME.key(_secret)``. Names may be
    listed after one flag, repeated, or comma-separated.
    """
    from controller.pki import CURVE_DIR, init_pki

    directory, kmes, saes = parse_pki_args(args)
    if not kmes and not saes:
        raise typer.BadParameter("give at least one --kme or --sae")
    try:
        issued = init_pki(directory, kmes, saes)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    typer.echo(f"CA: {directory / 'ca.pem'} (test CA; its key is {directory / 'ca.key'})")
    for name, item in issued.items():
        kind = "KME" if name in kmes else "SAE"
        typer.echo(f"{kind} {name}: {item.cert} {item.key}")
    typer.echo(f"CurveZMQ key pairs: {directory / CURVE_DIR}/NAME.key(_secret)")


@keys_app.command("zmq")
def keys_zmq(
    directory: Path = typer.Argument(..., help="Directory for NAME.key / NAME.key_secret."),
    names: list[str] = typer.Argument(..., help="Key pair names."),
) -> None:
    """Create CurveZMQ key pairs (kept if they already exist)."""
    from controller.pki import create_curve_keys

    for name, (public, secret) in create_curve_keys(directory, _names(names)).items():
        typer.echo(f"{name}: {public} {secret}")


def register(app: typer.Typer) -> None:
    """Mount the controller's commands on the ``qnode`` app."""
    app.add_typer(pki_app, name="pki")
    app.add_typer(keys_app, name="keys")

    @app.command("controller")
    def controller(
        config: Path = typer.Option(..., "--config", help="CONTROLLER.toml"),
        ready_file: Path = typer.Option(None, "--ready-file", help="Write endpoints as JSON."),
        node_telemetry: str = typer.Option(
            None, "--node-telemetry", help="Override telemetry.node_endpoint (the node's hub)."
        ),
        node_command: str = typer.Option(
            None, "--node-command", help="Override control.node_endpoint (node command socket)."
        ),
        hub: str = typer.Option(
            None, "--hub", help="Publish alarms into this hub-internal endpoint (connect mode)."
        ),
        verbose: bool = typer.Option(False, "--verbose", "-v"),
    ) -> None:
        """Run a node controller: state, ETSI 014 key delivery, control and management."""
        from controller.config import ConfigError
        from controller.node_controller import run_controller

        logging.basicConfig(
            level=logging.DEBUG if verbose else logging.INFO,
            format="%(asctime)s %(name)s %(levelname)s %(message)s",
        )
        overrides = {
            "telemetry.node_endpoint": node_telemetry,
            "control.node_endpoint": node_command,
            "telemetry.publish": hub,
            "telemetry.publish_mode": "connect" if hub else None,
        }
        try:
            run_controller(
                config, ready_file, {k: v for k, v in overrides.items() if v is not None}
            )
        except ConfigError as exc:
            typer.echo(str(exc), err=True)
            raise typer.Exit(2) from None

    @app.command("ctl")
    def ctl(
        endpoint: str = typer.Argument(..., help="Controller control endpoint (tcp://...)."),
        command: str = typer.Argument(..., help="Command name, e.g. state, pause, resume."),
        args: str = typer.Option("{}", "--args", help="Arguments as a JSON object."),
        curve_secret: Path = typer.Option(None, "--curve-secret", help="Our NAME.key_secret."),
        server_key: Path = typer.Option(None, "--server-key", help="Controller's NAME.key."),
        timeout_ms: int = typer.Option(5000, "--timeout-ms"),
    ) -> None:
        """Send one control command to a controller and print the JSON reply."""
        from controller.control_client import send_command

        try:
            payload = json.loads(args)
        except json.JSONDecodeError as exc:
            raise typer.BadParameter(f"--args is not JSON: {exc}") from None
        reply = send_command(
            endpoint, {"cmd": command, **payload}, curve_secret, server_key, timeout_ms
        )
        typer.echo(json.dumps(reply, default=str))
        if not reply.get("ok"):
            raise typer.Exit(1)
