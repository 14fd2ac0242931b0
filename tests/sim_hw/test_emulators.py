"""Each emulated instrument over its real transport, with plain sockets, os.read/write, pyserial.

One world (served from a thread of this process) is shared by the module; tests that change
settings put them back with ``*RST``, and every test starts with the faults cleared.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import time

import numpy as np
import pytest
import serial

from qnode import linkmodel
from sim_hw import symbols
from sim_hw.faults import GARBAGE
from sim_hw.scpi import definite_block
from sim_hw.testing import world_in_thread

TIMEOUT_S = 10.0


class ScpiClient:
    """A raw TCP client: one line out, one line (or one block) back."""

    def __init__(self, resource: str) -> None:
        port = int(resource.split("::")[2])
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.file = self.sock.makefile("rb")

    def write(self, cmd: str | bytes) -> None:
        self.sock.sendall((cmd.encode() if isinstance(cmd, str) else cmd) + b"\n")

    def query(self, cmd: str | bytes) -> str:
        self.write(cmd)
        line = self.file.readline()
        assert line.endswith(b"\n"), f"no reply to {cmd!r}: {line!r}"
        return line[:-1].decode()

    def block(self, cmd: str | bytes) -> bytes:
        self.write(cmd)
        assert self.file.read(1) == b"#", f"{cmd!r}: reply is not a block"
        digits = int(self.file.read(1))
        data = self.file.read(int(self.file.read(digits)))
        assert self.file.read(1) == b"\n", f"{cmd!r}: block not terminated"
        return data

    def errors(self) -> list[str]:
        out = []
        while (reply := self.query(":SYST:ERR?")) != '0,"No error"':
            out.append(reply)
        return out

    def close(self) -> None:
        self.file.close()
        self.sock.close()


@pytest.fixture(scope="module")
def world():
    with world_in_thread(preset="gys", distance_km=25, seed=3) as handle:
        yield handle


@pytest.fixture(autouse=True)
def no_faults(world):
    world.clear_faults()
    yield
    world.clear_faults()


@pytest.fixture
def client(world):
    opened = []

    def connect(role: str) -> ScpiClient:
        c = ScpiClient(world.resources[role])
        opened.append(c)
        return c

    yield connect
    for c in opened:
        # wait until the instrument has run everything this test sent, so that a late command
        # cannot consume a fault the next test arms
        with contextlib.suppress(OSError, AssertionError):
            c.query("*OPC?")
        c.close()


@pytest.fixture
def running(client):
    """Source on with a known key, attenuator open, tagger acquiring; everything reset after."""
    src, att, tt = client("source"), client("attenuator"), client("timetagger")
    assert src.query("*RST;:SOUR:RAND:KEY #H00000000DEADBEEF;:OUTP ON;:OUTP?") == "1"
    assert att.query("*RST;*OPC?") == "1"
    assert tt.query("*RST;:ACQ:STAR;:ACQ:STAT?") == "1"
    yield src, att, tt
    for c in (src, att, tt):
        c.write("*RST;*CLS")


def decode(raw: bytes) -> tuple[np.ndarray, np.ndarray]:
    records = np.frombuffer(raw, dtype="<u8")
    return records >> np.uint64(8), (records & np.uint64(0xFF)).astype(np.uint8)


# --- source --------------------------------------------------------------------------------


def test_source_identity_and_settings(client):
    src = client("source")
    assert src.query("*IDN?").startswith("QNODE,PULSE-SOURCE,")
    assert (
        src.query(":SOUR:INT:SIGN 0.42;DEC 0.07;:INT:SIGN?;:SOURce:INTensity:DECoy?") == "0.42;0.07"
    )
    assert src.query(":CLOC 2.5 GHZ;:CLOC?;:SOUR:CLOC:FREQ? MAX") == "2500000000.0;10000000000.0"
    assert src.query(":PROB:SIGN 0.6;DEC 0.3;VAC 0.1;:BAS:PROB 0.7;:BAS:PROB?") == "0.7"
    src.write(":SOUR:RAND:KEY?")
    src.write(":INT:SIGN 11")
    assert [e.split(",")[0] for e in src.errors()] == ["-113", "-222"]
    src.write("*RST")
    assert src.query(":INT:SIGN?") == "0.48"  # the gys preset's signal intensity


def test_source_refuses_inconsistent_or_frozen_settings(client):
    src = client("source")
    src.write("*RST;:PROB:SIGN 0.5;:OUTP ON")
    assert src.query(":OUTP?") == "0"
    assert src.errors()[0].startswith("-221,")
    src.write("*RST;:OUTP ON;:SOUR:RAND:KEY #H1;:PROB:SIGN 0.7;:CLOC 2e9")
    assert [e.split(",")[0] for e in src.errors()] == ["-221", "-221", "-221"]
    assert src.query(":INT:SIGN 0.3;SIGN?") == "0.3"  # intensities may change while on
    src.write("*RST")


def test_source_symbols_match_the_generator(client):
    src = client("source")
    key = 0x0123456789ABCDEF
    src.write(f"*RST;:SOUR:RAND:KEY #H{key:016X};:PROB:SIGN 0.7;DEC 0.2;VAC 0.1;:BAS:PROB 0.9")
    got = np.frombuffer(src.block(":SOUR:SYMB? 1000,5000"), np.uint8)
    expected = symbols.symbols_range(key, 1000, 5000, 0.9, 0.7, 0.2)
    np.testing.assert_array_equal(got, expected)
    # a slot list whose bytes hold '\n' (10) and ';' (59): the server must honour the length
    slots = np.array([10, 59, 2**40 + 10, 0, 10], dtype="<i8")
    got = np.frombuffer(src.block(b":SYMB:LIST? " + definite_block(slots.tobytes())), np.uint8)
    np.testing.assert_array_equal(got, symbols.symbols_for_slots(key, slots, 0.9, 0.7, 0.2))
    assert src.block(":SYMB? 0,0") == b""
    src.write(b":SYMB:LIST? " + definite_block(b"1234567"))
    assert src.errors()[0].startswith("-224,")
    src.write("*RST")


def test_slot_counter_starts_at_zero_and_advances_with_fetched_tags(running):
    src, _, tt = running
    assert src.query(":SLOT?") == "0"
    tt.block(":TAGS:FETC? 1000")
    slot = int(src.query(":SLOT?"))
    assert slot > 0
    src.write(":OUTP OFF;:OUTP ON")
    assert src.query(":SLOT?") == "0"


# --- attenuator ----------------------------------------------------------------------------


def test_attenuator_keysight_command_set(client):
    att = client("attenuator")
    assert att.query("*IDN?").startswith("HEWLETT-PACKARD,HP8156A,")
    assert att.query(":INP:ATT 14dB;:INP:ATT?") == "+1.40000000E+001"
    assert att.query(":INPut:ATTenuation 32.15;:INP1:ATT?") == "+3.21500000E+001"
    assert att.query(":INP:ATT MAX;:INP:ATT?;:INP:ATT? MIN") == "+6.00000000E+001;+0.00000000E+000"
    assert att.query(":INP:WAV 1310NM;:INP:WAV?") == "+1.31000000E-006"
    assert att.query(":INP:OFFS -1.5;:INP:OFFS?") == "-1.50000000E+000"
    assert att.query(":OUTP:STAT OFF;:OUTP:STAT?;:OUTP?") == "0;0"
    att.write(":INP:ATT 61;:INP2:ATT 3")
    assert [e.split(",")[0] for e in att.errors()] == ["-222", "-113"]
    att.write("*RST")
    assert att.query(":INP:ATT?;:OUTP?") == "+0.00000000E+000;1"


def test_attenuation_and_shutter_change_the_taggers_count_rate(running):
    _, att, tt = running
    open_rate = float(tt.query(":COUN:RATE? 1"))
    att.write(":INP:ATT 10")
    attenuated = float(tt.query(":COUN:RATE? 1"))
    # 10 dB: a tenth of the signal clicks; dark counts (~850/s) are a small floor here
    assert 0.08 < attenuated / open_rate < 0.13, (open_rate, attenuated)
    att.write(":INP:ATT 0;:OUTP OFF")
    dark = float(tt.query(":COUN:RATE? 1"))
    assert dark < 0.01 * open_rate, (open_rate, dark)
    sync = float(tt.query(":COUN:RATE? 0"))
    assert sync == pytest.approx(1e9 / 2**20, rel=1e-3)  # the clock keeps running


# --- time tagger ---------------------------------------------------------------------------


def test_the_sources_clock_drives_the_sync_rate(client):
    src, tt = client("source"), client("timetagger")
    src.write("*RST;:CLOC 500 MHZ")  # output off: the clock still runs
    tt.write("*RST;:SYNC:PER 1024")
    assert float(tt.query(":COUN:RATE? 0")) == pytest.approx(5e8 / 1024, rel=1e-3)
    src.write("*RST")
    tt.write("*RST")


def test_tags_are_records_in_time_order_with_sync_on_channel_zero(running, world):
    _, _, tt = running
    assert tt.query("*IDN?").startswith("QNODE,TIME-TAGGER,")
    tt.write(":SYNC:PER 65536")
    times, chans = [], []
    for _ in range(4):
        t, c = decode(tt.block(":TAGS:FETC? 20000"))
        assert t.size <= 20000
        times.append(t)
        chans.append(c)
    t, c = np.concatenate(times), np.concatenate(chans)
    assert t.size > 20000
    assert np.all(np.diff(t.astype(np.int64)) >= 0), "tags out of time order"
    assert set(np.unique(c)) <= {0, 1, 2, 3, 4} and set(np.unique(c)) >= {0, 1, 2, 3, 4}
    sync = t[c == 0].astype(np.int64)
    np.testing.assert_array_equal(sync, np.arange(sync.size) * 65536 * 1000)  # 1 GHz: 1000 ps
    # clicks come a fibre delay after their slot (25 km of fibre, 4.897 us/km)
    first_click = t[c != 0].min()
    assert first_click >= 25 * 4.897e6 - 1000


def test_input_delay_threshold_and_count(running):
    _, _, tt = running
    assert tt.query(":INP2:DEL 5 NS;:INP2:DEL?;:INP0:THR?") == "5000.0;0.5"
    tt.write(":INP3:THR 1.5")  # above the 1 V pulses: input 3 sees nothing
    t, c = decode(tt.block(":TAGS:FETC? 50000"))
    assert (c == 3).sum() == 0 and (c == 2).sum() > 0
    assert float(tt.query(":COUN:RATE? 3")) == 0.0
    waiting = int(tt.query(":TAGS:COUN?"))
    got = tt.block(f":TAGS:FETC? {waiting + 10}")
    assert len(got) >= 8 * waiting
    tt.write(":ACQ:STOP")
    assert tt.query(":ACQ:STAT?") == "0"
    left = int(tt.query(":TAGS:COUN?"))
    assert len(tt.block(f":TAGS:FETC? {left + 1000}")) == 8 * left
    assert tt.block(":TAGS:FETC? 1000") == b""  # stopped: nothing new is simulated
    tt.write(":INP7:DEL 0")
    tt.write(":COUN:RATE? 9")
    assert [e.split(",")[0] for e in tt.errors()] == ["-113", "-222"]


def test_fetch_speed_is_not_limited_by_packing(world):
    """A fetch of many tags answers with one correct block (the rate is measured in qnode perf)."""
    tagger = world.world.timetagger
    raw = np.arange(1 << 20, dtype=np.uint64) << np.uint64(8)
    world.call(lambda: (tagger._pending.append(raw), setattr(tagger, "_n_pending", raw.size)))
    c = ScpiClient(world.resources["timetagger"])
    try:
        data = c.block(":TAGS:FETC? 2000000")
    finally:
        c.close()
    np.testing.assert_array_equal(np.frombuffer(data, "<u8"), raw)


# --- detector (serial) ---------------------------------------------------------------------


def _open_detector(world, transport: str):
    if transport == "pty":  # the link names the live pty even after a drop test
        port = serial.Serial(world.pty_links["detector"][4:-7], timeout=TIMEOUT_S)
    else:
        port = serial.serial_for_url(world.serial_socket["detector"][4:-7], timeout=TIMEOUT_S)

    def ask(line: str) -> str:
        port.write(line.encode() + b"\n")
        reply = port.readline()
        assert reply.endswith(b"\n"), f"no reply to {line!r}"
        return reply[:-1].decode()

    return ask, port


@pytest.fixture(params=["pty", "socket"])
def detector(request, world):
    """The detector module's line protocol over both serial transports."""
    ask, port = _open_detector(world, request.param)
    yield ask
    ask("*RST")
    port.close()


