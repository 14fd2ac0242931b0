"""Real transports for the emulated instruments: asyncio TCP servers and pseudo-terminals.

- ``TcpEndpoint``: a TCP server on loopback (port 0 = ephemeral). SCPI instruments are reached as
  ``TCPIP::127.0.0.1::PORT::SOCKET``; the serial detector also listens on TCP so pyserial's
  ``socket://`` (pyvisa-py ``ASRLsocket://127.0.0.1:PORT::INSTR``) reaches it.
- ``PtyEndpoint``: a pty pair in raw mode; the client opens the slave (``ASRL/dev/pts/N::INSTR``)
  as it would a USB-serial port. A stable symlink to the slave is kept beside it because a
  ``drop`` fault on a pty is an unplug: the master is closed (the client's next read fails) and a
  new pty is opened, whose slave path may differ; the symlink follows it.

Every session runs the same loop (``serve_session``): frame program messages, ask the device's
fault injector what to do, execute, and write each reply in one write.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import tty
from typing import Protocol

from qnode.redact import redact_command
from sim_hw.faults import GARBAGE, FaultInjector

log = logging.getLogger(__name__)

READ_SIZE = 1 << 20


class Framer(Protocol):
    def feed(self, data: bytes) -> list[bytes]: ...


class Device(Protocol):
    """What a transport needs from an emulated instrument."""

    name: str
    faults: FaultInjector

    def new_framer(self) -> Framer: ...

    def execute(self, msg: bytes) -> bytes | None: ...

    def report_injected_error(self, code: int, text: str, reply: bytes | None) -> bytes | None: ...


async def serve_session(
    device: Device, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> bool:
    """Answer one connection until it closes; return True if a ``drop`` fault ended it."""
    framer = device.new_framer()
    faults = device.faults
    debug = log.isEnabledFor(logging.DEBUG)  # every exchange, when asked for (serve -v)
    while True:
        data = await reader.read(READ_SIZE)
        if not data:
            return False
        for msg in framer.feed(data):
            if debug:
                log.debug("%s <- %r", device.name, redact_command(msg[:200]))
            kind = faults.take_drop_or_stall()
            if kind == "drop":
                log.info("%s: fault drop on %r", device.name, redact_command(msg[:60]))
                return True
            if kind == "stall":
                log.info("%s: fault stall swallows %r", device.name, redact_command(msg[:60]))
                continue
            delay_s = faults.take_delay_s()
            hold = getattr(device, "hold", None)  # a device may wait for data without blocking
            if hold is not None:
                await hold(msg)
            reply = device.execute(msg)
            fault = faults.take_error()
            if fault is not None:
                reply = device.report_injected_error(fault.code, fault.text, reply)
            if reply is not None and faults.take_garbage():
                reply = GARBAGE
            if delay_s:
                await asyncio.sleep(delay_s)
            if reply is not None:
                if debug:
                    log.debug("%s -> %r (%d bytes)", device.name, reply[:200], len(reply))
                writer.write(reply)
                await writer.drain()


class TcpEndpoint:
    """A loopback TCP server for one device; several clients may connect at once."""

    def __init__(self, device: Device, host: str = "127.0.0.1", port: int = 0) -> None:
        self.device = device
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._client, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            dropped = await serve_session(self.device, reader, writer)
            if dropped:
                writer.transport.abort()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    @property
    def scpi_resource(self) -> str:
        return f"TCPIP::{self.host}::{self.port}::SOCKET"

    @property
    def serial_resource(self) -> str:
        return f"ASRLsocket://{self.host}:{self.port}::INSTR"

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)


class PtyEndpoint:
    """A device on a raw-mode pty pair; ``link`` is a symlink that always names the live slave."""

    def __init__(self, device: Device, link: str) -> None:
        self.device = device
        self.link = link
        self.path = ""
        self._master = -1
        self._slave = -1
        self._task: asyncio.Task | None = None
        self._closing = False

    @property
    def resource(self) -> str:
        return f"ASRL{self.path}::INSTR"

    @property
    def link_resource(self) -> str:
        return f"ASRL{self.link}::INSTR"

    async def start(self) -> None:
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)  # no echo, no line editing: bytes pass as on a UART
        self.path = os.ttyname(self._slave)
        tmp = self.link + ".tmp"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        os.symlink(self.path, tmp)
        os.replace(tmp, self.link)
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=READ_SIZE)
        rfile = os.fdopen(os.dup(self._master), "rb", buffering=0)
        wfile = os.fdopen(os.dup(self._master), "wb", buffering=0)
        rtransport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), rfile
        )
        wtransport, wprotocol = await loop.connect_write_pipe(
            asyncio.streams.FlowControlMixin, wfile
        )
        writer = asyncio.StreamWriter(wtransport, wprotocol, None, loop)
        dropped = False
        try:
            dropped = await serve_session(self.device, reader, writer)
        except (OSError, asyncio.IncompleteReadError) as exc:
            log.info("%s: pty session ended: %s", self.device.name, exc)
        finally:
            rtransport.close()
            wtransport.close()
            self._close_fds()
        if dropped and not self._closing:
            await self.start()  # unplug and plug back in: a fresh pty, the link follows

    def _close_fds(self) -> None:
        for fd in (self._master, self._slave):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._master = self._slave = -1

    async def close(self) -> None:
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        self._close_fds()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.link)
