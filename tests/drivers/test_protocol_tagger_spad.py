"""Protocol tests (ordered sent/reply pairs) for the time tagger and the SPAD module."""

import numpy as np
import pytest

from drivers.errors import InstrumentCommandError, InstrumentProtocolError
from drivers.protocol import expected_protocol
from drivers.spad import SpadDetector
from drivers.time_tagger import TimeTagger, decode_tags, encode_tags

OK = ("SYST:ERR?", '0,"No error"')


def _block(payload: bytes) -> bytes:
    n = str(len(payload))
    return b"#" + str(len(n)).encode() + n.encode() + payload + b"\n"


def test_tagger_acquisition_and_rates():
    pairs = [
        (":ACQ:STAR", None),
        OK,
        (":ACQ:STAT?", "1"),
        (":TAGS:COUN?", "42"),
        (":COUN:RATE? 3", "1.25E+04"),
        (":ACQ:STOP", None),
        OK,
    ]
    with expected_protocol(TimeTagger, pairs) as tagger:
        tagger.start()
        assert tagger.acquiring is True
        assert tagger.tags_waiting == 42
        assert tagger.count_rate(3) == 12500.0
        tagger.stop()


def test_tagger_channel_settings_and_sync_period():
    pairs = [
        (":INP2:THR 0.25", None),
        OK,
        (":INP2:THR?", "0.25"),
        (":INP4:DEL 1500", None),
        OK,
        (":INP4:DEL?", "1500"),
        (":SYNC:PER 1048576", None),
        OK,
        (":SYNC:PER?", "1048576"),
    ]
    with expected_protocol(TimeTagger, pairs) as tagger:
        tagger.set_input_threshold_v(2, 0.25)
        assert tagger.input_threshold_v(2) == 0.25
        tagger.set_input_delay_ps(4, 1500)
        assert tagger.input_delay_ps(4) == 1500
        tagger.sync_period_slots = 1 << 20
        assert tagger.sync_period_slots == 1 << 20


def test_tagger_fetch_decodes_records():
    t = np.array([0, 1000, 10, 2**55 - 1], dtype=np.int64)  # 56-bit times, any byte values
    ch = np.array([0, 1, 4, 2], dtype=np.uint8)
    raw = encode_tags(t, ch)
    assert b"\n" in raw  # the payload holds the terminator byte: read with it off
    with expected_protocol(TimeTagger, [(":TAGS:FETC? 4", _block(raw))]) as tagger:
        got_t, got_ch = tagger.fetch_tags(4)
    assert got_t.dtype == np.int64 and got_ch.dtype == np.uint8
    assert got_t.tolist() == t.tolist() and got_ch.tolist() == ch.tolist()


def test_tagger_empty_fetch():
    with expected_protocol(TimeTagger, [(":TAGS:FETC? 10", b"#10\n")]) as tagger:
        t, ch = tagger.fetch_tags(10)
    assert len(t) == 0 and len(ch) == 0


def test_tagger_fetch_rejects_partial_record():
    with expected_protocol(TimeTagger, [(":TAGS:FETC? 1", _block(b"\x01" * 12))]) as tagger:
        with pytest.raises(InstrumentProtocolError, match="multiple of 8"):
            tagger.fetch_tags(1)


def test_decode_matches_shift_and_mask():
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 2**63, 1000, dtype=np.uint64)
    t, ch = decode_tags(raw.tobytes())
    assert (t == (raw >> np.uint64(8)).astype(np.int64)).all()
    assert (ch == (raw & np.uint64(0xFF)).astype(np.uint8)).all()


@pytest.mark.parametrize(
    "prop, cmd, value, reply",
    [
        ("dead_time_ns", "DEADTIME:TIME", 50, "50"),
        ("threshold_uv", "THRESHOLD:VOLTAGE", 100000, "100000"),
        ("bias_uv", "BIAS:VOLTAGE", 45000000, "45000000"),
        ("efficiency_percent", "EFFICIENCY", 25.5, "25.5"),
        ("temperature_setpoint_mc", "REG:TEMP_SET_POINT", -40000, "-40000"),
        ("integration_time_ms", "COUNTERS:INTEGRATION_TIME", 1000, "1000"),
    ],
)
def test_spad_settings(prop, cmd, value, reply):
    pairs = [(f"{cmd} {value}", "OK"), (f"{cmd}?", reply)]
    with expected_protocol(SpadDetector, pairs) as det:
        setattr(det, prop, value)
        assert getattr(det, prop) == value


def test_spad_all_channels_answer_a_tuple():
    pairs = [
        ("CHANNEL ALL", "OK"),
        ("COUNTERS:DETECTION_FREQ?", "100,200,300,400"),
        ("COUNTERS:DETECTION_COUNT?", "10,20,30,40"),
        ("CHANNEL 2", "OK"),
        ("REG:MEASURED_TEMP?", "-39990"),
        ("REG:STATE?", "LOCKED"),
        ("REG:RUN FALSE", "OK"),
        ("*IDN?", "QNODE,SPAD-MODULE-4CH,SIM0001,1.0"),
    ]
    with expected_protocol(SpadDetector, pairs) as det:
        det.channel = "ALL"
        assert det.detection_freq_hz == (100.0, 200.0, 300.0, 400.0)
        assert det.detection_count == (10, 20, 30, 40)
        det.channel = 2
        assert det.measured_temperature_mc == -39990
        assert det.regulation_state == "LOCKED"
        det.set_regulation(False)
        assert det.idn.startswith("QNODE,SPAD")


def test_spad_error_line_raises_with_code():
    pairs = [("DEADTIME:TIME 2000000", "ERROR -222,Data out of range;2000000 not in [0, 1e+06]")]
    with expected_protocol(SpadDetector, pairs) as det:
        with pytest.raises(InstrumentCommandError) as info:
            det.dead_time_ns = 2000000
    assert info.value.code == -222 and info.value.device == "detector"
    assert info.value.command == "DEADTIME:TIME 2000000"


def test_spad_error_on_query_and_error_register():
    pairs = [
        ("COUNTERS:DETECTION_FREQ?", "ERROR -200,injected fault"),
        ("ERROR?", "-200,injected fault"),
        ("ERROR?", "0,No error"),
    ]
    with expected_protocol(SpadDetector, pairs) as det:
        with pytest.raises(InstrumentCommandError, match="injected fault"):
            _ = det.detection_freq_hz
        assert det.errors() == [(-200, "injected fault")]


def test_spad_set_without_ok_is_protocol_error():
    with expected_protocol(SpadDetector, [("EFFICIENCY 20", "20")]) as det:
        with pytest.raises(InstrumentProtocolError, match="expected OK"):
            det.efficiency_percent = 20
