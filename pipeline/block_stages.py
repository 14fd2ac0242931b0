"""The block stages driven for one block: reconciliation (+ verification), estimation, PA.

Messages of one block (all carry ``block``; the runtime adds ``epoch``):
1. Alice -> ``block_start`` (her source's intensities and class probabilities, which the
   finite-key bound needs) and the reconciliation messages (:mod:`pipeline.reconciliation`,
   which also runs verification: a frame is kept by both sides iff Bob decoded it and the
   verification tags match).
2. Bob -> ``block_reconciled`` once every LDPC frame is settled: the kept frames and the
   key-basis error rate that decoding found (``qber_x``).
3. Alice computes the secret length (Lim 2014 Eq. (1), :func:`pipeline.estimation.key_length`)
   from the block's counts, with everything disclosed counted as leaked (syndromes minus
   punctured, revealed bits, verification tags). Bits that were not reconciled (failed frames,
   the tail that did not fill an LDPC frame) are dropped from the key and the length is reduced by
   their number: removing ``d`` bits lowers the smooth min-entropy by at most ``d``.
   Alice -> ``pa_seed`` (:mod:`pipeline.amplification`) or ``block_nokey`` with the reason.
4. Both hash their reconciled bits with the same Toeplitz seed: the final key.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from pipeline.amplification import PrivacyAmplificationAlice, PrivacyAmplificationBob
from pipeline.blocks import BlockInput, BlockSide, Message
from pipeline.estimation import BlockCounts, DecoySettings, binary_entropy, key_length
from pipeline.ldpc.rate import FramePlan, plan_frame
from pipeline.reconciliation import ReconcilerAlice, ReconcilerBob

NO_FRAME_DECODED = "no LDPC frame decoded"  # block telemetry: qber null, qber_unknown this
SOURCE_KEYS = ("mu_signal", "mu_decoy", "mu_vacuum", "p_signal", "p_decoy", "p_vacuum")


QBER_PLAN_STEP = 5e-4
# One-sided confidence of the upper bound on the test-basis QBER that the LDPC rate is planned
# for. At 2e5-bit blocks the Z sample holds only ~1e4 events (~100 errors), so the point estimate
# is off by +-0.1 % absolute (1 sd) and an estimate on the low side planned a code too weak for
# the key basis: whole frames failed and blocks were lost. The 95 % Clopper-Pearson bound adds
# ~1.7 sd (~0.15 % at 1 % QBER, ~2-3 % of the key); the blind rounds absorb the rest.
QBER_PLAN_CONFIDENCE = 0.95
# The syndrome is sized lower, for the bound at this confidence (~0.5 sd above the point
# estimate); the punctured blind rounds still reach the 95 % bound's plan
# (pipeline.ldpc.rate.plan_frame start_qber) and Bob asks for as many of them as his syndrome
# estimate of the frame's QBER calls for before decoding (pipeline.reconciliation
# _pre_reveals). Link-like blocks (6.3e3 Z events, 1.03 % Z, 1.085 % X, 16 blocks interleaved):
# 0.95 alone f 1.257 with 3 of 32 frames failed; 0.7 f 1.203, 0 failed, 25 % less CPU per frame;
# 0.5 f 1.194, 2 failed.
QBER_START_CONFIDENCE = 0.7


def qber_upper_bound(errors: float, n: float, confidence: float = QBER_PLAN_CONFIDENCE) -> float:
    """One-sided Clopper-Pearson upper bound on an error rate from ``errors`` of ``n`` events.

    Non-integer counts (expected counts in the key-rate prediction) are accepted: the beta
    quantile is continuous in them. ``n == 0`` gives 0.5 (nothing known).
    """
    if n < 0 or errors < 0 or errors > n:
        raise ValueError(f"need 0 <= errors <= n, got errors={errors}, n={n}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n == 0:
        return 0.5
    if errors >= n:
        return 1.0
    # the Beta(errors + 1, n - errors) quantile; scipy.special's inverse incomplete beta is the
    # same function as scipy.stats.beta.ppf without its per-call argument checks (~3 us vs ~70
    # us: Bob's post-processing evaluates it for every event frame while a block fills)
    from scipy.special import betaincinv

    return float(betaincinv(errors + 1.0, n - errors, confidence))


def plan_qber(qber: float) -> float:
    """The QBER the LDPC rate is planned for: ``qber`` rounded *up* to a 0.05 % grid.

    Rounding up only adds a little margin; a grid makes consecutive blocks reuse the same frame
    plans, so the reconciler's bounded cache of position layouts (~2 MB each,
    ``pipeline.ldpc.rate.LAYOUT_CACHE_SIZE``) keeps hitting.
    """
    return min(0.5, math.ceil(qber / QBER_PLAN_STEP) * QBER_PLAN_STEP)


def plan_qber_counts(errors: float, n: float, confidence: float = QBER_PLAN_CONFIDENCE) -> float:
    """The planned QBER of a block from its test-basis counts: the upper confidence bound
    (:func:`qber_upper_bound`) on the grid of :func:`plan_qber`, at most 0.5."""
    return plan_qber(min(qber_upper_bound(errors, n, confidence), 0.5))


def plan_start_counts(errors: float, n: float) -> float:
    """Where a block's LDPC frames start (:data:`QBER_START_CONFIDENCE` bound on the grid), at
    most :func:`plan_qber_counts`."""
    start = plan_qber(min(qber_upper_bound(errors, n, QBER_START_CONFIDENCE), 0.5))
    return min(start, plan_qber_counts(errors, n))


def plan_counts(errors: float, n: float, f_target: float = 1.12) -> FramePlan:
    """Alice's frame plan for a block with these test-basis counts."""
    return plan_frame(
        plan_qber_counts(errors, n), f_target, start_qber=plan_start_counts(errors, n)
    )


