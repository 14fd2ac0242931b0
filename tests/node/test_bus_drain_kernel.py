"""qnode.bus_drain's kernel on its own: libzmq errors inside a batch (a scripted libzmq stand-in
behind the same ctypes function-pointer types) and numba's cache of a kernel that takes function
pointers (addresses differ per process: a cached kernel must read them at run time)."""

from __future__ import annotations

import ctypes
import errno
import json
import os
import subprocess
import sys
import textwrap

import pytest

from qnode.bus import encode_header
from qnode.bus_drain import NFRAMES, SEQ, Drainer
from qnode.codec import packb

T = b"qfs/telemetry/alice/link/"


class _ScriptedZmq:
    """zmq_recv / zmq_getsockopt(RCVMORE) / zmq_errno over a list of queued messages; ``fail``
    maps a call number of zmq_recv to the errno it fails with once (e.g. EINTR)."""

    def __init__(self, messages: list[list[bytes]], fail: dict[int, int]) -> None:
        self.frames = [(f, i < len(m) - 1) for m in messages for i, f in enumerate(m)]
        self.fail, self.calls, self.err, self.more = dict(fail), 0, 0, 0
        vp, sz, i = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int
        self.recv = ctypes.CFUNCTYPE(i, vp, vp, sz, i)(self._recv)
        self.getsockopt = ctypes.CFUNCTYPE(i, vp, i, vp, vp)(self._getsockopt)
        self.errno = ctypes.CFUNCTYPE(i)(lambda: self.err)

    def _recv(self, _handle, buf, size, _flags):
        self.calls += 1
        if self.calls in self.fail:
            self.err = self.fail.pop(self.calls)
            return -1
        if not self.frames:
            self.err = errno.EAGAIN
            return -1
        frame, self.more = self.frames.pop(0)
        ctypes.memmove(buf, frame, min(len(frame), size))
        return len(frame)

    def _getsockopt(self, _handle, _opt, value, _size):
        ctypes.c_int.from_address(value).value = int(self.more)
        return 0


def _message(seq: int) -> list[bytes]:
    return [T, encode_header({"schema": 1, "node": "alice", "src": "pp"}, seq, 7), packb({"i": 1})]


def test_an_interrupted_recv_is_retried_not_a_broken_message_or_a_lost_batch():
    """EINTR (a signal during libzmq's command processing) inside a message and between
    messages: pyzmq retries it; the kernel must too, or a good message splits into two
    malformed ones and the messages already read in the batch are lost with an exception."""
    lib = _ScriptedZmq([_message(1), _message(2), _message(3)], {2: errno.EINTR, 5: errno.EINTR})
    data, cols = Drainer(lib, 0).drain(16)
    assert cols[NFRAMES] == [3, 3, 3]
    assert cols[SEQ] == [1, 2, 3]
    assert data.startswith(T)


def test_an_error_after_some_messages_keeps_them_and_raises_on_the_next_call():
    """A hard error (here ENOTSOCK) after messages were taken off the socket: they are handed
    over, and the error comes with the next drain."""
    import zmq

    lib = _ScriptedZmq([_message(1), _message(2)], {7: errno.ENOTSOCK})
    drainer = Drainer(lib, 0)
    _, cols = drainer.drain(16)
    assert cols[SEQ] == [1, 2]
    lib.fail[lib.calls + 1] = errno.ENOTSOCK
    with pytest.raises(zmq.ZMQError):
        drainer.drain(16)


_CHILD = textwrap.dedent(
    """
    import ctypes, json, zmq
    from qnode import bus_drain
    from qnode.bus import Subscriber, encode_header
    from qnode.codec import packb
    ctx = zmq.Context()
    raw = ctx.socket(zmq.PUB); raw.linger = 0; raw.sndhwm = 0
    port = raw.bind_to_random_port("tcp://127.0.0.1")
    sub = Subscriber(f"tcp://127.0.0.1:{port}", ["qfs/"], context=ctx, rcvhwm=0)
    T = b"qfs/telemetry/alice/link/"
    def head(seq, src): return encode_header({"schema": 1, "node": "a", "src": src}, seq, seq)
    for _ in range(400):
        raw.send_multipart([T, head(1, "probe"), packb({})])
        if sub.recv_batch(1, 50): break
    while sub.recv_batch(100, 100): pass
    for i in range(1, 301):
        raw.send_multipart([T, head(i, "pp"), packb({"i": i})])
    got = []
    while len(got) < 300 and (b := sub.recv_batch(64, 3000)):
        got.extend(b)
    lib = bus_drain._STATE["lib"]
    print(json.dumps({
        "native": sub._drainer is not None,
        "ok": [m.payload["i"] for m in got] == list(range(1, 301)),
        "malformed": sub.stats.malformed,
        "recv": ctypes.cast(lib.recv, ctypes.c_void_p).value if lib else None,
        "hits": sum(bus_drain._drain.stats.cache_hits.values()),
    }))
    """
)


