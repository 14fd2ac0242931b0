"""CLI (`qnode pki init`, `qnode keys zmq`, `qnode ctl`), example configs, link set-up helpers."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from typer.testing import CliRunner

from controller.config import ConfigError, load_config, parse_config
from controller.link_setup import controller_configs, ensure_pki, link_saes
from controller.pki import read_manifest
from qnode.cli import _load, app

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cli():
    _load()
    return CliRunner()


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_pki_init_writes_a_usable_pki(cli, tmp_path):
    out = tmp_path / "pki"
    result = cli.invoke(
        app, ["pki", "init", str(out), "--kme", "alice", "bob", "--sae", "app1,app2"]
    )
    assert result.exit_code == 0, result.output
    for name in ("ca", "alice", "bob", "app1", "app2"):
        assert (out / f"{name}.pem").exists() and (out / f"{name}.key").exists()
        assert stat.S_IMODE((out / f"{name}.key").stat().st_mode) == 0o600
    ca = _cert(out / "ca.pem")
    kme, sae = _cert(out / "alice.pem"), _cert(out / "app1.pem")
    assert kme.issuer == ca.subject and sae.issuer == ca.subject
    kme.verify_directly_issued_by(ca)
    sae.verify_directly_issued_by(ca)
    eku = kme.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku
    san = kme.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)][0] == "127.0.0.1"
    sae_eku = sae.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(sae_eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert sae.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "app1"
    for name in ("alice", "bob", "operator", "monitor"):
        assert (out / "curve" / f"{name}.key").exists()
        assert (out / "curve" / f"{name}.key_secret").exists()
    assert read_manifest(out) == {"kmes": ["alice", "bob"], "saes": ["app1", "app2"]}
    # Re-running adds names and keeps the CA.
    ca_bytes = (out / "ca.pem").read_bytes()
    assert cli.invoke(app, ["pki", "init", str(out), "--sae", "app3"]).exit_code == 0
    assert (out / "ca.pem").read_bytes() == ca_bytes
    _cert(out / "app3.pem").verify_directly_issued_by(ca)


def test_pki_and_keys_refuse_bad_input(cli, tmp_path):
    assert cli.invoke(app, ["pki", "init", str(tmp_path)]).exit_code != 0
    bad = cli.invoke(app, ["pki", "init", str(tmp_path), "--sae", "../evil"])
    assert bad.exit_code != 0
    assert cli.invoke(app, ["pki", "init", str(tmp_path), "--kmee", "x"]).exit_code != 0
    one = cli.invoke(app, ["pki", "init", str(tmp_path / "p"), "--kme=k1", "--sae", "s1", "--kme",
                           "k2"])  # fmt: skip
    assert one.exit_code == 0, one.output
    assert read_manifest(tmp_path / "p") == {"kmes": ["k1", "k2"], "saes": ["s1"]}
    result = cli.invoke(app, ["keys", "zmq", str(tmp_path / "k"), "ops", "viewer"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "k" / "viewer.key_secret").exists()


def test_example_configs_parse_and_config_errors_name_the_key(tmp_path):
    for role in ("alice", "bob"):
        cfg = load_config(REPO / "controller" / "configs" / f"{role}-controller.toml")
        assert cfg.node == role and cfg.security.curve and cfg.kms is not None
    with pytest.raises(ConfigError, match="kms.key_size"):
        parse_config({"node": "a", "role": "alice", "keystore": "x.db", "kms": {
            "kme_id": "a", "peer_kme_id": "b", "cert": "c", "key": "k", "ca": "ca",
            "local_saes": ["s"], "key_size": 100}})  # fmt: skip
    with pytest.raises(ConfigError, match="colour"):
        parse_config({"node": "a", "role": "alice", "keystore": "x.db", "colour": 1})
    with pytest.raises(ConfigError, match="server_secret"):
        parse_config({"node": "a", "role": "alice", "keystore": "x.db",
                      "security": {"curve": True}})  # fmt: skip
    with pytest.raises(ConfigError, match="server_secret"):  # CURVE is on by default
        parse_config({"node": "a", "role": "alice", "keystore": "x.db"})
    bad = tmp_path / "bad.toml"
    bad.write_text("node = [")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


def test_link_setup_writes_valid_controller_configs(tmp_path):
    pki = ensure_pki(None, tmp_path)
    assert link_saes(pki) == {"alice": "sae-alice", "bob": "sae-bob"}
    paths = controller_configs(tmp_path, pki)
    alice, bob = load_config(paths["alice"]), load_config(paths["bob"])
    assert alice.kms.local_saes == bob.kms.peer_saes == ["sae-alice"]
    assert alice.kms.sync_peer == bob.kms.sync_bind and not alice.security.curve
    assert {alice.kms.share_index, bob.kms.share_index} == {0, 1}
    curve = load_config(controller_configs(tmp_path, pki, curve=True)["bob"])
    assert curve.security.curve and len(curve.security.clients) == 2


def test_qnode_controller_process_and_ctl(cli, tmp_path):
    """`qnode controller` as a real process, driven with `qnode ctl`; SIGTERM stops it."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        f'node = "alice"\nrole = "alice"\nkeystore = "{tmp_path / "a.db"}"\n'
        "[security]\ncurve = false\n[http]\nenabled = false\n"
    )
    ready = tmp_path / "ready.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "qnode", "controller", "--config", str(cfg), "--ready-file",
         str(ready)], stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        import time

        deadline = time.monotonic() + 30
        while not ready.exists():
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "controller did not write its ready file"
            time.sleep(0.05)
        endpoints = json.loads(ready.read_text())
        ok = cli.invoke(app, ["ctl", endpoints["control"], "state"])
        assert ok.exit_code == 0 and json.loads(ok.stdout)["result"]["node"] == "alice"
        bad = cli.invoke(app, ["ctl", endpoints["control"], "set_attenuation", "--args",
                               '{"db": 99}'])  # fmt: skip
        assert bad.exit_code == 1 and "db" in json.loads(bad.stdout)["error"]
    finally:
        proc.terminate()
        assert proc.wait(20) == 0
