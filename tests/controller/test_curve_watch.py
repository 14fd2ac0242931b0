"""``qnode telemetry watch`` with CURVE: keys from ``qnode pki init``, a real CURVE hub with ZAP."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import zmq
from typer.testing import CliRunner

from controller.curve import load_key_pair, load_public_key
from controller.pki import create_curve_keys, init_pki
from qnode.bus import Publisher, TelemetryHub


@pytest.fixture(scope="module")
def curve_hub(tmp_path_factory):
    """A node hub serving CURVE as ``alice`` that allows only the ``monitor`` key."""
    pki = tmp_path_factory.mktemp("watch-pki")
    init_pki(pki, ["alice", "bob"], ["sae-alice", "sae-bob"])
    curve = pki / "curve"
    create_curve_keys(curve, ["intruder"])
    ctx = zmq.Context()
    hub = TelemetryHub(
        "inproc://watch-curve",
        "tcp://127.0.0.1:*",
        "tcp://127.0.0.1:*",
        context=ctx,
        curve_server_keys=load_key_pair(curve / "alice.key_secret"),
        curve_allowed_clients=[load_public_key(curve / "monitor.key")],
    )
    pub = Publisher(hub.internal, "alice", "postprocess", context=ctx)
    yield curve, hub, pub
    pub.close()
    hub.close()


def _watch(hub: TelemetryHub, pub: Publisher, *args: str, timeout: float = 30) -> tuple:
    cmd = [sys.executable, "-m", "qnode", "telemetry", "watch", hub.public, "--json",
           "--topic", "qfs/telemetry/alice/link/", *args]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        pub.publish("qfs/telemetry/alice/link/", {"qber": 0.02})
        time.sleep(0.05)
    if proc.poll() is None:
        proc.kill()
    out, err = proc.communicate(timeout=10)
    return proc.returncode, out, err


def test_allowed_key_watches_telemetry_with_key_dir_and_server_name(curve_hub):
    curve, hub, pub = curve_hub
    code, out, err = _watch(
        hub, pub, "--curve-key-dir", str(curve), "--curve-server-key", "alice",
        "--snapshot", hub.snapshot, "--count", "3", "--duration", "25",
    )  # fmt: skip
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) == 3
    assert all(m["topic"] == "qfs/telemetry/alice/link/" for m in lines)
    assert all(m["header"]["node"] == "alice" and m["payload"]["qber"] == 0.02 for m in lines)
    seqs = [m["header"]["seq"] for m in lines]
    assert seqs == sorted(set(seqs))


def test_allowed_key_with_secret_file_and_server_key_file(curve_hub):
    curve, hub, pub = curve_hub
    code, out, err = _watch(
        hub, pub, "--curve-secret-file", str(curve / "monitor.key_secret"),
        "--curve-server-key", str(curve / "alice.key"), "--count", "2", "--duration", "25",
    )  # fmt: skip
    assert code == 0, err
    assert len(out.splitlines()) == 2


def test_unknown_key_receives_nothing_and_is_told(curve_hub):
    curve, hub, pub = curve_hub
    code, out, err = _watch(
        hub, pub, "--curve-secret-file", str(curve / "intruder.key_secret"),
        "--curve-server-key", str(curve / "alice.key"), "--duration", "6",
    )  # fmt: skip
    assert out == ""
    assert code == 2, err
    assert "refused our key" in err


def test_wrong_server_key_receives_nothing(curve_hub):
    curve, hub, pub = curve_hub
    code, out, err = _watch(
        hub, pub, "--curve-key-dir", str(curve), "--curve-server-key", "bob", "--duration", "3",
    )  # fmt: skip
    assert code == 0 and out == ""


def test_missing_or_bad_curve_options_are_refused(curve_hub, tmp_path):
    import typer

    from qnode.node_cli import register

    app = typer.Typer()
    register(app)
    curve, hub, _ = curve_hub
    runner = CliRunner(env={"COLUMNS": "400", "TERMINAL_WIDTH": "400"})
    base = ["telemetry", "watch", hub.public, "--json", "--duration", "0.1"]
    cases = [
        (["--curve-key-dir", str(curve)], "server's public key"),
        (["--curve-server-key", str(curve / "alice.key")], "--curve-key-dir"),
        (["--curve-key-dir", str(tmp_path), "--curve-server-key", "alice"], "no CURVE key pair"),
        (["--curve-key-dir", str(curve), "--curve-server-key", "nobody"], "neither a key file"),
    ]
    for extra, needle in cases:
        result = runner.invoke(app, base + extra)
        assert result.exit_code == 2, (extra, result.output)
        assert needle in " ".join(result.output.split()), (extra, result.output)


def test_watch_through_controller_style_relay_with_roles(curve_hub):
    """The controller's relay: a CURVE PUB in ZAP domain ``telemetry`` behind RoleAuthenticator."""
    from controller.curve import Client, RoleAuthenticator, make_server
    from qnode.bus import encode_header
    from qnode.codec import packb

    curve, _, _ = curve_hub
    ctx = zmq.Context()
    auth = RoleAuthenticator(
        ctx,
        {
            load_public_key(curve / "monitor.key"): Client("monitor", "read"),
            load_public_key(curve / "bob.key"): Client("bob", "kme"),  # not a telemetry role
        },
    )
    auth.start()
    relay = ctx.socket(zmq.PUB)
    relay.linger = 0
    make_server(relay, curve / "alice.key_secret", "telemetry")
    port = relay.bind_to_random_port("tcp://127.0.0.1")
    fields = {"schema": 1, "node": "alice", "src": "postprocess"}
    seq = [0]

    def run(*args: str) -> tuple:
        cmd = [sys.executable, "-m", "qnode", "telemetry", "watch", f"tcp://127.0.0.1:{port}",
               "--json", "--curve-key-dir", str(curve), "--curve-server-key", "alice", *args]  # fmt: skip
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < deadline:
            seq[0] += 1
            relay.send_multipart(
                [b"qfs/telemetry/alice/link/", encode_header(fields, seq[0], time.time_ns()),
                 packb({"qber": 0.01})]
            )  # fmt: skip
            time.sleep(0.05)
        if proc.poll() is None:
            proc.kill()
        out, err = proc.communicate(timeout=10)
        return proc.returncode, out, err

    try:
        code, out, err = run("--count", "2", "--duration", "25")
        assert code == 0, err
        assert [json.loads(line)["payload"] for line in out.splitlines()] == [{"qber": 0.01}] * 2
        rejected = auth.rejected
        code, out, err = run("--curve-client", "bob", "--duration", "6")
        assert (code, out) == (2, ""), err
        assert auth.rejected > rejected
    finally:
        relay.close()
        auth.stop()
        ctx.term()
