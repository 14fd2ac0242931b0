"""Node configuration (``NODE.toml``) for ``qnode node``, validated with pydantic.

Every table forbids unknown keys, so a misspelt key is refused with its name; relative paths are
resolved against the configuration file's directory. The authentication secret is read from a
file or an environment variable and never stored in the model's repr or logged::

    node = "alice"                  # node id (telemetry topics, peer messages)
    role = "alice"                  # alice | bob
    bench = "bench-alice.toml"      # hal bench file (real or simulated instruments)
    [peer]
    id = "bob"
    bind = "tcp://127.0.0.1:5701"   # Alice listens; Bob sets connect = "tcp://host:5701"
    secret_file = "link.secret"     # or secret_env = "QNODE_LINK_SECRET"
    auth = "hmac"                   # or "wegman-carter"; a store that has run under
                                    # Wegman-Carter refuses "hmac" unless
                                    # allow_auth_downgrade = true (logged, docs/contracts.md §7)
    [keystore]
    path = "alice-keys.db"
    [telemetry]
    endpoint = "tcp://127.0.0.1:5710"
    [pipeline]
    frame_slots = 16777216
    block_bits = 1000000
"""

from __future__ import annotations

import time
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationError,
    model_validator,
)


class NodeConfigError(ValueError):
    """The node configuration is unreadable or invalid; the message names the key at fault."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PeerConfig(_Section):
    """The classical channel to the twin node."""

    id: str
    bind: str | None = None
    connect: str | None = None
    secret_file: Path | None = None
    secret_env: str | None = None
    auth: Literal["hmac", "wegman-carter"] = "hmac"
    # Operator override of the no-downgrade rule (docs/contracts.md §7): start with auth = "hmac"
    # on a key store that has run under Wegman-Carter. Logged and counted in the store.
    allow_auth_downgrade: StrictBool = False
    wc_every_blocks: StrictInt = Field(8, ge=1, description="every n-th key block feeds the pads")
    heartbeat_s: float = Field(1.0, gt=0)
    # Generous: a heartbeat cannot be sent while a long numba kernel (a batch of LDPC decodes,
    # a large Toeplitz hash) holds the process, so silence shorter than that is not a loss.
    timeout_s: float = Field(30.0, gt=0)

    @model_validator(mode="after")
    def _check(self) -> PeerConfig:
        if (self.bind is None) == (self.connect is None):
            raise ValueError("peer: give exactly one of 'bind' and 'connect'")
        if (self.secret_file is None) == (self.secret_env is None):
            raise ValueError("peer: give exactly one of 'secret_file' and 'secret_env'")
        if self.timeout_s <= 2 * self.heartbeat_s:
            raise ValueError("peer.timeout_s must exceed twice peer.heartbeat_s")
        if self.allow_auth_downgrade and self.auth != "hmac":
            # a forgotten override would silently allow the next switch to HMAC: refuse it
            raise ValueError(
                'peer.allow_auth_downgrade applies only with peer.auth = "hmac"; remove it'
            )
        return self


class KeyStoreConfig(_Section):
    path: Path
    busy_timeout_ms: int = Field(10_000, gt=0)


class TelemetryConfig(_Section):
    """The node's telemetry hub: public PUB endpoint, clone snapshot, internal endpoint."""

    endpoint: str = "tcp://127.0.0.1:0"
    snapshot: str = "tcp://127.0.0.1:0"
    internal: str = ""  # default: an ipc:// path next to the key store
    interval_s: float = Field(1.0, gt=0)


class CommandConfig(_Section):
    """The node's command socket (ROUTER) that the node controller forwards commands to."""

    endpoint: str = "tcp://127.0.0.1:0"


class PipelineConfig(_Section):
    """Framing, finite-key block size, security parameters, queue bounds."""

    frame_slots: int = Field(1 << 24, ge=1 << 10, le=1 << 34)
    block_bits: int = Field(100_000, ge=1024, le=1 << 28, description="sifted key bits (n_X)")
    eps_sec: float = Field(1e-10, gt=0, lt=1)
    eps_cor: float = Field(1e-12, gt=0, lt=1)
    queue_frames: int = Field(8, ge=1, le=1024, description="frames in flight between processes")
    max_blocks_in_flight: int = Field(2, ge=1, le=64)
    qber_abort: float = Field(0.11, gt=0, lt=0.5)
    # Reconciliation starting efficiency (blind rounds of 0.02 follow), with the R 0.9 DE code:
    # at 1 % QBER, planned at the true QBER (pipeline.reconciliation.reconcile_loopback, frames
    # of 2^17): start 1.09 -> f 1.117, 1 of 48 frames lost; 1.11 -> f 1.125, 0 of 96;
    # 1.12 -> f 1.130, 0 of 96; 1.15 -> f 1.151, 0 of 48. On the link a block's frames start
    # at the 70 % upper bound of its test-basis QBER, Bob estimates each frame's QBER from the
    # syndrome and asks for punctured reveals up to the 95 % bound's reach
    # (pipeline.block_stages.plan_counts), so f on the link is higher (about 1.16-1.22).
    f_target: float = Field(1.12, ge=1.0, le=2.0)


