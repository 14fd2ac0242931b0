"""Bench files: validation errors name the key; example benches validate."""

import pytest

from hal.bench import BenchError, bundled_benches, load_config, parse_config, same_value

TAGGER = {"driver": "qnode-time-tagger", "resource": "TCPIP::127.0.0.1::5025::SOCKET"}


def test_bundled_benches_validate():
    names = bundled_benches()
    assert {"sim_alice", "sim_bob", "sim_link", "lab_alice", "lab_bob"} <= set(names)
    for name in names:
        cfg = load_config(name)
        assert cfg.node in ("alice", "bob", "link")


def test_minimal_bob_bench():
    cfg = parse_config({"node": "bob", "timetagger": TAGGER, "timing": {"clock_hz": 1e9}})
    assert cfg.clock_hz == 1e9 and cfg.timing.frame_slots == 1 << 24


@pytest.mark.parametrize(
    "data, message",
    [
        (
            {"node": "bob", "timetagger": TAGGER, "timing": {"clock_hz": 1e9}, "colour": 1},
            "'colour'",
        ),
        (
            {"node": "bob", "timetagger": {**TAGGER, "sttings": {}}, "timing": {"clock_hz": 1e9}},
            "'timetagger.sttings'",
        ),
        (
            {"node": "bob", "timetagger": TAGGER, "timing": {"clock_hz": 1e9, "gate": 3}},
            "'timing.gate'",
        ),
        ({"node": "carol"}, "node"),
        ({"node": "bob", "timing": {"clock_hz": 1e9}}, "needs a [timetagger] table"),
        ({"node": "bob", "timetagger": TAGGER}, "clock_hz"),
        (
            {
                "node": "bob",
                "timetagger": {**TAGGER, "driver": "swabian"},
                "timing": {"clock_hz": 1},
            },
            "'swabian' is not registered",
        ),
        (
            {"node": "alice", "source": {**TAGGER, "driver": "qnode-time-tagger"}},
            "does not implement that role",
        ),
        (
            {
                "node": "bob",
                "timetagger": {**TAGGER, "settings": {"sync_period": 5}},
                "timing": {"clock_hz": 1e9},
            },
            "unknown setting(s) ['sync_period']",
        ),
        (
            {
                "node": "bob",
                "timetagger": {"driver": "qnode-time-tagger"},
                "timing": {"clock_hz": 1},
            },
            "needs a resource",
        ),
        (
            {
                "node": "bob",
                "timetagger": {**TAGGER, "resource": "sim:timetagger"},
                "timing": {"clock_hz": 1},
            },
            "needs simulated = true",
        ),
        ({"node": "bob", "timetagger": TAGGER, "timing": {"clock_hz": -1}}, "timing.clock_hz"),
    ],
)
def test_validation_errors_name_the_key(data, message):
    with pytest.raises(BenchError) as info:
        parse_config(data, "test.toml")
    assert message in str(info.value)
    assert str(info.value).startswith("test.toml:")
    assert "Value error" not in str(info.value)  # pydantic's prefix is noise to a technician


def test_bad_toml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("node = ")
    with pytest.raises(BenchError, match="not valid TOML"):
        load_config(bad)
    with pytest.raises(BenchError, match="no such bench file"):
        load_config(tmp_path / "none.toml")


def test_same_value():
    assert same_value(0.48, 0.48000000001) and not same_value(0.48, 0.49)
    assert same_value(True, 1) and same_value("ALL", "all")
    assert same_value(0, (0.0, 0.0, 0.0, 0.0)) and not same_value(0, (0.0, 1.0))
