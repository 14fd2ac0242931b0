"""One test over every driver: no I/O in __init__, docstrings present and saying what they do."""

import inspect

import pytest

from drivers.adapter import Adapter
from drivers.instrument import Instrument, _Property
from drivers.keysight_8156a import Keysight8156A
from drivers.pulse_source import PulseSource
from drivers.spad import SpadDetector
from drivers.time_tagger import TimeTagger

DRIVERS = [PulseSource, Keysight8156A, SpadDetector, TimeTagger]
VERBS = ("Control", "Measure", "Get", "Set")


class NoIO(Adapter):
    """An adapter that fails any test that touches the transport."""

    def _fail(self, *args):
        raise AssertionError(f"I/O in __init__ of a driver: {args!r}")

    _open = _close = lambda self: NoIO._fail(self, "open/close")  # noqa: E731
    _write_bytes = _read_line = _read_exact = _fail


@pytest.mark.parametrize("cls", DRIVERS)
def test_constructor_does_no_io(cls):
    instrument = cls(NoIO("none", "noio"))
    assert not instrument.adapter.is_open


@pytest.mark.parametrize("cls", DRIVERS)
def test_constructor_with_resource_string_does_no_io(cls):
    # A port nobody listens on: constructing must not try to connect.
    instrument = cls("TCPIP::127.0.0.1::9::SOCKET")
    assert not instrument.adapter.is_open


@pytest.mark.parametrize("cls", DRIVERS)
def test_docstrings(cls):
    assert cls.__doc__ and cls.__doc__.strip(), f"{cls.__name__} has no docstring"
    for name, attr in inspect.getmembers(cls):
        if name.startswith("_"):
            continue
        if isinstance(attr, _Property):
            assert attr.__doc__.startswith(VERBS), f"{cls.__name__}.{name}: {attr.__doc__!r}"
        elif callable(attr) and attr.__qualname__.startswith(cls.__name__ + "."):
            assert attr.__doc__, f"{cls.__name__}.{name} has no docstring"


@pytest.mark.parametrize("cls", DRIVERS)
def test_is_instrument_with_name(cls):
    assert issubclass(cls, Instrument) and cls.default_name != "instrument"
