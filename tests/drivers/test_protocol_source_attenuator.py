"""Protocol tests (ordered sent/reply pairs) for the pulse source and the 8156A attenuator."""

import logging

import numpy as np
import pytest

from drivers.errors import (
    InstrumentCommandError,
    InstrumentDisconnected,
    InstrumentProtocolError,
    InstrumentTimeout,
)
from drivers.keysight_8156a import Keysight8156A
from drivers.protocol import expected_protocol
from drivers.pulse_source import PulseSource, split_symbols

OK = ("SYST:ERR?", '0,"No error"')


@pytest.mark.parametrize(
    "prop, get_cmd, reply, value",
    [
        ("attenuation_db", ":INP:ATT?", "+2.50000000E+000", 2.5),
        ("offset_db", ":INP:OFFS?", "0.5", 0.5),
        ("wavelength_m", ":INP:WAV?", "1.55E-06", 1.55e-6),
        ("shutter_open", ":OUTP:STAT?", "1", True),
        ("shutter_open", ":OUTP:STAT?", "0", False),
    ],
)
def test_attenuator_get(prop, get_cmd, reply, value):
    with expected_protocol(Keysight8156A, [(get_cmd, reply)]) as att:
        assert getattr(att, prop) == pytest.approx(value)


@pytest.mark.parametrize(
    "prop, value, sent",
    [
        ("attenuation_db", 12.5, ":INP:ATT 12.5"),
        ("attenuation_db", 3, ":INP:ATT 3"),
        ("offset_db", -0.25, ":INP:OFFS -0.25"),
        ("wavelength_m", 1.55e-6, ":INP:WAV 1.55e-06"),
        ("shutter_open", True, ":OUTP:STAT ON"),
        ("shutter_open", False, ":OUTP:STAT OFF"),
    ],
)
def test_attenuator_set_checks_error_queue(prop, value, sent):
    with expected_protocol(Keysight8156A, [(sent, None), OK]) as att:
        setattr(att, prop, value)
    assert att.applied[prop] == value


def test_attenuator_set_error_raises_with_code_and_device():
    pairs = [(":INP:ATT 99", None), ("SYST:ERR?", '-222,"Data out of range"'), OK]
    with expected_protocol(Keysight8156A, pairs) as att:
        with pytest.raises(InstrumentCommandError) as info:
            att.attenuation_db = 99
    err = info.value
    assert (err.code, err.text, err.device, err.command) == (
        -222,
        "Data out of range",
        "attenuator",
        ":INP:ATT 99",
    )
    assert "attenuator" in str(err) and ":INP:ATT 99" in str(err)


def test_error_queue_is_drained_and_counted():
    pairs = [
        (":INP:ATT MAX", None),
        ("SYST:ERR?", '-113,"Undefined header"'),
        ("SYST:ERR?", '-222,"Data out of range"'),
        OK,
    ]
    with expected_protocol(Keysight8156A, pairs) as att:
        with pytest.raises(InstrumentCommandError, match=r"\+1 more") as info:
            att.set_attenuation_limit("max")
    assert info.value.code == -113


def test_check_errors_off_skips_queue():
    with expected_protocol(Keysight8156A, [(":INP:ATT 1", None)], check_errors=False) as att:
        att.attenuation_db = 1


def test_unparsable_reply_is_protocol_error():
    with expected_protocol(Keysight8156A, [(":INP:ATT?", "\x01garbage")]) as att:
        with pytest.raises(InstrumentProtocolError, match=":INP:ATT?"):
            _ = att.attenuation_db


def test_idn_and_common_commands():
    pairs = [
        ("*IDN?", "HEWLETT-PACKARD,HP8156A,3325G01234,1.0"),
        ("*CLS", None),
        ("*RST", None),
        OK,
        ("*OPC?", "1"),
    ]
    with expected_protocol(Keysight8156A, pairs) as att:
        assert att.idn.startswith("HEWLETT-PACKARD,HP8156A")
        att.clear_status()
        att.reset()
        assert att.wait_complete() is True


@pytest.mark.parametrize(
    "prop, cmd, reply, value",
    [
        ("clock_hz", ":SOUR:CLOC", "1E+09", 1e9),
        ("mu_signal", ":SOUR:INT:SIGN", "0.5", 0.5),
        ("mu_decoy", ":SOUR:INT:DEC", "0.1", 0.1),
        ("mu_vacuum", ":SOUR:INT:VAC", "0.0002", 2e-4),
        ("p_signal", ":SOUR:PROB:SIGN", "0.7", 0.7),
        ("p_decoy", ":SOUR:PROB:DEC", "0.2", 0.2),
        ("p_vacuum", ":SOUR:PROB:VAC", "0.1", 0.1),
        ("p_basis_z", ":SOUR:BAS:PROB", "0.9", 0.9),
    ],
)
def test_source_controls(prop, cmd, reply, value):
    pairs = [(f"{cmd} {value:.12g}", None), OK, (f"{cmd}?", reply)]
    with expected_protocol(PulseSource, pairs) as src:
        setattr(src, prop, value)
        assert getattr(src, prop) == pytest.approx(value)


