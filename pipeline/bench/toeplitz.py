"""``toeplitz`` rows for ``qnode perf``: privacy amplification throughput beside its peers.

Every implementation hashes the same input with the same matrix ``T[i, j] = seed[i - j + n - 1]``
(m = n/2) in the same run; ``mbps`` is input bits per second, compile time excluded (warm-up first),
best of a few repetitions. Peers:

* ``numpy``: the plain float FFT (pocketfft rfft/irfft, one cyclic convolution of length
  ``2^ceil(log2(n + m - 1))``, exact after rounding; the rounding margin is checked).
* ``cryptomite``: ``cryptomite.Toeplitz(n, m).extract(x, c)`` (C++ NTT behind a Python-list API).
  Its matrix is ``T[i, j] = c[(i - j) mod (n + m - 1)]``, so feeding it ``c = roll(seed, -(n - 1))``
  (``c[k] = seed[(k + n - 1) mod (n + m - 1)]``) makes it compute our ``T``; outputs are compared
  bit for bit.

Run alone: ``python -m pipeline.bench.toeplitz [--quick]``.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any

import numba
import numpy as np

from pipeline.amplification import backend_detail, toeplitz_hash, toeplitz_hash_packed

STAGE = "toeplitz"


def cryptomite_seed(seed: np.ndarray, n: int) -> np.ndarray:
    """Seed that makes cryptomite's Toeplitz (T[i, j] = c[(i - j) mod L]) compute our matrix."""
    return np.roll(seed, -(n - 1))


def numpy_fft_toeplitz(bits: np.ndarray, seed: np.ndarray, m: int) -> np.ndarray:
    """Reference peer: float FFT cyclic convolution, exact by rounding (margin checked)."""
    n = bits.size
    size = 1 << (n + m - 2).bit_length()
    # A cyclic length >= n + m - 1 wraps only into indices < n - 1, outside the kept slice.
    conv = np.fft.irfft(np.fft.rfft(bits, size) * np.fft.rfft(seed, size), size)[n - 1 : n - 1 + m]
    counts = np.rint(conv)
    if np.max(np.abs(conv - counts), initial=0.0) > 0.25:
        raise ArithmeticError("float FFT rounding margin exceeded; result not exact")
    return (counts.astype(np.int64) & 1).astype(np.uint8)


def _best_time(fn: Callable[[], Any], reps: int) -> tuple[float, Any]:
    best, out = float("inf"), None
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def _rows_for(n: int, reps: int, peer_reps: int) -> list[dict[str, Any]]:
    m = n // 2
    rng = np.random.default_rng(n)
    bits = rng.integers(0, 2, n, dtype=np.uint8)
    seed = rng.integers(0, 2, n + m - 1, dtype=np.uint8)
    params = {"stage": STAGE, "n": n, "m": m, "io": "bits"}
    toeplitz_hash(bits, seed, m)  # warm-up: loads (or compiles) the kernels
    t_q, y_q = _best_time(lambda: toeplitz_hash(bits, seed, m), reps)
    note = f"{backend_detail()} Karatsuba, {numba.get_num_threads()} threads"
    rows = [{**params, "impl": "qnode", "mbps": n / t_q / 1e6, "note": note}]

    packed_x = np.packbits(bits, bitorder="little").view(np.uint8)
    packed_s = np.packbits(seed, bitorder="little")
    t_p, y_p = _best_time(lambda: toeplitz_hash_packed(packed_x, n, packed_s, m), reps)
    agree_p = bool(np.array_equal(np.unpackbits(y_p, count=m, bitorder="little"), y_q))
    rows.append(
        {**params, "io": "packed", "impl": "qnode", "mbps": n / t_p / 1e6, "agree": agree_p}
    )

    t_np, y_np = _best_time(lambda: numpy_fft_toeplitz(bits, seed, m), peer_reps)
    rows.append(
        {
            **params,
            "impl": "numpy",
            "mbps": n / t_np / 1e6,
            "agree": bool(np.array_equal(y_np, y_q)),
        }
    )

    try:
        from cryptomite import Toeplitz
    except ImportError as exc:
        rows.append(
            {
                **params,
                "impl": "cryptomite",
                "missing": f"not installed ({exc}); pip install .[bench]",
            }
        )
    else:
        x_list = bits.tolist()
        c_list = cryptomite_seed(seed, n).tolist()
        extractor = Toeplitz(n, m)
        t_c, y_c = _best_time(lambda: extractor.extract(x_list, c_list), peer_reps)
        agree_c = bool(np.array_equal(np.asarray(y_c, dtype=np.uint8), y_q))
        rows.append({**params, "impl": "cryptomite", "mbps": n / t_c / 1e6, "agree": agree_c})
    for row in rows:
        if "agree" in row:
            row["note"] = "bit-identical to qnode" if row["agree"] else "OUTPUT DIFFERS from qnode"
        if row["impl"] != "qnode" and "mbps" in row:
            row["ratio"] = round(rows[0]["mbps"] / row["mbps"], 2)
            row["ratio_of"] = f"qnode/{row['impl']} mbps"
    return rows


def perf_rows(quick: bool = False, stages: list[str] | None = None) -> list[dict[str, Any]]:
    """Rows for n = 1e6 and 1e7 (quick: n = 1e5 only), m = n/2, qnode beside numpy and cryptomite."""
    if stages and STAGE not in stages:
        return []
    if quick:
        return _rows_for(100_000, reps=5, peer_reps=1)
    return _rows_for(1_000_000, reps=5, peer_reps=2) + _rows_for(10_000_000, reps=5, peer_reps=1)


if __name__ == "__main__":
    json.dump(perf_rows(quick="--quick" in sys.argv), sys.stdout, indent=1)
    sys.stdout.write("\n")
