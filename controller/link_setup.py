"""Controllers for ``qnode link --sim``: one per node, ETSI 014 on both, and the ready file.

``qnode link`` calls :func:`attach_controllers` before it starts the nodes (it writes a
``CONTROLLER.toml`` per node and names it in the node config, so ``qnode node`` starts the
controller through its hook) and :func:`write_ready` once both nodes run. Alice's KME serves the
first SAE of the PKI, Bob's the second (``qnode pki init`` order, kept in ``pki.json``).
CURVE is off in ``--sim`` (everything on loopback); the KMS uses mutual TLS always.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from controller.pki import init_pki, read_manifest
from qnode.ports import free_port

ROLES = ("alice", "bob")
DEFAULT_SAES = {"alice": "sae-alice", "bob": "sae-bob"}


def _free_port() -> int:
    return free_port()


def link_saes(pki: Path) -> dict[str, str]:
    """SAE ID per node: the first two SAEs of the PKI, or ``sae-alice``/``sae-bob``."""
    saes = read_manifest(pki)["saes"]
    if len(saes) >= 2:
        return {"alice": saes[0], "bob": saes[1]}
    return dict(DEFAULT_SAES)


def ensure_pki(pki: Path | None, workdir: Path) -> Path:
    """The PKI to use: ``pki`` (created with the link's names if empty) or one in ``workdir``."""
    directory = pki if pki is not None else workdir / "pki"
    manifest = read_manifest(directory)
    missing_kmes = [r for r in ROLES if r not in manifest["kmes"]]
    saes = [] if len(manifest["saes"]) >= 2 else list(DEFAULT_SAES.values())
    if missing_kmes or saes or not (directory / "ca.pem").exists():
        init_pki(directory, missing_kmes, [s for s in saes if s not in manifest["saes"]])
    return directory


def controller_configs(workdir: Path, pki: Path, curve: bool = False) -> dict[str, Path]:
    """Write ``<role>-controller.toml`` for both nodes; returns their paths by role."""
    saes = link_saes(pki)
    sync = {role: _free_port() for role in ROLES}
    paths: dict[str, Path] = {}
    for index, role in enumerate(ROLES):
        peer = ROLES[1 - index]
        lines = [
            f'node = "{role}"',
            f'role = "{role}"',
            f'keystore = "{workdir / f"{role}-keys.db"}"',
            "",
            "[kms]",
            f'kme_id = "{role}"',
            f'peer_kme_id = "{peer}"',
            f'cert = "{pki / f"{role}.pem"}"',
            f'key = "{pki / f"{role}.key"}"',
            f'ca = "{pki / "ca.pem"}"',
            f'local_saes = ["{saes[role]}"]',
            f'peer_saes = ["{saes[peer]}"]',
            "port = 0",
            f"share_index = {index}",
            f'sync_bind = "tcp://127.0.0.1:{sync[role]}"',
            f'sync_peer = "tcp://127.0.0.1:{sync[peer]}"',
            "",
            "[security]",
            f"curve = {'true' if curve else 'false'}",
        ]
        if curve:
            lines += [
                f'server_secret = "{pki / "curve" / f"{role}.key_secret"}"',
                f'peer_kme_public = "{pki / "curve" / f"{peer}.key"}"',
                "clients = [",
                f'  {{ name = "operator", public_key = "{pki / "curve" / "operator.key"}", '
                'role = "operator" },',
                f'  {{ name = "monitor", public_key = "{pki / "curve" / "monitor.key"}", '
                'role = "read" },',
                "]",
            ]
        path = workdir / f"{role}-controller.toml"
        path.write_text("\n".join(lines) + "\n")
        paths[role] = path
    return paths


def controller_ready_path(keystore_path: Path) -> Path:
    """Where a node's controller writes its endpoints (next to the node's key store)."""
    return keystore_path.with_suffix(".controller.ready")


def attach_controllers(link: Any, pki: Path | None) -> Path:
    """Give a ``qnode.link.Link`` one controller per node (before ``link.start()``)."""
    directory = ensure_pki(pki, link.workdir)
    for role in ROLES:  # a ready file left by an earlier run in this workdir is stale
        controller_ready_path(link.workdir / f"{role}-keys.db").unlink(missing_ok=True)
    link.opts.controller_configs = controller_configs(link.workdir, directory)
    link.pki_dir = directory
    return directory


def write_ready(link: Any, ready_file: Path, timeout_s: float = 60.0) -> dict[str, Any]:
    """Wait for both controllers, then write the link's ready file (JSON) atomically."""
    pki: Path = link.pki_dir
    controllers: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout_s
    for role in ROLES:
        path = controller_ready_path(link.workdir / f"{role}-keys.db")
        while not path.exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{role}'s controller not ready (see {link.workdir})")
            time.sleep(0.05)
        controllers[role] = json.loads(path.read_text())
    saes = link_saes(pki)
    ready = {
        "kms": {r: controllers[r]["kms"] for r in ROLES},
        "sae": saes,
        "telemetry": {r: link.ready[r]["telemetry"] for r in ROLES},
        "control": {r: controllers[r]["control"] for r in ROLES},
        "state": {r: controllers[r].get("http") for r in ROLES},
        "pki": {
            "ca": str(pki / "ca.pem"),
            **{f"{saes[r]}": {"cert": str(pki / f"{saes[r]}.pem"),
                              "key": str(pki / f"{saes[r]}.key")} for r in ROLES},
        },
        "workdir": str(link.workdir),
    }  # fmt: skip
    tmp = ready_file.with_suffix(ready_file.suffix + ".tmp")
    tmp.write_text(json.dumps(ready, indent=2) + "\n")
    tmp.replace(ready_file)
    return ready