@pytest.fixture
def detector_pty(world):
    """The module over its pty only, for tests of the physics its settings drive."""
    ask, port = _open_detector(world, "pty")
    yield ask
    ask("*RST")
    port.close()


def test_detector_resource_is_the_pty_slave(world):
    path = world.resources["detector"][4:-7]
    assert world.resources["detector"] == f"ASRL{path}::INSTR" and path.startswith("/dev/pts/")
    assert os.path.realpath(world.pty_links["detector"][4:-7]) == path
    port = serial.Serial(path, timeout=TIMEOUT_S)
    port.write(b"*IDN?\n")
    assert port.readline().startswith(b"QNODE,SPAD-MODULE-4CH,")
    port.close()


def test_detector_line_protocol(detector):
    assert detector("*IDN?").startswith("QNODE,SPAD-MODULE-4CH,")
    assert detector("CHANNEL?") == "ALL"
    assert detector("EFFICIENCY?") == "4.5,4.5,4.5,4.5"
    assert detector("CHANNEL 3") == "OK"
    assert detector("efficiency 12.5") == "OK"
    assert detector("EFFICIENCY?") == "12.5"
    assert detector("DEADTIME:TIME 50000") == "OK"
    assert detector("CHANNEL ALL") == "OK"
    assert detector("DEADTIME:TIME?") == "0,0,50000,0"
    assert detector("REG:STATE?") == "LOCKED,LOCKED,LOCKED,LOCKED"
    assert detector("REG:TEMP_SET_POINT?") == "-40000,-40000,-40000,-40000"
    assert detector("THRESHOLD:VOLTAGE 2000000").startswith("ERROR -222,")
    assert detector("EFFICIENCY").startswith("ERROR -109,")
    assert detector("BIAS:VOLTAGE high").startswith("ERROR -104,")
    assert detector("CHANNEL 5").startswith("ERROR -224,")
    assert detector("FOO:BAR?") == "ERROR -113,Undefined header;FOO:BAR?"
    assert detector("ERROR?") == "-113,Undefined header;FOO:BAR?"
    assert detector("ERROR?") == "0,No error"


