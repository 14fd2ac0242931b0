"""Instrument health in the acquisition process: every role polled, every fault on telemetry.

The frame loop talks to one instrument all the time (Bob's tagger, Alice's source); the others
(attenuator, detector module) are touched only at start-up and by commands, so a fault there, or
an entry in any instrument's error queue, would go unseen. ``InstrumentMonitor`` runs one thread
per role that calls ``Role.poll()`` (cheap live figures, then the error queue) every interval,
times it, and publishes ``con/resource/<node>/instrument/<role>/`` after every poll and every
fault: state, the fault with its device and command, per-instrument fault count, the poll's
latency (a ``slow`` instrument shows there) and the figures read. A failed exchange leaves the
driver's adapter marked broken, so the next poll reconnects; the state returns to ``running``
with the first clean poll. The frame loop reports its own faults through the same object (one
lock, one publisher), and such a fault is cleared by the loop (when it has restarted the
instrument) or by a clean poll once the loop has been quiet for two intervals.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from drivers.errors import InstrumentCommandError, InstrumentError
from hal.interfaces import Role
from qnode.bus import topic

log = logging.getLogger("qnode.acquisition.monitor")


class SharedPublisher:
    """A telemetry publisher shared by threads: one ZeroMQ socket, used under one lock."""

    def __init__(self, pub: Any) -> None:
        self._pub = pub
        self._lock = threading.Lock()
        self._closed = False

    def publish(self, topic_name: str, payload: dict[str, Any]) -> int:
        """Send one message (nothing once closed: a poll thread may outlive the loop)."""
        with self._lock:
            return 0 if self._closed else self._pub.publish(topic_name, payload)

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._pub.close()


def describe(exc: BaseException) -> dict[str, Any]:
    """A fault as telemetry: exception kind, device, command, detail (and the error code)."""
    out: dict[str, Any] = {
        "kind": type(exc).__name__,
        "device": getattr(exc, "device", None),
        "command": getattr(exc, "command", None),
        "detail": getattr(exc, "detail", None) or str(exc),
    }
    if isinstance(exc, InstrumentCommandError):
        out["code"] = exc.code
    return out


class InstrumentMonitor:
    """Health of a node's instruments: periodic polls plus the frame loop's own reports."""

    def __init__(
        self,
        roles: dict[str, Role],
        node: str,
        publish: Callable[[str, dict[str, Any]], Any],
        interval_s: float = 1.0,
    ) -> None:
        self.roles = dict(roles)
        self.node = node
        self.interval_s = interval_s
        self._publish = publish
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._state: dict[str, dict[str, Any]] = {
            name: {"instrument": name, "device": role.device, "state": "running", "fault": None,
                   "faults": 0, "last_fault": None, "latency_ms": None, "polls": 0}
            for name, role in self.roles.items()
        }  # fmt: skip
        self._loop_fault_at: dict[str, float | None] = dict.fromkeys(self.roles)

    # -- reports -------------------------------------------------------------------------------
    @property
    def faults(self) -> int:
        """Faults counted since start, all instruments."""
        with self._lock:
            return sum(s["faults"] for s in self._state.values())

    def state(self, name: str) -> dict[str, Any]:
        with self._lock:
            return dict(self._state[name])

    def fault(self, name: str, exc: BaseException, by: str = "loop") -> None:
        """Count and publish a fault of ``name`` (``by``: ``loop`` or ``monitor``)."""
        with self._lock:
            s = self._state[name]
            s["state"] = "fault"
            s["fault"] = f"{type(exc).__name__}: {exc}"
            s["faults"] += 1
            s["last_fault"] = describe(exc)
            if by == "loop":
                self._loop_fault_at[name] = time.monotonic()
            self._send(name)

    def running(self, name: str, by: str = "loop", figures: dict[str, Any] | None = None) -> None:
        """Publish ``name`` as running (a clean poll, or the loop restarted it)."""
        with self._lock:
            s = self._state[name]
            loop_at = self._loop_fault_at[name]
            quiet = loop_at is None or time.monotonic() - loop_at > 2 * self.interval_s
            if by == "loop" or quiet:
                s["state"], s["fault"] = "running", None
                self._loop_fault_at[name] = None
            if figures:
                s.update(figures)
            self._send(name)

    def _send(self, name: str) -> None:
        if self._stop.is_set():
            return  # the publisher may be closing
        self._publish(topic("con", "resource", self.node, f"instrument/{name}"),
                      dict(self._state[name]))  # fmt: skip

    # -- polling -------------------------------------------------------------------------------
    def poll_once(self, name: str) -> None:
        """Poll one role now and report the outcome (never raises)."""
        role = self.roles[name]
        t0 = time.perf_counter()
        try:
            figures = role.poll()
        except InstrumentError as exc:
            self._latency(name, t0)
            log.warning("%s: %s", name, exc)
            self.fault(name, exc, by="monitor")
            return
        except Exception as exc:  # a driver bug must not end the monitor: report it as a fault
            self._latency(name, t0)
            log.exception("%s: health poll failed", name)
            self.fault(name, exc, by="monitor")
            return
        self._latency(name, t0)
        self.running(name, by="monitor", figures=figures)

    def _latency(self, name: str, t0: float) -> None:
        with self._lock:
            s = self._state[name]
            s["latency_ms"] = round((time.perf_counter() - t0) * 1e3, 2)
            s["polls"] += 1

    def _run(self, name: str) -> None:
        while not self._stop.wait(self.interval_s):
            self.poll_once(name)

    def start(self) -> InstrumentMonitor:
        """One daemon thread per role (a stalled instrument holds up only its own polls)."""
        for name in self.roles:
            thread = threading.Thread(target=self._run, args=(name,), daemon=True,
                                      name=f"monitor-{name}")  # fmt: skip
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self, timeout_s: float = 1.0) -> None:
        """Stop polling; threads blocked in an exchange end with it (daemon threads)."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout_s)
        self._threads.clear()
