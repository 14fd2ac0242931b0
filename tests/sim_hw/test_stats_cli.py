"""``qnode sim stats`` through typer's CliRunner."""

from __future__ import annotations

import json
import math

import pytest
import typer
from typer.testing import CliRunner

from qnode import linkmodel as lm
from sim_hw.cli import register


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    root = typer.Typer()
    register(root)
    return root


def test_json_per_class_beside_model(app: typer.Typer, tmp_path) -> None:
    link = tmp_path / "link.toml"
    link.write_text(lm.dump_toml(lm.preset("lim2014")))
    args = ["sim", "stats", "--link", str(link), "--distance", "25"]
    result = CliRunner().invoke(app, [*args, "--pulses", "20000000", "--seed", "3", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["pulses"] == 20_000_000 and out["distance_km"] == 25.0
    classes = out["classes"]
    assert set(classes) == {"signal", "decoy", "vacuum"}
    assert sum(c["pulses"] for c in classes.values()) == 20_000_000
    for name, c in classes.items():
        for key in ("detections", "gain", "sifted", "errors", "qber", "model_gain", "model_qber"):
            assert key in c, f"{name} lacks {key}"
        assert c["gain"] == pytest.approx(c["detections"] / c["pulses"])
        sigma = math.sqrt(c["pulses"] * c["model_gain"])
        assert abs(c["detections"] - c["pulses"] * c["model_gain"]) < 5 * sigma + 1, name
    signal = classes["signal"]
    assert signal["qber"] == pytest.approx(signal["model_qber"], rel=0.15)
    assert signal["errors"] < signal["sifted"] <= signal["detections"]


def test_table_output(app: typer.Typer) -> None:
    result = CliRunner().invoke(app, ["sim", "stats", "--preset", "gys", "--pulses", "1000000"])
    assert result.exit_code == 0, result.output
    assert "model qber" in result.output and "signal" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--preset", "nope"], "unknown preset 'nope'"),
        ([], "exactly one of --preset"),
        (["--preset", "gys", "--distance", "-5"], "fibre.length_km"),
    ],
)
def test_bad_input_exits_2_with_message(app: typer.Typer, args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["sim", "stats", *args, "--pulses", "10"])
    assert result.exit_code == 2
    assert message in result.output.replace("\n", " ").replace("│", " ").replace("  ", " ")


def test_bad_link_file_names_key(app: typer.Typer, tmp_path) -> None:
    link = tmp_path / "bad.toml"
    link.write_text("[receiver]\nefficency = 0.5\n")
    result = CliRunner().invoke(app, ["sim", "stats", "--link", str(link), "--pulses", "10"])
    assert result.exit_code == 2
    assert "receiver.efficency" in result.output and "unknown key" in result.output


@pytest.mark.parametrize(("text", "slots"), [("1e6", 1_000_000), ("2_000_000", 2_000_000)])
def test_pulses_in_scientific_notation(app: typer.Typer, text: str, slots: int) -> None:
    result = CliRunner().invoke(
        app, ["sim", "stats", "--preset", "gys", "--pulses", text, "--json"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["pulses"] == slots


@pytest.mark.parametrize("text", ["1.5", "0", "-1e3", "lots"])
def test_bad_pulse_count_exits_2(app: typer.Typer, text: str) -> None:
    result = CliRunner().invoke(app, ["sim", "stats", "--preset", "gys", "--pulses", text])
    assert result.exit_code == 2
    assert "--pulses" in result.output or "slots" in result.output or "number" in result.output