def test_detector_settings_reach_the_tagger(detector_pty, running):
    detector = detector_pty
    _, _, tt = running
    assert float(tt.query(":COUN:RATE? 2")) > 1e4
    assert detector("CHANNEL 2") == "OK" and detector("BIAS:VOLTAGE 0") == "OK"
    assert float(tt.query(":COUN:RATE? 2")) == 0.0
    assert detector("COUNTERS:DETECTION_FREQ?") == "0"
    assert detector("CHANNEL 1") == "OK" and detector("EFFICIENCY 9") == "OK"
    freq = int(detector("COUNTERS:DETECTION_FREQ?"))
    rate_ch4 = float(tt.query(":COUN:RATE? 4"))
    assert 1.6 < freq / rate_ch4 < 2.4, (freq, rate_ch4)  # twice the efficiency of 4.5 %
    assert detector("COUNTERS:INTEGRATION_TIME 200") == "OK"
    count = int(detector("COUNTERS:DETECTION_COUNT?"))
    assert count == pytest.approx(freq * 0.2, rel=0.1)  # the window may have grown meanwhile


def test_detector_regulation_off_stops_clicks(detector_pty, running):
    detector = detector_pty
    _, _, tt = running
    assert detector("CHANNEL 4") == "OK" and detector("REG:RUN FALSE") == "OK"
    assert detector("REG:STATE?") == "OFF"
    assert float(tt.query(":COUN:RATE? 4")) == 0.0
    assert detector("REG:RUN TRUE") == "OK"
    deadline = time.monotonic() + 10
    while detector("REG:STATE?") != "LOCKED":
        assert time.monotonic() < deadline, "regulation never locked again"
        time.sleep(0.05)
    assert int(detector("REG:MEASURED_TEMP?")) == pytest.approx(-40000, abs=500)


