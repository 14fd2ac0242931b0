"""One finite-key block through the block stages, one side of it (used by pipeline/postprocess.py).

A block is the list of sifted frames Bob closed with ``block_close``; both sides hold the same
frames, counts and test errors, and key bits that differ by the channel errors. Each side's
:class:`BlockSide` is sans-I/O like the stages it drives: ``start()`` and ``handle(msg)`` return
messages for the twin (the post-processing process adds ``block`` and ``epoch``), ``finished`` and
``failure`` tell where it stands, ``result()`` gives the final key, its key-store metadata and
figures for telemetry.
"""

from __future__ import annotations

import importlib
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

Message = dict[str, Any]

# The block stages, in order; a missing one makes every block fail with a clear reason.
STAGE_MODULES = (
    "pipeline.estimation",
    "pipeline.reconciliation",
    "pipeline.verification",
    "pipeline.amplification",
)


@dataclass
class BlockInput:
    block: int
    frames: list[int]
    key_bits: np.ndarray  # uint8 0/1, this side's sifted key bits (basis X), frame order
    counts: np.ndarray  # int64 (2, 3): matched detections per [basis, intensity]
    test_errors: np.ndarray  # int64 (3,): Z-basis errors per intensity
    frame_slots: int
    eps_sec: float
    eps_cor: float
    qber_abort: float
    f_target: float = 1.15
    source: dict[str, float] = field(default_factory=dict)  # Alice's intensities, probabilities


def missing_stages() -> list[str]:
    """Block stage modules not importable yet (reported, never faked)."""
    missing = []
    for name in STAGE_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            missing.append(name)
    return missing


class BlockSide:
    """Common bookkeeping of one side of one block."""

    def __init__(self, data: BlockInput) -> None:
        self.data = data
        self.started = time.monotonic()
        self.finished = False
        self.failure: str | None = None
        self._key: bytes = b""
        self._meta: dict[str, Any] = {}
        self.figures: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(block={self.data.block}, finished={self.finished})"

    def fail(self, reason: str) -> list[Message]:
        self.finished, self.failure = True, reason
        return []

    def start(self) -> list[Message]:
        raise NotImplementedError

    def handle(self, msg: Message) -> list[Message]:
        raise NotImplementedError

    def result(self) -> tuple[bytes, dict[str, Any], dict[str, Any]]:
        return self._key, self._meta, self.figures


class UnavailableBlock(BlockSide):
    """The block stages are not all present in this checkout: the block fails, saying which."""

    def __init__(self, data: BlockInput, missing: list[str]) -> None:
        super().__init__(data)
        self.missing = missing

    def start(self) -> list[Message]:
        return self.fail(f"stages not available: {', '.join(self.missing)}")

    def handle(self, msg: Message) -> list[Message]:
        return []


def make_block_side(role: str, data: BlockInput) -> BlockSide:
    """Alice's or Bob's side of one block."""
    missing = missing_stages()
    if missing:
        return UnavailableBlock(data, missing)
    from pipeline import block_stages

    return block_stages.make(role, data)
