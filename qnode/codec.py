"""msgpack codec shared by the classical channel, the telemetry bus and the in-process loopback.

numpy arrays travel as an ExtType (code 1) holding dtype, shape and the raw C-order buffer, so a
message that passes through the loopback in a test is byte-for-byte what crosses the network.
"""

from __future__ import annotations

import math
from typing import Any

import msgpack
import numpy as np

_ND_EXT = 1


class CodecError(ValueError):
    """A message could not be decoded (truncated, not msgpack, bad array extension)."""


def _default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        # not np.ascontiguousarray: it turns a 0-d array into shape (1,)
        arr = obj if obj.flags.c_contiguous else obj.copy(order="C")
        header = msgpack.packb([arr.dtype.str, list(arr.shape)])
        return msgpack.ExtType(_ND_EXT, header + arr.tobytes())
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot encode {type(obj).__name__}")


def _ext_hook(code: int, data: bytes) -> Any:
    if code != _ND_EXT:
        raise CodecError(f"unknown msgpack extension {code}")
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(data)
    try:
        dtype_str, shape = next(unpacker)
    except (StopIteration, ValueError) as exc:
        raise CodecError("bad array header") from exc
    offset = unpacker.tell()
    dtype = np.dtype(dtype_str)
    if dtype.hasobject:
        raise CodecError("object arrays are not allowed")
    count = math.prod(shape)  # np.prod costs ~5 us per array on a hot path
    if len(data) - offset != count * dtype.itemsize:
        raise CodecError("array payload length does not match its shape")
    return np.frombuffer(data, dtype=dtype, offset=offset, count=count).reshape(shape)


def packb(obj: Any) -> bytes:
    """Encode a message (dicts, lists, scalars, bytes, numpy arrays) to msgpack bytes."""
    return msgpack.packb(obj, default=_default, use_bin_type=True)


def unpackb(data: bytes) -> Any:
    """Decode msgpack bytes; raise CodecError on anything malformed (never another exception)."""
    try:
        return msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, strict_map_key=False)
    except CodecError:
        raise
    except Exception as exc:  # msgpack raises several unrelated types on bad input
        raise CodecError(f"malformed message: {exc}") from exc
