"""Control-plane commands: validated with pydantic, authorised per CURVE client role.

A command is a msgpack map ``{"cmd": NAME, "rid": any, ...arguments}``; the reply is
``{"rid": ..., "ok": true, "result": {...}}`` or ``{"rid": ..., "ok": false, "error": str}``.
Anything that does not validate (unknown name, missing or out-of-range argument, extra field,
not msgpack, not a map) gets an error reply; nothing a client sends can raise out of
``parse_command``. Ranges follow the instrument contracts (docs/contracts.md §2).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from qnode.codec import CodecError, unpackb


class _Cmd(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rid: Any = None


class Start(_Cmd):
    cmd: Literal["start"]


class Stop(_Cmd):
    cmd: Literal["stop"]


class Pause(_Cmd):
    cmd: Literal["pause"]


class Resume(_Cmd):
    cmd: Literal["resume"]


class QueryState(_Cmd):
    cmd: Literal["state"]


class QueryAlarms(_Cmd):
    cmd: Literal["alarms"]


class Ping(_Cmd):
    cmd: Literal["ping"]


class SetAttenuation(_Cmd):
    cmd: Literal["set_attenuation"]
    db: float = Field(ge=0.0, le=60.0, description="attenuation in dB (8156A range)")


class SetIntensities(_Cmd):
    cmd: Literal["set_intensities"]
    signal: float = Field(gt=0.0, le=10.0)
    decoy: float = Field(ge=0.0, le=10.0)
    vacuum: float = Field(0.0, ge=0.0, le=10.0)

    @model_validator(mode="after")
    def _ordered(self) -> SetIntensities:
        # Decoy-state BB84 needs mu_signal > mu_decoy > mu_vacuum (Lo-Ma-Chen 2005).
        if not self.signal > self.decoy > self.vacuum:
            raise ValueError("need signal > decoy > vacuum")
        return self


class SetProbabilities(_Cmd):
    cmd: Literal["set_probabilities"]
    signal: float = Field(ge=0.0, le=1.0)
    decoy: float = Field(ge=0.0, le=1.0)
    vacuum: float = Field(ge=0.0, le=1.0)
    basis_z: float | None = Field(None, gt=0.0, lt=1.0)

    @model_validator(mode="after")
    def _sum(self) -> SetProbabilities:
        if abs(self.signal + self.decoy + self.vacuum - 1.0) > 1e-9:
            raise ValueError("signal + decoy + vacuum must sum to 1")
        return self


class SetBlockSize(_Cmd):
    cmd: Literal["set_block_size"]
    n_bits: int = Field(ge=1024, le=1 << 28, description="sifted bits per finite-key block")


class SetThresholds(_Cmd):
    cmd: Literal["set_thresholds"]
    qber_threshold: float | None = Field(None, gt=0.0, lt=0.5)
    qber_blocks: int | None = Field(None, ge=1)
    pool_low_keys: int | None = Field(None, ge=0)


class Reload(_Cmd):
    cmd: Literal["reload"]


Command = Annotated[
    Start
    | Stop
    | Pause
    | Resume
    | QueryState
    | QueryAlarms
    | Ping
    | SetAttenuation
    | SetIntensities
    | SetProbabilities
    | SetBlockSize
    | SetThresholds
    | Reload,
    Field(discriminator="cmd"),
]
_ADAPTER: TypeAdapter[Command] = TypeAdapter(Command)

READ_ONLY = frozenset({"state", "alarms", "ping"})
# Commands the controller forwards to the node processes (the rest it answers itself).
FORWARDED = frozenset(
    {"start", "stop", "pause", "resume", "set_attenuation", "set_intensities",
     "set_probabilities", "set_block_size"}
)  # fmt: skip
KNOWN = READ_ONLY | FORWARDED | {"set_thresholds", "reload"}


class CommandError(ValueError):
    """A command that cannot be executed; ``str()`` is the error reply text."""

    def __init__(self, message: str, rid: Any = None) -> None:
        super().__init__(message)
        self.rid = rid


def parse_command(raw: bytes) -> Any:
    """Decode and validate one command; raise CommandError with a readable reason."""
    try:
        msg = unpackb(raw)
    except CodecError as exc:
        raise CommandError(f"malformed message: {exc}") from None
    if not isinstance(msg, dict):
        raise CommandError("a command must be a map with a 'cmd' field")
    rid = msg.get("rid")
    name = msg.get("cmd")
    if not isinstance(name, str):
        raise CommandError("missing 'cmd' field", rid)
    if name not in KNOWN:
        raise CommandError(f"unknown command {name!r}", rid)
    try:
        return _ADAPTER.validate_python(msg)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'][1:]) or name}: {err['msg']}"
            for err in exc.errors()
        )
        raise CommandError(f"invalid {name}: {problems}", rid) from None


def authorise(cmd_name: str, role: str | None) -> None:
    """Read-only clients may only query; operators may do everything. None = CURVE off."""
    if role is None or role == "operator":
        return
    if role == "read" and cmd_name in READ_ONLY:
        return
    raise CommandError(f"not authorised: role {role!r} may not {cmd_name!r}")


def node_message(cmd: Any) -> dict[str, Any]:
    """The message forwarded to the node's command socket (docs/controller.md)."""
    args = cmd.model_dump(exclude={"cmd", "rid"}, exclude_none=True)
    return {"cmd": cmd.cmd, "args": args}
