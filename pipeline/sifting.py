"""Sifting: match Alice's and Bob's bases per frame, keep key bits, count detections per class.

Naming (one convention everywhere, that of Lim et al. 2014 and issue 3): **the key basis is X**
(basis code 1 in the symbol byte, contracts §1.1) and **Z** (code 0) is the test basis whose
bits are all disclosed to bound the phase error. The source's ``BASis:PROBability`` /
``p_basis_z`` is the probability of Z, so Lim's ``q_x = 1 - p_basis_z``. The key comes from the
matched X detections of *all* intensity classes (Lim 2014: n_X = sum_k n_X,k); the per-class
counts feed the decoy bounds. Intensity classes: 0 = signal (mu1), 1 = decoy (mu2), 2 = vacuum
(mu3).

One round trip per frame, sans-I/O (the runtime carries the dicts over its classical channel,
tests over :func:`pipeline.channel.loopback_pair`). Per-event flags travel as bit planes: uint8
arrays, bit ``t`` of byte ``j`` is event ``8j + t`` (numpy ``bitorder="little"``), zero-padded to
whole 64-bit words.

1. Bob -> Alice ``sift_announce``: ``frame``, ``n``, the slots as ``slot0`` (int) and
   ``slot_delta`` (``n - 1`` gaps between successive slots in the narrowest of uint16 / uint32 /
   int64 that holds the largest; a quarter of the int64 list on bright links, where the list
   dominates the message), ``basis`` (plane, 1 = X) and ``test_bits`` (plane: Bob's bit where he
   measured Z, 0 elsewhere; Z bits are disclosed anyway and those of unmatched slots are
   discarded). A plain ``slot`` (int64[n]) instead of ``slot0``/``slot_delta`` is accepted too.
2. Alice fetches her symbols for ``slot`` and answers ``sift_reply``: ``frame``, ``n``,
   ``match`` (plane: bases agree), ``intensity_lo`` / ``intensity_hi`` (planes: the two bits of
   the intensity class of matched events) and ``test_errors`` (Z errors per intensity class).

Both sides then hold the same :class:`SiftedFrame` counts; their key bits differ only by the
channel errors that reconciliation removes. The kernels work on 64 events per machine word
(bit-parallel masks, popcounts, table-driven compaction), which is what makes sifting cheap.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numba import njit, prange, uint64

BASIS_Z = 0  # test basis (phase-error estimation)
BASIS_X = 1  # key basis
N_INTENSITIES = 3  # signal, decoy, vacuum
_CHUNK = 1 << 16  # events per parallel chunk, a multiple of 64
_SLACK = 8  # compaction writes 8 bytes at a time: chunk scratch areas are this much longer
_MAX_PENDING = 256  # Bob keeps at most this many announced frames awaiting a reply

_LSB = np.uint64(0x0101010101010101)
_MAGIC = np.uint64(0x0102040810204080)  # (bytes of 0/1) * _MAGIC >> 56 gathers them into a byte
_HI6 = np.uint64(0xFCFCFCFCFCFCFCFC)


def _compaction_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PEXT[mask*256 + bits] (selected bits, packed low), EXPAND[byte] (8 bytes of 0/1), POPC8."""
    m = np.arange(256, dtype=np.int64)[:, None]
    v = np.arange(256, dtype=np.int64)[None, :]
    out = np.zeros((256, 256), np.int64)
    taken = np.zeros((256, 1), np.int64)
    for t in range(8):
        sel = (m >> t) & 1
        out |= (((v >> t) & 1) << taken) * sel
        taken = taken + sel
    b = np.arange(256, dtype=np.uint64)[:, None]
    shifts = np.arange(8, dtype=np.uint64)[None, :]
    expand = (((b >> shifts) & np.uint64(1)) << (np.uint64(8) * shifts)).sum(axis=1)
    return out.astype(np.uint8).ravel(), expand.astype(np.uint64), taken.ravel().astype(np.uint8)


_PEXT, _EXPAND, _POPC8 = _compaction_tables()


@dataclass(frozen=True)
class SiftedFrame:
    """One side's result for one frame.

    ``key_bits``: uint8 0/1, this side's bits of the matched X detections in slot order.
    ``counts``: int64 (2, 3), matched detections per [basis, intensity] (basis 0 = Z, 1 = X).
    ``test_errors``: int64 (3,), Z-basis errors per intensity (Alice's bit != Bob's bit).
    """

    frame: int
    key_bits: np.ndarray
    counts: np.ndarray
    test_errors: np.ndarray

    @property
    def n_key(self) -> int:
        return int(self.key_bits.size)


