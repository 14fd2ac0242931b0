"""``qnode keyrate``: plan a link from the model, the finite-key bound and optimised parameters."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import typer


def _block(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        n = float(value)
    except ValueError:
        raise typer.BadParameter(f"not a number: {value!r}") from None
    if not math.isfinite(n) or n < 1 or n != int(n):
        raise typer.BadParameter(f"block must be a positive integer (e.g. 1e7), got {value!r}")
    return int(n)


def register(app: typer.Typer) -> None:
    @app.command("keyrate")
    def keyrate(
        preset_name: str = typer.Option(None, "--preset", help="Link preset (gys, lim2014, ...)."),
        link_file: Path = typer.Option(None, "--link", help="TOML link file."),
        distance_km: float = typer.Option(..., "--distance", min=0.0, help="Fibre length, km."),
        block: str = typer.Option(None, "--block", help="Finite-key block size n_X, e.g. 1e7."),
        asymptotic: bool = typer.Option(False, "--asymptotic", help="Infinite-key rate (default)."),
        f_ec: float = typer.Option(
            None, "--f-ec", min=1.0, help="EC efficiency (default 1.16 finite, 1.22 asymptotic)."
        ),
        eps_sec: float = typer.Option(
            None, "--eps-sec", help="Fixed epsilon_sec (default: Lim's kappa * l)."
        ),
        eps_cor: float = typer.Option(1e-15, "--eps-cor", help="epsilon_cor (Lim: 1e-15)."),
        kappa: float = typer.Option(1e-15, "--kappa", help="eps_sec = kappa * l (Lim: 1e-15)."),
        fixed: bool = typer.Option(
            False, "--fixed", help="Use the link's own intensities and probabilities, no optimiser."
        ),
        json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
    ) -> None:
        """Expected secret key rate per pulse and per second of a link at a distance."""
        from pipeline.keyrate import expected_key_rate
        from qnode.linkmodel import LinkConfigError, load_link, preset

        if (preset_name is None) == (link_file is None):
            raise typer.BadParameter("give exactly one of --preset NAME or --link FILE")
        n_x = _block(block)
        if n_x is not None and asymptotic:
            raise typer.BadParameter("--block and --asymptotic exclude each other")
        try:
            link = preset(preset_name) if preset_name else load_link(link_file)
            link = link.with_distance(distance_km)
            result = expected_key_rate(
                link, n_x, f_ec=f_ec, eps_sec=eps_sec, eps_cor=eps_cor, kappa=kappa,
                optimise=not fixed,
            )  # fmt: skip
        except (LinkConfigError, ValueError) as exc:
            typer.echo(f"qnode keyrate: {exc}", err=True)
            raise typer.Exit(2) from None
        out = result.as_dict()
        out["link"] = preset_name or str(link_file)
        if json_out:
            json.dump(out, sys.stdout)
            sys.stdout.write("\n")
            return
        mode = "asymptotic" if n_x is None else f"n_X = {n_x:.3g}"
        typer.echo(f"{out['link']} at {distance_km:g} km, {mode}, f_EC = {result.f_ec}")
        typer.echo(
            f"  rate      {result.rate_per_pulse:.4g} per pulse, {result.rate_bps:.4g} bit/s"
        )
        typer.echo(f"  QBER      {result.qber:.4%}")
        typer.echo("  mu        " + ", ".join(f"{m:.4g}" for m in result.mu))
        typer.echo("  p_mu      " + ", ".join(f"{p:.4g}" for p in result.p_mu))
        typer.echo(f"  q_x       {result.q_x:.4g} (source p_basis_z = {result.p_basis_z:.4g})")
        if "rate_per_pulse_infinite_decoy" in out:
            typer.echo(f"  infinite decoys: {out['rate_per_pulse_infinite_decoy']:.4g} per pulse")
