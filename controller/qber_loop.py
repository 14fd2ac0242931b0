"""The first closed loop of the management plane: QBER too high -> hold key production.

Rule (docs/controller.md): QBER above ``loop.qber_threshold`` for ``loop.qber_blocks``
consecutive blocks holds the node (node command ``hold``) and raises the ``qber_high`` alarm.
A held node keeps sifting but closes no block: no key is made, yet the test-basis (Z) bits,
disclosed in sifting anyway, keep measuring the QBER. The check runs on them: from the node's
``link`` telemetry (cumulative matched Z detections and Z QBER per intensity class) the loop
counts the test bits sifted since the hold; once ``loop.check_bits`` are in, their QBER at or
under the threshold resumes key production and clears the alarm, above it starts a new window.
Blocks that were in flight when the hold came finish while held and decide nothing.

A node that refuses ``hold`` is paused instead (``pause``: nothing is measured while paused).
Then a QBER estimate at or under the threshold reported while paused resumes, or, every
``loop.recheck_s``, the loop resumes *on probation* and the next block decides (under: alarm
cleared; over: paused again at once, without the N-block grace).
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

from controller.config import LoopConfig
from controller.state import NodeState

log = logging.getLogger("qnode.controller.loop")

CLASSES = ("signal", "decoy", "vacuum")
HOLD_RESEND_S = 2.0  # a node reporting "not holding" while held gets the hold again after this
ADOPT_AFTER_S = 5.0  # a node still holding this long after our last resume: held before restart


def _number(value: Any) -> bool:
    """A finite int or float (telemetry may carry NaN or infinity: not a count, not a QBER)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def z_counts(payload: dict[str, Any]) -> tuple[int, int] | None:
    """Cumulative test-basis (Z) detections and errors, summed over the intensity classes, from
    a ``link`` telemetry payload (``matched_z_<class>``, ``qber_z_<class>``); None without them,
    or when a class has detections but no QBER in 0 ... 1 (its errors unknown: never taken as
    none, which could pass a check). The errors are exact: ``qber_z`` is errors / detections in
    double precision."""
    bits = errors = 0
    found = False
    for name in CLASSES:
        n, q = payload.get(f"matched_z_{name}"), payload.get(f"qber_z_{name}")
        if not _number(n) or n < 0:
            continue
        found = True
        bits += int(n)
        if int(n):
            if not _number(q) or not 0.0 <= q <= 1.0:
                return None
            errors += round(float(q) * int(n))
    return (bits, errors) if found else None


_ABORT_REASON = re.compile(r"\bQBER(?:_[XZ])? ([0-9.]+) (?:above|>) ")
_UNKNOWN_REASON = re.compile(r"\bQBER(?:_[XZ])? unknown\b")


def aborted_block_qber(payload: dict[str, Any]) -> float | None:
    """The QBER to judge a finished block by when its telemetry carries no number: the QBER of a
    block the pipeline failed for exceeding its abort threshold (``status: failed``, ``reason:
    "QBER_Z 0.1300 above 0.11"``), or ``inf`` for a block whose QBER is unknown because the link
    was too noisy to measure it: ``qber: null`` with ``qber_unknown`` (no LDPC frame decoded,
    docs/telemetry.md) or a ``QBER_Z unknown`` failure. Unknown is never passing: ``inf`` is
    above every threshold. None: the block says nothing about the QBER (e.g. a reset)."""
    if payload.get("qber") is None and isinstance(payload.get("qber_unknown"), str):
        return math.inf
    reason = payload.get("reason")
    if payload.get("status") != "failed" or not isinstance(reason, str):
        return None
    if _UNKNOWN_REASON.search(reason):
        return math.inf
    match = _ABORT_REASON.search(reason)  # also behind a prefix such as 'peer: '
    return float(match.group(1)) if match else None


def _qber_text(qber: float) -> str:
    return f"{qber:.4f}" if math.isfinite(qber) else "unknown (no decoded frame)"


