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
2. Alice checks the announcement once (:meth:`SiftingAlice.symbol_request`), passes the uint16
   gaps as they came to her source (``SYMB:GAPS?``; she builds slots only for wider gaps),
   sifts with the symbol bytes it returns and answers ``sift_reply``: ``frame``, ``n``,
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
_HI4 = np.uint64(0xF0F0F0F0F0F0F0F0)  # symbol bits 4-7: must be zero


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


def symbol_bytes(basis: np.ndarray, bit: np.ndarray, intensity: np.ndarray) -> np.ndarray:
    """Symbol bytes (contracts §1.1: bit 0 basis, bit 1 bit, bits 2-3 intensity class) of
    per-event uint8 arrays, as Alice's source reports them (tests, benchmarks, warm-up)."""
    basis = _check_array("basis", basis, np.uint8)
    bit = _check_array("bit", bit, np.uint8, basis.size)
    intensity = _check_array("intensity", intensity, np.uint8, basis.size)
    if np.any((basis | bit) > 1) or np.any(intensity > 3):
        raise ValueError("basis and bit must be 0/1 and intensity a 2-bit class")
    return basis | (bit << 1) | (intensity << 2)


# --------------------------------------------------------------------------- kernels


@njit(inline="always")
def _load8(a, i, n):  # pragma: no cover - numba
    """Bytes a[i:i+8] as a little-endian word, zero past n (the compiler fuses the loads;
    unsigned indices spare the negative-index wrap-around)."""
    x = uint64(0)
    j = uint64(i)
    if i + 8 <= n:
        x = (
            uint64(a[j])
            | (uint64(a[j + uint64(1)]) << uint64(8))
            | (uint64(a[j + uint64(2)]) << uint64(16))
            | (uint64(a[j + uint64(3)]) << uint64(24))
            | (uint64(a[j + uint64(4)]) << uint64(32))
            | (uint64(a[j + uint64(5)]) << uint64(40))
            | (uint64(a[j + uint64(6)]) << uint64(48))
            | (uint64(a[j + uint64(7)]) << uint64(56))
        )
    else:
        for t in range(max(n - i, 0)):
            x |= uint64(a[j + uint64(t)]) << uint64(8 * t)
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
        p = uint64(pos)  # unsigned: no wrap-around selects, the stores merge
        for u in range(8):
            out[p + uint64(u)] = (e >> uint64(8 * u)) & uint64(0xFF)
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
def _bob_pack(slot, basis, bit, basis_w, bit_w, gaps, tops):  # pragma: no cover - numba
    """Bob's bases and bits as bit planes and, in the same pass over the slots, their gaps as
    uint16 (kept only if ``tops``, the largest gap per chunk, all fit 16 bits); returns the
    number of chunks with invalid events (a basis or bit not 0/1, a slot not above the last)."""
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
        top = np.int64(0)
        # Unsigned indices: numba's negative-index wrap-around on signed ones keeps LLVM from
        # vectorising this loop (measured: 2x slower, 35 against 17 ms per 2e7 slots).
        for i in range(uint64(max(lo, 1)), uint64(hi)):
            d = slot[i] - slot[i - uint64(1)]
            gaps[i - uint64(1)] = d  # truncated to 16 bits: used only when every gap fits
            step = min(step, d)
            top = max(top, d)
        tops[c] = top
        bad += (badw != 0) | (step <= 0)
    return bad


@njit(cache=True, parallel=True)
def _alice_sift(  # pragma: no cover - numba
    sym, b_basis_w, b_test_w, match_w, klo_w, khi_w, counts, errors, scratch, nkey
):
    """Alice's side from her symbol bytes (bit 0 basis, bit 1 bit, bits 2-3 intensity class):
    match, counts, Z errors and her key bits (chunk c in its scratch area); returns the number
    of 64-event words holding an invalid symbol (bits 4-7 set or intensity class 3)."""
    n = sym.size
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
                x = _load8(sym, i0 + 8 * t, n)
                badw |= (x & _HI4) | ((x >> uint64(2)) & (x >> uint64(3)) & _LSB)
                sh = uint64(8 * t)
                a |= _gather(x) << sh
                v |= _gather(x >> uint64(1)) << sh
                klo |= _gather(x >> uint64(2)) << sh
                khi |= _gather(x >> uint64(3)) << sh
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
_SLOT_LIMIT = 2**62  # slots are below this (contracts §2.1)


def _wide_gaps(slot: np.ndarray) -> np.ndarray:
    """Gaps of which one needs more than 16 bits (a dark link: rare) as uint32, else int64."""
    gaps = np.diff(slot)
    return gaps.astype(np.uint32) if gaps.max() <= 0xFFFFFFFF else gaps


