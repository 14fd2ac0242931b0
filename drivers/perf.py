"""``qnode perf`` rows of the drivers: ``timetags`` (tags/s) and ``scpi`` (query round trips).

- ``timetags``, ``source=sim_hw``: tags fetched through ``drivers.time_tagger`` from the emulated
  tagger of a ``qnode sim serve`` subprocess over loopback TCP (includes the world simulating
  the detections it hands out).
- ``timetags``, ``source=replay``: the same driver against a replay server (a subprocess that
  answers ``:TAGS:FETC? n`` with a ready-made block), i.e. the driver's own ceiling: pyvisa-py
  transport, block header, numpy decode. Beside it the peer ``pyvisa`` (its own
  ``query_binary_values``, terminator on) on the same server.
- ``scpi``: ``*IDN?`` round trips through a driver (``transport=tcp``: the emulated attenuator;
  ``transport=pty``: the emulated SPAD module, pyserial), beside the peers ``pyvisa`` (a bare
  pyvisa-py resource, no driver) and ``pyvisa-asrl`` (pyvisa-py's ASRL session on the pty);
  and Alice's per-frame ``:SOUR:SYMB:GAPS?`` (block argument, block reply) at a link frame's size.
The drivers never import sim_hw: the world is a subprocess reached through its resources.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from typing import Any

import numpy as np

STAGES = ("timetags", "scpi")
LINK_FRAME_GAPS = 10_700  # detections per frame of the link row (qnode.link.auto_frame_slots)


class _Process:
    """A subprocess that prints one JSON line when ready; stopped with SIGINT."""

    def __init__(self, args: list[str], timeout_s: float = 90.0) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        ready = sel.select(timeout_s)
        sel.close()
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            self.stop()
            raise RuntimeError(f"{' '.join(args)}: no ready line within {timeout_s} s")
        self.info = json.loads(line)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


def _latency_row(query, n: int, **params: Any) -> dict[str, Any]:
    for _ in range(min(200, n)):
        query()
    lat = []
    for _ in range(n):
        t0 = time.perf_counter()
        query()
        lat.append(time.perf_counter() - t0)
    return {
        "stage": "scpi",
        **params,
        "n": n,
        "p50_us": round(_pct(lat, 50) * 1e6, 1),
        "p99_us": round(_pct(lat, 99) * 1e6, 1),
    }


def _tag_rate(fetch, n_tags: int, reps: int) -> float:
    fetch(n_tags)  # warm-up (connection, numpy)
    got = 0
    t0 = time.perf_counter()
    for _ in range(reps):
        got += len(fetch(n_tags)[0])
    return got / (time.perf_counter() - t0)


def replay_rows(quick: bool) -> list[dict[str, Any]]:
    """The driver's ceiling against a replay server, beside pyvisa's ``query_binary_values``."""
    import pyvisa

    from drivers.time_tagger import TimeTagger, decode_tags
    from drivers.transports import resource_manager

    rows: list[dict[str, Any]] = []
    n_tags, reps = (1 << 18, 4) if quick else (1 << 20, 10)
    replay = _Process(["-m", "drivers.perf", "replay-server"])
    try:
        resource = replay.info["resource"]
        with TimeTagger(resource, timeout_s=10) as tagger:
            rate = _tag_rate(tagger.fetch_tags, n_tags, reps)
        rows.append(
            {
                "stage": "timetags",
                "impl": "qnode",
                "source": "replay",
                "n": n_tags,
                "tags_per_s": round(rate),
            }  # fmt: skip
        )
        inst = resource_manager().open_resource(resource, read_termination="\n", timeout=20000)

        def peer_fetch(n: int) -> tuple[np.ndarray, np.ndarray]:
            raw = inst.query_binary_values(f":TAGS:FETC? {n}", datatype="Q", container=np.array)
            return decode_tags(raw.astype("<u8").tobytes())

        try:
            rate = _tag_rate(peer_fetch, n_tags, max(2, reps // 4))
            rows.append(
                {
                    "stage": "timetags",
                    "impl": "pyvisa",
                    "source": "replay",
                    "n": n_tags,
                    "tags_per_s": round(rate),
                }  # fmt: skip
            )
        finally:
            inst.close()
    except (pyvisa.Error, OSError) as exc:
        rows.append({"stage": "timetags", "impl": "pyvisa", "missing": f"replay failed: {exc}"})
    finally:
        replay.stop()
    return rows


def world_rows(quick: bool, want: set[str]) -> list[dict[str, Any]]:
    """Tags/s from the emulated tagger and SCPI round trips, against one simulated world."""
    from drivers.pulse_source import PulseSource
    from drivers.time_tagger import TimeTagger

    rows: list[dict[str, Any]] = []
    n_tags, reps = (1 << 18, 4) if quick else (1 << 20, 10)
    world = _Process(["-m", "qnode", "sim", "serve", "--preset", "snspd", "--distance", "5",
                      "--json"])  # fmt: skip
    try:
        res = world.info["instruments"]
        if "timetags" in want:
            with (
                PulseSource(res["source"]) as src,
                TimeTagger(res["timetagger"], timeout_s=10) as tagger,
            ):
                src.output = False
                src.mu_signal = 0.8
                src.output = True
                tagger.start()
                rate = _tag_rate(tagger.fetch_tags, n_tags, reps)
            rows.append(
                {
                    "stage": "timetags",
                    "impl": "qnode",
                    "source": "sim_hw",
                    "preset": "snspd",
                    "distance_km": 5.0,
                    "mu_signal": 0.8,
                    "n": n_tags,
                    "tags_per_s": round(rate),
                }  # fmt: skip
            )
        if "scpi" in want:
            rows.extend(scpi_rows(quick, world.info))
    finally:
        world.stop()
    return rows


def scpi_rows(quick: bool, info: dict) -> list[dict[str, Any]]:
    """``*IDN?`` round trips: driver over TCP and over the pty, with bare-pyvisa peers."""
    from drivers.keysight_8156a import Keysight8156A
    from drivers.spad import SpadDetector
    from drivers.transports import resource_manager

    n = 1000 if quick else 5000
    res = info["instruments"]
    pty = (info.get("pty_links") or {}).get("detector", res["detector"])
    rows = []
    with Keysight8156A(res["attenuator"]) as att:
        rows.append(_latency_row(lambda: att.idn, n, impl="qnode", transport="tcp"))
    inst = resource_manager().open_resource(res["attenuator"], read_termination="\n")
    try:
        inst.write_termination = "\n"
        rows.append(_latency_row(lambda: inst.query("*IDN?"), n, impl="pyvisa", transport="tcp"))
    finally:
        inst.close()
    rows.append(_symbols_row(res["source"], n // 5))
    n_serial = n // 5
    with SpadDetector(pty) as det:
        rows.append(_latency_row(lambda: det.idn, n_serial, impl="qnode", transport="pty"))
    with SpadDetector(pty, transport="visa") as det:
        rows.append(_latency_row(lambda: det.idn, n_serial, impl="pyvisa-asrl", transport="pty"))
    return rows


def _symbols_row(resource: str, n: int) -> dict[str, Any]:
    """Alice's per-frame symbol query: ``:SOUR:SYMB:GAPS?`` with a link frame's gaps.

    ``LINK_FRAME_GAPS`` detections per frame (the link row's 10 km snspd frame of 2^17 slots,
    ~8 % of slots detected): a ~21 kB block argument and a ~11 kB block reply.
    """
    from drivers.pulse_source import PulseSource

    gaps = np.random.default_rng(0).integers(1, 24, LINK_FRAME_GAPS).astype("<u2")
    with PulseSource(resource) as src:
        src.output = False
        src.output = True
        row = _latency_row(lambda: src.symbols_for_gaps(0, gaps), n, impl="qnode",
                           transport="tcp", command=":SOUR:SYMB:GAPS?", gaps=LINK_FRAME_GAPS)  # fmt: skip
    return row


def perf_rows(quick: bool = False, stages: list[str] | None = None) -> list[dict[str, Any]]:
    """Rows ``timetags`` and ``scpi`` (one simulated world started here for both)."""
    want = set(STAGES) if stages is None else set(stages) & set(STAGES)
    if not want:
        return []
    rows = replay_rows(quick) if "timetags" in want else []
    return rows + world_rows(quick, want)


def _replay_server() -> None:
    """Answer ``:TAGS:FETC? n`` with a cached block of n synthetic tags, ``*IDN?`` with a name."""
    from drivers.time_tagger import encode_tags

    srv = socket.create_server(("127.0.0.1", 0))
    print(json.dumps({"resource": f"TCPIP::127.0.0.1::{srv.getsockname()[1]}::SOCKET"}), flush=True)
    blocks: dict[int, bytes] = {}
    rng = np.random.default_rng(0)
    signal.signal(signal.SIGINT, lambda *_: os._exit(0))
    while True:
        conn, _ = srv.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        lines = conn.makefile("rb")
        for line in lines:
            cmd = line.strip().upper()
            if cmd.startswith(b":TAGS:FETC?"):
                n = int(cmd.split()[1])
                if n not in blocks:
                    t = np.cumsum(rng.integers(1, 2000, n)).astype(np.int64)
                    payload = encode_tags(t, rng.integers(0, 5, n).astype(np.uint8))
                    digits = str(len(payload)).encode()
                    blocks[n] = b"#" + str(len(digits)).encode() + digits + payload + b"\n"
                conn.sendall(blocks[n])
            elif cmd == b"*IDN?":
                conn.sendall(b"QNODE,TAG-REPLAY,0,1.0\n")
            elif cmd == b"SYST:ERR?":
                conn.sendall(b'0,"No error"\n')
        conn.close()


if __name__ == "__main__":
    if sys.argv[1:] == ["replay-server"]:
        _replay_server()
    else:
        print(json.dumps({"rows": perf_rows(quick="--quick" in sys.argv)}, indent=1))