# --------------------------------------------------------------------------- kernels


@njit(inline="always")
def _load8(a, i, n):  # pragma: no cover - numba
    """Bytes a[i:i+8] as a little-endian word, zero past n (the compiler fuses the loads)."""
    x = uint64(0)
    if i + 8 <= n:
        x = (
            uint64(a[i])
            | (uint64(a[i + 1]) << uint64(8))
            | (uint64(a[i + 2]) << uint64(16))
            | (uint64(a[i + 3]) << uint64(24))
            | (uint64(a[i + 4]) << uint64(32))
            | (uint64(a[i + 5]) << uint64(40))
            | (uint64(a[i + 6]) << uint64(48))
            | (uint64(a[i + 7]) << uint64(56))
        )
    else:
        for t in range(max(n - i, 0)):
            x |= uint64(a[i + t]) << uint64(8 * t)
    return x


@njit(inline="always")
def _gather(x):  # pragma: no cover - numba
    """Low bits of the 8 bytes of x -> one byte (bit t = byte t)."""
    return ((x & _LSB) * _MAGIC) >> uint64(56)


@njit(inline="always")
def _popcount(x):  # pragma: no cover - numba
    x = x - ((x >> uint64(1)) & uint64(0x5555555555555555))
    x = (x & uint64(0x3333333333333333)) + ((x >> uint64(2)) & uint64(0x3333333333333333))
    x = (x + (x >> uint64(4))) & uint64(0x0F0F0F0F0F0F0F0F)
    return (x * _LSB) >> uint64(56)


@njit(inline="always")
def _valid_mask(n, i0):  # pragma: no cover - numba
    rem = n - i0
    return ~uint64(0) if rem >= 64 else (uint64(1) << uint64(rem)) - uint64(1)


@njit(inline="always")
def _compact(mask, bits, out, pos):  # pragma: no cover - numba
    """Append the bits of ``bits`` selected by ``mask`` to out[pos:] as 0/1 bytes."""
    for t in range(8):
        sh = uint64(8 * t)
        mb = (mask >> sh) & uint64(0xFF)
        e = _EXPAND[_PEXT[mb * uint64(256) + ((bits >> sh) & uint64(0xFF))]]
        for u in range(8):
            out[pos + u] = (e >> uint64(8 * u)) & uint64(0xFF)
        pos += _POPC8[mb]
    return pos


@njit(inline="always")
def _count_word(mask_x, mask_z, klo, khi, counts, c):  # pragma: no cover - numba
    k0 = ~klo & ~khi
    k1 = klo & ~khi
    k2 = khi & ~klo
    counts[c, 0, 0] += _popcount(mask_z & k0)
    counts[c, 0, 1] += _popcount(mask_z & k1)
    counts[c, 0, 2] += _popcount(mask_z & k2)
    counts[c, 1, 0] += _popcount(mask_x & k0)
    counts[c, 1, 1] += _popcount(mask_x & k1)
    counts[c, 1, 2] += _popcount(mask_x & k2)


@njit(cache=True, parallel=True)
def _bob_pack(slot, basis, bit, basis_w, bit_w):  # pragma: no cover - numba
    """Bob's bases and bits as bit planes; returns the number of chunks with invalid events."""
    n = basis.size
    nch = (n + _CHUNK - 1) // _CHUNK
    bad = 0
    for c in prange(nch):
        lo = c * _CHUNK
        hi = min(lo + _CHUNK, n)
        badw = uint64(0)
        for w in range(lo >> 6, (hi + 63) >> 6):
            i0 = w * 64
            b = uint64(0)
            v = uint64(0)
            for t in range(8):
                xb = _load8(basis, i0 + 8 * t, n)
                xv = _load8(bit, i0 + 8 * t, n)
                badw |= (xb | xv) & ~_LSB
                b |= _gather(xb) << uint64(8 * t)
                v |= _gather(xv) << uint64(8 * t)
            basis_w[w] = b
            bit_w[w] = v
        step = np.int64(1)  # smallest slot increment in the chunk: must stay positive
        for i in range(max(lo, 1), hi):
            step = min(step, slot[i] - slot[i - 1])
        bad += (badw != 0) | (step <= 0)
    return bad


