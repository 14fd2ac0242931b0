"""One-way LDPC reconciliation with blind reveal rounds and hash verification, sans-I/O.

Alice and Bob each hold a :class:`ReconcilerAlice` / :class:`ReconcilerBob` per block; their
``handle`` methods take the peer's message and return the messages to send. Flow per batch of
frames (every message carries ``block`` and ``frames``):

0. Alice -> ``ldpc_plan``: frame plan (code, punctured, shortened, reveal step), QBER estimate,
   block length and frame count (Bob checks they match his block).
1. Alice -> ``ldpc_syndrome``: the plan again and the packed syndromes of a batch of frames.
2. Bob decodes the batch (numba, all cores). Frames that failed and still have reveal budget:
   Bob -> ``ldpc_reveal_request`` (``round``), Alice -> ``ldpc_reveal`` (the next
   ``reveal_step`` positions' values), Bob decodes again; repeated up to ``max_reveals`` times.
   When Alice started the frames below her QBER bound (``start_qber``: a shorter syndrome and
   more punctured rounds), Bob first estimates each frame's QBER from the syndrome
   (:mod:`pipeline.ldpc.estimate`) and asks for the punctured rounds it calls for before his
   first decoding of that frame (same messages, one round each).
3. Bob -> ``ldpc_status`` (decoded flags, reveal counts). Alice -> ``verify_tags`` for the
   frames Bob decoded (:mod:`pipeline.verification`), Bob -> ``verify_result``.
4. A frame is kept by both sides iff Bob decoded it and the tags matched; otherwise both drop it.

Bits at the end of the block that do not fill a whole frame are not reconciled: they come back
as ``remainder`` (the caller prepends them to the next block's bits, both sides alike).

Node runtime, per block: Alice makes ``ReconcilerAlice(block, qber_estimate, rng=<OS entropy>)``,
sends every message of ``start(bits)``, then sends whatever ``handle(msg)`` returns for each
message from Bob; Bob makes ``ReconcilerBob(block)``, calls ``start(bits)`` (no messages) and
answers Alice's messages the same way. When ``done``, ``result()`` gives the key of the kept
frames, ``leaked_bits`` (the reconciliation part of lambda_EC), ``verification_bits``, the kept
and failed frame ids and the ``remainder``. ``handle`` raises ValueError for a message that does
not fit the block (count it and drop it; the block then never completes and is discarded).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .channel import Message, exchange, loopback_pair
from .ldpc.construct import DEFAULT_FRAME_LENGTH
from .ldpc.decoder import SHORTENED_LLR, BatchDecoder, channel_llr
from .ldpc.estimate import syndrome_qber
from .ldpc.rate import DEFAULT_F_TARGET, DEFAULT_MAX_REVEALS, FramePlan, binary_entropy, plan_frame
from .verification import DEFAULT_EPS_COR, VerifierAlice, VerifierBob

BATCH_BYTES = 64 << 20  # decoder state Bob may hold per batch
FIRST_ROUND_ITER = 100
REVEAL_ROUND_ITER = 60  # after a reveal the decoder resumes from its state, so fewer suffice
STALL_ITERS = 5  # a frame with no new minimum of unsatisfied checks for this long is stuck
# Bob's reveals before the first decoding, for frames that Alice started below the QBER bound
# (``start_qber``): enough punctured rounds that the leak reaches
# pre_reveal_f * h(q + PRE_REVEAL_SD * sd) per key bit, q and sd his syndrome estimate of the
# frame's QBER (pipeline.ldpc.estimate), pre_reveal_f the target efficiency Alice plans with. A
# frame planned below its QBER then starts near where it decodes instead of failing a long first
# decoding and climbing round by round. Frames planned at the bound get none (measured at
# 2-4 % on the ldpc rows: pre-reveals at 1 sd cost f +0.02-0.03 for 25 % less CPU, at -1 sd
# f +0.01 for nothing).
PRE_REVEAL_SD = 1.0


def check_bits(name: str, bits: np.ndarray) -> np.ndarray:
    """Validate a 1-D uint8 array of 0/1 (raises ValueError)."""
    if not isinstance(bits, np.ndarray) or bits.dtype != np.uint8 or bits.ndim != 1:
        raise ValueError(f"{name} must be a 1-D numpy uint8 array of 0/1")
    if bits.size and int(bits.max()) > 1:
        raise ValueError(f"{name} must contain only 0 and 1")
    return bits


def check_qber(qber: float) -> float:
    q = float(qber)
    if not 0.0 <= q <= 0.5:  # also rejects NaN
        raise ValueError(f"QBER estimate must be in [0, 0.5], got {qber}")
    return q


@dataclass
class SideResult:
    """What one side ends a block with."""

    key: np.ndarray  # concatenated key bits of the kept frames, frame order
    kept_frames: list[int]
    failed_frames: list[int]
    leaked_bits: int  # syndrome - punctured + revealed, kept frames only
    verification_bits: int  # tag bits + verdict bit, every verified frame
    remainder: np.ndarray  # tail bits that did not fill a frame (not reconciled)


@dataclass
class _Frames:
    plan: FramePlan
    ids: list[int]
    words: np.ndarray | None = None  # (F, n) Alice's full code words / Bob's decoded words
    revealed: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    decoded: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    pending: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # Bob: reveals
    tried: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))  # Bob: decoded once


class _Side:
    def __init__(self, block: int, eps_cor: float) -> None:
        self.block = int(block)
        self.eps_cor = eps_cor
        self.batches: dict[int, _Frames] = {}  # keyed by first frame id
        self.frame_batch: dict[int, int] = {}  # frame id -> first frame id of its batch
        self.kept: dict[int, np.ndarray] = {}
        self.leak: dict[int, int] = {}
        self.failed: set[int] = set()
        self.verification_bits = 0
        self.remainder = np.zeros(0, np.uint8)
        self.n_frames = 0
        self.plan_known = False

    def _batch(self, msg: Message) -> _Frames:
        if int(msg.get("block", -1)) != self.block:
            raise ValueError(f"message for block {msg.get('block')} reached block {self.block}")
        frames = [int(f) for f in msg.get("frames", [])]
        owners = {self.frame_batch.get(f) for f in frames}
        if not frames or len(owners) != 1 or None in owners:
            raise ValueError(
                f"frames {frames[:3]}... are not one known batch of block {self.block}"
            )
        return self.batches[owners.pop()]

    def _add_batch(self, batch: _Frames) -> None:
        self.batches[batch.ids[0]] = batch
        for f in batch.ids:
            self.frame_batch[f] = batch.ids[0]

    @property
    def done(self) -> bool:
        """Every frame of the block is kept or dropped (False before the frame plan is known)."""
        return self.plan_known and len(self.kept) + len(self.failed) == self.n_frames

    def result(self) -> SideResult:
        ids = sorted(self.kept)
        key = np.concatenate([self.kept[i] for i in ids]) if ids else np.zeros(0, np.uint8)
        return SideResult(
            key.astype(np.uint8),
            ids,
            sorted(self.failed),
            int(sum(self.leak[i] for i in ids)),
            self.verification_bits,
            self.remainder,
        )

    def _finish(self, batch: _Frames, frames: list[int], ok: np.ndarray, keys: list) -> None:
        pos = {f: i for i, f in enumerate(batch.ids)}
        for f, good, key in zip(frames, ok, keys, strict=True):
            if good:
                self.kept[f] = key
                self.leak[f] = batch.plan.leaked(int(batch.revealed[pos[f]]))
            else:
                self.failed.add(f)
        if all(f in self.kept or f in self.failed for f in batch.ids):
            batch.words = None  # the kept keys are copies; free the frame buffers

    def _unresolved(self, frames: list[int]) -> None:
        if any(f in self.kept or f in self.failed for f in frames):
            raise ValueError(f"frames {frames[:3]}... of block {self.block} are already settled")

    def handle(self, msg: Message) -> list[Message]:
        """React to the peer's message; returns the messages to send back.

        A message that does not fit this block's state (unknown type, block or frames, missing
        fields, wrong shapes, replays) raises ValueError and changes nothing it has not checked.
        """
        try:
            return self._handle(msg)
        except (KeyError, TypeError, IndexError, AttributeError) as exc:
            raise ValueError(f"malformed {msg.get('type')!r} message: {exc!r}") from exc

    def _handle(self, msg: Message) -> list[Message]:
        raise NotImplementedError


class ReconcilerAlice(_Side):
    """Alice's side of one block: syndromes, reveals on request, verification tags."""

    def __init__(
        self,
        block: int,
        qber_estimate: float,
        *,
        f_target: float = DEFAULT_F_TARGET,
        max_reveals: int = DEFAULT_MAX_REVEALS,
        eps_cor: float = DEFAULT_EPS_COR,
        batch_frames: int | None = None,
        frame_length: int = DEFAULT_FRAME_LENGTH,
        rng: np.random.Generator | None = None,
        start_qber: float | None = None,
    ) -> None:
        super().__init__(block, eps_cor)
        self.qber = check_qber(qber_estimate)
        self.plan = plan_frame(
            self.qber, f_target, max_reveals=max_reveals, frame_length=frame_length,
            start_qber=None if start_qber is None else check_qber(start_qber),
        )  # fmt: skip
        if batch_frames is None:  # Bob keeps ~4 bytes per edge per frame of a batch
            batch_frames = min(max(2, BATCH_BYTES // (4 * self.plan.code.n_edges)), 16)
        self.batch_frames = max(1, int(batch_frames))
        self.rng = rng if rng is not None else np.random.default_rng()
        self.verifier: VerifierAlice | None = None

    def start(self, bits: np.ndarray) -> list[Message]:
        """Split ``bits`` into frames; returns ``ldpc_plan`` and one ``ldpc_syndrome`` per batch."""
        check_bits("alice_bits", bits)
        plan, code = self.plan, self.plan.code
        k = plan.key_bits
        self.n_frames = bits.size // k
        self.plan_known = True
        self.remainder = bits[self.n_frames * k :].copy()
        # eps_cor holds for the whole block: each frame's tag gets eps_cor / frames
        self.verifier = VerifierAlice(self.eps_cor / max(self.n_frames, 1), self.rng)
        punct, _short, key_pos, _ = plan.layout()
        out: list[Message] = [
            {
                "type": "ldpc_plan",
                "block": self.block,
                "plan": plan.to_wire(),
                "qber": self.qber,
                "bits": int(bits.size),
                "frames": self.n_frames,
            }
        ]
        for first in range(0, self.n_frames, self.batch_frames):
            ids = list(range(first, min(first + self.batch_frames, self.n_frames)))
            words = np.zeros((len(ids), code.n), np.uint8)
            words[:, key_pos] = bits[ids[0] * k : (ids[-1] + 1) * k].reshape(len(ids), k)
            words[:, punct] = self.rng.integers(0, 2, (len(ids), punct.size), dtype=np.uint8)
            self._add_batch(_Frames(plan, ids, words, np.zeros(len(ids), np.int64)))
            syn = np.packbits(code.syndrome(words), axis=1)
            out.append(
                {
                    "type": "ldpc_syndrome",
                    "block": self.block,
                    "frames": ids,
                    "plan": plan.to_wire(),
                    "qber": self.qber,
                    "syndromes": syn,
                }
            )
        return out

    def _handle(self, msg: Message) -> list[Message]:
        kind = msg.get("type")
        batch = self._batch(msg)
        frames = [int(f) for f in msg["frames"]]
        idx = np.array([batch.ids.index(f) for f in frames], dtype=np.int64)
        if kind == "ldpc_reveal_request":
            if batch.decoded.size:
                raise ValueError(f"reveal request for frames {frames[:3]}... after their status")
            _, _, _, order = batch.plan.layout()
            step = batch.plan.reveal_step
            start = batch.revealed[idx]
            if np.any(start + step > order.size) or np.any(
                start // max(step, 1) >= batch.plan.max_reveals
            ):
                raise ValueError("reveal request beyond the agreed budget")
            values = np.stack(
                [batch.words[i, order[s : s + step]] for i, s in zip(idx, start, strict=True)]
            )
            batch.revealed[idx] += step
            return [
                {
                    "type": "ldpc_reveal",
                    "block": self.block,
                    "frames": frames,
                    "round": int(msg["round"]),
                    "values": values,
                }
            ]
        if kind == "ldpc_status":
            if batch.decoded.size:
                raise ValueError(f"second ldpc_status for frames {frames[:3]}...")
            decoded = np.asarray(msg["decoded"], dtype=bool)
            if decoded.size != len(frames):
                raise ValueError("ldpc_status has the wrong number of flags")
            if not np.array_equal(np.asarray(msg["revealed"]), batch.revealed[idx]):
                raise ValueError("ldpc_status: Bob's reveal counts differ from Alice's")
            batch.decoded = np.zeros(len(batch.ids), bool)
            batch.decoded[idx] = decoded
            for f in np.asarray(frames)[~decoded]:
                self.failed.add(int(f))
            ok_frames = [f for f, d in zip(frames, decoded, strict=True) if d]
            if not ok_frames:
                return []
            _, _, key_pos, _ = batch.plan.layout()
            keys = [batch.words[batch.ids.index(f), key_pos] for f in ok_frames]
            assert self.verifier is not None
            return [self.verifier.tags(self.block, ok_frames, keys)]
        if kind == "verify_result":
            assert self.verifier is not None
            outcome = self.verifier.handle_result(msg)
            self.verification_bits += outcome.public_bits
            _, _, key_pos, _ = batch.plan.layout()
            keys = [batch.words[batch.ids.index(f), key_pos] for f in outcome.frames]
            self._finish(batch, outcome.frames, outcome.ok, keys)
            return []
        raise ValueError(f"ReconcilerAlice cannot handle {kind!r}")


class ReconcilerBob(_Side):
    """Bob's side of one block: decodes, asks for reveals, checks Alice's tags."""

    def __init__(
        self,
        block: int,
        *,
        eps_cor: float = DEFAULT_EPS_COR,
        first_iter: int = FIRST_ROUND_ITER,
        reveal_iter: int = REVEAL_ROUND_ITER,
        pre_reveal_f: float | None = None,
    ):
        """``pre_reveal_f``: Alice's target efficiency when her frames start below the QBER
        bound (Bob then asks for reveals before decoding, see ``PRE_REVEAL_SD``); None: no
        reveals before a failed decoding."""
        super().__init__(block, eps_cor)
        self.first_iter, self.reveal_iter = first_iter, reveal_iter
        self.pre_reveal_f = pre_reveal_f
        self.verifier: VerifierBob | None = None
        self.bits: np.ndarray | None = None
        self._dec: dict[int, BatchDecoder] = {}  # live decoder state per unresolved batch
        self._asked: dict[int, tuple[int, tuple[int, ...]]] = {}  # open reveal request per batch

    def start(self, bits: np.ndarray, frame_key_bits: int | None = None) -> None:
        """Keep Bob's bits; frames are cut by the plan in Alice's syndrome messages.

        ``frame_key_bits`` (Alice's ``plan.key_bits``, agreed beforehand) lets Bob know the
        frame count and remainder before any message, e.g. when no frame fits at all.
        """
        self.bits = check_bits("bob_bits", bits)
        if frame_key_bits:
            self.plan_known = True
            self.n_frames = bits.size // frame_key_bits
            self.remainder = bits[self.n_frames * frame_key_bits :].copy()

    def _handle(self, msg: Message) -> list[Message]:
        if self.bits is None:
            raise ValueError("ReconcilerBob.start(bits) was not called")
        kind = msg.get("type")
        if kind == "ldpc_plan":
            return self._on_plan(msg)
        if kind == "ldpc_syndrome":
            return self._on_syndrome(msg)
        batch = self._batch(msg)
        frames = [int(f) for f in msg["frames"]]
        idx = np.array([batch.ids.index(f) for f in frames], dtype=np.int64)
        if kind == "ldpc_reveal":
            _, _, _, order = batch.plan.layout()
            values = np.asarray(msg["values"])
            step = batch.plan.reveal_step
            if values.dtype != np.uint8 or values.shape != (len(frames), step) or values.max() > 1:
                raise ValueError("ldpc_reveal values have the wrong shape or are not bits")
            dec = self._dec.get(batch.ids[0])
            asked = self._asked.get(batch.ids[0])
            if dec is None or asked != (int(msg["round"]), tuple(frames)):
                raise ValueError(f"ldpc_reveal for frames {frames[:3]}... that did not ask for it")
            del self._asked[batch.ids[0]]
            for i, v in zip(idx, values, strict=True):
                pos = order[batch.revealed[i] : batch.revealed[i] + step]
                dec.set_llr(int(i), pos, SHORTENED_LLR * (1.0 - 2.0 * v.astype(np.float32)))
                batch.revealed[i] += step
            batch.pending[idx] = np.maximum(batch.pending[idx] - 1, 0)
            return self._decode(batch, idx, int(msg["round"]))
        if kind == "verify_tags":
            self._unresolved(frames)
            if batch.ids[0] in self._dec or not batch.decoded[idx].all():
                raise ValueError(f"verify_tags for frames {frames[:3]}... Bob did not decode")
            _, _, key_pos, _ = batch.plan.layout()
            keys = [batch.words[i, key_pos] for i in idx]
            if self.verifier is None:  # eps_cor is block-wide: each frame gets eps_cor / frames
                self.verifier = VerifierBob(self.eps_cor / max(self.n_frames, 1))
            reply, outcome = self.verifier.handle_tags(msg, keys)
            self.verification_bits += outcome.public_bits
            self._finish(batch, outcome.frames, outcome.ok, keys)
            return [reply]
        raise ValueError(f"ReconcilerBob cannot handle {kind!r}")

    def _on_plan(self, msg: Message) -> list[Message]:
        if int(msg["block"]) != self.block:
            raise ValueError(f"message for block {msg['block']} reached block {self.block}")
        assert self.bits is not None
        if int(msg["bits"]) != self.bits.size:
            raise ValueError(
                f"Alice's block has {msg['bits']} bits, Bob's {self.bits.size}: not the same block"
            )
        plan = FramePlan.from_wire(msg["plan"])
        check_qber(msg["qber"])
        n_frames = self.bits.size // plan.key_bits
        if int(msg["frames"]) != n_frames or (self.plan_known and self.n_frames != n_frames):
            raise ValueError("ldpc_plan: frame count differs from Bob's")
        self.plan_known = True
        self.n_frames = n_frames
        self.remainder = self.bits[n_frames * plan.key_bits :].copy()
        return []

    def _on_syndrome(self, msg: Message) -> list[Message]:
        if int(msg["block"]) != self.block:
            raise ValueError(f"message for block {msg['block']} reached block {self.block}")
        plan = FramePlan.from_wire(msg["plan"])
        qber = check_qber(msg["qber"])
        ids = [int(f) for f in msg["frames"]]
        code, k = plan.code, plan.key_bits
        assert self.bits is not None
        if not ids or (ids[-1] + 1) * k > self.bits.size or ids != list(range(ids[0], ids[-1] + 1)):
            raise ValueError(f"frames {ids[:3]}... do not fit Bob's {self.bits.size} bits")
        if any(f in self.frame_batch for f in ids):
            raise ValueError(f"frames {ids[:3]}... of block {self.block} were already received")
        if self.plan_known and self.n_frames != self.bits.size // k:
            raise ValueError("ldpc_syndrome: frame plan differs from the one agreed")
        self.plan_known = True
        self.n_frames = self.bits.size // k
        self.remainder = self.bits[(self.bits.size // k) * k :].copy()
        packed = np.asarray(msg["syndromes"])
        if packed.dtype != np.uint8 or packed.shape != (len(ids), -(-code.m // 8)):
            raise ValueError("ldpc_syndrome: syndromes have the wrong shape or type")
        syn = np.unpackbits(packed, axis=1, count=code.m)
        punct, short, key_pos, _ = plan.layout()
        llr = np.empty((len(ids), code.n), np.float32)
        llr[:, key_pos] = channel_llr(self.bits[ids[0] * k : (ids[-1] + 1) * k], qber).reshape(
            len(ids), k
        )
        llr[:, punct] = 0.0
        llr[:, short] = SHORTENED_LLR  # shortened positions hold 0
        batch = _Frames(
            plan, ids, np.zeros((len(ids), code.n), np.uint8), np.zeros(len(ids), np.int64)
        )
        self._add_batch(batch)
        self._dec[ids[0]] = BatchDecoder(code, llr, syn, skip_columns=plan.shortened_columns())
        batch.decoded = np.zeros(len(ids), bool)
        batch.tried = np.zeros(len(ids), bool)
        batch.pending = np.zeros(len(ids), np.int64)
        if self.pre_reveal_f is not None:
            batch.pending = _pre_reveals(plan, syn, (llr < 0).view(np.uint8), self.pre_reveal_f)
        return self._decode(batch, np.arange(len(ids)), 0)

    def _decode(self, batch: _Frames, idx: np.ndarray, round_: int) -> list[Message]:
        """Decode the frames of ``idx`` that have no reveals pending; ask for the next round
        for those that failed and those still pending."""
        first = batch.ids[0]
        ready, waiting = idx[batch.pending[idx] == 0], idx[batch.pending[idx] > 0]
        retry = waiting
        if ready.size:
            iters = self.reveal_iter if batch.tried[ready].all() else self.first_iter
            bits, ok, _ = self._dec[first].run(ready, max_iter=iters, stall=STALL_ITERS)
            batch.tried[ready] = True
            batch.words[ready] = bits
            batch.decoded[ready] = ok
            retry = np.sort(np.concatenate([ready[~ok], waiting]))
        if retry.size and round_ < batch.plan.max_reveals:
            frames = [batch.ids[i] for i in retry]
            self._asked[first] = (round_ + 1, tuple(frames))
            return [
                {
                    "type": "ldpc_reveal_request",
                    "block": self.block,
                    "frames": frames,
                    "round": round_ + 1,
                }
            ]
        for i in np.flatnonzero(~batch.decoded):
            self.failed.add(batch.ids[i])
        del self._dec[first]
        return [
            {
                "type": "ldpc_status",
                "block": self.block,
                "frames": batch.ids,
                "decoded": batch.decoded.astype(np.uint8),
                "revealed": batch.revealed,
            }
        ]


@dataclass
class ReconciliationResult:
    """Outcome of :func:`reconcile_loopback` (both sides of one block)."""

    alice_key: np.ndarray
    bob_key: np.ndarray
    leaked_bits: int
    verification_bits: int
    frames: int
    frames_failed: int
    alice_remainder: np.ndarray
    bob_remainder: np.ndarray
    code: str
    frame_key_bits: int
    messages: int
    bytes_sent: int


def reconcile_loopback(
    alice_bits: np.ndarray,
    bob_bits: np.ndarray,
    qber_estimate: float,
    *,
    seed: int | None = 0,
    f_target: float = DEFAULT_F_TARGET,
    max_reveals: int = DEFAULT_MAX_REVEALS,
    eps_cor: float = DEFAULT_EPS_COR,
    batch_frames: int | None = None,
    frame_length: int = DEFAULT_FRAME_LENGTH,
    start_qber: float | None = None,
) -> ReconciliationResult:
    """Reconcile one block with Alice's and Bob's objects talking through a loopback channel.

    ``seed`` seeds Alice's randomness (punctured bits, hash keys); ``None`` draws from the OS.
    Frames that fail decoding or verification are dropped on both sides; the tail that does not
    fill a frame comes back as ``alice_remainder`` / ``bob_remainder``.
    """
    check_bits("alice_bits", alice_bits)
    check_bits("bob_bits", bob_bits)
    if alice_bits.size != bob_bits.size:
        raise ValueError(
            f"alice_bits ({alice_bits.size}) and bob_bits ({bob_bits.size}) differ in length"
        )
    if alice_bits.size == 0:
        raise ValueError("empty block")
    check_qber(qber_estimate)
    alice = ReconcilerAlice(
        0,
        qber_estimate,
        f_target=f_target,
        max_reveals=max_reveals,
        eps_cor=eps_cor,
        batch_frames=batch_frames,
        frame_length=frame_length,
        rng=np.random.default_rng(seed),
        start_qber=start_qber,
    )
    bob = ReconcilerBob(0, eps_cor=eps_cor, pre_reveal_f=None if start_qber is None else f_target)
    a_end, b_end = loopback_pair()
    bob.start(bob_bits)
    for m in alice.start(alice_bits):
        a_end.send(m)
    exchange(alice, bob, a_end, b_end)
    if not (alice.done and bob.done):
        raise RuntimeError("reconciliation ended with frames unresolved")
    ra, rb = alice.result(), bob.result()
    if ra.kept_frames != rb.kept_frames or ra.leaked_bits != rb.leaked_bits:
        raise RuntimeError("Alice and Bob disagree on the kept frames")
    return ReconciliationResult(
        alice_key=ra.key,
        bob_key=rb.key,
        leaked_bits=ra.leaked_bits,
        verification_bits=ra.verification_bits,
        frames=alice.n_frames,
        frames_failed=len(ra.failed_frames),
        alice_remainder=ra.remainder,
        bob_remainder=rb.remainder,
        code=alice.plan.code_name,
        frame_key_bits=alice.plan.key_bits,
        messages=a_end.messages_sent + b_end.messages_sent,
        bytes_sent=a_end.bytes_sent + b_end.bytes_sent,
    )


def _pre_reveals(
    plan: FramePlan, syn: np.ndarray, words: np.ndarray, f_target: float
) -> np.ndarray:
    """Punctured rounds each frame asks for before its first decoding (0 without an estimate):
    enough that the leak ``m - p + r * step`` reaches ``f_target * k * h(q + sd)``, ``q`` and
    ``sd`` Bob's syndrome estimate of the frame's QBER."""
    frames = syn.shape[0]
    rounds = min(plan.punctured // max(plan.reveal_step, 1), plan.max_reveals)
    if rounds == 0:
        return np.zeros(frames, np.int64)
    q, sd = syndrome_qber(plan, syn, words)
    need = np.zeros(frames)
    for i in np.flatnonzero(np.isfinite(q)):
        need[i] = f_target * plan.key_bits * binary_entropy(min(q[i] + PRE_REVEAL_SD * sd[i], 0.5))
    r = np.ceil((need - plan.leaked(0)) / plan.reveal_step)
    # one punctured round stays for after a failed first decoding
    return np.clip(r, 0, rounds - 1).astype(np.int64)
