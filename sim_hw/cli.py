"""``qnode sim ...``: the simulated world (physics statistics, emulated instruments, faults,
physical impairments)."""

from __future__ import annotations

import importlib

import typer

sim_app = typer.Typer(help="Simulated hardware: physics statistics, emulated instruments, faults.")

# Modules that add commands to ``sim_app`` when imported.
_COMMAND_MODULES = ["sim_hw.stats_cli", "sim_hw.serve_cli"]


def register(app: typer.Typer) -> None:
    for name in _COMMAND_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
    app.add_typer(sim_app, name="sim")


@sim_app.command("impair")
def impair(
    misalignment: float | None = typer.Option(
        None, help="Receiver misalignment (optical error probability), 0 ... 0.5."
    ),
    classical_power_dbm: float | None = typer.Option(
        None,
        "--classical-power-dbm",
        help="Launch power of a co-propagating classical channel (Raman noise), -100 ... 30 dBm.",
    ),
    control: str | None = typer.Option(None, help="The world's control endpoint."),
) -> None:
    """Set a running world's physical impairments (they replace the previous ones); without
    options, clear them. Prints the world's reply; exit 1 if it refused."""
    from sim_hw.serve_cli import find_control, report_control

    endpoint = find_control(control)
    request: dict = {"op": "impair"}
    if misalignment is not None:
        request["misalignment"] = misalignment
    if classical_power_dbm is not None:
        request["classical_power_dbm"] = classical_power_dbm
    report_control(endpoint, request)