def test_a_cached_kernel_drains_correctly_in_a_second_process(tmp_path):
    """The first process compiles the kernel into a fresh numba cache, the second loads it with
    libzmq at another address (ASLR): both must deliver every message, none malformed."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba")}
    runs = []
    for _ in range(2):
        out = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True,
                             text=True, timeout=120, check=True)  # fmt: skip
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    first, second = runs
    for run in runs:
        assert run["native"] and run["ok"] and run["malformed"] == 0, run
    assert first["hits"] == 0 and second["hits"] >= 1  # compiled, then loaded from the cache
    assert first["recv"] != second["recv"]  # the cached code did not keep the old address


def test_without_pyzmq_cython_backend_the_subscriber_falls_back(monkeypatch):
    """pyzmq 25 (no ``_zmq`` module) or the CFFI backend: drainer() is None, not an ImportError
    out of recv_batch."""
    import zmq

    from qnode import bus_drain
    from qnode.bus import Subscriber

    for name in ("zmq.backend.cython._zmq", "zmq.backend.cython.socket"):
        monkeypatch.setitem(sys.modules, name, None)  # import raises ImportError
    monkeypatch.setattr(bus_drain, "_STATE", {})
    ctx = zmq.Context()
    sub = Subscriber("tcp://127.0.0.1:1", ["qfs/"], context=ctx)
    assert sub.recv_batch(4, 0) == []
    assert sub._drainer is None
    sub.close(), ctx.term()


_SECOND_COPY = textwrap.dedent(
    """
    import ctypes, json, os, shutil, sys, zmq
    from zmq.backend.cython import _zmq
    from qnode import bus_drain
    from qnode.bus import Subscriber
    mapped = {l.split()[-1] for l in open("/proc/self/maps") if "libzmq" in l and "/" in l}
    copy = os.path.join(sys.argv[1], "libzmq.so.5")
    shutil.copy(mapped.pop(), copy)
    other = ctypes.CDLL(copy)  # a second libzmq in the process (another binding's, say)
    ours = ctypes.CDLL(_zmq.__file__, mode=os.RTLD_NOLOAD)
    addr = lambda f: ctypes.cast(f, ctypes.c_void_p).value
    ctx = zmq.Context()
    sub = Subscriber("tcp://127.0.0.1:1", ["qfs/"], context=ctx)
    sub.recv_batch(1, 0)
    lib = bus_drain._STATE["lib"]
    print(json.dumps({
        "native": sub._drainer is not None,
        "ours": lib is not None and addr(lib.recv) == addr(ours.zmq_recv),
        "other": lib is not None and addr(lib.recv) == addr(other.zmq_recv),
    }))
    """
)


def test_a_second_libzmq_copy_never_becomes_the_drain_library(tmp_path):
    """The kernel calls the libzmq pyzmq links, found through pyzmq's own module, whatever
    other libzmq copies the process has loaded."""
    out = subprocess.run([sys.executable, "-c", _SECOND_COPY, str(tmp_path)], capture_output=True,
                         text=True, timeout=120, check=True)  # fmt: skip
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"native": True, "ours": True, "other": False}


@pytest.mark.parametrize("native", [True, False])
def test_a_terminated_context_raises_context_terminated_on_both_paths(native):
    """ctx.term() in another thread: recv_batch raises zmq.ContextTerminated (the caller then
    closes the socket, which lets term() return), never a crash or a silent empty batch loop."""
    import threading

    import zmq

    from qnode.bus import Subscriber

    ctx = zmq.Context()
    sub = Subscriber("tcp://127.0.0.1:1", ["qfs/"], context=ctx)
    if not native:
        sub._native_tried = True
    assert sub.recv_batch(4, 0) == []
    assert (sub._drainer is not None) is native
    term = threading.Thread(target=ctx.term)
    term.start()
    with pytest.raises(zmq.ContextTerminated):
        for _ in range(200):
            sub.recv_batch(4, 10)
    sub.close()
    term.join(10)
    assert not term.is_alive()
