"""qnode.codec: numpy arrays round-trip; a malformed array extension is a CodecError, never
another exception (the channel and the bus count and drop such messages)."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from qnode.codec import _ND_EXT, CodecError, packb, unpackb


@pytest.mark.parametrize(
    "array",
    [
        np.arange(12, dtype=np.int64).reshape(3, 4),
        np.zeros(0, np.uint16),
        np.full((), 2.5),
    ],
)
def test_arrays_round_trip(array):
    got = unpackb(packb({"a": array, "n": 3}))
    assert got["n"] == 3 and got["a"].dtype == array.dtype and got["a"].shape == array.shape
    np.testing.assert_array_equal(got["a"], array)


def _ext(header, payload: bytes) -> bytes:
    return msgpack.packb(msgpack.ExtType(_ND_EXT, msgpack.packb(header) + payload))


@pytest.mark.parametrize(
    "header, payload",
    [
        (["<i8", [2]], b"\0" * 8),  # payload shorter than the shape
        (["<i8", [-1, -1]], b"\0" * 8),  # negative dimensions
        (["<i8", "ab"], b"\0" * 8),  # shape not a list of integers
        (["<i8", [2**62, 4]], b"\0" * 8),  # a shape far beyond the payload
        (["|O", [1]], b"\0" * 8),  # object arrays
        (["no-such-dtype", [1]], b"\0"),
        ("junk", b""),
    ],
)
def test_malformed_array_is_codec_error(header, payload):
    with pytest.raises(CodecError):
        unpackb(_ext(header, payload))
