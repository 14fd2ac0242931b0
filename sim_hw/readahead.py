"""The world's read-ahead: simulate the next chunks on a worker thread, bounded.

The emulated instruments answer on one asyncio thread. Simulating a chunk there blocks every
other request (Alice's symbol queries wait behind Bob's tag fetch) and leaves the photon
simulation idle while tags travel and the nodes work. While the tagger acquires, a worker thread
therefore simulates the chunks after the cursor (the numba kernels release the GIL) into a
queue of at most ``max_chunks`` chunks / ``max_tags`` detections; the event loop hands them to
the tagger in order as they are asked for.

What the tagger sees is unchanged: chunks are contiguous, each simulated with the parameters in
force when it is delivered, from the detector state (dead time, pending afterpulses) at its first
slot. A settings change ``invalidate``s the queue; the next chunk is simulated again from the
cursor's state (:meth:`sim_hw.physics.LinkSimulator.snapshot`), so the output is the same as if
nothing had been simulated ahead.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numba
import numpy as np

from sim_hw.physics import SimState

log = logging.getLogger(__name__)

MAX_AHEAD_CHUNKS = 4
MAX_AHEAD_TAGS = 1 << 21  # ~36 MB of detections (time int64, channel uint8, slot int64)
IDLE_WAIT_S = 0.02  # a worker that cannot simulate (settings pending, realtime) looks again


@dataclass
class Chunk:
    """Detections of slots ``[first, first + n)`` and the simulator state after them."""

    gen: int
    first: int
    n: int
    channel: np.ndarray
    time_ps: np.ndarray
    counts: np.ndarray  # detections per channel (0-4), counted on the thread that simulated
    after: SimState
    period_ps: float
    jitter_ps: float
    delay_ps: int

    @property
    def end(self) -> int:
        return self.first + self.n


class ReadAhead:
    """A bounded queue of simulated chunks after a cursor, filled by one worker thread.

    ``produce(gen, first, state)`` (called on the worker) simulates the chunk starting at
    ``first`` from ``state`` and hands it to :meth:`offer` while it still holds the simulator, or
    returns False when it may not (settings not yet applied, realtime limit). The cursor
    (``slot``, ``state``) is the next slot to deliver and the simulator state there.
    """

    def __init__(
        self,
        produce: Callable[[int, int, SimState | None], bool],
        max_chunks: int = MAX_AHEAD_CHUNKS,
        max_tags: int = MAX_AHEAD_TAGS,
    ) -> None:
        self._produce = produce
        self.max_chunks = max_chunks
        self.max_tags = max_tags
        self._cond = threading.Condition()
        self._queue: deque[Chunk] = deque()
        self._tags = 0
        self._gen = 0
        self._enabled = False
        self._closed = False
        self.slot = 0  # the cursor: next slot to deliver ...
        self.state: SimState | None = None  # ... and the simulator state there (None: fresh)
        self.taken = 0  # chunks delivered that the worker had simulated ahead
        self.inline = 0  # chunks the event loop had to simulate itself
        self.dropped = 0  # chunks simulated ahead and then voided by a settings change
        self._thread: threading.Thread | None = None

    # --- event loop side -------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None and self.max_chunks > 0 and threadsafe_numba():
            self._thread = threading.Thread(target=self._run, name="read-ahead", daemon=True)
            self._thread.start()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(5.0)

    def enable(self, on: bool) -> None:
        """Simulate ahead only while someone fetches (the tagger acquires)."""
        with self._cond:
            self._enabled = on
            if not on:
                self._drop()
            self._cond.notify_all()

    def invalidate(self) -> None:
        """Settings changed: queued chunks are void; new ones start again at the cursor."""
        with self._cond:
            self._drop()
            self._cond.notify_all()

    def restart(self) -> None:
        """A new run: cursor at slot 0 with a fresh detector state."""
        with self._cond:
            self._drop()
            self.slot, self.state = 0, None
            self._cond.notify_all()

    def take(self) -> Chunk | None:
        """The queued chunk at the cursor (the cursor moves past it), or None."""
        with self._cond:
            if not self._queue or self._queue[0].first != self.slot:
                return None
            chunk = self._queue.popleft()
            self._tags -= chunk.channel.size
            self.slot, self.state = chunk.end, chunk.after
            self.taken += 1
            self._cond.notify_all()
            return chunk

    def advance(self, chunk: Chunk) -> None:
        """A chunk simulated inline at the cursor was delivered: move the cursor past it."""
        with self._cond:
            if chunk.first == self.slot:
                self.slot, self.state = chunk.end, chunk.after
                self.inline += 1
            if self._queue and self._queue[0].first != self.slot:
                self._drop()  # cannot happen: the event loop simulates only at an empty queue
            self._cond.notify_all()

    def stats(self) -> dict[str, int | bool]:
        return {"running": self.running, "queued": len(self._queue), "taken": self.taken,
                "inline": self.inline, "dropped": self.dropped}  # fmt: skip

    @property
    def running(self) -> bool:
        """The worker is alive and enabled (it fills the queue whenever there is room)."""
        return self._enabled and self._thread is not None and self._thread.is_alive()

    @property
    def gen(self) -> int:
        return self._gen

    @property
    def queued(self) -> int:
        return len(self._queue)

    # --- worker ----------------------------------------------------------------------------
    def _drop(self) -> None:
        self.dropped += len(self._queue)
        self._queue.clear()
        self._tags = 0
        self._gen += 1

    def _tail(self) -> tuple[int, int, SimState | None] | None:
        """Where the next chunk starts, if the queue has room (caller holds the lock)."""
        if not self._enabled or self._closed:
            return None
        if len(self._queue) >= self.max_chunks or self._tags >= self.max_tags:
            return None
        if self._queue:
            last = self._queue[-1]
            return self._gen, last.end, last.after
        return self._gen, self.slot, self.state

    def _run(self) -> None:
        numba.set_num_threads(1)  # the nodes need the other core (see World.advance_chunk)
        while True:
            with self._cond:
                while not self._closed and (tail := self._tail()) is None:
                    self._cond.wait()
                if self._closed:
                    return
            try:
                progress = self._produce(*tail)
            except Exception:  # noqa: BLE001 - the inline path still works without read-ahead
                log.exception("read-ahead stopped")
                return
            if not progress:
                with self._cond:
                    self._cond.wait(IDLE_WAIT_S)

    def offer(self, chunk: Chunk) -> None:
        """Queue a chunk simulated ahead if it still continues the queue (worker side, called
        while the simulator is held, so the event loop never simulates the same chunk again)."""
        with self._cond:
            expected = self._tail()
            if expected is not None and expected[:2] == (chunk.gen, chunk.first):
                self._queue.append(chunk)
                self._tags += chunk.channel.size


@numba.njit(cache=True, parallel=True)
def _touch(a):  # pragma: no cover - numba
    for i in numba.prange(a.size):
        a[i] = i


def threadsafe_numba() -> bool:
    """Two threads may run parallel kernels at once only on the tbb and omp layers."""
    try:
        layer = numba.threading_layer()
    except ValueError:  # no parallel kernel has run yet: the layer is chosen on the first
        _touch(np.empty(2, np.int64))
        layer = numba.threading_layer()
    return layer in ("tbb", "omp")
