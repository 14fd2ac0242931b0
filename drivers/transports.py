"""Concrete transports: pyvisa-py (TCPIP SOCKET, ASRL) and pyserial (``serial_for_url``).

``make_adapter(resource, name)`` picks one from the resource string:

- ``TCPIP[n]::host::port::SOCKET`` -> ``VisaAdapter`` over ``ResourceManager("@py")``;
- ``ASRL<port>::INSTR`` (``ASRL/dev/pts/N::INSTR``, ``ASRLsocket://host:port::INSTR``), a device
  path or a pyserial URL (``/dev/pts/N``, ``socket://host:port``, ``loop://``) ->
  ``SerialAdapter`` on pyserial's ``serial_for_url`` (``transport="visa"`` forces pyvisa-py's
  ASRL session instead). Measured on this machine (``qnode perf --stage serial``): pyvisa-py's
  ASRL session, itself built on pyserial, reads one byte per call through its own loop and made
  2-4x fewer round trips per second on a pty than pyserial with our line buffer.
"""

from __future__ import annotations

import errno
import select
import socket
import threading
import time

import serial
from pyvisa import constants
from pyvisa.errors import VisaIOError

from drivers.adapter import Adapter
from drivers.errors import InstrumentDisconnected, InstrumentError, InstrumentTimeout

_DIRECT_MIN = 1 << 16  # block payloads from this size are returned as the bytearray read
_VISA_WRITE_CHUNK = 4096  # pyvisa-py's fixed write chunk: larger messages go in one send
_SCRATCH = 1 << 16  # bytes per recv into the session's buffer
_LINE_MAX = 1 << 30  # bytes per line read (a reply line is never near it)
_RM = None
_RM_LOCK = threading.Lock()


def resource_manager():
    """The process-wide pyvisa ResourceManager on the pyvisa-py backend (created once)."""
    global _RM
    with _RM_LOCK:
        if _RM is None:
            import pyvisa

            _RM = pyvisa.ResourceManager("@py")
        return _RM


def is_visa_resource(resource: str) -> bool:
    """True for resource names pyvisa opens (TCPIP.../ASRL...), False for pyserial URLs/paths."""
    upper = resource.upper()
    return upper.startswith(("TCPIP", "ASRL", "GPIB", "USB", "VXI"))


def serial_url(resource: str) -> str | None:
    """The pyserial port/URL inside ``ASRL<port>::INSTR`` (None if not an ASRL name)."""
    upper = resource.upper()
    if upper.startswith("ASRL") and upper.endswith("::INSTR"):
        inner = resource[4:-7]
        if inner.startswith("/") or "://" in inner:
            return inner
    return None


def make_adapter(resource: str, name: str, *, transport: str = "auto", **kwargs) -> Adapter:
    """Adapter for ``resource`` (see the module docstring); ``transport`` = auto|visa|serial."""
    if transport not in ("auto", "visa", "serial"):
        raise ValueError(f"transport must be auto, visa or serial, not {transport!r}")
    url = serial_url(resource)
    if transport == "serial" or (transport == "auto" and url is not None):
        return SerialAdapter(resource, name, url=url or resource, **kwargs)
    if is_visa_resource(resource):
        return VisaAdapter(resource, name, **kwargs)
    return SerialAdapter(resource, name, **kwargs)


def _fast_path_ok(session) -> bool:
    """Whether a pyvisa-py TCPIP SOCKET session has the internals the fast paths use (its
    socket as ``interface``, the ``_pending_buffer`` it has received, ``max_recv_size``;
    pyvisa-py 0.7-0.8). Otherwise everything goes through pyvisa's public API (slower)."""
    return (
        isinstance(getattr(session, "interface", None), socket.socket)
        and isinstance(getattr(session, "_pending_buffer", None), bytearray)
        and hasattr(session, "max_recv_size")
    )