def frame_key_bits(qber: float, f_target: float = 1.12) -> int:
    """Key bits per LDPC frame that Alice's reconciler plans for this (already bounded) QBER."""
    return plan_frame(plan_qber(min(max(qber, 0.0), 0.5)), f_target).key_bits


def frame_key_bits_counts(errors: float, n: float, f_target: float = 1.12) -> int:
    """Key bits per LDPC frame that Alice plans for a block with these test-basis counts."""
    return plan_counts(errors, n, f_target).key_bits


def decoy_settings(source: dict[str, Any], eps_sec: float, eps_cor: float) -> DecoySettings:
    missing = [k for k in SOURCE_KEYS if k not in source]
    if missing:
        raise ValueError(f"source settings lack {missing}")
    return DecoySettings(
        mu=tuple(float(source[f"mu_{k}"]) for k in ("signal", "decoy", "vacuum")),
        p_mu=tuple(float(source[f"p_{k}"]) for k in ("signal", "decoy", "vacuum")),
        eps_sec=eps_sec,
        eps_cor=eps_cor,
    )


class _Common(BlockSide):
    def __init__(self, data: BlockInput) -> None:
        super().__init__(data)
        self.counts = BlockCounts.from_counts(data.counts, data.test_errors)
        # None: no test-basis detection, the QBER is unknown (telemetry null; the block aborts)
        self.qber_z: float | None = self.counts.qber_z if self.counts.n_z.sum() else None
        # what the LDPC rate is planned for: an upper confidence bound, not the point estimate
        m_z, n_z = int(self.counts.m_z.sum()), int(self.counts.n_z.sum())
        self.qber_plan = plan_qber_counts(m_z, n_z)
        self.qber_start = plan_start_counts(m_z, n_z)  # where the frames' syndromes start

    def _figures(self, rec: Any, qber_x: float | None, secret: int, reason: str = "") -> None:
        """Telemetry figures; ``qber_x`` None = unknown (no LDPC frame decoded, or the sides
        disagree), reported as null with ``qber_unknown`` = why, never as a number."""
        res = rec.result()
        n_kept = int(res.key.size)
        leaked = int(res.leaked_bits)
        pulses = self.data.frame_slots * len(self.data.frames)
        p = [self.data.source.get(f"p_{k}") for k in ("signal", "decoy", "vacuum")]
        self.figures = {
            "n_x": int(self.data.key_bits.size),
            "reconciled_bits": n_kept,
            "leaked_bits": leaked,
            "verification_bits": int(res.verification_bits),
            "ldpc_frames": len(res.kept_frames) + len(res.failed_frames),
            "ldpc_frames_failed": len(res.failed_frames),
            "qber": qber_x,
            "qber_x": qber_x,
            "qber_z": self.qber_z,
            "qber_plan": self.qber_plan,
            "qber_start": self.qber_start,
            "f": leaked / (n_kept * binary_entropy(qber_x)) if n_kept and qber_x else None,
            "secret_bits": secret,
        }
        for k, name in enumerate(("signal", "decoy", "vacuum")):
            if p[k]:
                matched = int(self.data.counts[:, k].sum())
                self.figures[f"sifted_gain_{name}"] = matched / (pulses * float(p[k]))
        if reason:
            self.figures["reason"] = reason
        if qber_x is None:
            self.figures["qber_unknown"] = reason or "unknown"

    def _check_abort(self) -> str | None:
        if self.qber_z is None:
            return "QBER_Z unknown: no test-basis detections"
        if self.qber_z > self.data.qber_abort:
            return f"QBER_Z {self.qber_z:.4f} above {self.data.qber_abort}"
        return None