def test_detector_dead_time_caps_the_click_rate(detector_pty, running):
    _, _, tt = running
    assert float(tt.query(":COUN:RATE? 1")) > 2e5
    assert detector_pty("CHANNEL ALL") == "OK" and detector_pty("DEADTIME:TIME 100000") == "OK"
    capped = float(tt.query(":COUN:RATE? 1"))
    assert 0 < capped <= 1e4, capped  # one click per 100 us at most


def test_detections_follow_alices_symbols(running, world):
    """Basis-matched clicks carry Alice's bit (error ~ misalignment): the key reaches physics."""
    src, _, tt = running
    t, c = decode(tt.block(":TAGS:FETC? 200000"))
    t, c = t[c > 0].astype(np.int64), c[c > 0]
    delay_ps = 25 * linkmodel.FIBRE_DELAY_PS_PER_KM
    slots = np.rint((t - delay_ps) / 1000.0).astype("<i8")  # 1 GHz clock: 1000 ps per slot
    sym = np.frombuffer(src.block(b":SYMB:LIST? " + definite_block(slots.tobytes())), np.uint8)
    alice_basis, alice_bit, _ = symbols.decode(sym)
    bob_basis, bob_bit = (c - 1) // 2, (c - 1) % 2
    matched = alice_basis == bob_basis
    assert 0.4 < matched.mean() < 0.6, matched.mean()
    qber = float((alice_bit[matched] != bob_bit[matched]).mean())
    assert 0.01 < qber < 0.06, qber  # gys: 3.3 % misalignment plus a little dark noise
    wrong = symbols.symbols_for_slots(0xDEADBEEE, slots, 0.5, 0.8, 0.1)
    w_basis, w_bit, _ = symbols.decode(wrong)
    w_matched = w_basis == bob_basis
    assert float((w_bit[w_matched] != bob_bit[w_matched]).mean()) > 0.4  # another key: noise


