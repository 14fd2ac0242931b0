"""A simulated world for the integration tests: `qnode sim serve --json` in a subprocess.

Drivers reach it only through its real transports (TCP sockets, a pty, ``socket://``); faults are
switched through the world's control endpoint, as ``qnode sim fault`` does.
"""

from __future__ import annotations

import pytest

from hal.bench import SimConfig, SimWorld, world_request


class WorldHandle:
    """Resources of a running world and its fault switch."""

    def __init__(self, sim: SimWorld) -> None:
        self.sim = sim
        self.resources = sim.instruments
        self.control = sim.instruments["control"]

    def inject(self, instrument: str, kind: str, count: int | None = 1, **kw) -> None:
        world_request(
            self.control,
            {"op": "inject", "instrument": instrument, "kind": kind, "count": count, **kw},
        )

    def clear(self) -> None:
        world_request(self.control, {"op": "clear", "instrument": None, "kind": None})


@pytest.fixture(scope="session")
def world():
    sim = SimWorld(SimConfig(preset="gys", seed=7))
    sim.start()
    try:
        yield WorldHandle(sim)
    finally:
        sim.stop()


@pytest.fixture
def clean_world(world):
    world.clear()
    yield world
    world.clear()
