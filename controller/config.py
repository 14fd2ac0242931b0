"""Controller configuration (``CONTROLLER.toml``), validated with pydantic.

Every section is a model with ``extra="forbid"`` so a misspelt key is refused by name instead of
being silently ignored; relative paths are resolved against the configuration file's directory.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class ConfigError(ValueError):
    """The controller configuration is missing, unreadable or invalid (message names the key)."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class KmsConfig(_Section):
    """ETSI GS QKD 014 key delivery: identity, TLS material, SAEs served, advertised limits."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(8443, ge=0, le=65535)
    kme_id: str
    peer_kme_id: str
    cert: Path
    key: Path
    ca: Path
    local_saes: list[str] = Field(min_length=1)
    peer_saes: list[str] = Field(default_factory=list)
    key_size: int = Field(256, gt=0)
    min_key_size: int = Field(64, gt=0)
    max_key_size: int = Field(8192, gt=0)
    max_key_per_request: int = Field(128, gt=0)
    max_key_count: int = Field(1_000_000, gt=0)
    # Which committed blocks this KME may issue from as the master's KME (block seq % count ==
    # index); the peer KME takes the other share, so the two never cut the same bits.
    share_index: int = Field(0, ge=0)
    share_count: int = Field(2, ge=1)
    # KME-to-KME channel (key-ID lookups, no key material): ROUTER we bind, peer ROUTER we call.
    sync_bind: str = "tcp://127.0.0.1:0"
    sync_peer: str = ""
    sync_timeout_ms: int = Field(2000, gt=0)

    @model_validator(mode="after")
    def _limits(self) -> KmsConfig:
        for name in ("key_size", "min_key_size", "max_key_size"):
            if getattr(self, name) % 8:
                raise ValueError(f"kms.{name} must be a multiple of 8")
        if not self.min_key_size <= self.key_size <= self.max_key_size:
            raise ValueError("kms: need min_key_size <= key_size <= max_key_size")
        if self.share_index >= self.share_count:
            raise ValueError("kms.share_index must be < kms.share_count")
        if set(self.local_saes) & set(self.peer_saes):
            raise ValueError("kms: an SAE cannot be both local and peer")
        return self


class CurveClient(_Section):
    """A CURVE client allowed on telemetry/control: its public key file and its role."""

    name: str
    public_key: Path
    role: Literal["read", "operator"] = "read"


class SecurityConfig(_Section):
    """CurveZMQ on the controller's sockets (telemetry PUB, control ROUTER, KME sync)."""

    curve: bool = True
    server_secret: Path | None = None
    clients: list[CurveClient] = Field(default_factory=list)
    # CURVE public keys of the node's telemetry hub, of the node's command socket and of the
    # peer KME, for the sockets where those use CURVE (None: that socket is plain).
    node_server_public: Path | None = None
    node_command_public: Path | None = None
    peer_kme_public: Path | None = None

    @model_validator(mode="after")
    def _keys(self) -> SecurityConfig:
        if self.curve and self.server_secret is None:
            raise ValueError("security.server_secret is required when security.curve is true")
        return self


class TelemetryConfig(_Section):
    """Where the node publishes (we subscribe) and where the controller publishes alarms/state."""

    node_endpoint: str = ""
    # "connect": publish into the node's telemetry hub (its internal XSUB endpoint);
    # "bind": a PUB socket of our own at ``publish``.
    publish: str = "tcp://127.0.0.1:0"
    publish_mode: Literal["bind", "connect"] = "bind"
    # Optional CURVE-secured relay: a PUB bound here re-publishes every message of this node
    # (the node's and the controller's, frames unchanged) to the allowed clients only.
    relay: str = ""
    peer_lost_s: float = Field(5.0, gt=0)


class ControlConfig(_Section):
    """Operator command socket (ROUTER) and the node's command socket we forward to."""

    bind: str = "tcp://127.0.0.1:0"
    node_endpoint: str = ""
    node_timeout_ms: int = Field(3000, gt=0)


class HttpConfig(_Section):
    """Plain-HTTP read-only state tree (RESTCONF-like) and Prometheus ``/metrics``."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(0, ge=0, le=65535)


class LoopConfig(_Section):
    """The QBER closed loop and pool thresholds (management plane)."""

    qber_threshold: float = Field(0.08, gt=0, lt=0.5)
    qber_blocks: int = Field(3, ge=1)
    recheck_s: float = Field(10.0, gt=0)
    # test-basis bits per check while held (above 1e9 a held node would in effect never resume)
    check_bits: int = Field(20_000, ge=100, le=1_000_000_000)
    pool_low_keys: int = Field(100, ge=0)
    enabled: bool = True


class ControllerConfig(_Section):
    """The whole controller configuration; ``node`` is the node id used in telemetry topics."""

    node: str
    role: Literal["alice", "bob"]
    keystore: Path
    link_id: str = ""
    kms: KmsConfig | None = None
    # CURVE is on unless the file says ``[security] curve = false`` (qnode link --sim does).
    security: SecurityConfig
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig)
    control: ControlConfig = Field(default_factory=ControlConfig)
    http: HttpConfig = Field(default_factory=HttpConfig)
    loop: LoopConfig = Field(default_factory=LoopConfig)

    @model_validator(mode="before")
    @classmethod
    def _secure_by_default(cls, data: object) -> object:
        if isinstance(data, dict) and "security" not in data:
            data = {**data, "security": {}}
        return data


def _resolve_paths(data: dict, base: Path) -> None:
    """Make relative path values absolute against ``base`` (in place, recursive)."""
    path_keys = {
        "keystore",
        "cert",
        "key",
        "ca",
        "server_secret",
        "public_key",
        "node_server_public",
        "node_command_public",
        "peer_kme_public",
    }
    for name, value in data.items():
        if isinstance(value, dict):
            _resolve_paths(value, base)
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, dict):
                    _resolve_paths(item, base)
        elif (
            name in path_keys and isinstance(value, str) and value and not Path(value).is_absolute()
        ):
            data[name] = str(base / value)


def parse_config(data: dict, base: Path | None = None) -> ControllerConfig:
    """Validate a configuration mapping; raise ConfigError naming the offending key."""
    data = dict(data)
    if base is not None:
        _resolve_paths(data, base)
    try:
        return ControllerConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"invalid controller config: {problems}") from None


def load_config(path: Path) -> ControllerConfig:
    """Read and validate ``CONTROLLER.toml``."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read controller config {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"controller config {path} is not valid TOML: {exc}") from None
    return parse_config(data, base=Path(path).resolve().parent)
