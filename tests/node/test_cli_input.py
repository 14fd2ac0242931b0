"""Bad command-line input to ``qnode link`` and ``qnode perf``: exit 2 with the option named,
before any process starts or any stage runs."""

from __future__ import annotations

import subprocess
import sys

import pytest

from qnode.perf import collect, known_stages

QNODE = [sys.executable, "-m", "qnode"]


@pytest.mark.parametrize(
    "args, words",
    [
        (["--duration", "-5"], "--duration must be positive"),
        (["--keys", "0"], "--keys must be positive"),
        (["--distance", "nan"], "--distance must be a length"),
        (["--distance", "-1"], "--distance must be a length"),
        (["--block-bits", "-3"], "--block-bits must be positive"),
        (["--p-basis-z", "1"], "--p-basis-z must be within"),
        (["--preset", "nosuch"], "unknown preset 'nosuch'"),
    ],
)
def test_link_refuses_bad_options(args, words):
    done = subprocess.run([*QNODE, "link", "--sim", *args], capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert words in done.stderr
    assert "Traceback" not in done.stderr


def test_perf_refuses_an_unknown_stage():
    done = subprocess.run([*QNODE, "perf", "--stage", "kms", "--stage", "nosuch"],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 2
    assert "unknown stage nosuch" in done.stderr and "link" in done.stderr
    assert done.stdout == ""  # nothing measured, not even the known stage


def test_every_perf_module_names_its_stages():
    stages = known_stages()
    assert len(stages) == len(set(stages))
    assert {"simulator", "world", "scpi", "sifting", "ldpc", "telemetry", "kms", "link"} <= set(
        stages
    )
    with pytest.raises(ValueError, match="unknown stage"):
        collect(["sifting", "nosuch"])