# --- faults on the wire --------------------------------------------------------------------


def test_fault_drop_closes_the_connection(world, client):
    src = client("source")
    world.inject_fault("source", "drop", count=1)
    src.write("*IDN?")
    assert src.file.readline() == b"", "connection still open after a drop"
    fresh = client("source")
    assert fresh.query("*IDN?").startswith("QNODE,")  # count=1: the next connection works


def test_fault_stall_swallows_commands_until_cleared(world, client):
    src = client("source")
    world.inject_fault("source", "stall")
    src.write("*IDN?")
    ready, _, _ = select.select([src.sock], [], [], 0.3)
    assert not ready, "a stalled instrument answered"
    world.clear_faults("source")
    assert src.query("*OPC?") == "1"  # the swallowed *IDN? never answers


def test_fault_garbage_replaces_replies_only(world, client):
    att = client("attenuator")
    world.inject_fault("attenuator", "garbage", count=1)
    att.write(":INP:ATT 5")  # no reply: the fault waits for one
    att.write(":INP:ATT?")
    assert att.file.readline() == GARBAGE
    assert att.query(":INP:ATT?") == "+5.00000000E+000"
    att.write("*RST")


def test_fault_error_lands_in_the_error_queue(world, client):
    tt = client("timetagger")
    world.inject_fault("timetagger", "error", count=2, code=-222, text="injected")
    assert tt.query("*IDN?").startswith("QNODE,")
    # the first error follows *IDN?, the second follows the first SYST:ERR? itself
    assert tt.errors() == ['-222,"Data out of range;injected"'] * 2
    assert tt.errors() == []


