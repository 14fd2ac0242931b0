"""Named instrument exceptions (docs/contracts.md §3).

Every exception carries ``.device`` (the driver's instrument name) and ``.command`` (the text
that was being sent when it happened) and names both in its message, so a technician reading a
log line knows which box to look at and what it was asked.
"""

from __future__ import annotations

from qnode.redact import redact_command


class InstrumentError(Exception):
    """Base of every driver error: which device, which command, what went wrong."""

    def __init__(self, device: str, command: str, detail: str = "") -> None:
        command = redact_command(command)  # a secret setting never reaches a log via an error
        self.device = device
        self.command = command
        self.detail = detail
        text = f"{device}: {detail}" if detail else device
        super().__init__(f"{text} (command {command!r})")


class InstrumentTimeout(InstrumentError):
    """The instrument did not answer within the timeout."""


class InstrumentDisconnected(InstrumentError):
    """The connection is gone (peer closed, reset, refused, pty hung up)."""


class InstrumentProtocolError(InstrumentError):
    """The reply does not parse: garbage bytes, a bad block header, a value of the wrong type."""


class InstrumentCommandError(InstrumentError):
    """The instrument reported an error (SCPI error queue or the detector's ERROR line)."""

    def __init__(self, device: str, command: str, code: int, text: str) -> None:
        self.code = code
        self.text = text
        super().__init__(device, command, f"instrument error {code},{text!r}")
