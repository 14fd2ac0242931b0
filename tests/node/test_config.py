"""Node configuration: the shipped examples load; bad keys and values are refused by name."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import qnode
from qnode.config import NodeConfigError, load_config, parse_config

CONFIGS = Path(qnode.__file__).parent / "configs"


def _base() -> dict:
    return {
        "node": "alice", "role": "alice", "bench": "bench.toml",
        "peer": {"id": "bob", "bind": "tcp://127.0.0.1:5701", "secret_env": "X"},
        "keystore": {"path": "keys.db"},
    }  # fmt: skip


@pytest.mark.parametrize("name", ["alice.toml", "bob.toml"])
def test_shipped_examples_load(name):
    cfg = load_config(CONFIGS / name)
    assert cfg.bench.is_absolute() and cfg.bench.parent == CONFIGS
    assert cfg.keystore.path.parent == CONFIGS
    assert cfg.peer.secret_env == "QNODE_LINK_SECRET"


def test_relative_paths_resolve_against_the_file(tmp_path):
    cfg = parse_config(_base(), tmp_path)
    assert cfg.bench == tmp_path / "bench.toml"
    assert cfg.keystore.path == tmp_path / "keys.db"
    assert cfg.internal_endpoint().startswith("ipc://")


@pytest.mark.parametrize(
    "change, named",
    [
        (lambda d: d.update(colour="red"), "colour: unknown key"),
        (lambda d: d["peer"].update(secret="abc"), "peer.secret: unknown key"),
        (lambda d: d.update(role="eve"), "role"),
        (lambda d: d["peer"].update(connect="tcp://x:1"), "exactly one of 'bind' and 'connect'"),
        (lambda d: d["peer"].pop("secret_env"), "secret_file"),
        (lambda d: d["peer"].update(id="alice"), "peer.id must differ"),
        (lambda d: d.update(pipeline={"block_bits": 10}), "pipeline.block_bits"),
        (lambda d: d.update(pipeline={"frame_slots": "many"}), "pipeline.frame_slots"),
        (lambda d: d["peer"].update(auth="rot13"), "peer.auth"),
        (lambda d: d["peer"].update(heartbeat_s=5, timeout_s=6), "timeout_s"),
        (lambda d: d.pop("keystore"), "keystore"),
        (lambda d: d["peer"].update(wc_every_blocks=True), "peer.wc_every_blocks"),
    ],
)
def test_bad_config_is_refused_with_the_key_named(change, named):
    data = _base()
    change(data)
    with pytest.raises(NodeConfigError) as err:
        parse_config(data)
    assert named in str(err.value)


def test_unreadable_files_are_named(tmp_path):
    with pytest.raises(NodeConfigError, match="no such file"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("node = \n")
    with pytest.raises(NodeConfigError, match="not valid TOML"):
        load_config(bad)


def test_qnode_node_refuses_bad_config_and_missing_secret(tmp_path):
    cfg = tmp_path / "n.toml"
    cfg.write_text('node = "a"\nrole = "alice"\nbench = "b.toml"\nwrong = 1\n')
    proc = subprocess.run([sys.executable, "-m", "qnode", "node", "--config", str(cfg)],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 2 and "wrong: unknown key" in proc.stderr
    text = (CONFIGS / "alice.toml").read_text()
    cfg.write_text(text.replace("QNODE_LINK_SECRET", "QNODE_TEST_NO_SUCH_SECRET"))
    proc = subprocess.run([sys.executable, "-m", "qnode", "node", "--config", str(cfg)],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 2 and "QNODE_TEST_NO_SUCH_SECRET" in proc.stderr