def test_fault_slow_delays_the_answer(world, client):
    src = client("source")
    world.inject_fault("source", "slow", count=1, delay_ms=1500)
    t0 = time.monotonic()
    assert src.query("*OPC?") == "1"
    assert time.monotonic() - t0 >= 1.49  # the server sleeps at least this long
    t0 = time.monotonic()
    assert src.query("*OPC?") == "1"
    assert time.monotonic() - t0 < 1.49  # count=1: the next answer is not delayed


def test_fault_kinds_on_the_serial_detector(world, detector):
    world.inject_fault("detector", "error", count=1)
    assert detector("CHANNEL?") == "ERROR -200,injected fault"
    assert detector("ERROR?") == "-200,injected fault"
    world.inject_fault("detector", "garbage", count=1)
    assert detector("CHANNEL?").encode() + b"\n" == GARBAGE
    assert detector("CHANNEL?") == "ALL"


def test_fault_drop_on_socket_detector(world):
    port = serial.serial_for_url(world.serial_socket["detector"][4:-7], timeout=2)
    world.inject_fault("detector", "drop", count=1)
    port.write(b"*IDN?\n")
    with pytest.raises(serial.SerialException, match="disconnected"):
        port.readline()
    port.close()


def test_fault_drop_on_pty_is_an_unplug_and_the_link_follows(world):
    link = world.pty_links["detector"][4:-7]
    master_path = os.path.realpath(link)
    port = serial.Serial(link, timeout=2)
    world.inject_fault("detector", "drop", count=1)
    port.write(b"*IDN?\n")
    with pytest.raises(serial.SerialException):
        port.readline()
    port.close()
    deadline = time.monotonic() + 5
    while os.path.realpath(link) == master_path and time.monotonic() < deadline:
        time.sleep(0.02)
    again = serial.Serial(link, timeout=2)
    again.write(b"*IDN?\n")
    assert again.readline().startswith(b"QNODE,SPAD")
    again.close()


def test_unknown_fault_is_refused(world):
    from sim_hw.faults import FaultError

    with pytest.raises(FaultError, match="unknown fault kind"):
        world.inject_fault("source", "explode")
    with pytest.raises(FaultError, match="unknown instrument"):
        world.inject_fault("laser", "drop")


def test_realtime_world_never_runs_ahead_of_the_wall_clock():
    with world_in_thread(preset="gys", seed=4, realtime=True) as rt:
        src, tt = ScpiClient(rt.resources["source"]), ScpiClient(rt.resources["timetagger"])
        try:
            src.write(":CLOC 10 MHZ;:OUTP ON")
            t_on = time.monotonic()
            tt.write(":ACQ:STAR")
            last = -1.0
            for _ in range(3):
                time.sleep(0.1)
                t, c = decode(tt.block(":TAGS:FETC? 1000000"))
                slot = int(src.query(":SLOT?"))
                elapsed = time.monotonic() - t_on
                assert slot <= elapsed * 1e7 + 1, (slot, elapsed)
                assert slot >= 0.05 * 1e7, "realtime world did not advance"
                if t.size:
                    assert t.max() <= elapsed * 1e12 + 1e9  # no tag from the future (+ delay)
                    assert t.min() >= last
                    last = float(t.max())
        finally:
            src.close()
            tt.close()
