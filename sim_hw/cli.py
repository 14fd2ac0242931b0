"""``qnode sim ...``: the simulated world (physics statistics, emulated instruments, faults)."""

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
