"""A simulated world for the integration tests: ``sim_hw.testing.running_world`` (a
``qnode sim serve --json`` subprocess). Drivers reach it only through its real transports (TCP
sockets, a pty, ``socket://``); faults are switched through the world's control endpoint.
"""

from __future__ import annotations

import pytest

from sim_hw.testing import running_world


class World:
    """Resources by role (the detector on its pty's stable link) and the fault switch."""

    def __init__(self, handle) -> None:
        self.handle = handle
        self.resources = dict(handle.resources)
        self.resources["detector"] = handle.pty_links["detector"]  # a drop re-plugs the pty
        self.resources["detector_socket"] = handle.serial_socket["detector"]
        self.resources["control"] = handle.control

    def inject(self, instrument: str, kind: str, count: int | None = 1, **kw) -> None:
        self.handle.inject_fault(instrument, kind, count=count, **kw)

    def clear(self) -> None:
        self.handle.clear_faults()


@pytest.fixture(scope="session")
def world():
    with running_world(preset="gys", seed=7) as handle:
        yield World(handle)


@pytest.fixture
def clean_world(world):
    world.clear()
    yield world
    world.clear()