class VisaAdapter(Adapter):
    """pyvisa-py session; reads lines with the terminator on, block payloads with it off."""

    def __init__(self, resource: str, name: str, *, baud_rate: int = 115200, **kwargs) -> None:
        super().__init__(resource, name, **kwargs)
        self.baud_rate = baud_rate
        self._res = None
        self._sock: socket.socket | None = None
        self._chunk = 1 << 20
        self._scratch = bytearray(_SCRATCH)
        self._scratch_view = memoryview(self._scratch)

    def _open(self) -> None:
        timeout_ms = int(self.timeout_s * 1000)
        kwargs = {"read_termination": "\n", "timeout": timeout_ms, "open_timeout": timeout_ms}
        if self.resource.upper().startswith("ASRL"):
            kwargs["baud_rate"] = self.baud_rate
        self._res = resource_manager().open_resource(self.resource, **kwargs)
        self._sock = None
        session = self._res.visalib.sessions.get(self._res.session)
        if self.resource.upper().endswith("::SOCKET") and _fast_path_ok(session):
            sock = session.interface
            # pyvisa-py connects non-blocking and reports success even when refused: ask.
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                raise ConnectionRefusedError(
                    err, f"connect to {self.resource}: {errno.errorcode.get(err, err)}"
                )
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # pyvisa-py receives 4 KiB per recv() by default; large blocks go faster in 1 MiB.
            session.max_recv_size = self._chunk
            self._sock = sock

    def _apply_timeout(self) -> None:
        if self._res is not None:
            self._res.timeout = int(self.timeout_s * 1000)

    def _close(self) -> None:
        res, self._res, self._sock = self._res, None, None
        if res is not None:
            res.close()

    def _peer_closed(self) -> bool:
        """True when the TCP peer has closed or reset (asked only after a pyvisa timeout)."""
        if self._sock is None:
            return False
        try:
            return self._sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True

    def _write_bytes(self, data: bytes) -> None:
        # A peer that closed while we were idle is caught by the read that follows
        # (``_fill``): the first write to a closed socket still succeeds.
        if self._sock is not None and len(data) > _VISA_WRITE_CHUNK:
            self._send_all(data)
        else:
            self._res.write_raw(data)

    def _send_all(self, data: bytes) -> None:
        """A large message (a block argument) in as few ``send`` calls as the socket takes.

        pyvisa-py 0.8 writes in fixed 4 KiB chunks with a ``select`` each (a 1 MB gap list:
        ~250 round trips through Python) and waits without a timeout for a peer that stopped
        reading; here a peer that takes nothing for ``timeout_s`` is a timeout.
        """
        sock = self._sock
        view = memoryview(data)
        sent, size = 0, len(data)
        deadline = time.monotonic() + self.timeout_s
        while sent < size:
            try:
                sent += sock.send(view[sent:], socket.MSG_DONTWAIT)
                continue
            except BlockingIOError:
                pass
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([], [sock], [], remaining)[1]:
                raise TimeoutError(f"write blocked: {sent} of {size} bytes in {self.timeout_s} s")

    def _session(self):
        return self._res.visalib.sessions[self._res.session]

    def _fill(self, pending: bytearray, deadline: float) -> None:
        """One ``recv`` into the session's receive buffer, waiting until ``deadline``.

        This is the read pyvisa-py would make, done here because pyvisa-py treats a closed
        peer (``recv`` returns nothing) as "no data yet" and spins until its timeout: a
        dropped connection is reported at once, a silent one after the timeout, with no
        probe of the socket before each query.
        """
        sock = self._sock
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([sock], [], [], remaining)[0]:
            raise TimeoutError(f"no answer within {self.timeout_s} s")
        n = sock.recv_into(self._scratch)
        if n == 0:
            raise ConnectionResetError("peer closed the connection")
        pending += self._scratch_view[:n]

    def _read_line(self) -> bytes:
        if self._sock is None:
            return self._res.read_raw()
        pending = self._session()._pending_buffer
        if b"\n" not in pending:  # else pyvisa-py finds the line without any I/O
            self._fill(pending, time.monotonic() + self.timeout_s)
        # pyvisa-py's session reads the line (terminator, timeout) through the library call
        # under ``read_raw``: the resource layer's warning contexts around it cost ~10 us per
        # reply, after the reply has arrived (measured: *IDN? p50 97 -> 85 us, bare pyvisa 79).
        res = self._res
        data, status = res.visalib.read(res.session, _LINE_MAX)
        if status != constants.StatusCode.success_max_count_read:
            return data
        return data + res.read_raw()  # longer than _LINE_MAX: the resource layer goes on

    def _read_exact(self, count: int) -> bytes:
        """``count`` bytes through pyvisa's API with the terminator off (no fast path)."""
        res = self._res
        res.set_visa_attribute(constants.VI_ATTR_TERMCHAR_EN, False)
        try:
            return res.read_bytes(count, chunk_size=self._chunk)
        finally:
            res.set_visa_attribute(constants.VI_ATTR_TERMCHAR_EN, True)

    def _read_block(self, command: str) -> bytes:
        """A block from the session's receive buffer and socket: header, payload and ``\\n``.

        Through pyvisa that took four reads (header, digits, payload, tail; pyvisa-py receives
        exactly the bytes asked for, so a select and a recv each) and a terminator toggle
        around each. Here a small reply arrives with one recv; a large payload goes straight
        into its own buffer with ``recv_into`` (pyvisa's ``read_bytes`` copies each chunk ~5
        times). Never reads past the block's ``\\n``; bytes already received stay in the
        session's buffer for pyvisa.
        """
        if self._sock is None:
            return super()._read_block(command)
        deadline = time.monotonic() + self.timeout_s
        pending = self._session()._pending_buffer
        while len(pending) < 2:
            self._fill(pending, deadline)
        ndigits = self._block_digits(bytes(pending[:2]), command)
        if ndigits == 0:  # indefinite length: the line reader takes the rest
            del pending[:2]
            return self._read_line()[:-1]
        while len(pending) < 2 + ndigits:
            self._fill(pending, deadline)
        count = self._block_length(bytes(pending[2 : 2 + ndigits]), command)
        del pending[: 2 + ndigits]
        out = bytearray(count + 1)  # payload and terminator
        view = memoryview(out)
        got = min(len(pending), count + 1)
        view[:got] = pending[:got]
        del pending[:got]
        sock = self._sock
        while got <= count:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([sock], [], [], remaining)[0]:
                raise TimeoutError(f"block payload: {got} of {count} bytes in {self.timeout_s} s")
            n = sock.recv_into(view[got:], count + 1 - got)
            if n == 0:
                raise ConnectionResetError(f"peer closed after {got} of {count} block bytes")
            got += n
        view.release()
        self._check_tail(bytes(out[count:]), count, command)
        del out[count:]
        return out if count >= _DIRECT_MIN else bytes(out)

    def _translate(self, exc: BaseException, command: str) -> InstrumentError | None:
        if isinstance(exc, VisaIOError):
            if exc.error_code == constants.StatusCode.error_timeout:
                # pyvisa-py reports a closed peer as a timeout: look at the socket.
                if self._peer_closed():
                    return InstrumentDisconnected(self.name, command, "peer closed the connection")
                return InstrumentTimeout(self.name, command, f"no answer within {self.timeout_s} s")
            return InstrumentDisconnected(self.name, command, f"VISA error: {exc}")
        if isinstance(exc, serial.SerialException):  # ASRL sessions run on pyserial
            return InstrumentDisconnected(self.name, command, f"serial port lost: {exc}")
        return super()._translate(exc, command)


