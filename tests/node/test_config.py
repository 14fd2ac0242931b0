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


# --------------------------------------------------------------------------- no auth downgrade
# docs/contracts.md §7: a key store that has run under Wegman-Carter refuses auth = "hmac".


def _hmac_cfg(tmp_path, **peer):
    data = _base()
    data["peer"].update(peer)
    return parse_config(data, tmp_path)


def _wc_store(path, units: int, mark: bool):
    from qnode.keystore import KeyStore

    store = KeyStore(path)
    store.add_committed("pad0", 0, "bob", bytes(range(256)) * (units // 16), {}, for_channel=True)
    if mark:
        store.mark_wc_established()
    return store


@pytest.mark.parametrize(
    "peer, named",
    [
        ({"auth": "wegman-carter", "allow_auth_downgrade": True}, "peer.allow_auth_downgrade"),
        ({"allow_auth_downgrade": "yes"}, "peer.allow_auth_downgrade"),
        ({"allow_auth_downgrade": 1}, "peer.allow_auth_downgrade"),
    ],
)
def test_downgrade_override_is_validated(tmp_path, peer, named):
    with pytest.raises(NodeConfigError, match=named):
        _hmac_cfg(tmp_path, **peer)


def test_hmac_refused_on_a_wegman_carter_store_unless_overridden(tmp_path):
    from qnode.config import check_auth_downgrade

    cfg = _hmac_cfg(tmp_path)
    assert check_auth_downgrade(cfg) is None  # no store yet: a fresh node
    assert not cfg.keystore.path.exists()  # the check creates none
    _wc_store(cfg.keystore.path, 16, mark=True).close()  # marked: pad size does not matter
    with pytest.raises(NodeConfigError) as err:
        check_auth_downgrade(cfg)
    text = str(err.value)
    assert 'peer.auth = "hmac" refused' in text and "Wegman-Carter" in text
    assert "peer.allow_auth_downgrade = true" in text and str(cfg.keystore.path) in text
    # a Wegman-Carter node on the same store starts
    wc = parse_config({**_base(), "peer": {**_base()["peer"], "auth": "wegman-carter"}}, tmp_path)
    assert check_auth_downgrade(wc) is None
    over = _hmac_cfg(tmp_path, allow_auth_downgrade=True)
    assert "override #1" in check_auth_downgrade(over)
    assert "override #2" in check_auth_downgrade(over)  # counted per start, in the store
    assert "override #" not in check_auth_downgrade(over, record=False)
    from qnode.keystore import KeyStore

    store = KeyStore(cfg.keystore.path)
    assert store.record_auth_downgrade() == 3
    store.close()


def test_a_store_from_before_the_mark_counts_by_its_pad(tmp_path):
    from qnode.config import check_auth_downgrade

    cfg = _hmac_cfg(tmp_path)
    store = _wc_store(cfg.keystore.path, 48, mark=False)  # below 64 units: bootstrap only
    assert check_auth_downgrade(cfg) is None
    store.add_committed("pad1", 1, "bob", b"\x07" * 16 * 16, {}, for_channel=True)  # 64 units
    store.close()
    with pytest.raises(NodeConfigError, match="peer.auth"):
        check_auth_downgrade(cfg)


def test_wegman_carter_marks_the_store_durably(tmp_path):
    from qnode.keystore import KeyStore
    from qnode.wegman_carter import WegmanCarter

    path = tmp_path / "keys.db"
    store = _wc_store(path, 16, mark=False)
    assert not WegmanCarter(store, "alice", "bob", min_units=32).established()
    assert store.wc_established_ns() is None and not store.wc_established()
    assert WegmanCarter(store, "alice", "bob", min_units=8).established()
    store.close()
    store = KeyStore(path)  # a restart: the mark alone keeps the node established
    assert store.wc_established_ns() is not None and store.wc_established()
    assert WegmanCarter(store, "alice", "bob", min_units=1000).established()
    store.close()


def test_qnode_node_and_postprocess_refuse_the_downgrade(tmp_path, monkeypatch):
    from pipeline.postprocess import PostProcess

    db = tmp_path / "alice-keys.db"
    _wc_store(db, 16, mark=True).close()
    cfg = tmp_path / "alice.toml"
    text = (CONFIGS / "alice.toml").read_text()
    cfg.write_text(text.replace('path = "alice-keys.db"', f'path = "{db}"'))
    env = {**__import__("os").environ, "QNODE_LINK_SECRET": "ab" * 32}
    proc = subprocess.run([sys.executable, "-m", "qnode", "node", "--config", str(cfg)],
                          capture_output=True, text=True, timeout=60, env=env)  # fmt: skip
    assert proc.returncode == 2 and 'peer.auth = "hmac" refused' in proc.stderr
    monkeypatch.setenv("QNODE_LINK_SECRET", "ab" * 32)
    with pytest.raises(NodeConfigError, match="allow_auth_downgrade"):
        PostProcess(load_config(cfg), "ipc:///nonexistent/hub")