class AliceBlock(_Common):
    def start(self) -> list[Message]:
        reason = self._check_abort()
        if reason:
            return self.fail(reason)
        self.settings = decoy_settings(self.data.source, self.data.eps_sec, self.data.eps_cor)
        self.rec = ReconcilerAlice(
            self.data.block, self.qber_plan, eps_cor=self.data.eps_cor,
            f_target=self.data.f_target, start_qber=self.qber_start,
        )  # fmt: skip
        start = {"type": "block_start", "block": self.data.block,
                 **{k: float(self.data.source[k]) for k in SOURCE_KEYS}}  # fmt: skip
        self._bob_done: Message | None = None
        return [start, *self.rec.start(self.data.key_bits)]

    def handle(self, msg: Message) -> list[Message]:
        if msg.get("type") == "block_reconciled":
            self._bob_done = msg
        elif msg.get("type") == "block_nokey":
            return self.fail(f"peer: {msg.get('reason')}")
        else:
            out = self.rec.handle(msg)
            if out:
                return out
        if self._bob_done is not None and self.rec.done:
            return self._amplify(self._bob_done)
        return []

    def _amplify(self, bob: Message) -> list[Message]:
        res = self.rec.result()
        if list(bob.get("kept", [])) != list(res.kept_frames):
            return self._nokey("kept frames differ between the sides", None)
        if not res.kept_frames:
            return self._nokey(NO_FRAME_DECODED, None)
        qber_x = float(bob.get("qber_x", 0.5))
        if not 0.0 <= qber_x <= 0.5:
            return self._nokey("bad qber_x", None)
        n_kept = int(res.key.size)
        dropped = int(self.data.key_bits.size) - n_kept
        length = key_length(
            self.counts, self.settings, float(res.leaked_bits + res.verification_bits),
            qber_x=qber_x, abort_qber=self.data.qber_abort,
        )  # fmt: skip
        secret = min(length.length - dropped, n_kept)
        if length.length == 0 or secret < 1:
            why = length.reason or f"{dropped} unreconciled bits exceed the secret length"
            return self._nokey(why, qber_x)
        message, seed = PrivacyAmplificationAlice().make(self.data.block, n_kept, secret)
        final = seed.hash(res.key)
        self._finish_key(final, secret, qber_x)
        return [message]

    def _nokey(self, reason: str, qber_x: float | None) -> list[Message]:
        self._figures(self.rec, qber_x, 0, reason)
        self.finished = True
        return [{"type": "block_nokey", "block": self.data.block, "reason": reason}]

    def _finish_key(self, final: np.ndarray, secret: int, qber_x: float) -> None:
        self._figures(self.rec, qber_x, secret)
        self._key = np.packbits(final).tobytes()
        self._meta = _meta(self.data, secret, qber_x, self.figures)
        self.finished = True


