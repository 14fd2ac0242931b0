"""Transport behaviour on real loopback sockets: refused connects, bounded reconnect, kwargs."""

import socket
import threading
import time

import pytest

from drivers.errors import InstrumentDisconnected, InstrumentProtocolError, InstrumentTimeout
from drivers.keysight_8156a import Keysight8156A
from drivers.transports import SerialAdapter, VisaAdapter, make_adapter


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_refused_connect_is_disconnected_not_success():
    att = Keysight8156A(f"TCPIP::127.0.0.1::{_free_port()}::SOCKET", timeout_s=0.5)
    with pytest.raises(InstrumentDisconnected) as info:
        _ = att.idn
    assert info.value.device == "attenuator" and info.value.command == "<open>"


def test_reconnect_gives_up_after_bounded_attempts():
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]

    def answer_once() -> None:
        conn, _ = srv.accept()
        conn.makefile("rb").readline()
        conn.sendall(b"HEWLETT-PACKARD,HP8156A,1,1\n")
        conn.close()  # then the instrument goes away for good
        srv.close()

    thread = threading.Thread(target=answer_once)
    thread.start()
    att = Keysight8156A(
        f"TCPIP::127.0.0.1::{port}::SOCKET",
        timeout_s=0.5,
        reconnect_attempts=2,
        reconnect_delay_s=0.01,
    )
    assert att.idn.startswith("HEWLETT-PACKARD")
    thread.join()
    with pytest.raises(InstrumentDisconnected, match="peer closed"):
        _ = att.idn
    with pytest.raises(InstrumentDisconnected, match="failed after 2 attempts"):
        _ = att.idn
    att.close()


def test_unknown_keyword_is_refused():
    with pytest.raises(TypeError):
        Keysight8156A("TCPIP::127.0.0.1::9::SOCKET", colour="red")


@pytest.mark.parametrize(
    "resource, kind",
    [
        ("TCPIP0::10.0.0.2::5025::SOCKET", VisaAdapter),
        ("ASRL/dev/pts/3::INSTR", SerialAdapter),
        ("ASRLsocket://127.0.0.1:5000::INSTR", SerialAdapter),
        ("socket://127.0.0.1:5000", SerialAdapter),
    ],
)
def test_resource_strings_pick_a_transport(resource, kind):
    assert isinstance(make_adapter(resource, "x"), kind)
    assert isinstance(make_adapter("ASRL/dev/pts/3::INSTR", "x", transport="visa"), VisaAdapter)


def _block_server(payload: bytes) -> tuple[socket.socket, int]:
    """Answers ``*IDN?`` with a line and anything else with ``payload`` as a block."""
    srv = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = srv.accept()
        with conn, conn.makefile("rb") as lines:
            for line in lines:
                if line.startswith(b"*IDN?"):
                    conn.sendall(b"TEST,BLOCKS,0,1\n")
                else:
                    n = str(len(payload)).encode()
                    conn.sendall(b"#" + str(len(n)).encode() + n + payload + b"\n")

    threading.Thread(target=serve, daemon=True).start()
    return srv, srv.getsockname()[1]


@pytest.mark.parametrize("fast", [True, False])
def test_blocks_with_and_without_the_pyvisa_py_fast_path(monkeypatch, fast):
    """The fast path leans on pyvisa-py internals; without them pyvisa's public API serves."""
    if not fast:
        monkeypatch.setattr("drivers.transports._fast_path_ok", lambda session: False)
    payload = bytes(range(256)) * 1024  # 256 KiB with every byte value, \n included
    srv, port = _block_server(payload)
    adapter = VisaAdapter(f"TCPIP::127.0.0.1::{port}::SOCKET", "blocks", timeout_s=2.0)
    try:
        assert adapter.query("*IDN?") == "TEST,BLOCKS,0,1"
        assert (adapter._sock is not None) == fast
        assert adapter.query_block(":DATA?") == payload
        assert adapter.query("*IDN?") == "TEST,BLOCKS,0,1"  # the stream is still in step
    finally:
        adapter.close()
        srv.close()


def _scripted_server(answer) -> tuple[socket.socket, int]:
    """One connection; ``answer(conn, line)`` replies to each command line (False: hang up)."""
    srv = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = srv.accept()
        with conn, conn.makefile("rb") as lines:
            for line in lines:
                if answer(conn, line) is False:
                    break

    threading.Thread(target=serve, daemon=True).start()
    return srv, srv.getsockname()[1]


def _adapter(port: int, timeout_s: float = 2.0) -> VisaAdapter:
    adapter = VisaAdapter(f"TCPIP::127.0.0.1::{port}::SOCKET", "blocks", timeout_s=timeout_s)
    adapter.open()
    assert adapter._sock is not None  # these tests are about the pyvisa-py fast path
    return adapter