class NodeConfig(_Section):
    node: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$")
    role: Literal["alice", "bob"]
    bench: Path
    peer: PeerConfig
    keystore: KeyStoreConfig
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig)
    command: CommandConfig = Field(default_factory=CommandConfig)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    # Where ``qnode node`` starts the node controller (owned by controller/); optional.
    controller: Path | None = None

    @model_validator(mode="after")
    def _check(self) -> NodeConfig:
        if self.peer.id == self.node:
            raise ValueError("peer.id must differ from node")
        return self

    def internal_endpoint(self) -> str:
        if self.telemetry.internal:
            return self.telemetry.internal
        return f"ipc://{self.keystore.path.with_suffix('')}.telemetry.ipc"


_PATH_KEYS = {("bench",), ("controller",), ("keystore", "path"), ("peer", "secret_file")}


def _format(exc: ValidationError, where: str) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"{where}: {key}: {msg}")
    return "\n".join(lines)


def parse_config(data: dict[str, Any], base: Path | None = None, where: str = "node") -> NodeConfig:
    """Validate a node configuration given as a dict; relative paths are taken from ``base``."""
    if base is not None:
        for keys in _PATH_KEYS:
            table = data
            for key in keys[:-1]:
                table = table.get(key) if isinstance(table, dict) else None
            if isinstance(table, dict) and isinstance(table.get(keys[-1]), str):
                path = Path(table[keys[-1]]).expanduser()
                table[keys[-1]] = str(path if path.is_absolute() else base / path)
    try:
        return NodeConfig.model_validate(data)
    except ValidationError as exc:
        raise NodeConfigError(_format(exc, where)) from None


def load_config(path: str | Path) -> NodeConfig:
    """Read and validate ``NODE.toml``."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise NodeConfigError(f"{path}: no such file") from None
    except tomllib.TOMLDecodeError as exc:
        raise NodeConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse_config(data, path.parent.resolve(), str(path))


def check_auth_downgrade(cfg: NodeConfig, record: bool = True) -> str | None:
    """Refuse ``peer.auth = "hmac"`` on a key store that has run under Wegman-Carter.

    Once a node's channel has held one-time pad it never commits key under HMAC alone
    (docs/contracts.md §7); switching its configuration back to HMAC would bypass that, so the
    node does not start (:class:`NodeConfigError` naming the key and why) unless the operator
    sets ``peer.allow_auth_downgrade = true``. Then the override is counted in the key store
    (unless ``record`` is false: a pre-flight check) and the returned warning must be logged.
    None: nothing to refuse or report.
    """
    if cfg.peer.auth != "hmac" or not cfg.keystore.path.exists():
        return None
    from qnode.keystore import KeyStore

    store = KeyStore(cfg.keystore.path, cfg.keystore.busy_timeout_ms)
    try:
        if not store.wc_established():
            return None
        since = store.wc_established_ns()
        when = (
            time.strftime(" since %Y-%m-%d %H:%M:%S UTC", time.gmtime(since / 1e9)) if since else ""
        )
        why = (
            f"the key store {cfg.keystore.path} has run under Wegman-Carter{when}; under "
            "HMAC alone key would be committed on the pre-shared secret's computational "
            "security (no downgrade, docs/contracts.md §7)"
        )
        if not cfg.peer.allow_auth_downgrade:
            raise NodeConfigError(
                f'peer.auth = "hmac" refused: {why}. Keep peer.auth = "wegman-carter", or set '
                "peer.allow_auth_downgrade = true to override (logged and recorded in the store)"
            )
        count = f", override #{store.record_auth_downgrade()} on this store" if record else ""
        return (
            f"AUTH DOWNGRADE by operator override (peer.allow_auth_downgrade = true{count}): {why}"
        )
    finally:
        store.close()