@njit(cache=True, parallel=True)
def _alice_sift(  # pragma: no cover - numba
    a_basis, a_bit, a_int, b_basis_w, b_test_w, match_w, klo_w, khi_w, counts, errors, scratch, nkey
):
    """Alice's side: match, counts, Z errors and her key bits (chunk c in its scratch area)."""
    n = a_basis.size
    nch = counts.shape[0]
    bad = np.zeros(nch, np.int64)
    for c in prange(nch):
        lo = c * _CHUNK
        hi = min(lo + _CHUNK, n)
        start = c * (_CHUNK + _SLACK)
        pos = start
        nbad = 0
        for w in range(lo >> 6, (hi + 63) >> 6):
            i0 = w * 64
            a = uint64(0)
            v = uint64(0)
            klo = uint64(0)
            khi = uint64(0)
            badw = uint64(0)
            for t in range(8):
                xa = _load8(a_basis, i0 + 8 * t, n)
                xv = _load8(a_bit, i0 + 8 * t, n)
                xk = _load8(a_int, i0 + 8 * t, n)
                badw |= ((xa | xv) & ~_LSB) | (xk & _HI6) | (xk & (xk >> uint64(1)) & _LSB)
                sh = uint64(8 * t)
                a |= _gather(xa) << sh
                v |= _gather(xv) << sh
                klo |= _gather(xk) << sh
                khi |= _gather(xk >> uint64(1)) << sh
            nbad += badw != 0
            m = ~(a ^ b_basis_w[w]) & _valid_mask(n, i0)
            mx = m & a
            mz = m & ~a
            _count_word(mx, mz, klo, khi, counts, c)
            err = mz & (v ^ b_test_w[w])
            errors[c, 0] += _popcount(err & ~klo & ~khi)
            errors[c, 1] += _popcount(err & klo & ~khi)
            errors[c, 2] += _popcount(err & khi & ~klo)
            match_w[w] = m
            klo_w[w] = klo & m
            khi_w[w] = khi & m
            pos = _compact(mx, v, scratch, pos)
        bad[c] = nbad
        nkey[c] = pos - start
    return bad.sum()


@njit(cache=True, parallel=True)
def _bob_sift(basis_w, bit_w, n, match_w, klo_w, khi_w, counts, scratch, nkey):  # pragma: no cover
    """Bob's side from Alice's planes: counts and his key bits; returns inconsistent words."""
    nch = counts.shape[0]
    bad = np.zeros(nch, np.int64)
    for c in prange(nch):
        lo = c * _CHUNK
        hi = min(lo + _CHUNK, n)
        start = c * (_CHUNK + _SLACK)
        pos = start
        nbad = 0
        for w in range(lo >> 6, (hi + 63) >> 6):
            m = match_w[w]
            klo = klo_w[w]
            khi = khi_w[w]
            nbad += ((m & ~_valid_mask(n, w * 64)) | ((klo | khi) & ~m) | (klo & khi)) != 0
            b = basis_w[w]
            _count_word(m & b, m & ~b, klo, khi, counts, c)
            pos = _compact(m & b, bit_w[w], scratch, pos)
        bad[c] = nbad
        nkey[c] = pos - start
    return bad.sum()


# --------------------------------------------------------------------------- helpers


def _nchunks(n: int) -> int:
    return (n + _CHUNK - 1) // _CHUNK


