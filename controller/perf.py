"""``qnode perf`` rows of the controller: ``telemetry`` (bus PUB->SUB) and ``kms`` (ETSI 014).

- ``telemetry``: a publisher process (``qnode.bus.Publisher``) and a subscriber
  (``qnode.bus.Subscriber.recv_batch``: validate topic and header, count sequence gaps; frames
  read by the native drain of ``qnode.bus_drain``, ``drain`` says which) on loopback TCP.
  Blast rate (``msgs_per_s`` received, ``lost``) with the payload decoded lazily and again with
  every payload decoded, CPU time per message on each side (wall-clock rates depend on the
  machine's load, CPU time much less), and latency at a paced 10 k msg/s (``p50_ms``/``p99_ms``
  from the header's ``ts_ns``, payload decoded).
- ``kms``: a real ``qnode controller`` process per KME (Alice, Bob) over mutual TLS with the
  certificates of ``qnode pki init``; 16 client threads, each one keep-alive ``http.client``
  connection (one TLS handshake, as a real SAE), call ``enc_keys`` for 256-bit keys;
  every key ID and key is checked unique (``duplicates`` must be 0) and a sample is fetched
  from Bob's KME with ``dec_keys`` and compared (``mismatches`` must be 0). CPU per request of
  Alice's KME process and of the clients (``server_cpu_ms_per_req``, ``client_cpu_ms_per_req``)
  stay meaningful on a loaded machine, where the wall-clock figures do not.
"""

from __future__ import annotations

import http.client
import json
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

STAGES = ("telemetry", "kms")
_PAYLOAD = {
    "peer_connected": True,
    "paused": False,
    "sifted_bits": 123456789,
    "secret_bits": 3456789,
    "sifted_bps": 2.1e7,
    "skr_bps": 1.3e6,
    "qber": 0.0231,
    "f": 1.12,
    "fer": 0.01,
    "blocks_done": 1234,
    "keystore_blocks": 1200,
    "keystore_bits": 240000000,
}


# -- telemetry -------------------------------------------------------------------------------
# PUB and SUB queue sizes of the blast: a burst the subscriber cannot keep up with waits in these
# queues (and the kernel's TCP buffers) instead of being dropped; any drop shows in "lost" and
# in the subscriber's sequence-gap count "gaps_counted".
_HWM = 100_000


def _publisher(endpoint_q: Any, go: Any, n: int, rate: float) -> None:
    from qnode.bus import Publisher

    pub = Publisher("tcp://127.0.0.1:0", "perf", "bench", connect=False, sndhwm=_HWM)
    endpoint_q.put(pub.endpoint)
    while not go.is_set():  # slow joiner: keep announcing until the subscriber is there
        pub.publish("svc/mgmt/perf/warmup/", {})
        time.sleep(0.01)
    pub.seq = 0
    topic = "qfs/telemetry/perf/link/"
    cpu0, thread0 = time.process_time(), time.thread_time()
    if rate <= 0:
        for _ in range(n):
            pub.publish(topic, _PAYLOAD)
    else:
        t0 = time.perf_counter()
        for i in range(n):
            wait = t0 + i / rate - time.perf_counter()
            if wait > 0:
                time.sleep(wait)  # yield the core (no busy-wait on a shared machine)
            pub.publish(topic, _PAYLOAD)
    cpu_us = (time.process_time() - cpu0) * 1e6 / max(n, 1)
    thread_us = (time.thread_time() - thread0) * 1e6 / max(n, 1)
    pub.publish("svc/mgmt/perf/end/", {"sent": n, "cpu_us_per_msg": cpu_us, "thread_us": thread_us})
    time.sleep(0.5)
    pub.close()


