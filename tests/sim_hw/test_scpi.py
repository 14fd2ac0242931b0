"""The SCPI engine on its own: grammar, parameters, error queue, status registers, framing."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim_hw.scpi import ErrorQueue, MessageFramer, ScpiDevice, definite_block, parse_message
from sim_hw.scpi_params import (
    DECIBEL,
    HERTZ,
    METRE,
    Block,
    Boolean,
    Choice,
    Hex64,
    Integer,
    Number,
    ScpiError,
)


class Bench(ScpiDevice):
    """A small device with one of each kind of header and parameter."""

    idn = "TEST,BENCH,1,0"

    def build(self, tree):
        self.att = 0.0
        self.wav = 1550e-9
        self.out = False
        self.clock = 1e9
        self.edge = "RISING"
        self.thresholds = {}
        self.key = None
        self.resets = 0
        tree.setting(":INPut:ATTenuation", Number(0, 60, 0, DECIBEL),
                     lambda: self.att, lambda v: setattr(self, "att", v))  # fmt: skip
        tree.setting(":INPut:WAVelength", Number(1200e-9, 1650e-9, 1550e-9, METRE),
                     lambda: self.wav, lambda v: setattr(self, "wav", v))  # fmt: skip
        tree.setting(":OUTPut[:STATe]", Boolean(), lambda: self.out,
                     lambda v: setattr(self, "out", v))  # fmt: skip
        tree.setting("[:SOURce]:CLOCk[:FREQuency]", Number(1e6, 1e10, 1e9, HERTZ),
                     lambda: self.clock, lambda v: setattr(self, "clock", v))  # fmt: skip
        tree.setting(":INPut<n>:THReshold", Number(-2, 2, 0.5),
                     lambda n: self.thresholds.get(n, 0.5),
                     lambda n, v: self.thresholds.__setitem__(n, v))  # fmt: skip
        tree.setting(":TRIGger:EDGE", Choice(("RISing", "FALLing")), lambda: self.edge,
                     lambda v: setattr(self, "edge", v))  # fmt: skip
        tree.add(":KEY", lambda k: setattr(self, "key", k), [Hex64()])
        tree.add(":ECHO?", lambda data: definite_block(data), [Block()])
        tree.add(":SUM?", lambda a, b: a + b, [Integer(0, 1 << 62), Integer(0, 1 << 62)])
        tree.add(":FAIL", self._fail)

    def _fail(self):
        raise ScpiError(-200, "asked to fail")

    def reset(self):
        self.resets += 1
        self.att = 0.0


@pytest.fixture
def dev():
    return Bench()


def ask(dev, msg: str | bytes) -> bytes | None:
    return dev.execute(msg.encode() if isinstance(msg, str) else msg)


def errors(dev) -> list[str]:
    out = []
    while True:
        reply = ask(dev, "SYST:ERR?").decode().strip()
        if reply.startswith("0,"):
            return out
        out.append(reply)


# --- headers -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [":INPut:ATTenuation 12.5", ":INP:ATT 12.5", ":inp:att 12.5", "INP:attenuation 12.5",
     ":Inp:Att 12.5", "inp:att 12.5DB", ":INP:ATT 12500 MDB"],
)  # fmt: skip
def test_short_long_and_case_forms_all_reach_the_setting(dev, command):
    assert ask(dev, command) is None
    assert errors(dev) == []
    assert ask(dev, ":INP:ATT?") == b"12.5\n"


@pytest.mark.parametrize("command", [":INPU:ATT 1", ":IN:ATT 1", ":INP:ATTEN 1", ":INP:ATT:X 1"])
def test_partial_keywords_are_undefined_headers(dev, command):
    ask(dev, command)
    assert errors(dev)[0].startswith("-113,")


def test_optional_nodes_may_be_left_out_or_given(dev):
    for cmd in ("CLOC 2e9", ":SOUR:CLOC:FREQ 2e9", "SOURCE:CLOCK 2 GHZ", ":clock:frequency 2e9"):
        ask(dev, cmd)
        assert ask(dev, ":SOUR:CLOC?") == b"2000000000.0\n", cmd
        ask(dev, ":CLOC 1e9")
    assert errors(dev) == []
    ask(dev, ":OUTP ON")
    assert ask(dev, ":OUTP:STAT?") == b"1\n"


def test_numeric_suffix_selects_the_channel_and_defaults_to_one(dev):
    ask(dev, ":INP2:THR 1.25;:INPut3:THReshold -0.5;:INP:THR 0.1")
    assert ask(dev, ":INP2:THR?;:INP3:THR?;:INP1:THR?;:INP4:THR?") == b"1.25;-0.5;0.1;0.5\n"
    ask(dev, ":OUTP2 ON")  # no suffix allowed on OUTPut
    assert errors(dev)[0].startswith("-113,")


def test_compound_headers_are_relative_to_the_previous_path(dev):
    assert ask(dev, ":INP:ATT 3;WAV 1300NM;ATT?;WAV?") == b"3.0;1.3e-06\n"
    assert ask(dev, ":INP:ATT 4;:OUTP ON;:INP:ATT?;:OUTP?") == b"4.0;1\n"
    # a common command keeps the path
    assert ask(dev, ":INP:ATT 5;*OPC;ATT?") == b"5.0\n"
    # OUTP:STAT after INP: means INP:OUTP:STAT, which does not exist
    ask(dev, ":INP:ATT 6;OUTP:STAT OFF")
    assert errors(dev)[0].startswith("-113,")
    assert ask(dev, ":OUTP?") == b"1\n"


def test_command_error_abandons_the_rest_of_the_message_execution_error_does_not(dev):
    assert ask(dev, ":BOGUS;:INP:ATT 9;:INP:ATT?") is None
    assert ask(dev, ":INP:ATT?") == b"0.0\n"
    assert ask(dev, ":FAIL;:INP:ATT 9;:INP:ATT?") == b"9.0\n"
    codes = [e.split(",")[0] for e in errors(dev)]
    assert codes == ["-113", "-200"]


# --- parameters ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "code"),
    [
        (":INP:ATT 61", "-222"),
        (":INP:ATT -1", "-222"),
        (":INP:ATT", "-109"),
        (":INP:ATT 1,2", "-108"),
        (':INP:ATT "ten"', "-104"),
        (":INP:ATT ten", "-104"),
        (":INP:ATT 3 KG", "-131"),
        (":OUTP MAYBE", "-224"),
        (":TRIG:EDGE UP", "-224"),
        (":KEY #HXYZ", "-224"),
        (":KEY 0x123456789ABCDEF01", "-224"),
        (":INP:WAV 1700NM", "-222"),
        (':INP:ATT "unterminated', "-102"),
        (":ECHO? #15abc", "-102"),
        (":ECHO? 12", "-104"),
        (":INP:ATT 1,,2", "-102"),
        (":INP:ATT? 3", "-224"),
        ("*ESE 300", "-222"),
    ],
)
def test_bad_parameters_get_the_standard_code(dev, command, code):
    before = dev.att
    ask(dev, command)
    got = errors(dev)
    assert got and got[0].split(",")[0] == code, got
    assert dev.att == before


def test_min_max_def_as_values_and_in_queries(dev):
    assert ask(dev, ":INP:ATT MAX;ATT?;ATT? MIN;ATT? DEF;ATT? maximum") == b"60.0;0.0;0.0;60.0\n"
    ask(dev, ":INP:ATT DEF")
    assert dev.att == 0.0
    ask(dev, ":INP:WAV min")
    assert dev.wav == pytest.approx(1200e-9)


@pytest.mark.parametrize(("word", "value"), [("ON", True), ("off", False), ("1", True),
                                             ("0", False), ("2", True)])  # fmt: skip
def test_booleans(dev, word, value):
    ask(dev, f":OUTP {word}")
    assert dev.out is value
    assert ask(dev, ":OUTP?") == (b"1\n" if value else b"0\n")


@pytest.mark.parametrize(("text", "value"), [("#H0123456789abcdef", 0x0123456789ABCDEF),
                                             ("0xFF", 255), ("ff", 255), ('"00ff"', 255)])  # fmt: skip
def test_hex_keys(dev, text, value):
    ask(dev, f":KEY {text}")
    assert errors(dev) == []
    assert dev.key == value


def test_choice_accepts_short_and_long_forms(dev):
    ask(dev, ":TRIG:EDGE fall")
    assert dev.edge == "FALLING"
    ask(dev, ":TRIG:EDGE RISING")
    assert ask(dev, ":TRIG:EDGE?") == b"RISING\n"


def test_integers_beyond_float_precision_stay_exact(dev):
    assert ask(dev, f":SUM? {2**60 + 1},1") == str(2**60 + 2).encode() + b"\n"


def test_block_argument_may_hold_terminators_and_separators(dev):
    payload = bytes(range(256)) + b";,\n\"'#"
    reply = ask(dev, b":ECHO? " + definite_block(payload) + b";:INP:ATT?")
    assert reply == definite_block(payload) + b";0.0\n"


def test_indefinite_block_runs_to_the_end_of_the_message(dev):
    assert ask(dev, b":ECHO? #0abc;def") == b"#17abc;def\n"


# --- common commands, error queue, status ----------------------------------------------------


def test_common_commands(dev):
    assert ask(dev, "*IDN?") == b"TEST,BENCH,1,0\n"
    assert ask(dev, "*idn?") == b"TEST,BENCH,1,0\n"
    ask(dev, ":INP:ATT 7;*RST")
    assert dev.resets == 1 and dev.att == 0.0
    assert ask(dev, "*OPC?") == b"1\n"
    assert ask(dev, "*TST?") == b"0\n"
    assert ask(dev, "*ESE 36;*ESE?;*SRE 32;*SRE?") == b"36;32\n"
    assert ask(dev, "*WAI;*OPC;*ESR?;*ESR?") == b"1;0\n"


def test_esr_bits_follow_the_error_class(dev):
    ask(dev, ":BOGUS")  # -113: command error, bit 5
    ask(dev, ":FAIL")  # -200: execution error, bit 4
    assert ask(dev, "*ESR?") == b"48\n"
    assert ask(dev, "*ESR?") == b"0\n"


def test_stb_reports_queue_and_summary_bits(dev):
    assert ask(dev, "*STB?") == b"0\n"
    ask(dev, "*ESE 32;*SRE 36;:BOGUS")
    assert int(ask(dev, "*STB?")) == 0x04 | 0x20 | 0x40
    ask(dev, "*CLS")
    assert ask(dev, "*STB?") == b"0\n"
    assert errors(dev) == []


def test_error_queue_is_fifo_with_texts_and_detail(dev):
    ask(dev, ":BOGUS")
    ask(dev, ":INP:ATT 99")
    assert ask(dev, "SYSTem:ERRor:NEXT?") == b'-113,"Undefined header;BOGUS"\n'
    assert ask(dev, ":SYST:ERR:COUN?") == b"1\n"
    assert ask(dev, "syst:err?") == b'-222,"Data out of range;99 not in [0, 60]"\n'
    assert ask(dev, "SYST:ERR?") == b'0,"No error"\n'


def test_error_queue_overflow_keeps_31_and_then_minus_350(dev):
    for i in range(40):
        ask(dev, f":BOGUS{i}X")
    got = errors(dev)
    assert len(got) == 32
    assert got[0] == '-113,"Undefined header;BOGUS0X"'
    assert got[30] == '-113,"Undefined header;BOGUS30X"'
    assert got[31] == '-350,"Queue overflow"'


def test_error_queue_unit():
    q = ErrorQueue(capacity=3)
    for code in (-1, -2, -3, -4):
        q.push(code, "x")
    assert [q.pop()[0] for _ in range(4)] == [-1, -2, -350, 0]


def test_handler_bug_is_reported_not_raised():
    class Buggy(ScpiDevice):
        def build(self, tree):
            tree.add(":BUG?", lambda: 1 / 0)

    dev = Buggy()
    assert ask(dev, ":BUG?") is None
    assert errors(dev)[0].startswith('-200,"Execution error;ZeroDivisionError')


# --- framing -------------------------------------------------------------------------------


def test_framer_waits_for_the_whole_block():
    framer = MessageFramer()
    block = definite_block(b"a\nb\nc")
    assert framer.feed(b"*IDN?\n:ECHO? " + block[:6]) == [b"*IDN?"]
    assert framer.feed(block[6:] + b"\r\n:X") == [b":ECHO? " + block]
    assert framer.feed(b"\n") == [b":X"]


def test_framer_does_not_trust_an_absurd_block_length():
    framer = MessageFramer(max_block=1000)
    assert framer.feed(b":ECHO? #9999999999\n") == [b":ECHO? #9999999999"]


@settings(max_examples=60, deadline=None)
@given(
    payloads=st.lists(st.binary(max_size=40), min_size=1, max_size=5),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=8),
)
def test_framer_result_does_not_depend_on_how_bytes_arrive(payloads, cuts):
    messages = [b":ECHO? " + definite_block(p) + b";*OPC" for p in payloads]
    stream = b"".join(m + b"\n" for m in messages)
    framer = MessageFramer()
    got, last = [], 0
    for cut in sorted(c for c in cuts if c <= len(stream)) + [len(stream)]:
        got += framer.feed(stream[last:cut])
        last = cut
    assert got == messages


def test_parse_message_units_and_params():
    units = list(parse_message(b':A:B 1, "x,;y" ,#12ab;C?;*IDN?'))
    assert [u.header for u in units] == [":A:B", "C?", "*IDN?"]
    assert [(t.kind, t.value) for t in units[0].params] == [
        ("data", "1"),
        ("string", "x,;y"),
        ("block", b"ab"),
    ]


def test_parse_message_rejects_empty_units():
    with pytest.raises(ScpiError) as info:
        list(parse_message(b":A;;:B"))
    assert info.value.code == -102


def test_framer_discards_a_message_that_never_ends():
    framer = MessageFramer(max_block=0, max_text=1000)
    assert framer.feed(b"x" * 600) == []
    assert framer.feed(b"y" * 600) == []  # 1200 bytes, no terminator: thrown away
    assert framer.discarded == 1200
    assert framer.feed(b"*IDN?\n") == [b"*IDN?"]


_FRAGMENTS = [":INP:ATT", " 5", ";", ":", "?", ",", '"', "'", "#1", "#15", "#0", "*IDN?", "MAX",
              "ATT", "\t", "1e999", "-", "#H", "ON", ":OUTP", "*ESE", "DB", "\x00", "\xff"]  # fmt: skip


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(_FRAGMENTS) | st.text(max_size=4), max_size=12))
def test_any_message_gets_an_answer_or_an_error_never_an_exception(parts):
    dev = Bench()
    msg = "".join(parts).encode("utf-8", "replace")
    reply = dev.execute(msg)
    assert reply is None or reply.endswith(b"\n")
    assert 0 <= len(dev.errors) <= 32
    assert dev.execute(b"*OPC?") == b"1\n"  # still answering
