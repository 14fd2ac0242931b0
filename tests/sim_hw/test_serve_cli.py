"""``qnode sim serve --json`` and ``qnode sim fault`` as a technician or a node would run them."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys

import pytest

from sim_hw.testing import running_world, serve_command

QNODE = [sys.executable, "-m", "qnode"]


def scpi_query(resource: str, command: str, timeout: float = 5.0) -> bytes:
    port = int(resource.split("::")[2])
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(command.encode() + b"\n")
        return sock.makefile("rb").readline()


@pytest.fixture(scope="module")
def world():
    with running_world(preset="lim2014", distance_km=10, seed=5) as handle:
        yield handle
    assert handle.process.returncode == 0, "serve did not exit 0 on SIGTERM"


def test_ready_line_names_every_instrument_with_pyvisa_resources(world):
    res = world.resources
    assert set(res) == {"source", "attenuator", "detector", "timetagger"}
    for role in ("source", "attenuator", "timetagger"):
        assert re.fullmatch(r"TCPIP::127\.0\.0\.1::\d+::SOCKET", res[role]), res[role]
    assert re.fullmatch(r"ASRL/dev/pts/\d+::INSTR", res["detector"])
    assert re.fullmatch(r"ASRLsocket://127\.0\.0\.1:\d+::INSTR", world.serial_socket["detector"])
    assert re.fullmatch(r"tcp://127\.0\.0\.1:\d+", world.control)
    assert world.info["pid"] == world.process.pid
    assert scpi_query(res["source"], "*IDN?").startswith(b"QNODE,PULSE-SOURCE,")
    assert scpi_query(res["attenuator"], "*IDN?").startswith(b"HEWLETT-PACKARD,HP8156A,")
    # the preset and distance reached the world
    assert scpi_query(res["source"], ":BAS:PROB?") == b"0.1\n"  # lim2014: p_basis_z 0.1 (X keys)


def test_fault_cli_switches_a_running_worlds_faults(world):
    def cli(*args: str) -> subprocess.CompletedProcess:
        cmd = [*QNODE, "sim", "fault", *args, "--control", world.control]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60)

    done = cli("attenuator", "error", "--count", "1", "--code", "-221", "--text", "from cli")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["fault"]["code"] == -221
    assert scpi_query(world.resources["attenuator"], "*OPC?;:SYST:ERR?") == (
        b'1;0,"No error"\n'  # the error is pushed after the whole message ran
    )
    assert scpi_query(world.resources["attenuator"], ":SYST:ERR?") == (
        b'-221,"Settings conflict;from cli"\n'
    )
    assert cli("source", "stall").returncode == 0
    assert world.state()["faults"]["source"][0]["kind"] == "stall"
    with pytest.raises(socket.timeout):
        scpi_query(world.resources["source"], "*IDN?", timeout=0.3)
    assert cli("all", "clear").returncode == 0
    assert scpi_query(world.resources["source"], "*IDN?").startswith(b"QNODE,")
    bad = cli("source", "explode")
    assert bad.returncode == 1 and "unknown fault kind" in bad.stdout
    cmd = [*QNODE, "sim", "fault", "source", "drop", "--control", "not an endpoint"]
    junk = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert junk.returncode == 1 and "--control" in junk.stderr, junk.stderr
    assert "Traceback" not in junk.stderr


def test_fault_cli_finds_the_world_through_the_environment(world):
    env = {**os.environ, "QNODE_SIM_CONTROL": world.control}
    cmd = [*QNODE, "sim", "fault", "timetagger", "slow", "--delay-ms", "50", "--count", "1"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["fault"]["delay_ms"] == 50.0
    world.clear_faults()


def test_serve_exits_zero_on_sigint():
    proc = subprocess.Popen(serve_command(preset="snspd"), stdout=subprocess.PIPE, text=True)
    try:
        info = json.loads(proc.stdout.readline())
        assert scpi_query(info["instruments"]["timetagger"], "*IDN?").startswith(b"QNODE,TIME")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
        assert proc.stdout.read() == "", "serve printed more than its one ready line"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--preset", "gys", "--link", "x.toml"], "exactly one of"),
        (["--preset", "nosuch"], "nosuch"),
        (["--link", "/nonexistent/link.toml"], "no such link file"),
        (["--preset", "gys", "--distance", "-5"], "length_km"),
    ],
)
def test_serve_refuses_bad_link_arguments(args, message):
    done = subprocess.run(
        [*QNODE, "sim", "serve", "--json", *args], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert message in done.stderr
    assert done.stdout == ""


def _free_port_run(n: int) -> int:
    """A base port with ``n`` consecutive free ports after it (checked by binding them)."""
    for base in range(23000, 60000, 97):
        socks = []
        try:
            for k in range(n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", base + k))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port run")


def test_fixed_base_port_and_a_clear_failure_when_it_is_taken():
    base = _free_port_run(4)
    cmd = serve_command(preset="gys") + ["--base-port", str(base)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        info = json.loads(proc.stdout.readline())
        ports = [int(info["instruments"][r].split("::")[2]) for r in
                 ("source", "attenuator", "timetagger")]  # fmt: skip
        assert ports == [base, base + 1, base + 2]
        assert info["serial_socket"]["detector"] == f"ASRLsocket://127.0.0.1:{base + 3}::INSTR"
        taken = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert taken.returncode == 1 and taken.stdout == ""
        assert "address already in use" in taken.stderr.lower()
        assert proc.poll() is None  # the first world is unharmed
    finally:
        proc.terminate()
        assert proc.wait(30) == 0
        proc.stdout.close()
        proc.stderr.close()
