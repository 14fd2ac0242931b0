"""Privacy amplification by Toeplitz hashing, exact over GF(2), plus its peer messages.

Convention (so anyone can check it): for an input ``x`` of ``n`` bits and an output of ``m`` bits,
``T[i, j] = seed[i - j + n - 1]`` with a seed of ``n + m - 1`` bits and ``y = T x mod 2``.
Then ``y_i`` is coefficient ``n - 1 + i`` of the GF(2)[t] product ``seed(t) * x(t)``, and only that
slice is computed: a carry-less (PCLMULQDQ) Karatsuba middle product on 64-bit words
(:mod:`pipeline.gf2`), or an exact NTT on CPUs without the instruction -- same output either way.

Packed bit order (``toeplitz_hash_packed``): bit ``i`` is ``(words[i // w] >> (i % w)) & 1`` for
``w``-bit words, least significant bit first; for uint8 that is ``numpy.packbits(bits,
bitorder="little")`` and the same memory read as little-endian uint64.

Peer messages (sans-I/O, :mod:`pipeline.channel` conventions): Alice draws the seed from the OS
CSPRNG and sends ``{"type": "pa_seed", "block": id, "n": n, "m": m, "seed": uint8 array}``
(``seed`` packed as above, ``ceil((n + m - 1) / 8)`` bytes, padding bits zero); Bob checks it and
hashes his reconciled block with it. No reply is needed.
"""

from __future__ import annotations

import operator
import os
import secrets
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.gf2 import has_pclmul, has_vpclmul, pack_bits, unpack_bits, words_for
from pipeline.gf2.ntt import toeplitz_ntt
from pipeline.gf2.toeplitz import toeplitz_words

BACKENDS = ("clmul", "clmul128", "ntt")
MESSAGE_TYPE = "pa_seed"


def default_backend() -> str:
    """``clmul`` on CPUs with PCLMULQDQ, else ``ntt``; ``QNODE_TOEPLITZ_BACKEND`` overrides."""
    forced = os.environ.get("QNODE_TOEPLITZ_BACKEND")
    if forced:
        return _check_backend(forced)
    return "clmul" if has_pclmul() else "ntt"


def backend_detail(backend: str | None = None) -> str:
    """Which code path a backend runs on this CPU (for benchmark rows and logs)."""
    backend = _check_backend(backend or default_backend())
    if backend == "clmul":
        return "vpclmulqdq-512" if has_vpclmul() else "pclmulqdq-128"
    return "pclmulqdq-128" if backend == "clmul128" else "ntt"


def _check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"unknown Toeplitz backend {backend!r}; choose one of {BACKENDS}")
    if backend.startswith("clmul") and not has_pclmul():
        raise ValueError(f"backend {backend!r} needs a CPU with PCLMULQDQ; use 'ntt'")
    return backend


def _check_lengths(n: int, m: Any) -> int:
    if isinstance(m, bool):
        raise ValueError("m must be an integer")
    try:
        m = operator.index(m)
    except TypeError:
        raise ValueError(f"m must be an integer, got {type(m).__name__}") from None
    if n == 0:
        raise ValueError("empty input: nothing to hash")
    if m <= 0 or m > n:
        raise ValueError(f"output length m={m} must satisfy 0 < m <= n={n}")
    return m


def _check_bits(name: str, arr: Any) -> np.ndarray:
    """Type and shape of a uint8 0/1 array (values are checked while packing)."""
    if not isinstance(arr, np.ndarray) or arr.dtype != np.uint8:
        raise ValueError(f"{name} must be a numpy uint8 array of 0/1")
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    return arr


def _pack_checked(name: str, arr: np.ndarray) -> np.ndarray:
    """Packed words of a 0/1 array, refusing any other value (one pass)."""
    try:
        return pack_bits(arr, check=True)
    except ValueError:
        raise ValueError(f"{name} holds values other than 0 and 1") from None


def toeplitz_hash(
    bits: np.ndarray, seed: np.ndarray, m: int, *, backend: str | None = None
) -> np.ndarray:
    """y = T x mod 2 with T[i, j] = seed[i - j + n - 1]; uint8 0/1 in, uint8 0/1 of length m out."""
    bits = _check_bits("bits", bits)
    seed = _check_bits("seed", seed)
    n = bits.size
    m = _check_lengths(n, m)
    if seed.size != n + m - 1:
        raise ValueError(f"seed must have n + m - 1 = {n + m - 1} bits, got {seed.size}")
    backend = _check_backend(backend or default_backend())
    x_words, seed_words = _pack_checked("bits", bits), _pack_checked("seed", seed)
    if backend == "ntt":
        return toeplitz_ntt(bits, seed, m)
    return unpack_bits(toeplitz_words(x_words, n, seed_words, m, wide=backend == "clmul"), m)