def test_source_output_key_and_slot():
    pairs = [
        (":SOUR:RAND:KEY #H00000000DEADBEEF", None),
        OK,
        (":OUTP ON", None),
        OK,
        (":OUTP?", "1"),
        (":SOUR:SLOT?", "123456789012"),
    ]
    with expected_protocol(PulseSource, pairs) as src:
        src.set_random_key(0xDEADBEEF)
        src.output = True
        assert src.output is True
        assert src.slot == 123456789012


def test_source_symbols_block():
    payload = bytes([0, 1, 2, 3, 4, 8, 10, 0x0A])  # contains 0x0A: the terminator must be off
    with expected_protocol(PulseSource, [(":SOUR:SYMB? 100,8", b"#18" + payload + b"\n")]) as src:
        sym = src.symbols(100, 8)
    assert sym.tolist() == list(payload)
    basis, bit, intensity = split_symbols(sym)
    assert basis.tolist() == [0, 1, 0, 1, 0, 0, 0, 0]
    assert bit.tolist() == [0, 0, 1, 1, 0, 0, 1, 1]
    assert intensity.tolist() == [0, 0, 0, 0, 1, 2, 2, 2]


def test_source_symbols_for_slot_list_sends_block_argument():
    slots = np.array([5, 10, 2**40], dtype=np.int64)
    sent = b":SOUR:SYMB:LIST? #224" + slots.astype("<i8").tobytes() + b"\n"
    with expected_protocol(PulseSource, [(sent, b"#13\x01\x06\x09\n")]) as src:
        assert src.symbols_for_slots(slots).tolist() == [1, 6, 9]


@pytest.mark.parametrize(
    "reply, match",
    [
        (b"#12\x01\x06\n", "expected 3 symbol bytes"),
        (b"GARBAGE\n", "bad block header"),
        (b"#2x1\n", "bad block length"),
        (b"#13\x01\x06\x09X", "not followed by"),
    ],
)
def test_source_bad_blocks(reply, match):
    with expected_protocol(PulseSource, [(":SOUR:SYMB? 0,3", reply)]) as src:
        with pytest.raises(InstrumentProtocolError, match=match) as info:
            src.symbols(0, 3)
        assert info.value.device == "source"
        src.adapter._pending.clear()  # the test drains what a real reconnect would discard


def test_dropped_connection_reconnects_and_replays_settings():
    pairs = [
        (":INP:ATT 3", None),
        OK,
        (":INP:ATT?", ConnectionResetError("peer reset")),
        # reconnect: the remembered setting is replayed (and checked) before the next query
        (":INP:ATT 3", None),
        OK,
        (":INP:ATT?", "3"),
    ]
    with expected_protocol(Keysight8156A, pairs, replay_on_reconnect=True) as att:
        att.attenuation_db = 3
        with pytest.raises(InstrumentDisconnected) as info:
            _ = att.attenuation_db
        assert info.value.command == ":INP:ATT?" and info.value.device == "attenuator"
        assert att.attenuation_db == 3
    assert att.adapter.opens == 2 and att.adapter.reconnects == 1


def test_timeout_is_named_and_forces_a_fresh_connection():
    pairs = [("*IDN?", TimeoutError("no reply")), ("*IDN?", "HEWLETT-PACKARD,HP8156A,1,1")]
    with expected_protocol(Keysight8156A, pairs) as att:
        with pytest.raises(InstrumentTimeout, match=r"attenuator: .*\*IDN\?"):
            _ = att.idn
        assert att.idn.startswith("HEWLETT")
    assert att.adapter.opens == 2


def test_every_exchange_is_logged_at_debug(caplog):
    pairs = [(":INP:ATT 2", None), OK]
    with caplog.at_level(logging.DEBUG, logger="qnode.drivers.attenuator"):
        with expected_protocol(Keysight8156A, pairs) as att:
            att.attenuation_db = 2
    lines = [r.getMessage() for r in caplog.records if r.name == "qnode.drivers.attenuator"]
    assert lines[0].startswith("-> :INP:ATT 2 (") and lines[0].endswith(" us)")
    assert lines[1].startswith("-> SYST:ERR?") and lines[2].startswith('<- 0,"No error" (')