def _telemetry_run(n: int, rate: float, lazy: bool = True) -> dict[str, Any]:
    """One PUB process -> SUB (this thread) run; CPU times are per message on each side."""
    from qnode.bus import Subscriber

    ctx = mp.get_context("spawn")
    endpoint_q, go = ctx.Queue(), ctx.Event()
    proc = ctx.Process(target=_publisher, args=(endpoint_q, go, n, rate), daemon=True)
    proc.start()
    sub = Subscriber(
        endpoint_q.get(timeout=30),
        ["qfs/telemetry/perf/", "svc/mgmt/perf/"],
        lazy_payload=lazy,
        rcvhwm=_HWM,
    )
    while (msg := sub.recv(timeout_ms=30_000)) is not None and "warmup" not in msg.topic:
        pass
    sub.recv_batch(1, timeout_ms=0)  # loads the native drain kernel before the clock starts
    go.set()
    received, latencies, pub_cpu, pub_thread = 0, [], None, None
    t_first = t_last = None
    first_batch = 0  # received before t_first: left out of the rate
    data, end = "qfs/telemetry/perf/link/", "svc/mgmt/perf/end/"
    cpu0, proc0 = time.thread_time(), time.process_time()
    # Batch receive (what the controller's ingest loop does): poll only when nothing is queued,
    # then drain up to 1024 ready messages; each one is still read, validated and gap-counted.
    while pub_cpu is None and (batch := sub.recv_batch(1024, timeout_ms=5000)):
        if t_first is None:
            t_first = time.perf_counter()
            first_batch = -1
        for msg in batch:
            topic = msg.topic
            if topic == data:
                received += 1
                if rate > 0:
                    latencies.append((time.time_ns() - msg.ts_ns) / 1e6)
            elif topic == end:
                pub_cpu = msg.payload.get("cpu_us_per_msg")
                pub_thread = msg.payload.get("thread_us")
                break
        t_last = time.perf_counter()
        if first_batch < 0:
            first_batch = received
    sub_cpu = (time.thread_time() - cpu0) * 1e6 / max(received, 1)
    sub_proc = (time.process_time() - proc0) * 1e6 / max(received, 1)  # + ZeroMQ I/O thread
    native = sub._drainer is not None
    proc.join(10)
    lost = n - received
    sub.close()
    elapsed = (t_last - t_first) if t_first and t_last and t_last > t_first else float("nan")
    out: dict[str, Any] = {
        "received": received,
        "lost": lost,
        "gaps_counted": sub.stats.gaps,
        "sub_cpu_us": round(sub_cpu, 2),
        "sub_proc_cpu_us": round(sub_proc, 2),
        "pub_cpu_us": round(pub_cpu, 2) if pub_cpu is not None else None,
        "pub_thread_cpu_us": round(pub_thread, 2) if pub_thread is not None else None,
        "drain": "native" if native else "python",
    }
    if rate <= 0:
        rated = received - first_batch  # messages that arrived after t_first
        out["msgs_per_s"] = round(rated / elapsed) if elapsed == elapsed else 0
    else:
        latencies.sort()
        out["p50_ms"] = round(latencies[len(latencies) // 2], 3) if latencies else None
        out["p99_ms"] = round(latencies[int(len(latencies) * 0.99)], 3) if latencies else None
    return out


def telemetry_row(quick: bool = False) -> dict[str, Any]:
    """Blast (lazy payload: the header is validated and gaps counted, the payload decoded on
    use) and the same with every payload decoded; then latency at a paced 10 k msg/s."""
    n = 50_000 if quick else 200_000
    blast = _telemetry_run(n, 0.0, lazy=True)
    eager = _telemetry_run(n // 4, 0.0, lazy=False)
    paced = _telemetry_run(5_000 if quick else 20_000, 10_000.0, lazy=False)
    return {
        "stage": "telemetry",
        "impl": "qnode",
        "transport": "tcp loopback, separate processes",
        "hwm": _HWM,
        "drain": blast["drain"],  # recv_batch's frame reader (qnode.bus_drain, or pure Python)
        "msgs_per_s": blast["msgs_per_s"],
        "lost": blast["lost"],
        "gaps_counted": blast["gaps_counted"],
        # CPU per message: the subscriber's thread, its whole process (with the ZeroMQ I/O
        # thread), the publisher's thread and its whole process (the I/O thread's share grows
        # when the subscriber keeps up: it then sends fewer messages per syscall); wall-clock
        # rates depend on the load.
        "sub_cpu_us_per_msg": blast["sub_cpu_us"],
        "sub_proc_cpu_us_per_msg": blast["sub_proc_cpu_us"],
        "pub_thread_cpu_us_per_msg": blast["pub_thread_cpu_us"],
        "pub_cpu_us_per_msg": blast["pub_cpu_us"],
        "msgs_per_s_payload_decoded": eager["msgs_per_s"],
        "sub_cpu_us_per_msg_payload_decoded": eager["sub_cpu_us"],
        "latency_rate": 10_000,
        "p50_ms": paced["p50_ms"],
        "p99_ms": paced["p99_ms"],
        "lost_paced": paced["lost"],
    }


# -- kms -------------------------------------------------------------------------------------
def _free_port() -> int:
    from qnode.ports import free_port

    return free_port()


def _start_kmes(tmp: Path, n_keys: int) -> tuple[dict[str, Any], list[subprocess.Popen]]:
    from controller.pki import init_pki
    from qnode.keystore import KeyStore

    pki = tmp / "pki"
    init_pki(pki, ["alice", "bob"], ["sae-alice", "sae-bob"])
    block_bytes = 1 << 16
    n_blocks = 2 * (n_keys * 32 // block_bytes + 2)  # Alice issues from half of the blocks
    stores = [KeyStore(tmp / "alice.db"), KeyStore(tmp / "bob.db")]
    for seq in range(n_blocks):
        block_id, key = str(uuid.uuid4()), os.urandom(block_bytes)
        for store in stores:
            store.add_committed(block_id, seq, "peer", key)
    for store in stores:
        store.close()
    ports = {"alice": _free_port(), "bob": _free_port()}
    procs, ready = [], {}
    for me, peer, index in (("alice", "bob", 0), ("bob", "alice", 1)):
        local, remote = f"sae-{me}", f"sae-{peer}"
        cfg = tmp / f"{me}.toml"
        cfg.write_text(
            f'node = "{me}"\nrole = "{me}"\nkeystore = "{tmp / (me + ".db")}"\n'
            f"[kms]\n"
            f'kme_id = "{me}"\npeer_kme_id = "{peer}"\n'
            f'cert = "{pki / (me + ".pem")}"\nkey = "{pki / (me + ".key")}"\nca = "{pki / "ca.pem"}"\n'
            f'local_saes = ["{local}"]\npeer_saes = ["{remote}"]\nport = 0\nshare_index = {index}\n'
            f'sync_bind = "tcp://127.0.0.1:{ports[me]}"\nsync_peer = "tcp://127.0.0.1:{ports[peer]}"\n'
            f"[security]\ncurve = false\n[http]\nenabled = false\n"
        )
        ready_file = tmp / f"{me}.ready"
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "qnode", "controller", "--config", str(cfg),
                 "--ready-file", str(ready_file)],
                stdout=subprocess.DEVNULL, stderr=open(tmp / f"{me}.log", "wb"),  # noqa: SIM115
            )
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while not ready_file.exists():
            if procs[-1].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"controller {me} did not start: {(tmp / f'{me}.log')}")
            time.sleep(0.05)
        ready[me] = json.loads(ready_file.read_text())
    return {"pki": pki, "ready": ready}, procs


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (Linux /proc; NaN elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def kms_row(quick: bool = False, clients: int = 16, keys_per_request: int = 1) -> dict[str, Any]:
    import httpx

    from controller.tls import client_ssl_context

    duration_s = 3.0 if quick else 10.0
    with tempfile.TemporaryDirectory(prefix="qnode-kms-perf-") as tmp_s:
        tmp = Path(tmp_s)
        # Enough material never to run dry (a dry pool would cut the run short with 503s).
        env, procs = _start_kmes(tmp, n_keys=int(max(6000, 2500 * keys_per_request) * duration_s))
        try:
            pki, ready = env["pki"], env["ready"]
            split = urlsplit(ready["alice"]["kms"])
            host, port = split.hostname, split.port
            path = "/api/v1/keys/sae-bob/enc_keys"
            ctx_a = client_ssl_context(pki / "sae-alice.pem", pki / "sae-alice.key", pki / "ca.pem")
            keys: list[tuple[str, str]] = []
            latencies: list[float] = []
            errors: list[str] = []
            lock = threading.Lock()
            start = threading.Barrier(clients + 1)
            stop_at = [0.0]

            body = json.dumps({"number": keys_per_request, "size": 256}).encode()
            headers = {"Content-Type": "application/json"}

            def worker() -> None:
                # One keep-alive connection per SAE client (one TLS handshake, as a real SAE);
                # stdlib http.client keeps the benchmark's own CPU per request small next to
                # the KME's on a 2-core machine (httpx cost ~0.8 ms of client CPU per request).
                conn = http.client.HTTPSConnection(host, port, context=ctx_a, timeout=30)
                try:
                    conn.request("GET", "/api/v1/keys/sae-bob/status")  # handshake
                    conn.getresponse().read()
                    start.wait()
                    while time.perf_counter() < stop_at[0]:
                        t0 = time.perf_counter()
                        conn.request("POST", path, body, headers)
                        r = conn.getresponse()
                        data = r.read()
                        dt = (time.perf_counter() - t0) * 1000
                        with lock:
                            if r.status != 200:
                                errors.append(data[:200].decode(errors="replace"))
                                return
                            latencies.append(dt)
                            keys.extend((k["key_ID"], k["key"]) for k in json.loads(data)["keys"])
                finally:
                    conn.close()

            threads = [threading.Thread(target=worker) for _ in range(clients)]
            for t in threads:
                t.start()
            stop_at[0] = time.perf_counter() + duration_s
            start.wait()
            t0, cpu0, srv0 = time.perf_counter(), time.process_time(), _cpu_s(procs[0].pid)
            for t in threads:
                t.join()
            elapsed = time.perf_counter() - t0
            client_cpu, server_cpu = time.process_time() - cpu0, _cpu_s(procs[0].pid) - srv0
            duplicates = (len(keys) - len({k for k, _ in keys})) + (
                len(keys) - len({m for _, m in keys})
            )
            # The slave side: Bob's KME must hand out the same keys for a sample of IDs.
            sample = keys[:: max(1, len(keys) // 64)][:64]
            ctx_b = client_ssl_context(pki / "sae-bob.pem", pki / "sae-bob.key", pki / "ca.pem")
            with httpx.Client(verify=ctx_b, timeout=30) as c:
                r = c.post(
                    f"{ready['bob']['kms']}/api/v1/keys/sae-alice/dec_keys",
                    json={"key_IDs": [{"key_ID": k} for k, _ in sample]},
                )
            got = [(k["key_ID"], k["key"]) for k in r.json().get("keys", [])]
            mismatches = (
                len(sample)
                if r.status_code != 200
                else sum(a != b for a, b in zip(sample, got, strict=False))
            )
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(15)
    latencies.sort()
    row: dict[str, Any] = {
        "stage": "kms",
        "impl": "qnode",
        "clients": clients,
        "keys_per_request": keys_per_request,
        "key_bits": 256,
        "keys_per_s": round(len(keys) / elapsed, 1),
        "p50_ms": round(latencies[len(latencies) // 2], 2) if latencies else None,
        "p99_ms": round(latencies[int(len(latencies) * 0.99)], 2) if latencies else None,
        "duplicates": duplicates,
        "mismatches": mismatches,
        # CPU per request (meaningful on a loaded machine, unlike the wall-clock figures).
        "server_cpu_ms_per_req": round(1000 * server_cpu / max(len(latencies), 1), 3),
        "client_cpu_ms_per_req": round(1000 * client_cpu / max(len(latencies), 1), 3),
    }
    if errors:
        row["note"] = f"{len(errors)} failed requests: {errors[0]}"
    return row


def perf_rows(quick: bool = False, stages: list[str] | None = None) -> list[dict[str, Any]]:
    """The controller's rows (``telemetry``, ``kms``), or none if ``stages`` names neither."""
    rows: list[dict[str, Any]] = []
    wanted = set(STAGES) if not stages else set(stages) & set(STAGES)
    if "telemetry" in wanted:
        rows.append(telemetry_row(quick))
    if "kms" in wanted:
        rows.append(kms_row(quick, keys_per_request=1))
        if not quick:
            rows.append(kms_row(quick, keys_per_request=16))
    return rows