@njit(cache=True)
def _gap_sums(delta):  # pragma: no cover - numba
    """(smallest gap, sum of gaps >> 31, sum of their low 31 bits): one branch-free read-only
    pass that vectorises for every gap dtype; the caller forms the total exactly. No overflow:
    a msgpack array holds < 2^32 bytes, so < 2^29 int64 gaps (high parts < 2^32 each)."""
    low = np.int64(0x7FFFFFFF)
    smallest = np.int64(1)
    hi = np.int64(0)
    lo = np.int64(0)
    for i in range(delta.size):
        d = np.int64(delta[i])
        smallest = min(smallest, d)
        hi += d >> 31
        lo += d & low
    return smallest, hi, lo


@njit(cache=True)
def _gaps_to_slots(slot0, delta, out):  # pragma: no cover - numba
    """out = slot0, slot0 + d0, ... (gaps already checked by :func:`_gap_sums`)."""
    s = np.int64(slot0)
    out[0] = s
    for i in range(delta.size):
        s += np.int64(delta[i])
        out[i + 1] = s


def _checked_gaps(slot0: int, delta: np.ndarray) -> None:
    """Every gap positive and the last slot below 2^62 (one pass over the gaps)."""
    smallest, hi, lo = _gap_sums(delta)
    if smallest <= 0 or slot0 + (int(hi) << 31) + int(lo) >= _SLOT_LIMIT:
        raise ValueError("slot_delta must be positive (strictly increasing slots) and in range")


@dataclass(frozen=True)
class SymbolRequest:
    """The slots of one announcement whose symbols Alice fetches, in announced order.

    ``gaps`` (uint16, the announcement's own array, unchanged): slots ``first``, ``first +
    gaps[0]``, ... for the source's ``SYMB:GAPS?``; Alice never builds the slots. ``slots``
    (int64) instead when a gap needs more than 16 bits or Bob sent a plain list.
    """

    frame: int
    n: int
    first: int
    gaps: np.ndarray | None = None
    slots: np.ndarray | None = None

    def slot_list(self) -> np.ndarray:
        """The slots as int64 (built from the gaps if they came as gaps)."""
        if self.slots is not None:
            return self.slots
        out = np.empty(self.n, np.int64)
        _gaps_to_slots(self.first, self.gaps, out)
        return out


def _joined_key(scratch: np.ndarray, nkey: np.ndarray) -> np.ndarray:
    """The chunks' key bits end to end (scratch is fresh per frame: one chunk is a view)."""
    if nkey.size == 1:
        return scratch[: nkey[0]]
    stride = _CHUNK + _SLACK
    return np.concatenate([scratch[c * stride : c * stride + k] for c, k in enumerate(nkey)])