class QberLoop:
    """State machine of the loop; ``send`` forwards a command to the node and returns its reply
    map, or None when the node could not be reached (errors tolerated)."""

    def __init__(
        self,
        config: Callable[[], LoopConfig],
        state: NodeState,
        send: Callable[[dict[str, Any]], Awaitable[dict[str, Any] | None]],
        publish_alarm: Callable[[str], None],
    ) -> None:
        self._config, self.state, self._send, self._publish = config, state, send, publish_alarm
        self.high_blocks = 0
        self.probation = False
        self.mode: str | None = None  # "hold" or "pause": how the loop stopped key production
        self._paused_at = 0.0
        self._hold_sent = 0.0
        self._resumed_at = -ADOPT_AFTER_S  # last resume sent (loop or operator)
        self._window: tuple[int, int] | None = None  # (test bits, errors) at the window start

    async def on_block(self, qber: float) -> None:
        """One finished block's QBER (``inf``: unknown, counted as above the threshold)."""
        cfg = self._config()
        if not cfg.enabled:
            return
        if self.state.paused_by_loop and self.mode == "hold":
            return  # in flight when the hold came: measured before it, decides nothing
        if qber <= cfg.qber_threshold:  # False for inf (unknown) and NaN: never passing
            self.high_blocks = 0
            if self.probation or self.state.paused_by_loop or self.state.alarms["qber_high"].active:
                await self._resume(f"block QBER {qber:.4f} under threshold")
            return
        self.high_blocks += 1
        if self.probation or (
            self.high_blocks >= cfg.qber_blocks and not self.state.paused_by_loop
        ):
            self.probation = False
            message = (
                f"QBER {_qber_text(qber)} above {cfg.qber_threshold} for {self.high_blocks} blocks"
            )
            await self._stop_production(message)

    async def _stop_production(self, message: str) -> None:
        self.state.paused_by_loop = self.state.paused = True
        self._paused_at = time.monotonic()
        self._window = None
        if self.state.set_alarm("qber_high", True, message):
            self._publish("qber_high")
        log.warning("closed loop: %s; holding key production", message)
        self._hold_sent = time.monotonic()
        reply = await self._send({"cmd": "hold", "args": {"reason": "qber_high"}})
        if reply is not None and reply.get("ok"):
            self.mode = "hold"
            return
        log.warning("node did not take 'hold' (%s); pausing it instead", reply)
        self.mode = "pause"
        await self._send({"cmd": "pause", "args": {"reason": "qber_high"}})

    async def on_link(self, payload: dict[str, Any]) -> None:
        """The node's periodic ``link`` summary: the check while held (see module docstring)."""
        cfg = self._config()
        if not cfg.enabled:
            return
        if not self.state.paused_by_loop:
            if payload.get("holding") is True and self._since(self._resumed_at) > ADOPT_AFTER_S:
                self._adopt_hold()
            return
        if self.mode != "hold":
            qber = payload.get("qber")
            if _number(qber):
                await self.on_estimate(float(qber))
            return
        if payload.get("holding") is False:
            # Published before the hold reached the node, or post-processing restarted since.
            if self._since(self._hold_sent) > HOLD_RESEND_S:
                self._hold_sent = time.monotonic()
                await self._send({"cmd": "hold", "args": {"reason": "qber_high"}})
            return
        counts = z_counts(payload)
        if counts is None:
            return
        if self._window is None or counts[0] < self._window[0]:  # first, or counters restarted
            self._window = counts
            return
        bits, errors = counts[0] - self._window[0], counts[1] - self._window[1]
        if bits < cfg.check_bits:
            return
        qber = errors / bits
        self.state.metrics["loop_check_qber"] = qber
        self.state.metrics["loop_check_bits"] = float(bits)
        if qber <= cfg.qber_threshold:
            await self._resume(f"test-basis QBER {qber:.4f} over {bits} bits while held")
        else:
            log.info("closed loop: check failed, test-basis QBER %.4f over %d bits", qber, bits)
            self._window = counts

    def _adopt_hold(self) -> None:
        """The node holds but we did not hold it: a hold from before this controller restarted.
        Take it over (alarm up, checks running), so a good check can release it."""
        self.state.paused_by_loop = self.state.paused = True
        self.mode, self._window, self._paused_at = "hold", None, time.monotonic()
        self._hold_sent = time.monotonic()
        message = "node holds key production (closed loop before a controller restart)"
        if self.state.set_alarm("qber_high", True, message):
            self._publish("qber_high")
        log.warning("closed loop: %s; checking the test-basis QBER", message)

    def note_resume(self) -> None:
        """A resume went to the node (loop or operator): its summaries may say 'holding' a
        moment longer; do not take that for a hold to adopt."""
        self._resumed_at = time.monotonic()

    @staticmethod
    def _since(t: float) -> float:
        return time.monotonic() - t

    async def on_estimate(self, qber: float) -> None:
        """A QBER estimate that is not a finished block, reported while paused (pause mode)."""
        cfg = self._config()
        if cfg.enabled and self.state.paused_by_loop and self.mode != "hold":
            if qber <= cfg.qber_threshold:
                await self._resume(f"QBER estimate {qber:.4f} back under threshold")

    async def recheck(self) -> None:
        """Called every tick: paused (not held) for ``recheck_s``, resume on probation."""
        if not self.state.paused_by_loop or self.probation or self.mode == "hold":
            return
        if time.monotonic() - self._paused_at < self._config().recheck_s:
            return
        self.probation = True
        self.state.paused_by_loop = self.state.paused = False
        self.note_resume()
        await self._send({"cmd": "resume", "args": {"reason": "qber_recheck"}})

    async def _resume(self, why: str) -> None:
        was_paused = self.state.paused_by_loop
        self.probation = False
        self.high_blocks = 0
        self._window = None
        self.mode = None
        self.state.paused_by_loop = self.state.paused = False
        if was_paused:
            self.note_resume()
            await self._send({"cmd": "resume", "args": {"reason": "qber_ok"}})
        if self.state.set_alarm("qber_high", False, why):
            self._publish("qber_high")
        log.info("closed loop: %s; key production resumed", why)
