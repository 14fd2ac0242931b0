"""The HAL against a simulated link that it starts itself (`simulated = true`): Bob's frames,
Alice's symbols for them, delay calibration, and `qnode bench check` passing and failing."""

from dataclasses import replace

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from hal.bench import Bench, world_request
from hal.calibrate import calibrate_delay
from hal.cli import register
from hal.interfaces import Transmitter
from hal.receiver import BobReceiver, alice_symbols, timing_from_config

TRUE_DELAY_PS = 25 * 4_897_000.0  # sim_link: gys preset at 25 km, no cable delay


@pytest.fixture(scope="module")
def bench():
    with Bench.load("sim_link") as opened:
        yield opened


def _new_run(bench):
    bench.transmitter.set_emitting(False)
    bench.transmitter.set_emitting(True)
    bench.tagger.start()


def test_bob_frames_agree_with_alice_symbols(bench):
    _new_run(bench)
    timing = replace(timing_from_config(bench.config), frame_slots=1 << 20)
    rx = BobReceiver(bench.tagger, timing, seed=5)
    frames = [rx.next_frame(timeout_s=30), rx.next_frame(timeout_s=30)]
    assert frames[1].index == frames[0].index + 1
    for frame in frames:
        ev = frame.events
        lo = frame.index * frame.frame_slots
        assert len(ev) > 1000
        assert np.all(np.diff(ev.slot) > 0) and ev.slot[0] >= lo
        assert ev.slot[-1] < lo + frame.frame_slots
        alice = alice_symbols(bench.transmitter, ev.slot)
        # The sifting path: Bob's uint16 gaps straight to SYMB:GAPS? give the same symbols, and
        # so does the interface's default for a source without a gap query (builds the slots).
        tx, gaps = bench.transmitter, np.diff(ev.slot).astype(np.uint16)
        assert np.all(np.diff(ev.slot) <= 0xFFFF)
        by_gaps = tx.symbol_bytes_for_gaps(int(ev.slot[0]), gaps)
        np.testing.assert_array_equal(by_gaps, tx.symbol_bytes(ev.slot))
        default = Transmitter.symbol_bytes_for_gaps(tx, int(ev.slot[0]), gaps)
        np.testing.assert_array_equal(default, by_gaps)
        np.testing.assert_array_equal(by_gaps & 1, alice["basis"])
        matched = (alice["basis"] == ev.basis) & ~ev.double
        assert 0.4 < matched.mean() < 0.6
        qber = float(np.mean(alice["bit"][matched] != ev.bit[matched]))
        # gys misalignment is 3.3 %: a wrong slot mapping would give 50 %.
        assert qber < 0.08, f"QBER {qber:.3f} in frame {frame.index}"
    assert rx.builder.dropped_outside_gate < 0.05 * rx.tags_seen


def test_delay_calibration_finds_the_fibre_delay(bench):
    _new_run(bench)
    timing = replace(timing_from_config(bench.config), delay_ps=0.0)
    cal = calibrate_delay(bench.tagger, bench.transmitter, timing, max_delay_ps=300e6)
    # The phase may land just below a period boundary: then the whole-slot part is one less.
    assert cal.offset_slots in (122424, 122425)
    assert cal.delay_ps == cal.offset_slots * timing.period_ps + cal.phase_ps
    assert cal.delay_ps == pytest.approx(TRUE_DELAY_PS, abs=10)
    assert cal.peak_over_noise > 8


def _bench_file(tmp_path, control):
    path = tmp_path / "attached.toml"
    path.write_text(
        f"""node = "link"
[sim]
attach = "{control}"
[source]
driver = "qnode-pulse-source"
settings = {{ mu_signal = 0.48, output = true }}
[attenuator]
driver = "keysight-8156a"
settings = {{ attenuation_db = 1.5, shutter_open = true }}
[detector]
driver = "id120"
settings = {{ channel = "ALL", dead_time_ns = 0 }}
[timetagger]
driver = "qnode-time-tagger"
settings = {{ sync_period_slots = 1048576 }}
[timing]
clock_hz = 1e9
"""
    )
    return path


def _cli():
    app = typer.Typer()
    register(app)
    return app


def test_bench_check_passes_on_a_simulated_bench(bench, tmp_path):
    control = bench.world.instruments["control"]
    result = CliRunner().invoke(_cli(), ["bench", "check", str(_bench_file(tmp_path, control))])
    assert result.exit_code == 0, result.output
    assert "HP8156A" in result.output and "FAIL" not in result.output


def test_bench_check_bundled_bench_attached_with_sim_option(bench):
    control = bench.world.instruments["control"]
    result = CliRunner().invoke(_cli(), ["bench", "check", "sim_bob", "--sim", control])
    assert result.exit_code == 0, result.output
    assert "SPAD-MODULE" in result.output and "TIME-TAGGER" in result.output


def test_bench_check_fails_and_names_the_device(bench, tmp_path):
    control = bench.world.instruments["control"]
    world_request(control, {"op": "inject", "instrument": "attenuator", "kind": "error",
                            "count": None, "code": -222, "text": "Data out of range"})  # fmt: skip
    try:
        result = CliRunner().invoke(_cli(), ["bench", "check", str(_bench_file(tmp_path, control))])
    finally:
        world_request(control, {"op": "clear", "instrument": None, "kind": None})
    assert result.exit_code == 1
    assert "FAILED attenuator" in result.output and "-222" in result.output
    assert ":INP:ATT 1.5" in result.output


def test_instruments_identify_and_query(bench):
    res = bench.world.instruments
    runner = CliRunner()
    out = runner.invoke(_cli(), ["instruments", "identify", res["attenuator"]])
    assert out.exit_code == 0 and out.output.startswith("HEWLETT-PACKARD,HP8156A")
    out = runner.invoke(_cli(), ["instruments", "query", res["detector"], "DEADTIME:TIME?"])
    assert out.exit_code == 0 and out.output.strip() == "0,0,0,0"
    out = runner.invoke(_cli(), ["instruments", "query", res["detector"], "DEADTIME:TIME 5000000"])
    assert out.exit_code == 1 and out.output.startswith("ERROR -222")
    out = runner.invoke(_cli(), ["instruments", "query", res["attenuator"], ":INP:ATT 99"])
    assert out.exit_code == 1 and "-222" in out.output
    out = runner.invoke(_cli(), ["instruments", "list", "--sim", res["control"]])
    assert out.exit_code == 0 and "timetagger" in out.output


def test_bench_check_error_names_the_role_in_brackets(tmp_path):
    """Messages reach the terminal as written (rich would eat "[timetagger]" as markup)."""
    path = tmp_path / "bad.toml"
    path.write_text(
        'node = "bob"\n[timetagger]\ndriver = "qnode-time-tagger"\n'
        'resource = "TCPIP::127.0.0.1::9::SOCKET"\nsettings = { sync_period = 3 }\n'
        "[timing]\nclock_hz = 1e9\n"
    )
    result = CliRunner().invoke(_cli(), ["bench", "check", str(path)])
    assert result.exit_code == 1
    assert "[timetagger] unknown setting(s) ['sync_period']" in " ".join(result.output.split())