def _check_packed(name: str, arr: Any, n_bits: int) -> np.ndarray:
    if not isinstance(arr, np.ndarray) or arr.dtype not in (np.uint8, np.uint64):
        raise ValueError(f"{name} must be a packed numpy uint8 or uint64 array")
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    width = arr.dtype.itemsize * 8
    need = -(-n_bits // width)
    if arr.size != need:
        raise ValueError(
            f"{name} must hold {n_bits} bits in {need} {arr.dtype} words, got {arr.size}"
        )
    if n_bits % width and int(arr[-1]) >> (n_bits % width):
        raise ValueError(f"{name} has bits set beyond bit {n_bits} (wrong length or bit order?)")
    return arr


def _as_words(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint64:
        return arr
    padded = np.zeros(words_for(arr.size * 8) * 8, dtype=np.uint8)
    padded[: arr.size] = arr
    return padded.view("<u8").astype(np.uint64, copy=False)


def toeplitz_hash_packed(
    packed_bits: np.ndarray,
    n: int,
    packed_seed: np.ndarray,
    m: int,
    *,
    backend: str | None = None,
) -> np.ndarray:
    """:func:`toeplitz_hash` on packed words (LSB-first, see module doc); same dtype out.

    ``packed_bits`` holds ``n`` bits, ``packed_seed`` ``n + m - 1`` bits, both uint8 or uint64
    with exactly the words needed and padding bits zero; the result holds ``m`` bits packed the
    same way as ``packed_bits``, padding bits zero.
    """
    n = operator.index(n)
    if n < 0:
        raise ValueError("n must be >= 0")
    m = _check_lengths(n, m)
    packed_bits = _check_packed("packed_bits", packed_bits, n)
    packed_seed = _check_packed("packed_seed", packed_seed, n + m - 1)
    backend = _check_backend(backend or default_backend())
    if backend == "ntt":
        y_bits = toeplitz_ntt(
            unpack_bits(_as_words(packed_bits), n),
            unpack_bits(_as_words(packed_seed), n + m - 1),
            m,
        )
        words = pack_bits(y_bits)
    else:
        words = toeplitz_words(
            _as_words(packed_bits), n, _as_words(packed_seed), m, wide=backend == "clmul"
        )
    if packed_bits.dtype == np.uint64:
        return words
    return words.astype("<u8").view(np.uint8)[: -(-m // 8)].copy()


@dataclass(frozen=True)
class ToeplitzSeed:
    """One block's hash: n input bits -> m output bits, seed packed as uint8 (LSB first)."""

    n: int
    m: int
    packed: np.ndarray

    def hash(self, bits: np.ndarray, *, backend: str | None = None) -> np.ndarray:
        """The final key of this block from its reconciled bits (uint8 0/1 of length n)."""
        bits = _check_bits("bits", bits)
        if bits.size != self.n:
            raise ValueError(f"block has {bits.size} bits, the seed was made for n={self.n}")
        words = _pack_checked("bits", bits)
        out = toeplitz_hash_packed(words, self.n, self.packed, self.m, backend=backend)
        return unpack_bits(out, self.m)


def random_seed(n: int, m: int) -> ToeplitzSeed:
    """A fresh seed of n + m - 1 bits from the OS CSPRNG (``secrets``), padding bits cleared."""
    n = operator.index(n)
    m = _check_lengths(n, m)
    n_seed = n + m - 1
    packed = np.frombuffer(secrets.token_bytes(-(-n_seed // 8)), dtype=np.uint8).copy()
    if n_seed % 8:
        packed[-1] &= (1 << (n_seed % 8)) - 1
    return ToeplitzSeed(n, m, packed)


class PaMessageError(ValueError):
    """A privacy-amplification message from the peer is malformed (the node counts and drops it)."""


class PrivacyAmplificationAlice:
    """Alice's side: draws the seed and tells Bob; both then hash their identical blocks."""

    def make(self, block_id: Any, n: int, m: int) -> tuple[dict[str, Any], ToeplitzSeed]:
        """(message for Bob, the seed Alice hashes her own block with)."""
        seed = random_seed(n, m)
        message = {
            "type": MESSAGE_TYPE,
            "block": block_id,
            "n": seed.n,
            "m": seed.m,
            "seed": seed.packed,
        }
        return message, seed


class PrivacyAmplificationBob:
    """Bob's side: validates Alice's ``pa_seed`` message and hashes his block with it."""

    def accept(self, message: dict[str, Any]) -> tuple[Any, ToeplitzSeed]:
        """(block id, seed) from a ``pa_seed`` message; :class:`PaMessageError` if malformed."""
        if not isinstance(message, dict) or message.get("type") != MESSAGE_TYPE:
            raise PaMessageError(f"expected a {MESSAGE_TYPE!r} message")
        missing = [k for k in ("block", "n", "m", "seed") if k not in message]
        if missing:
            raise PaMessageError(f"{MESSAGE_TYPE} message lacks {missing}")
        n, m, packed = message["n"], message["m"], message["seed"]
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (n, m)):
            raise PaMessageError("n and m must be integers")
        try:
            m = _check_lengths(n, m)
            _check_packed("seed", packed, n + m - 1)
        except ValueError as exc:
            raise PaMessageError(str(exc)) from None
        if packed.dtype != np.uint8:
            raise PaMessageError("seed must be packed uint8")
        return message["block"], ToeplitzSeed(n, m, packed)

    def apply(self, message: dict[str, Any], bits: np.ndarray) -> np.ndarray:
        """Bob's final key for the message's block from his reconciled ``bits``."""
        _, seed = self.accept(message)
        return seed.hash(bits)