def _plane_bytes(n: int) -> int:
    return ((n + 63) // 64) * 8


def _check_array(name: str, arr: Any, dtype: type, n: int | None = None) -> np.ndarray:
    if not isinstance(arr, np.ndarray):
        raise ValueError(f"{name} must be a numpy array, got {type(arr).__name__}")
    if arr.dtype != np.dtype(dtype):
        raise ValueError(f"{name} must have dtype {np.dtype(dtype).name}, got {arr.dtype.name}")
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if n is not None and arr.size != n:
        raise ValueError(f"{name} has length {arr.size}, expected {n}")
    return np.ascontiguousarray(arr)


def _check_plane(name: str, arr: Any, n: int) -> np.ndarray:
    """A bit plane from the wire as 64-bit words, copied (n/8 bytes) so that the kernels see
    one array type whatever buffer the message was decoded from (one compiled variant)."""
    return _check_array(name, arr, np.uint8, _plane_bytes(n)).copy().view("<u8")


def _check_frame(frame: Any) -> int:
    if isinstance(frame, bool) or not isinstance(frame, int | np.integer) or frame < 0:
        raise ValueError(f"frame id must be a non-negative integer, got {frame!r}")
    return int(frame)


def _check_n(message: dict[str, Any]) -> int:
    n = message.get("n")
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        raise ValueError(f"{message.get('type')}: n must be a positive integer, got {n!r}")
    return n


_DELTA_TYPES = (np.dtype("<u2"), np.dtype("<u4"), np.dtype("<i8"))


def _slot_gaps(slot: np.ndarray) -> np.ndarray:
    """The ``n - 1`` gaps between successive slots in the narrowest of uint16 / uint32 / int64
    that holds them all (two numba passes: no int64 diff array, no casting copy)."""
    if slot.size < 2:
        return np.empty(0, np.uint16)
    top = _max_gap(slot)
    dtype = next((t for t in _DELTA_TYPES[:2] if top <= np.iinfo(t).max), _DELTA_TYPES[2])
    out = np.empty(slot.size - 1, dtype)
    _fill_gaps(slot, out)
    return out


# Gaps per chunk of the two-level prefix sum. The kernels run serially: on a link they run per
# frame inside a busy process, where a parallel launch cost Alice's post-processing 3x its CPU
# (measured: 58 % of its samples in the slot decoding, 10-minute link row).
_GAP_CHUNK = 1 << 16


@njit(cache=True)
def _max_gap(slot):  # pragma: no cover - numba
    n = slot.size - 1
    nch = (n + _GAP_CHUNK - 1) // _GAP_CHUNK
    tops = np.zeros(max(nch, 1), np.int64)
    for c in prange(nch):
        top = 0
        for i in range(c * _GAP_CHUNK + 1, min(n, (c + 1) * _GAP_CHUNK) + 1):
            d = slot[i] - slot[i - 1]
            if d > top:
                top = d
        tops[c] = top
    return tops.max()


@njit(cache=True)
def _fill_gaps(slot, out):  # pragma: no cover - numba
    for i in prange(out.size):
        out[i] = slot[i + 1] - slot[i]


def _announced_slots(message: dict[str, Any], n: int, build: bool = True) -> np.ndarray | None:
    """The announced slots (int64, strictly increasing, non-negative) from ``slot0`` and
    ``slot_delta``, or from a plain ``slot`` list; ``build=False`` only validates them (Alice's
    sifting needs the count, not the slots, which her symbol request already used)."""
    if "slot" in message:
        slot = _check_array("slot", message.get("slot"), np.int64, n)
        if slot[0] < 0 or (n > 1 and not (np.diff(slot) > 0).all()):
            raise ValueError("slot must be non-negative and strictly increasing")
        return slot
    slot0 = message.get("slot0")
    if isinstance(slot0, bool) or not isinstance(slot0, int) or not 0 <= slot0 < 2**62:
        raise ValueError(f"slot0 must be a non-negative integer, got {slot0!r}")
    delta = message.get("slot_delta")
    if not isinstance(delta, np.ndarray) or delta.dtype not in _DELTA_TYPES:
        raise ValueError("slot_delta must be a uint16, uint32 or int64 array")
    delta = _check_array("slot_delta", delta, delta.dtype, n - 1)
    if not build:
        if not _gaps_ok(slot0, delta):
            raise ValueError("slot_delta must be positive (strictly increasing slots) and in range")
        return None
    slot = np.empty(n, np.int64)
    if not _gaps_to_slots(slot0, delta, slot):  # compiled per gap dtype: no widening copy
        raise ValueError("slot_delta must be positive (strictly increasing slots) and in range")
    return slot


@njit(cache=True)
def _gaps_ok(slot0, delta):  # pragma: no cover - numba
    """The checks of :func:`_gaps_to_slots` without building the slots (one read-only pass)."""
    limit = np.int64(2**62)
    t = np.int64(0)
    bad = False
    for i in range(delta.size):
        d = np.int64(delta[i])
        bad |= (d <= 0) | (d >= limit)
        t = min(t + d, limit)
    return not bad and t < limit - slot0


@njit(cache=True)
def _gaps_to_slots(slot0, delta, out):  # pragma: no cover - numba
    """out = slot0, slot0 + d0, ...; False if a gap is not positive or a slot reaches 2^62.
    Chunk totals (branch-free checks), their scan, then each chunk's running sum."""
    limit = np.int64(2**62)
    n = delta.size
    out[0] = slot0
    nch = (n + _GAP_CHUNK - 1) // _GAP_CHUNK
    sums = np.zeros(max(nch, 1), np.int64)
    bad = np.zeros(max(nch, 1), np.bool_)
    for c in prange(nch):  # branch-free: gaps in (0, 2^62), chunk total saturating at 2^62
        t = np.int64(0)
        b = False
        for i in range(c * _GAP_CHUNK, min(n, (c + 1) * _GAP_CHUNK)):
            d = np.int64(delta[i])
            b |= (d <= 0) | (d >= limit)
            t = min(t + d, limit)
        sums[c] = t
        bad[c] = b
    if bad.any():
        return False
    base = np.empty(max(nch, 1), np.int64)
    s = np.int64(slot0)
    for c in range(nch):
        if sums[c] >= limit - s:
            return False
        base[c] = s
        s += sums[c]
    for c in prange(nch):
        s = base[c]
        for i in range(c * _GAP_CHUNK, min(n, (c + 1) * _GAP_CHUNK)):
            s += np.int64(delta[i])
            out[i + 1] = s
    return True


def _joined_key(scratch: np.ndarray, nkey: np.ndarray) -> np.ndarray:
    stride = _CHUNK + _SLACK
    return np.concatenate([scratch[c * stride : c * stride + k] for c, k in enumerate(nkey)])


def _buffers(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    nch = _nchunks(n)
    counts = np.zeros((nch, 2, N_INTENSITIES), np.int64)
    scratch = np.empty(nch * (_CHUNK + _SLACK), np.uint8)
    return counts, scratch, np.zeros(nch, np.int64)


# --------------------------------------------------------------------------- peers


class SiftingBob:
    """Bob's side: announce a frame's (slot, basis, Z bits), then finish it with Alice's reply."""

    def __init__(self) -> None:
        self._pending: dict[int, tuple[int, np.ndarray, np.ndarray]] = {}

    def announce(
        self, frame: int, slot: np.ndarray, basis: np.ndarray, bit: np.ndarray
    ) -> dict[str, Any]:
        """Validate Bob's events for ``frame`` and return the ``sift_announce`` message."""
        frame = _check_frame(frame)
        slot = _check_array("slot", slot, np.int64)
        n = slot.size
        if n == 0:
            raise ValueError(f"frame {frame}: no events to sift")
        basis = _check_array("basis", basis, np.uint8, n)
        bit = _check_array("bit", bit, np.uint8, n)
        if frame in self._pending:
            raise ValueError(f"frame {frame} already announced and awaiting its reply")
        nw = (n + 63) // 64
        basis_w = np.empty(nw, "<u8")
        bit_w = np.empty(nw, "<u8")
        if _bob_pack(slot, basis, bit, basis_w, bit_w):
            raise ValueError(
                f"frame {frame}: basis and bit must be 0/1 and slots strictly increasing"
            )
        if len(self._pending) >= _MAX_PENDING:
            self._pending.pop(next(iter(self._pending)))  # the oldest: its reply never came
        self._pending[frame] = (n, basis_w, bit_w)
        return {
            "type": "sift_announce",
            "frame": frame,
            "n": n,
            "slot0": int(slot[0]),
            "slot_delta": _slot_gaps(slot),
            "basis": basis_w.view(np.uint8),
            "test_bits": (bit_w & ~basis_w).view(np.uint8),
        }

    def on_reply(self, message: dict[str, Any]) -> SiftedFrame:
        """Finish a frame from Alice's ``sift_reply``.

        A bad, unexpected or ``failed`` reply raises ValueError; the frame is then forgotten
        (a frame gets one reply, so a forged second one cannot replace a refused first).
        """
        if message.get("type") != "sift_reply":
            raise ValueError(f"expected a sift_reply, got {message.get('type')!r}")
        frame = _check_frame(message.get("frame"))
        if frame not in self._pending:
            raise ValueError(f"sift_reply for frame {frame}, which was not announced")
        # One reply per frame: whatever it holds, the frame is no longer pending.
        n, basis_w, bit_w = self._pending.pop(frame)
        if message.get("failed"):
            reason = message.get("reason", "no reason given")
            raise ValueError(f"frame {frame}: Alice could not sift it ({reason})")
        if _check_n(message) != n:
            raise ValueError(f"frame {frame}: reply covers {message['n']} events, announced {n}")
        match_w = _check_plane("match", message.get("match"), n)
        klo_w = _check_plane("intensity_lo", message.get("intensity_lo"), n)
        khi_w = _check_plane("intensity_hi", message.get("intensity_hi"), n)
        errors = np.asarray(message.get("test_errors"), dtype=np.int64)
        if errors.shape != (N_INTENSITIES,) or (errors < 0).any():
            raise ValueError(f"frame {frame}: test_errors must be 3 non-negative counts")
        counts, scratch, nkey = _buffers(n)
        if _bob_sift(basis_w, bit_w, n, match_w, klo_w, khi_w, counts, scratch, nkey):
            raise ValueError(f"frame {frame}: inconsistent match/intensity planes in the reply")
        total = counts.sum(axis=0)
        if (errors > total[BASIS_Z]).any():
            raise ValueError(f"frame {frame}: more test errors than matched Z detections")
        return SiftedFrame(frame, _joined_key(scratch, nkey), total, errors)

    def forget(self, frame: int) -> None:
        """Drop an announced frame whose reply will never come (e.g. Alice dropped it)."""
        self._pending.pop(frame, None)


class SiftingAlice:
    """Alice's side: answer Bob's announcement with her symbols for the announced slots."""

    @staticmethod
    def requested_slots(message: dict[str, Any]) -> np.ndarray:
        """Validate a ``sift_announce`` and return the slots whose symbols Alice must fetch."""
        return SiftingAlice._validated(message, build=True)

    @staticmethod
    def _validated(message: dict[str, Any], build: bool) -> Any:
        if message.get("type") != "sift_announce":
            raise ValueError(f"expected a sift_announce, got {message.get('type')!r}")
        _check_frame(message.get("frame"))
        n = _check_n(message)
        slot = _announced_slots(message, n, build)
        _check_plane("basis", message.get("basis"), n)
        _check_plane("test_bits", message.get("test_bits"), n)
        return slot if build else n

    def on_announce(
        self,
        message: dict[str, Any],
        basis: np.ndarray,
        bit: np.ndarray,
        intensity: np.ndarray,
    ) -> tuple[dict[str, Any], SiftedFrame]:
        """Sift with Alice's symbols for the announced slots; return (``sift_reply``, result)."""
        n = self._validated(message, build=False)
        frame = int(message["frame"])
        basis = _check_array("basis", basis, np.uint8, n)
        bit = _check_array("bit", bit, np.uint8, n)
        intensity = _check_array("intensity", intensity, np.uint8, n)
        b_basis_w = _check_plane("basis", message["basis"], n)
        b_test_w = _check_plane("test_bits", message["test_bits"], n)
        nw = b_basis_w.size
        match_w, klo_w, khi_w = (np.empty(nw, "<u8") for _ in range(3))
        counts, scratch, nkey = _buffers(n)
        errors = np.zeros((counts.shape[0], N_INTENSITIES), np.int64)
        bad = _alice_sift(
            basis, bit, intensity, b_basis_w, b_test_w, match_w, klo_w, khi_w,
            counts, errors, scratch, nkey,
        )  # fmt: skip
        if bad:
            raise ValueError(f"frame {frame}: symbols with basis/bit not 0/1 or intensity not 0..2")
        result = SiftedFrame(
            frame, _joined_key(scratch, nkey), counts.sum(axis=0), errors.sum(axis=0)
        )
        reply = {
            "type": "sift_reply",
            "frame": frame,
            "n": n,
            "match": match_w.view(np.uint8),
            "intensity_lo": klo_w.view(np.uint8),
            "intensity_hi": khi_w.view(np.uint8),
            "test_errors": [int(e) for e in result.test_errors],
        }
        return reply, result


def sift_loopback(
    frame: int,
    bob_slot: np.ndarray,
    bob_basis: np.ndarray,
    bob_bit: np.ndarray,
    alice_basis: np.ndarray,
    alice_bit: np.ndarray,
    alice_intensity: np.ndarray,
) -> tuple[SiftedFrame, SiftedFrame]:
    """Run both sides of one frame through a loopback channel (the runtime's code path)."""
    from pipeline.channel import loopback_pair

    alice_end, bob_end = loopback_pair()
    alice, bob = SiftingAlice(), SiftingBob()
    bob_end.send(bob.announce(frame, bob_slot, bob_basis, bob_bit))
    announce = alice_end.recv()
    reply, alice_result = alice.on_announce(announce, alice_basis, alice_bit, alice_intensity)
    alice_end.send(reply)
    return alice_result, bob.on_reply(bob_end.recv())
