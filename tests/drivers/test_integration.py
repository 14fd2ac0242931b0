"""Drivers against the emulated instruments over real transports, including every fault kind.

Each fault test checks the named exception (device and command in it) and then a successful
exchange on the same driver object (the adapter reconnects after a drop, a stall or garbage).
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from drivers.errors import (
    InstrumentCommandError,
    InstrumentDisconnected,
    InstrumentProtocolError,
    InstrumentTimeout,
)
from drivers.keysight_8156a import Keysight8156A
from drivers.pulse_source import PulseSource
from drivers.spad import SpadDetector
from drivers.time_tagger import TimeTagger

TIMEOUT_S = 1.5  # a loaded 2-core CI machine; the stall tests wait this long once each


def make(world, kind: str, resource_key: str | None = None):
    cls = {
        "source": PulseSource,
        "attenuator": Keysight8156A,
        "timetagger": TimeTagger,
        "detector": SpadDetector,
    }[kind]
    return cls(world.resources[resource_key or kind], timeout_s=TIMEOUT_S)


def test_source_round_trip_and_symbols(clean_world):
    with make(clean_world, "source") as src:
        assert src.idn.startswith("QNODE,PULSE-SOURCE")
        src.output = False  # the key and the class probabilities are frozen while emitting
        src.mu_signal = 0.6
        assert src.mu_signal == pytest.approx(0.6)
        src.set_random_key(0xC0FFEE)
        first = src.symbols(1000, 4096)
        slots = np.array([1000 + 4095, 1000, 1000 + 17], dtype=np.int64)
        assert src.symbols_for_slots(slots).tolist() == first[[4095, 0, 17]].tolist()
        src.set_random_key(0xC0FFEF)
        assert src.symbols(1000, 4096).tolist() != first.tolist()
        # A large block (read straight from the socket) agrees with the slot-list query.
        big = src.symbols(0, 1 << 18)
        pick = np.array([0, 77, 1 << 17, (1 << 18) - 1], dtype=np.int64)
        assert src.symbols_for_slots(pick).tolist() == big[pick].tolist()
        assert set(np.unique(big & 0b1100).tolist()) <= {0, 4, 8}


def test_attenuator_out_of_range_is_command_error(clean_world):
    with make(clean_world, "attenuator") as att:
        att.attenuation_db = 12.25
        assert att.attenuation_db == pytest.approx(12.25)
        with pytest.raises(InstrumentCommandError) as info:
            att.attenuation_db = 99
        assert info.value.code == -222 and info.value.device == "attenuator"
        assert att.attenuation_db == pytest.approx(12.25)
        att.set_attenuation_limit("DEF")
        assert att.attenuation_db == 0


def test_tagger_streams_sorted_tags(clean_world):
    with make(clean_world, "source") as src, make(clean_world, "timetagger") as tagger:
        src.output = True
        tagger.start()
        t, ch = tagger.fetch_tags(200_000)
        assert len(t) > 0 and set(np.unique(ch)) <= {0, 1, 2, 3, 4}
        assert np.all(np.diff(t) >= 0)
        assert tagger.count_rate(0) >= 0
        src.output = False


@pytest.mark.parametrize(
    "resource_key, transport",
    [
        ("detector", "auto"),
        ("detector", "visa"),
        ("detector_socket", "auto"),
        ("detector_socket", "visa"),
    ],
)
def test_detector_over_pty_and_socket(clean_world, resource_key, transport):
    """The pty and ``ASRLsocket://``, each through pyserial and through pyvisa-py's ASRL session."""
    resource = clean_world.resources[resource_key]
    with SpadDetector(resource, timeout_s=TIMEOUT_S, transport=transport) as det:
        det.channel = "ALL"
        det.efficiency_percent = 20
        assert det.efficiency_percent == (20.0, 20.0, 20.0, 20.0)
        with pytest.raises(InstrumentCommandError, match="DEADTIME"):
            det.dead_time_ns = 5_000_000
        assert det.regulation_state.split(",")[0] in ("LOCKED", "SETTLING", "OFF")


