"""Transport behaviour on real loopback sockets: refused connects, bounded reconnect, kwargs."""

import socket
import threading

import pytest

from drivers.errors import InstrumentDisconnected
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
