"""The first closed loop of the management plane: QBER too high -> pause key production.

Rule (docs/controller.md): QBER above ``loop.qber_threshold`` for ``loop.qber_blocks``
consecutive blocks pauses the node and raises the ``qber_high`` alarm. A check then decides
when to resume: a QBER estimate at or under the threshold reported while paused, or, every
``loop.recheck_s``, a resume *on probation* in which the next block decides (under: alarm
cleared; over: paused again at once, without the N-block grace).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from controller.config import LoopConfig
from controller.state import NodeState

log = logging.getLogger("qnode.controller.loop")


class QberLoop:
    """State machine of the loop; ``send`` forwards a command to the node (errors tolerated)."""

    def __init__(
        self,
        config: Callable[[], LoopConfig],
        state: NodeState,
        send: Callable[[dict[str, Any]], Awaitable[Any]],
        publish_alarm: Callable[[str], None],
    ) -> None:
        self._config, self.state, self._send, self._publish = config, state, send, publish_alarm
        self.high_blocks = 0
        self.probation = False
        self._paused_at = 0.0

    async def on_block(self, qber: float) -> None:
        """One finished block's QBER."""
        cfg = self._config()
        if not cfg.enabled:
            return
        if qber <= cfg.qber_threshold:
            self.high_blocks = 0
            if self.probation or self.state.paused_by_loop:
                await self._resume(f"block QBER {qber:.4f} under threshold")
            return
        self.high_blocks += 1
        if self.probation or (
            self.high_blocks >= cfg.qber_blocks and not self.state.paused_by_loop
        ):
            self.probation = False
            message = f"QBER {qber:.4f} above {cfg.qber_threshold} for {self.high_blocks} blocks"
            self.state.paused_by_loop = self.state.paused = True
            self._paused_at = time.monotonic()
            if self.state.set_alarm("qber_high", True, message):
                self._publish("qber_high")
            log.warning("closed loop: %s; pausing key production", message)
            await self._send({"cmd": "pause", "args": {"reason": "qber_high"}})

    async def on_estimate(self, qber: float) -> None:
        """A QBER estimate that is not a finished block (e.g. published while paused)."""
        cfg = self._config()
        if cfg.enabled and self.state.paused_by_loop and qber <= cfg.qber_threshold:
            await self._resume(f"QBER estimate {qber:.4f} back under threshold")

    async def recheck(self) -> None:
        """Called every tick: after ``recheck_s`` paused, resume on probation."""
        if not self.state.paused_by_loop or self.probation:
            return
        if time.monotonic() - self._paused_at < self._config().recheck_s:
            return
        self.probation = True
        self.state.paused_by_loop = self.state.paused = False
        await self._send({"cmd": "resume", "args": {"reason": "qber_recheck"}})

    async def _resume(self, why: str) -> None:
        was_paused = self.state.paused_by_loop
        self.probation = False
        self.high_blocks = 0
        self.state.paused_by_loop = self.state.paused = False
        if was_paused:
            await self._send({"cmd": "resume", "args": {"reason": "qber_ok"}})
        if self.state.set_alarm("qber_high", False, why):
            self._publish("qber_high")
        log.info("closed loop: %s; key production resumed", why)
