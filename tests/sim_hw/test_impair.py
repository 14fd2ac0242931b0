"""Physical impairments of the simulated world (``{"op": "impair"}`` / ``qnode sim impair``):
the QBER measured from the emulated instruments follows ``qnode.linkmodel``'s closed forms when
misalignment or Raman noise is set, and returns to the link's own when they are cleared."""

from __future__ import annotations

import json
import math
import socket
import subprocess
import sys

import numpy as np
import pytest

from qnode import linkmodel as lm
from sim_hw import symbols
from sim_hw.scpi import definite_block
from sim_hw.testing import world_in_thread

PRESET, KM, SEED = "gys", 25.0, 7
DETECTIONS = 250_000  # ~1e5 sifted signal events per measurement: +-0.35 % QBER at 5 sigma
SIGMAS = 5.0
QNODE = [sys.executable, "-m", "qnode"]


class Scpi:
    """A raw TCP SCPI client (one line out; one line or one definite-length block back)."""

    def __init__(self, resource: str) -> None:
        port = int(resource.split("::")[2])
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.file = self.sock.makefile("rb")

    def query(self, cmd: str) -> str:
        self.sock.sendall(cmd.encode() + b"\n")
        return self.file.readline().decode().rstrip("\n")

    def block(self, cmd: bytes) -> bytes:
        self.sock.sendall(cmd + b"\n")
        assert self.file.read(1) == b"#", f"{cmd[:20]!r}: reply is not a block"
        digits = int(self.file.read(1))
        data = self.file.read(int(self.file.read(digits)))
        assert self.file.read(1) == b"\n"
        return data

    def close(self) -> None:
        self.file.close()
        self.sock.close()


@pytest.fixture(scope="module")
def world():
    with world_in_thread(preset=PRESET, distance_km=KM, seed=SEED) as handle:
        yield handle


@pytest.fixture
def instruments(world):
    src, tt = Scpi(world.resources["source"]), Scpi(world.resources["timetagger"])
    assert src.query("*RST;:SOUR:RAND:KEY #H0000000000C0FFEE;:OUTP ON;:OUTP?") == "1"
    yield src, tt
    world.request({"op": "impair"})
    for c in (src, tt):
        c.query("*RST;*OPC?")
        c.close()


def measure(src: Scpi, tt: Scpi) -> dict[str, tuple[int, int]]:
    """(sifted, errors) per intensity class from tags acquired from now on, against Alice's
    symbols for the same slots (read back from the source)."""
    assert tt.query(":ACQ:STAR;:ACQ:STAT?") == "1"  # clears the buffer: only new tags
    times, chans = [], []
    n = 0
    while n < DETECTIONS:
        records = np.frombuffer(tt.block(b":TAGS:FETC? 1000000"), dtype="<u8")
        chan = (records & np.uint64(0xFF)).astype(np.uint8)
        keep = chan > 0  # channel 0: sync
        times.append((records[keep] >> np.uint64(8)).astype(np.int64))
        chans.append(chan[keep])
        n += int(keep.sum())
    assert tt.query(":ACQ:STOP;*OPC?") == "1"
    t, c = np.concatenate(times), np.concatenate(chans)
    slots = np.rint((t - KM * lm.FIBRE_DELAY_PS_PER_KM) / 1000.0).astype("<i8")  # 1 GHz
    sym = np.frombuffer(src.block(b":SYMB:LIST? " + definite_block(slots.tobytes())), np.uint8)
    a_basis, a_bit, cls = symbols.decode(sym)
    b_basis, b_bit = (c - 1) // 2, (c - 1) % 2
    matched = a_basis == b_basis
    out = {}
    for k, name in enumerate(lm.CLASSES):
        sel = matched & (cls == k)
        out[name] = (int(sel.sum()), int((a_bit[sel] != b_bit[sel]).sum()))
    return out


def assert_qber_matches(measured: dict[str, tuple[int, int]], params: lm.LinkParams) -> float:
    """Errors per class within 5 sigma of the model's QBER given the sifted count; returns the
    measured signal-class QBER."""
    model = lm.expected_stats(params)
    for name in ("signal", "decoy"):
        n, errors = measured[name]
        q = model[name].qber
        tol = SIGMAS * math.sqrt(max(n * q * (1 - q), 1.0))
        assert abs(errors - n * q) <= tol, (
            f"{name}: {errors} errors in {n} sifted (QBER {errors / n:.4f}), "
            f"model {q:.4f} -> {n * q:.0f} +- {tol:.0f}"
        )
    n, errors = measured["signal"]
    return errors / n