def test_block_read_stops_at_its_terminator_and_keeps_what_follows():
    """A block and the next reply in one segment: the block read takes exactly its bytes."""
    payload = b"\n#9\n" * 5000  # looks like headers and terminators inside

    def answer(conn, line):
        if line.startswith(b":DATA?"):
            n = str(len(payload)).encode()
            conn.sendall(b"#" + str(len(n)).encode() + n + payload + b"\nNEXT,LINE\n#15abcde\n")

    srv, port = _scripted_server(answer)
    adapter = _adapter(port)
    try:
        got = adapter.query_block(":DATA?")
        assert got == payload and isinstance(got, bytes)
        assert adapter.read() == "NEXT,LINE"
        assert adapter.read_block() == b"abcde"
    finally:
        adapter.close()
        srv.close()


def test_block_in_small_delayed_pieces():
    """Header digits, payload and terminator split across many segments still make one block."""
    payload = bytes(range(256)) * 300
    n = str(len(payload)).encode()
    wire = b"#" + str(len(n)).encode() + n + payload + b"\n"

    def answer(conn, line):
        if line.startswith(b"*IDN?"):
            conn.sendall(b"T,PIECES,0,1\n")
            return
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for cut in (1, 2, 4, 5000, 40000, len(wire) - 1, len(wire)):
            conn.sendall(wire[answer.sent : cut])
            answer.sent = cut
            threading.Event().wait(0.01)
        answer.sent = 0

    answer.sent = 0
    srv, port = _scripted_server(answer)
    adapter = _adapter(port)
    try:
        for _ in range(2):
            assert adapter.query_block(":DATA?") == payload
            assert adapter.query("*IDN?") == "T,PIECES,0,1"
    finally:
        adapter.close()
        srv.close()


def test_block_without_terminator_is_protocol_error_naming_the_command():
    def answer(conn, line):
        conn.sendall(b"#15abcdeX\n")

    srv, port = _scripted_server(answer)
    adapter = _adapter(port)
    try:
        with pytest.raises(InstrumentProtocolError, match="not followed by") as info:
            adapter.query_block(":DATA?")
        assert info.value.device == "blocks" and info.value.command == ":DATA?"
    finally:
        adapter.close()
        srv.close()


@pytest.mark.parametrize("where", ["line", "header", "payload"])
def test_peer_closing_mid_reply_is_a_prompt_disconnect_not_a_timeout(where):
    """A hang-up is reported at once (well inside the 3 s timeout), on a line or a block."""
    partial = {"line": b"", "header": b"#3", "payload": b"#3100" + b"x" * 40}[where]

    def answer(conn, line):
        conn.sendall(partial)
        return False

    srv, port = _scripted_server(answer)
    adapter = _adapter(port, timeout_s=3.0)
    try:
        t0 = time.monotonic()
        with pytest.raises(InstrumentDisconnected) as info:
            if where == "line":
                adapter.query("*IDN?")
            else:
                adapter.query_block(":DATA?")
        assert time.monotonic() - t0 < 1.5
        assert info.value.device == "blocks" and info.value.command in ("*IDN?", ":DATA?")
    finally:
        adapter.close()
        srv.close()


def test_silent_peer_is_a_timeout_not_a_disconnect():
    srv, port = _scripted_server(lambda conn, line: None)
    adapter = _adapter(port, timeout_s=0.3)
    try:
        with pytest.raises(InstrumentTimeout) as info:
            adapter.query_block(":DATA?")
        assert info.value.command == ":DATA?"
    finally:
        adapter.close()
        srv.close()


def test_large_block_argument_to_a_peer_that_stopped_reading_times_out():
    """pyvisa-py's own write waits forever for a peer that reads nothing; ours times out."""
    srv = socket.create_server(("127.0.0.1", 0))
    accepted = []
    threading.Thread(target=lambda: accepted.append(srv.accept()), daemon=True).start()
    adapter = _adapter(srv.getsockname()[1], timeout_s=0.5)
    try:
        t0 = time.monotonic()
        with pytest.raises(InstrumentTimeout, match="write blocked") as info:
            adapter.write(":SOUR:SYMB:GAPS? 0,", block=bytes(64 << 20))
        assert info.value.command == ":SOUR:SYMB:GAPS? 0,"
        assert time.monotonic() - t0 < 5
    finally:
        adapter.close()
        srv.close()
        for conn, _ in accepted:
            conn.close()


def test_large_block_argument_arrives_whole():
    """A block argument past pyvisa-py's 4 KiB write chunk goes in one send, byte for byte."""
    block = (bytes(range(11, 256)) * 4300)[: 1 << 20]  # 1 MiB, no \n: one line at the server

    def answer(conn, line):
        conn.sendall(f"{len(line)}\n".encode())

    srv, port = _scripted_server(answer)
    adapter = _adapter(port)
    try:
        # command + "#7" + 7 digits + payload + "\n"
        assert adapter.query("DATA ", block=block) == str(5 + 2 + 7 + len(block) + 1)
        assert adapter.query("*IDN?") == "6"
    finally:
        adapter.close()
        srv.close()