class SerialAdapter(Adapter):
    """pyserial ``serial_for_url`` port with its own line buffer (pyserial reads 1 byte per call)."""

    def __init__(
        self,
        resource: str,
        name: str,
        *,
        url: str | None = None,
        baud_rate: int = 115200,
        **kwargs,
    ) -> None:
        super().__init__(resource, name, **kwargs)
        self.url = url or serial_url(resource) or resource
        self.baud_rate = baud_rate
        self._port: serial.SerialBase | None = None
        self._buf = bytearray()

    def _open(self) -> None:
        self._buf.clear()
        self._port = serial.serial_for_url(
            self.url,
            baudrate=self.baud_rate,
            timeout=self.timeout_s,
            write_timeout=self.timeout_s,
        )

    def _apply_timeout(self) -> None:
        if self._port is not None:
            self._port.timeout = self.timeout_s
            self._port.write_timeout = self.timeout_s

    def _close(self) -> None:
        port, self._port = self._port, None
        if port is not None:
            port.close()

    def _write_bytes(self, data: bytes) -> None:
        self._port.write(data)

    def _fill(self) -> None:
        port = self._port
        chunk = port.read(max(1, port.in_waiting))
        if not chunk:
            raise TimeoutError(f"no answer within {self.timeout_s} s")
        self._buf += chunk

    def _read_line(self) -> bytes:
        while True:
            end = self._buf.find(b"\n")
            if end >= 0:
                line = bytes(self._buf[: end + 1])
                del self._buf[: end + 1]
                return line
            self._fill()

    def _read_exact(self, count: int) -> bytes:
        while len(self._buf) < count:
            self._fill()
        out = bytes(self._buf[:count])
        del self._buf[:count]
        return out

    def _translate(self, exc: BaseException, command: str) -> InstrumentError | None:
        if isinstance(exc, serial.SerialTimeoutException):
            return InstrumentTimeout(self.name, command, f"write blocked for {self.timeout_s} s")
        if isinstance(exc, serial.SerialException):
            return InstrumentDisconnected(self.name, command, f"serial port lost: {exc}")
        return super()._translate(exc, command)
