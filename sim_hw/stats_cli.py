"""``qnode sim stats``: the link physics alone, per intensity class, beside the closed forms."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from sim_hw.cli import sim_app


def _load(preset: str | None, link: Path | None, distance: float | None):
    from qnode import linkmodel

    if (preset is None) == (link is None):
        raise typer.BadParameter("give exactly one of --preset NAME or --link FILE")
    try:
        params = linkmodel.preset(preset) if preset else linkmodel.load_link(link)
        return params.with_distance(distance) if distance is not None else params
    except linkmodel.LinkConfigError as exc:
        raise typer.BadParameter(str(exc)) from None


def _pulse_count(text: str) -> int:
    """``1e8``, ``100000000`` or ``1_000_000``: a whole number of slots >= 1."""
    try:
        value = float(text.replace("_", ""))
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a number") from None
    if not value.is_integer() or not 1 <= value <= 2**62:
        raise typer.BadParameter(f"{text!r} is not a whole number of slots in [1, 2^62]")
    return int(value) if "e" in text.lower() or "." in text else int(text.replace("_", ""))


@sim_app.command("stats")
def stats(
    preset: str | None = typer.Option(None, help="Link preset (gys, lim2014, snspd)."),
    link: Path | None = typer.Option(None, help="Link file (TOML)."),
    distance: float | None = typer.Option(None, "--distance", help="Fibre length in km."),
    pulses: str = typer.Option(..., "--pulses", help="Number of slots to simulate (1e8 is fine)."),
    seed: int = typer.Option(0, min=0, help="Seed of the photon simulation."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Simulate PULSES slots and count detections, sifted bits and errors per class."""
    from sim_hw.stats import simulate_stats

    n_pulses = _pulse_count(pulses)
    params = _load(preset, link, distance)
    result = simulate_stats(params, n_pulses, seed=seed)
    result["preset"] = preset
    result["link"] = str(link) if link else None
    if json_out:
        json.dump(result, sys.stdout)
        sys.stdout.write("\n")
        return
    _print_table(result)


def _print_table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    title = (
        f"{result['preset'] or result['link']}: {result['pulses']:.3g} pulses, "
        f"{result['distance_km']:g} km, eta {result['transmittance']:.3e}"
    )
    table = Table(title=title)
    cols = ["class", "mu", "pulses", "detections", "gain", "model gain", "sifted",
            "model sifted", "errors", "qber", "model qber"]  # fmt: skip
    for col in cols:
        table.add_column(col, justify="left" if col == "class" else "right", no_wrap=True)
    for name, c in result["classes"].items():
        table.add_row(
            name, f"{c['mu']:g}", str(c["pulses"]), str(c["detections"]), f"{c['gain']:.4e}",
            f"{c['model_gain']:.4e}", str(c["sifted"]), f"{c['model_sifted']:.1f}",
            str(c["errors"]), f"{100 * c['qber']:.3f} %", f"{100 * c['model_qber']:.3f} %",
        )  # fmt: skip
    console = Console()
    console.width = max(console.width, 132)  # a pipe or CI log: do not squeeze the numbers
    console.print(table)
