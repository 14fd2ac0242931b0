"""Alice's symbol requests: parsed, and queued ones merged into fewer source queries.

Post-processing asks for the symbols of each frame Bob announced (``[header, positions]``:
``{frame, first}`` + uint16 slot gaps, or ``{frame}`` + int64 slots). Bob keeps up to four
frames in flight, so requests arrive in bursts; consecutive frames whose slots join with a gap
that fits 16 bits go to the source as one ``:SOUR:SYMB:GAPS?`` (the gaps joined by the gap
from one frame's last slot to the next frame's first), and the reply is split per frame. One
query of four frames cost about a third of the CPU of four queries, at the source and at Alice
(``qnode perf --stage scpi``, the ``:SOUR:SYMB:GAPS?`` row, per frame).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from qnode.codec import CodecError, unpackb

MAX_MERGED = 4  # frames per query: Bob's post-processing keeps at most 4 frames announced
_GAP_MAX = 0xFFFF


@dataclass
class SymbolRequest:
    """One frame's request: ``first`` + uint16 ``positions`` (gaps), or int64 slots."""

    header: dict[str, Any]
    first: int | None
    positions: np.ndarray

    @property
    def count(self) -> int:
        """Symbols this request asks for."""
        return len(self.positions) + (1 if self.first is not None else 0)

    def last_slot(self) -> int:
        """The last slot asked for (gap requests only)."""
        return int(self.first) + int(self.positions.sum(dtype=np.int64))


def parse_request(parts: list[Any]) -> SymbolRequest | None:
    """The request in a multipart message, or None when it is malformed (dropped unanswered)."""
    try:
        header = unpackb(bytes(parts[0]))
        first = header.get("first")
        if first is not None:
            first = int(first)
            if not 0 <= first < 1 << 62:
                return None
        positions = np.frombuffer(parts[1], dtype="<i8" if first is None else "<u2")
    except (AttributeError, CodecError, IndexError, TypeError, ValueError):
        return None
    return SymbolRequest(header, first, positions)


def group_requests(requests: list[SymbolRequest]) -> list[list[SymbolRequest]]:
    """Requests in order, in groups of at most ``MAX_MERGED`` that one gap query can answer:
    each a gap request whose first slot follows the previous one's last by 1 ... 65535."""
    groups: list[list[SymbolRequest]] = []
    last = None  # last slot of the open group, None when it cannot be extended
    for req in requests:
        if req.first is None:
            groups.append([req])
            last = None
            continue
        if last is not None and len(groups[-1]) < MAX_MERGED and 1 <= req.first - last <= _GAP_MAX:
            groups[-1].append(req)
        else:
            groups.append([req])
        last = req.last_slot()
    return groups


def joined_gaps(group: list[SymbolRequest]) -> np.ndarray:
    """The uint16 gaps of a group's slots, starting at ``group[0].first``."""
    pieces: list[np.ndarray] = [group[0].positions]
    prev = group[0]
    for req in group[1:]:
        pieces.append(np.array([req.first - prev.last_slot()], dtype="<u2"))
        pieces.append(req.positions)
        prev = req
    return np.concatenate(pieces).astype("<u2", copy=False)


def split_symbols(group: list[SymbolRequest], symbols: np.ndarray) -> list[np.ndarray]:
    """The reply to a joined query cut into each request's symbols (views, no copies)."""
    bounds = np.cumsum([0] + [req.count for req in group])
    if bounds[-1] != len(symbols):
        raise ValueError(f"{len(symbols)} symbols for {bounds[-1]} slots")
    return [symbols[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