def test_query_is_atomic_across_threads(clean_world):
    att = make(clean_world, "attenuator")
    src = make(clean_world, "source")
    errors: list[str] = []

    def worker(n: int) -> None:
        for _ in range(n):
            if not att.idn.startswith("HEWLETT-PACKARD"):
                errors.append("crossed reply")
            if att.shutter_open not in (True, False):
                errors.append("bad shutter reply")

    threads = [threading.Thread(target=worker, args=(40,)) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    att.close()
    src.close()
    assert errors == []


INSTRUMENTS = ["source", "attenuator", "timetagger", "detector"]


def _probe(inst):
    """A query whose answer we know, per instrument."""
    return inst.idn


# A set that checks errors, per instrument, and the command it sends.
SET_COMMANDS = {
    "source": ":OUTP OFF",
    "attenuator": ":INP:OFFS 0",
    "timetagger": ":SYNC:PER 1048576",
    "detector": "COUNTERS:INTEGRATION_TIME 1000",
}


def _setting(inst, kind: str):
    """A set that checks errors, per instrument (sends ``SET_COMMANDS[kind]``)."""
    if kind == "source":
        inst.output = False
    elif kind == "attenuator":
        inst.offset_db = 0.0
    elif kind == "timetagger":
        inst.sync_period_slots = 1 << 20
    else:
        inst.integration_time_ms = 1000


def _names(exc, kind: str, command: str) -> None:
    """The named exception carries the device and the command, and says both."""
    assert exc.device == kind and exc.command == command
    assert kind in str(exc) and repr(command) in str(exc)


@pytest.mark.parametrize("kind", INSTRUMENTS)
def test_fault_drop_then_reconnect(clean_world, kind):
    with make(clean_world, kind) as inst:
        assert _probe(inst)
        clean_world.inject(kind, "drop", count=1)
        with pytest.raises(InstrumentDisconnected) as info:
            _probe(inst)
        _names(info.value, kind, "*IDN?")
        assert _probe(inst)  # reconnected
        assert inst.adapter.reconnects == 1


@pytest.mark.parametrize("kind", INSTRUMENTS)
def test_fault_stall_times_out_then_recovers(clean_world, kind):
    with make(clean_world, kind) as inst:
        clean_world.inject(kind, "stall", count=1)
        with pytest.raises(InstrumentTimeout) as info:
            _probe(inst)
        _names(info.value, kind, "*IDN?")
        assert _probe(inst)


@pytest.mark.parametrize("kind", INSTRUMENTS)
def test_fault_garbage_is_protocol_error_then_recovers(clean_world, kind):
    with make(clean_world, kind) as inst:
        clean_world.inject(kind, "garbage", count=1)
        with pytest.raises(InstrumentProtocolError) as info:
            _probe(inst) if kind != "timetagger" else inst.fetch_tags(10)
        _names(info.value, kind, "*IDN?" if kind != "timetagger" else ":TAGS:FETC? 10")
        assert _probe(inst)


@pytest.mark.parametrize("kind", INSTRUMENTS)
def test_fault_error_is_command_error_with_code(clean_world, kind):
    with make(clean_world, kind) as inst:
        clean_world.inject(kind, "error", count=1, code=-221, text="Settings conflict")
        with pytest.raises(InstrumentCommandError) as info:
            _setting(inst, kind)
        assert info.value.code == -221 and info.value.text.endswith("Settings conflict")
        _names(info.value, kind, SET_COMMANDS[kind])
        _setting(inst, kind)  # the next set is clean
        assert _probe(inst)


@pytest.mark.parametrize("kind", INSTRUMENTS)
def test_fault_slow_within_and_beyond_timeout(clean_world, kind):
    with make(clean_world, kind) as inst:
        expected = _probe(inst)
        clean_world.inject(kind, "slow", count=1, delay_ms=100)
        assert _probe(inst) == expected  # slow but inside the timeout
        clean_world.inject(kind, "slow", count=1, delay_ms=TIMEOUT_S * 1000 + 400)
        with pytest.raises(InstrumentTimeout) as info:
            _probe(inst)
        _names(info.value, kind, "*IDN?")
        # The late answer must not be taken for the next reply: the adapter reconnected.
        assert _probe(inst) == expected


def test_symbol_key_never_in_logs_or_errors(clean_world, caplog):
    """The source's symbol key fixes Alice's key bits: no log line (driver or emulator, DEBUG
    included) and no exception text may carry it, even when setting it fails."""
    import logging

    key = 0x5EC2E7C0FFEE1234
    caplog.set_level(logging.DEBUG)
    with make(clean_world, "source") as src:
        src.output = False
        src.set_random_key(key)
        src.output = True  # the key is frozen while emitting: the instrument refuses it
        with pytest.raises(InstrumentCommandError) as info:
            src.set_random_key(key ^ 1)
        src.output = False
    assert info.value.code == -221 and ":SOUR:RAND:KEY" in info.value.command
    assert "<redacted>" in info.value.command
    shown = caplog.text + str(info.value) + info.value.command
    assert "SOUR:RAND:KEY" in caplog.text  # the exchange itself is logged ...
    for secret in (f"{key:016X}", f"{key ^ 1:016X}", f"{key:X}", str(key)):
        assert secret.lower() not in shown.lower()  # ... its argument is not