def _chunk_total(per_chunk: np.ndarray) -> np.ndarray:
    """Per-chunk counts summed over chunks (a link frame is one chunk: no reduction)."""
    return per_chunk[0] if per_chunk.shape[0] == 1 else per_chunk.sum(axis=0)


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
        gaps = np.empty(n - 1, "<u2")
        tops = np.zeros(_nchunks(n), np.int64)
        if _bob_pack(slot, basis, bit, basis_w, bit_w, gaps, tops):
            raise ValueError(
                f"frame {frame}: basis and bit must be 0/1 and slots strictly increasing"
            )
        if tops.max() > 0xFFFF:
            gaps = _wide_gaps(slot)
        if len(self._pending) >= _MAX_PENDING:
            self._pending.pop(next(iter(self._pending)))  # the oldest: its reply never came
        self._pending[frame] = (n, basis_w, bit_w)
        return {
            "type": "sift_announce",
            "frame": frame,
            "n": n,
            "slot0": int(slot[0]),
            "slot_delta": gaps,
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
        total = _chunk_total(counts)
        if (errors > total[BASIS_Z]).any():
            raise ValueError(f"frame {frame}: more test errors than matched Z detections")
        return SiftedFrame(frame, _joined_key(scratch, nkey), total, errors)

    def forget(self, frame: int) -> None:
        """Drop an announced frame whose reply will never come (e.g. Alice dropped it)."""
        self._pending.pop(frame, None)


class SiftingAlice:
    """Alice's side: fetch her symbols for Bob's announced slots, then answer with them.

    :meth:`symbol_request` validates an announcement (once: one pass over its gaps) and says
    which symbols to fetch; :meth:`on_announce` sifts with the fetched symbol bytes. The
    announcement's slots matter only for the fetch, so ``on_announce`` checks their shape, not
    their values again.
    """

    @staticmethod
    def symbol_request(message: dict[str, Any]) -> SymbolRequest:
        """Validate a ``sift_announce`` and return the slots whose symbols Alice must fetch."""
        frame, n = _announce_shape(message)
        if "slot" in message:
            slot = message["slot"]
            if slot[0] < 0 or (n > 1 and not (np.diff(slot) > 0).all()):
                raise ValueError("slot must be non-negative and strictly increasing")
            return SymbolRequest(frame, n, int(slot[0]), slots=slot)
        first, delta = message["slot0"], message["slot_delta"]
        _checked_gaps(first, delta)
        if delta.dtype == _DELTA_TYPES[0]:
            return SymbolRequest(frame, n, first, gaps=delta)
        request = SymbolRequest(frame, n, first, gaps=delta)
        return SymbolRequest(frame, n, first, slots=request.slot_list())

    def on_announce(
        self, message: dict[str, Any], symbols: np.ndarray
    ) -> tuple[dict[str, Any], SiftedFrame]:
        """Sift with Alice's symbol bytes (contracts §1.1) for the slots of
        :meth:`symbol_request`; return (``sift_reply``, result)."""
        frame, n = _announce_shape(message)
        sym = _check_array("symbols", symbols, np.uint8, n)
        b_basis_w = _check_plane("basis", message["basis"], n)
        b_test_w = _check_plane("test_bits", message["test_bits"], n)
        nw = b_basis_w.size
        match_w, klo_w, khi_w = (np.empty(nw, "<u8") for _ in range(3))
        counts, scratch, nkey = _buffers(n)
        errors = np.zeros((counts.shape[0], N_INTENSITIES), np.int64)
        bad = _alice_sift(
            sym, b_basis_w, b_test_w, match_w, klo_w, khi_w, counts, errors, scratch, nkey
        )
        if bad:
            raise ValueError(f"frame {frame}: symbols with bits 4-7 set or intensity class 3")
        result = SiftedFrame(
            frame, _joined_key(scratch, nkey), _chunk_total(counts), _chunk_total(errors)
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


def _announce_shape(message: dict[str, Any]) -> tuple[int, int]:
    """Frame id and event count of a ``sift_announce`` whose fields have the announced types
    and lengths (no pass over the slot values)."""
    if message.get("type") != "sift_announce":
        raise ValueError(f"expected a sift_announce, got {message.get('type')!r}")
    frame = _check_frame(message.get("frame"))
    n = _check_n(message)
    if "slot" in message:
        _check_array("slot", message.get("slot"), np.int64, n)
    else:
        slot0 = message.get("slot0")
        if isinstance(slot0, bool) or not isinstance(slot0, int) or not 0 <= slot0 < _SLOT_LIMIT:
            raise ValueError(f"slot0 must be a non-negative integer, got {slot0!r}")
        delta = message.get("slot_delta")
        if not isinstance(delta, np.ndarray) or delta.dtype not in _DELTA_TYPES:
            raise ValueError("slot_delta must be a uint16, uint32 or int64 array")
        _check_array("slot_delta", delta, delta.dtype, n - 1)
    _check_array("basis", message.get("basis"), np.uint8, _plane_bytes(n))
    _check_array("test_bits", message.get("test_bits"), np.uint8, _plane_bytes(n))
    return frame, n


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
    alice.symbol_request(announce)  # validates it; her symbols are given here
    reply, alice_result = alice.on_announce(
        announce, symbol_bytes(alice_basis, alice_bit, alice_intensity)
    )
    alice_end.send(reply)
    return alice_result, bob.on_reply(bob_end.recv())


def warm_up() -> None:
    """Compile (or load from numba's cache) the sifting kernels for the array kinds a node
    feeds them: read-only views of received buffers (messages, event frames, symbol replies)
    and writable arrays. numba compiles each kind apart, so the first frame would pay for it."""
    rng = np.random.default_rng(0)
    n = 300
    symbols = rng.integers(0, 12, n).astype(np.uint8)
    events = [rng.integers(0, 2, n).astype(np.uint8) for _ in range(2)]

    def frozen(a: np.ndarray) -> np.ndarray:
        return np.frombuffer(a.tobytes(), a.dtype)

    for jump in (0, 70_000, 1 << 40):  # uint16, uint32 and int64 gaps
        slot = np.cumsum(rng.integers(1, 100, n)).astype(np.int64)
        slot[n // 2 :] += jump
        for kind in (np.copy, frozen):

            def sent(message: dict[str, Any], kind: Any = kind) -> dict[str, Any]:
                return {k: kind(v) if isinstance(v, np.ndarray) else v for k, v in message.items()}

            bob, alice = SiftingBob(), SiftingAlice()
            announce = sent(bob.announce(0, kind(slot), *(kind(a) for a in events)))
            alice.symbol_request(announce).slot_list()
            reply, _ = alice.on_announce(announce, kind(symbols))
            bob.on_reply(sent(reply))
