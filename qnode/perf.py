"""``qnode perf``: every stage measured beside its peers in one run, ratios printed.

Each package contributes a ``perf`` module with
``perf_rows(quick: bool = False, stages: list[str] | None = None) -> list[dict]`` (it skips its work
when ``stages`` names none of its rows). A row is
``{"stage": str, "impl": str, <parameters>, <figures named by unit>}``; a peer measured beside
qnode is a row of its own with the same stage and parameters. A peer package that is not
installed yields a row with ``"missing": "<reason>"`` instead of failing the run.
"""

from __future__ import annotations

import importlib
import json
import sys
import time
from typing import Any

import typer

# Order matters only for reading: physics first, then transports, post-processing, services.
PERF_MODULES: list[str] = [
    "sim_hw.perf",
    "qnode.world_perf",
    "drivers.perf",
    "hal.perf",
    "pipeline.bench.sifting",
    "pipeline.bench.ldpc",
    "pipeline.bench.toeplitz",
    "controller.perf",
    "qnode.link_perf",
]

FIGURE_KEYS = (
    "pulses_per_s",
    "detections_per_s",
    "tags_per_s",
    "events_per_s",
    "p50_us",
    "p99_us",
    "mbps",
    "f",
    "fer",
    "skr_mbps",
    "predicted_skr_mbps",
    "rss_mb",
    "msgs_per_s",
    "keys_per_s",
    "p50_ms",
    "p99_ms",
)


def known_stages() -> list[str]:
    """Every stage the perf modules measure (``STAGE`` or ``STAGES`` of each module)."""
    out: list[str] = []
    for name in PERF_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        one = getattr(module, "STAGE", None)
        out.extend([one] if one else getattr(module, "STAGES", ()))
    return out


def collect(stages: list[str] | None = None, quick: bool = False) -> list[dict[str, Any]]:
    """Run every contributing perf module (or those whose rows match ``stages``); an unknown
    stage name is a ValueError before anything runs."""
    if stages:
        known = known_stages()
        unknown = [s for s in stages if s not in known]
        if unknown:
            raise ValueError(f"unknown stage {', '.join(unknown)} (known: {', '.join(known)})")
    rows: list[dict[str, Any]] = []
    for name in PERF_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        rows.extend(module.perf_rows(quick=quick, stages=stages))
    add_ratios(rows)
    return rows


def _params(row: dict[str, Any]) -> tuple:
    skip = set(FIGURE_KEYS) | {"stage", "impl", "missing", "ratio", "ratio_of", "note", "agree"}
    return tuple(sorted((k, str(v)) for k, v in row.items() if k not in skip))


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Give each peer row ``ratio`` = qnode throughput / peer throughput for the same input."""
    for row in rows:
        if row.get("impl") == "qnode" or "missing" in row:
            continue
        for ref in rows:
            if (
                ref.get("impl") == "qnode"
                and ref.get("stage") == row.get("stage")
                and _params(ref) == _params(row)
            ):
                for key in ("mbps", "events_per_s", "tags_per_s", "keys_per_s", "msgs_per_s"):
                    if row.get(key) and ref.get(key):
                        row["ratio"] = round(ref[key] / row[key], 2)
                        row["ratio_of"] = f"qnode/{row['impl']} {key}"
                        break


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 1e5 or abs(value) < 1e-2:
            return f"{value:.3g}"
        return f"{value:.3f}".rstrip("0").rstrip(".")
    return str(value)


def print_table(rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="qnode perf (figures measured in this run)")
    for col in ("stage", "impl", "parameters", "figures", "ratio / note"):
        table.add_column(col)
    for row in rows:
        params = ", ".join(f"{k}={_fmt(v)}" for k, v in _params(row))
        figures = ", ".join(f"{k}={_fmt(row[k])}" for k in FIGURE_KEYS if k in row)
        extra = row.get("missing") or ""
        if "ratio" in row:
            extra = f"{row['ratio']}x ({row['ratio_of']})"
        if "note" in row:
            extra = f"{extra} {row['note']}".strip()
        table.add_row(row["stage"], row["impl"], params, figures, extra)
    Console().print(table)


def register(app: typer.Typer) -> None:
    @app.command("perf")
    def perf(
        json_out: bool = typer.Option(False, "--json", help="Print one JSON object {rows: [...]}."),
        stage: list[str] = typer.Option(None, "--stage", help="Only these stages (repeatable)."),
        quick: bool = typer.Option(False, "--quick", help="Smaller inputs (smoke run)."),
    ) -> None:
        """Measure each stage beside its peers in one run and print the ratios."""
        t0 = time.perf_counter()
        try:
            rows = collect(stage or None, quick=quick)
        except ValueError as exc:
            typer.echo(f"qnode perf: {exc}", err=True)
            raise typer.Exit(2) from None
        if json_out:
            json.dump({"rows": rows, "elapsed_s": round(time.perf_counter() - t0, 1)}, sys.stdout)
            sys.stdout.write("\n")
        else:
            print_table(rows)
