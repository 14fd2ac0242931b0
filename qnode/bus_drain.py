"""Native batch drain for :meth:`qnode.bus.Subscriber.recv_batch` (libzmq called from numba).

pyzmq costs about 0.4 µs of interpreter and Cython work per frame received, 1.2 µs per
three-frame message before any decoding. This module calls the same libzmq that pyzmq loaded
(``zmq_recv``, ``zmq_getsockopt(ZMQ_RCVMORE)``) from one ``@njit`` kernel per batch: every frame
of up to ``maxn`` queued messages is copied into one buffer, message boundaries come from the
real "more" flags, and the header's fixed-layout tail (docs/telemetry.md, "Frames": ``seq``
and ``ts_ns`` as uint64) is read in the same pass. Python then only looks the topic and header
prefix up in the subscriber's caches and builds the message objects.

Frames are limited to :data:`FRAME_LIMIT` bytes here (a bigger frame is truncated by
``zmq_recv`` and its message counted as malformed); the Python path applies the same limit.
Off Linux, without pyzmq's Cython backend, or if libzmq's symbols cannot be found through it,
:func:`drainer` returns None and the subscriber keeps its pure-Python path.
"""

from __future__ import annotations

import ctypes
import errno as _errno
import importlib
import logging
import os
import sys
from typing import Any

import numpy as np
from numba import njit

from qnode.bus_wire import FRAME_LIMIT

_RCVMORE = 13  # ZMQ_RCVMORE
_DONTWAIT = 1  # ZMQ_DONTWAIT
_EAGAIN = _errno.EAGAIN
_EINTR = _errno.EINTR  # a signal during libzmq's command processing: retried, as pyzmq does
# Per message, columns of the kernel's int64 output (see _drain).
T0, T1, H1, P1, NFRAMES, SEQ, TS, FAST, SAME = range(9)
_COLS = 9
_TS_KEY = np.frombuffer(b"\xa5ts_ns\xcf", np.uint8)
_MAP_FIRST = np.zeros(256, np.bool_)
_MAP_FIRST[[*range(0x80, 0x90), 0xDE, 0xDF]] = True


@njit(cache=True, nogil=True)
def _drain(recv, getsockopt, errno, handle, buf, meta, maxn, limit, ts_key, map_first):  # noqa: PLR0913
    """Read up to ``maxn`` whole messages into ``buf``; return (messages, errno or 0, bytes).

    Per message (``meta`` row): topic start, topic end (= header start), header end
    (= payload start), payload end, number of frames, seq, ts_ns, and FAST: 1 when it has
    exactly three frames, a header of our fixed layout whose seq and ts_ns fit in int64 and
    a payload that starts as a msgpack map; -1 when a frame was over ``limit`` (truncated);
    else 0 (Python decodes it in full); SAME: bit 1 when its topic, bit 2 when its header
    up to the seq value equals the previous message's in this batch (Python then skips the
    cache look-ups: a publisher's bursts are mostly one topic). Frames after the third
    are discarded (the message is malformed anyway). Stops at ``maxn``, when the queue is
    empty, or when fewer than three frames of ``limit`` bytes would fit in ``buf``.
    """
    more = np.zeros(1, np.int32)
    size = np.zeros(1, np.int64)
    scratch = np.zeros(1, np.uint8)
    base = buf.ctypes.data
    cap = buf.size
    off = 0
    n = 0
    while n < maxn and cap - off >= 3 * limit:
        start = off
        nframes = 0
        oversize = False
        while True:
            if nframes < 3:
                rc = recv(handle, base + off, limit, _DONTWAIT)
            else:
                rc = recv(handle, scratch.ctypes.data, 0, _DONTWAIT)
            if rc < 0:
                err = errno()
                if err == _EINTR:
                    continue  # the same frame again (pyzmq retries EINTR too)
                if nframes == 0:
                    return n, (0 if err == _EAGAIN else err), off
                break  # a message ended early (never expected: libzmq delivers whole)
            if nframes < 3:
                if rc > limit:
                    oversize = True
                    rc = limit
                off += rc
                meta[n, 1 + nframes] = off
            nframes += 1
            size[0] = 4
            getsockopt(handle, _RCVMORE, more.ctypes.data, size.ctypes.data)
            if more[0] == 0:
                break
        row = meta[n]
        row[T0] = start
        row[NFRAMES] = nframes
        for i in range(nframes, 3):
            row[1 + i] = off
        row[FAST] = -1 if oversize else 0
        row[SAME] = 0
        if nframes == 3 and not oversize:
            h0, h1, p1 = row[T1], row[H1], row[P1]
            if h1 - h0 > 23 and p1 > h1 and map_first[buf[h1]]:
                ok = True
                for i in range(7):
                    if buf[h1 - 15 + i] != ts_key[i]:
                        ok = False
                if ok and buf[h1 - 23] < 0x80 and buf[h1 - 8] < 0x80:
                    seq = 0
                    ts = 0
                    for i in range(8):
                        seq = (seq << 8) | np.int64(buf[h1 - 23 + i])
                        ts = (ts << 8) | np.int64(buf[h1 - 8 + i])
                    row[SEQ] = seq
                    row[TS] = ts
                    row[FAST] = 1
                    if n > 0 and meta[n - 1, FAST] == 1:
                        row[SAME] = _same(buf, meta[n - 1], row)
        n += 1
    return n, 0, off


