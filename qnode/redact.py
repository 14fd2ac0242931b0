"""Keep secrets out of logs and exception texts.

The pulse source's symbol key (``:SOUR:RAND:KEY``, set-only) determines Alice's symbols: whoever
reads it knows her key bits. Drivers, emulators and exceptions show instrument commands to help a
technician, so every path that shows a command passes it through :func:`redact_command` first.
"""

from __future__ import annotations

import re

# SCPI headers whose arguments are secret (long or short form, any case, optional leading ':').
_SECRET = re.compile(rb"^(\s*:?SOUR(?:CE)?:RAND(?:OM)?:KEY)\b[^\n]*", re.IGNORECASE)
REDACTED = "<redacted>"


def redact_command(command: str | bytes) -> str | bytes:
    """``command`` with the arguments of a secret-carrying command replaced by ``<redacted>``."""
    if isinstance(command, str):
        raw = command.encode("utf-8", "surrogateescape")
        return _SECRET.sub(rb"\1 " + REDACTED.encode(), raw).decode("utf-8", "surrogateescape")
    return _SECRET.sub(rb"\1 " + REDACTED.encode(), command)