class BobBlock(_Common):
    def start(self) -> list[Message]:
        reason = self._check_abort()
        if reason:
            return self.fail(reason)
        self.rec = ReconcilerBob(
            self.data.block, eps_cor=self.data.eps_cor,
            pre_reveal_f=self.data.f_target if self.qber_start < self.qber_plan else None,
        )  # fmt: skip
        self.rec.start(self.data.key_bits)
        self._reported = False
        self._frame_bits = 0
        self.qber_x: float | None = None  # known once a frame decoded
        return []

    def handle(self, msg: Message) -> list[Message]:
        kind = msg.get("type")
        if kind == "block_start":
            self.data.source = {k: float(msg[k]) for k in SOURCE_KEYS}
            return []
        if kind == "block_nokey":
            self._figures(self.rec, self.qber_x, 0, str(msg.get("reason")))
            self.finished = True
            return []
        if kind == "pa_seed":
            if not self._reported or self.qber_x is None:
                raise ValueError("pa_seed before the block was reconciled")
            res = self.rec.result()
            final = PrivacyAmplificationBob().apply(msg, res.key)
            self._figures(self.rec, self.qber_x, int(final.size))
            self._key = np.packbits(final).tobytes()
            self._meta = _meta(self.data, int(final.size), self.qber_x, self.figures)
            self.finished = True
            return []
        if kind == "ldpc_syndrome" and isinstance(msg.get("plan"), dict):
            self._frame_bits = FramePlan.from_wire(msg["plan"]).key_bits
        out = self.rec.handle(msg)
        if self.rec.done and not self._reported:
            self._reported = True
            res = self.rec.result()
            self.qber_x = self._qber_x(res)
            # on the wire 0.5 when unknown: Alice sees no kept frame either and ends the block
            qber_x = 0.5 if self.qber_x is None else self.qber_x
            out = [*out, {"type": "block_reconciled", "block": self.data.block,
                          "kept": list(res.kept_frames), "qber_x": qber_x}]  # fmt: skip
        return out

    def _qber_x(self, res: Any) -> float | None:
        """Errors corrected in the kept frames / kept bits: Bob's raw bits against his corrected
        ones (frame ``f`` carries raw bits ``[f k, (f + 1) k)``, the reconciler's layout)."""
        k = self._frame_bits
        if not res.kept_frames or not k:
            return None
        corrected = res.key.reshape(len(res.kept_frames), k)
        raw = np.stack([self.data.key_bits[f * k : (f + 1) * k] for f in res.kept_frames])
        return float(np.count_nonzero(corrected != raw) / corrected.size)


def _meta(data: BlockInput, secret: int, qber_x: float, figures: dict[str, Any]) -> dict:
    return {
        "n_bits": int(secret),
        "qber": float(qber_x),
        "n_x": int(data.key_bits.size),
        "leak_bits": int(figures["leaked_bits"] + figures["verification_bits"]),
        "eps_sec": data.eps_sec,
        "eps_cor": data.eps_cor,
    }


def make(role: str, data: BlockInput) -> BlockSide:
    return AliceBlock(data) if role == "alice" else BobBlock(data)


def warm_up() -> None:
    """Compile (or load from numba's cache) every kernel a block needs, on a synthetic block,
    so that the first real block is not held up by compilation mid-protocol."""
    from pipeline.channel import exchange, loopback_pair
    from pipeline.sifting import sift_loopback

    rng = np.random.default_rng(0)
    slots = np.arange(0, 4000, 4, dtype=np.int64)
    sym = rng.integers(0, 2, (5, slots.size), dtype=np.uint8)
    sift_loopback(0, slots, sym[0], sym[1], sym[2], sym[3], sym[4] % 2)
    n = frame_key_bits(0.02) + 100
    alice_bits = rng.integers(0, 2, n, dtype=np.uint8)
    bob_bits = alice_bits ^ (rng.random(n) < 0.02).astype(np.uint8)
    n_x = np.array([n - n // 10, n // 10, 0])
    counts = np.stack([n_x * 80, n_x]).astype(np.int64)
    common = dict(block=0, frames=[0], counts=counts, test_errors=counts[0] // 50,
                  frame_slots=1 << 24, eps_sec=1e-10, eps_cor=1e-12, qber_abort=0.11)  # fmt: skip
    source = {k: v for k, v in zip(SOURCE_KEYS, (0.5, 0.1, 0.0, 0.7, 0.2, 0.1), strict=True)}
    alice = AliceBlock(BlockInput(key_bits=alice_bits, source=source, **common))
    bob = BobBlock(BlockInput(key_bits=bob_bits, **common))
    a_end, b_end = loopback_pair()
    for m in alice.start():
        a_end.send(m)
    bob.start()
    exchange(alice, bob, a_end, b_end, max_rounds=50)
