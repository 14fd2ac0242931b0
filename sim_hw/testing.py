"""Helpers for tests that need a simulated world: as a subprocess, or in a thread.

``running_world(...)`` starts ``python -m qnode sim serve --json`` (the interpreter running the
tests), waits for its ready line and yields a ``WorldHandle``; on exit it sends SIGTERM and
checks the process ended. This is the real thing a node would talk to.
``world_in_thread(...)`` runs the same ``WorldServer`` on an asyncio loop in a daemon thread of
the test process: faster to start, and the ``World`` object is reachable for assertions.

Both handles offer ``.resources`` (role -> pyvisa resource string), ``.serial_socket``
(``ASRLsocket://`` alternative for the detector), ``.control`` (ZeroMQ endpoint),
``.inject_fault(instrument, kind, count=None, delay_ms=None, code=None, text=None)``,
``.clear_faults(instrument=None, kind=None)`` and ``.state()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any


class WorldHandle:
    """A running world reached through its ready line and control endpoint."""

    def __init__(self, info: dict[str, Any]) -> None:
        self.info = info
        self.resources: dict[str, str] = info["instruments"]
        self.serial_socket: dict[str, str] = info["serial_socket"]
        self.pty_links: dict[str, str] = info["pty_links"]
        self.control: str = info["control"]

    def request(self, request: dict[str, Any]) -> dict[str, Any]:
        from sim_hw.serve_cli import control_request

        reply = control_request(self.control, request)
        if not reply.get("ok"):
            raise RuntimeError(f"world control refused {request}: {reply.get('error')}")
        return reply

    def inject_fault(
        self,
        instrument: str,
        kind: str,
        count: int | None = None,
        delay_ms: float | None = None,
        code: int | None = None,
        text: str | None = None,
    ) -> dict[str, Any]:
        request = {"op": "inject", "instrument": instrument, "kind": kind, "count": count,
                   "delay_ms": delay_ms, "code": code, "text": text}  # fmt: skip
        return self.request(request)["fault"]

    def clear_faults(self, instrument: str | None = None, kind: str | None = None) -> None:
        self.request({"op": "clear", "instrument": instrument, "kind": kind})

    def state(self) -> dict[str, Any]:
        return self.request({"op": "state"})


class WorldProcess(WorldHandle):
    """``qnode sim serve`` as a child process."""

    def __init__(self, info: dict[str, Any], process: subprocess.Popen) -> None:
        super().__init__(info)
        self.process = process


def serve_command(
    preset: str | None = "gys",
    link: str | None = None,
    distance_km: float | None = None,
    seed: int = 1,
    realtime: bool = False,
) -> list[str]:
    cmd = [sys.executable, "-m", "qnode", "sim", "serve", "--json", "--seed", str(seed)]
    cmd += ["--link", str(link)] if link else ["--preset", str(preset)]
    if distance_km is not None:
        cmd += ["--distance", str(distance_km)]
    if realtime:
        cmd.append("--realtime")
    return cmd


@contextlib.contextmanager
def running_world(
    preset: str | None = "gys",
    link: str | None = None,
    distance_km: float | None = None,
    seed: int = 1,
    realtime: bool = False,
    start_timeout_s: float = 120.0,
) -> Iterator[WorldProcess]:
    """Start ``qnode sim serve --json`` as a subprocess; yield its handle; stop it after."""
    cmd = serve_command(preset, link, distance_km, seed, realtime)
    # stderr goes to a file, never a pipe nobody drains (a full pipe would freeze the world)
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err)
        try:
            line = _read_ready_line(proc, start_timeout_s, err)
            yield WorldProcess(json.loads(line), proc)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()


def _read_ready_line(proc: subprocess.Popen, timeout_s: float, err) -> bytes:
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout_s):
            raise TimeoutError(f"qnode sim serve printed nothing in {timeout_s} s")
    line = proc.stdout.readline()
    if not line:
        err.seek(0)
        text = err.read().decode(errors="replace")
        raise RuntimeError(f"qnode sim serve exited ({proc.wait()}) before ready:\n{text[-2000:]}")
    return line


class WorldThread(WorldHandle):
    """A world served from an asyncio loop in a daemon thread of this process."""

    def __init__(self, info: dict[str, Any], world: Any, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(info)
        self.world = world
        self.loop = loop

    def call(self, fn, *args: Any) -> Any:
        """Run ``fn(*args)`` on the world's loop thread (world state is not thread-safe)."""
        done: Future = Future()

        def run() -> None:
            try:
                done.set_result(fn(*args))
            except BaseException as exc:  # handed back to the caller
                done.set_exception(exc)

        self.loop.call_soon_threadsafe(run)
        return done.result(timeout=60)

    def inject_fault(self, instrument, kind, count=None, delay_ms=None, code=None, text=None):
        return self.world.inject_fault(instrument, kind, count, delay_ms, code, text)

    def clear_faults(self, instrument: str | None = None, kind: str | None = None) -> None:
        self.world.clear_faults(instrument, kind)

    def state(self) -> dict[str, Any]:
        return self.call(self.world.state)


@contextlib.contextmanager
def world_in_thread(
    preset: str | None = "gys",
    link: str | None = None,
    distance_km: float | None = None,
    seed: int = 1,
    realtime: bool = False,
) -> Iterator[WorldThread]:
    """Serve a world on loopback from a thread of the test process."""
    from sim_hw.serve_cli import load_params
    from sim_hw.world import World, WorldServer

    params = load_params(preset if not link else None, link, distance_km)
    world = World(params, seed=seed, realtime=realtime)
    world.warm_up()
    loop = asyncio.new_event_loop()
    ready: Future = Future()
    stop = asyncio.Event()

    async def main() -> None:
        server = WorldServer(world)
        try:
            info = await server.start()
            info["pid"] = os.getpid()
            ready.set_result(info)
            await stop.wait()
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc)
            raise
        finally:
            await server.close()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    try:
        yield WorldThread(ready.result(timeout=60), world, loop)
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()