def test_misalignment_raises_the_qber_as_modelled_and_clearing_restores_it(world, instruments):
    src, tt = instruments
    base = lm.preset(PRESET).with_distance(KM)
    impaired = base.with_changes(receiver={"misalignment": 0.07})
    assert (
        lm.expected_stats(impaired)["signal"].qber > lm.expected_stats(base)["signal"].qber + 0.03
    )

    before = assert_qber_matches(measure(src, tt), base)
    reply = world.request({"op": "impair", "misalignment": 0.07})
    assert reply["impairments"] == {"misalignment": 0.07}
    state = world.state()
    assert state["impairments"] == {"misalignment": 0.07} and state["misalignment"] == 0.07
    during = assert_qber_matches(measure(src, tt), impaired)
    assert world.request({"op": "impair"})["impairments"] == {}
    assert world.state()["misalignment"] == base.receiver.misalignment
    after = assert_qber_matches(measure(src, tt), base)
    assert during > before + 0.025 and during > after + 0.025, (before, during, after)


def test_raman_noise_from_a_classical_channel_raises_the_qber_as_modelled(world, instruments):
    src, tt = instruments
    base = lm.preset(PRESET).with_distance(KM)
    impaired = base.with_changes(fibre={"classical_power_dbm": -10.0})
    # The Raman term must dominate the dark counts for this to test the noise path.
    assert lm.noise_probs(impaired)[0] > 50 * base.receiver.dark_count_prob
    assert (
        lm.expected_stats(impaired)["signal"].qber > lm.expected_stats(base)["signal"].qber + 0.02
    )

    world.request({"op": "impair", "classical_power_dbm": -10})
    assert world.state()["classical_power_dbm"] == -10.0
    during = assert_qber_matches(measure(src, tt), impaired)
    world.request({"op": "impair"})
    assert world.state()["classical_power_dbm"] is None
    after = assert_qber_matches(measure(src, tt), base)
    assert during > after + 0.015, (during, after)


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        ({"misalignment": 0.7}, "misalignment"),
        ({"misalignment": -0.1}, "misalignment"),
        ({"misalignment": "high"}, "misalignment"),
        ({"misalignment": True}, "misalignment"),
        ({"classical_power_dbm": 45}, "classical_power_dbm"),
        ({"classical_power_dbm": [0]}, "classical_power_dbm"),
        ({"raman": 1}, "raman"),
    ],
)
def test_bad_impairments_are_refused_by_name_and_change_nothing(world, request_, field):
    from sim_hw.serve_cli import control_request

    world.request({"op": "impair", "misalignment": 0.02})
    reply = control_request(world.control, {"op": "impair", **request_})
    assert reply["ok"] is False and field in reply["error"], reply
    assert world.state()["impairments"] == {"misalignment": 0.02}
    world.request({"op": "impair"})
    assert control_request(world.control, {"op": "ping"}) == {"ok": True}


def test_impair_cli_sets_and_clears_a_running_worlds_impairments(world):
    def cli(*args: str) -> subprocess.CompletedProcess:
        cmd = [*QNODE, "sim", "impair", *args, "--control", world.control]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60)

    done = cli("--misalignment", "0.06", "--classical-power-dbm", "-20")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["impairments"] == {
        "misalignment": 0.06,
        "classical_power_dbm": -20.0,
    }
    params = world.call(world.world.effective_params)
    assert params.receiver.misalignment == 0.06 and params.fibre.classical_power_dbm == -20.0
    bad = cli("--misalignment", "0.9")
    assert bad.returncode == 1 and "misalignment" in json.loads(bad.stdout)["error"]
    assert (
        world.state()["impairments"]["misalignment"] == 0.06
    )  # the refused request changed nothing
    assert cli().returncode == 0
    assert world.state()["impairments"] == {}
    cmd = [*QNODE, "sim", "impair", "--misalignment", "0.01", "--control", "not an endpoint"]
    junk = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert junk.returncode == 1 and "--control" in junk.stderr, junk.stderr
    assert "Traceback" not in junk.stderr