@njit(cache=True, nogil=True)
def _same(buf: np.ndarray, prev: np.ndarray, row: np.ndarray) -> int:
    """Bit 1: same topic bytes as ``prev``; bit 2: same header bytes before the seq value."""
    out = 0
    a, b = prev[T0], row[T0]
    n = prev[T1] - a
    if row[T1] - b == n:
        out = 1
        for i in range(n):
            if buf[a + i] != buf[b + i]:
                out = 0
                break
    a, b = prev[T1], row[T1]
    n = prev[H1] - 23 - a
    if row[H1] - 23 - b == n:
        for i in range(n):
            if buf[a + i] != buf[b + i]:
                return out
        out |= 2
    return out


class Drainer:
    """One subscriber socket's native drain: a reusable buffer and the kernel's output rows."""

    def __init__(self, lib: _Lib, handle: int) -> None:
        self._lib, self._handle = lib, handle
        self._buf = np.empty(4 * FRAME_LIMIT, np.uint8)  # pages are touched only as used
        self._meta = np.zeros((1024, _COLS), np.int64)

    def drain(self, maxn: int) -> tuple[bytes, list[list[int]]]:
        """(the frames' bytes, the meta columns: one list per column, one entry per message)
        for up to ``maxn`` queued messages. Columns, not rows: ``zip(*columns)`` reuses its
        tuple, where a list per message would be one more object for Python's cyclic GC to
        track per message (in a big process its collections cost more than the decoding);
        raise ``zmq.ZMQError`` for an error other than an empty queue or EINTR (retried) when
        no message was read (after some, they are returned and libzmq repeats the error)."""
        if maxn > len(self._meta):
            self._meta = np.zeros((maxn, _COLS), np.int64)
        lib = self._lib
        n, err, used = _drain(lib.recv, lib.getsockopt, lib.errno, self._handle, self._buf,
                              self._meta, maxn, FRAME_LIMIT, _TS_KEY, _MAP_FIRST)  # fmt: skip
        if err and n == 0:  # after n messages: hand them over; the error (ETERM, ENOTSOCK...)
            import zmq  # comes back from libzmq on the next call

            raise zmq.ContextTerminated() if err == zmq.ETERM else zmq.ZMQError(err)
        if n == 0:
            return b"", []  # maxn == 0 reads nothing (used to warm the kernel up)
        return self._buf[:used].tobytes(), self._meta[:n].T.tolist()


class _Lib:
    """libzmq entry points of the library pyzmq itself uses (same sockets, same contexts):
    looked up through the handle of pyzmq's compiled backend, which searches that module and
    the libraries it links, so another libzmq copy in the process is never picked."""

    def __init__(self, path: str) -> None:
        lib = ctypes.CDLL(path, mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
        vp, sz, i = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int
        self.recv = ctypes.CFUNCTYPE(i, vp, vp, sz, i)(("zmq_recv", lib))
        self.getsockopt = ctypes.CFUNCTYPE(i, vp, i, vp, vp)(("zmq_getsockopt", lib))
        self.errno = ctypes.CFUNCTYPE(i)(("zmq_errno", lib))


_STATE: dict[str, Any] = {}
log = logging.getLogger(__name__)


def _pyzmq_backend_path() -> str | None:
    """The file of pyzmq's Cython backend (pyzmq >= 26: ``_zmq``; 25: ``socket``), or None: not
    Linux (tested there only), or another backend (CFFI on PyPy) whose libzmq is not ours."""
    if not sys.platform.startswith("linux"):
        return None
    for name in ("zmq.backend.cython._zmq", "zmq.backend.cython.socket"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        path = getattr(module, "__file__", None)
        if isinstance(path, str) and path.endswith(".so"):
            return path
    return None


def drainer(sock: Any) -> Drainer | None:
    """A :class:`Drainer` for pyzmq socket ``sock``, or None where the native path is missing."""
    if "lib" not in _STATE:
        try:
            path = _pyzmq_backend_path()
            _STATE["lib"] = _Lib(path) if path else None
        except (OSError, AttributeError):
            _STATE["lib"] = None
    lib = _STATE["lib"]
    if lib is None:
        return None
    out = Drainer(lib, sock.underlying)
    try:
        out.drain(0)  # compile (or load from numba's cache) now, not in the first real drain
    except Exception:  # a kernel that does not build must not stop a subscriber
        log.exception("native telemetry drain unavailable; reading messages one at a time")
        _STATE["lib"] = None
        return None
    return out
