"""Expected secret key rate of a link: the link model's closed forms fed to the finite-key bound
(Lim et al. 2014) or to the asymptotic GLLP + decoy formula (Lo-Ma-Chen 2005, Ma et al. 2005),
with the free source parameters optimised.

Two count models feed the bounds:

* **The link's own settings** (``optimise=False``, what a node predicts for its run): the per-class,
  per-basis sifted counts and errors of :func:`qnode.linkmodel.expected_stats`, i.e. exactly the
  process ``sim_hw.physics`` samples (Bob's own basis probability, per-detector non-paralysable
  dead time, afterpulses in later slots, double clicks), checked against the simulator in
  ``tests/pipeline/test_keyrate_sim.py``. Detector dead time saturates each basis's detector pair
  by its own load, so one thinning factor for all clicks is wrong whenever the bases are
  unequally used (``qnode link``: Z on 70 % of the slots on both sides).
* **Lim's forms** (the optimiser, and the GYS / Lim reference figures): per pulse, intensity
  ``mu`` gives a detection probability ``R = D (1 + p_ap)``, ``D = 1 - (1 - 2 p_dc)
  exp(-eta mu)`` and an error probability ``e = p_dc + e_mis (1 - exp(-eta mu)) + p_ap D / 2``
  with ``eta`` the system transmittance (channel x detector) and ``p_dc`` the per-detector
  noise per gate. Without afterpulses these are Ma 2005's ``Q_mu`` and ``E_mu Q_mu`` with
  ``Y0 = 2 p_dc``. Neither paper has dead time; with dead time every probability of a basis
  is multiplied by the alive fraction of that basis's detector pair, computed for each
  candidate's intensities and basis bias (:meth:`Channel.thinned`; within 1 % of the link
  model's counts from 0 to 50 km with the SNSPD preset).

Finite key (``block = n_X``): key basis X (Alice ``q_x = 1 - p_basis_z``, Bob ``1 - p_bob_z``),
test basis Z, three intensities; the expected counts of a block of ``n_X`` key-basis detections
go through :mod:`pipeline.estimation`, ``lambda_EC = f n_X h(E_X)``. The optimiser (random
search, then Nelder-Mead from the best few points; small-block optima are exotic, reference §4.2)
picks mu1, mu2, p_mu1, p_mu2 and q_x (Bob's bias following Alice's); mu3 is the link's vacuum
intensity.

Asymptotic (``block=None``): ``R = sum_b q_b {-f Q_mu h(E_mu) + Q_1 [1 - h(e_1)]}`` over the two
bases, ``q_b = P_Alice(b) P_Bob(b)`` (both bases carry key in the infinite-key limit; for the
symmetric GYS link the sum is Ma 2005's ``q = 1/2``), for infinite decoys (exact ``Q_1``, ``e_1``)
and for the vacuum + weak decoy estimators (Lim's Eqs. 2-4 without fluctuations, which for
mu3 = 0 are Ma's); mu1 is optimised, the decoy intensity is the link's.

:func:`pipeline.keyrate_node.expected_node_key_rate` adds what the node runtime does to a block (n_X rounded up to
whole LDPC frames and event frames, the planned LDPC leak, the unreconciled tail dropped): the
``predicted_skr_mbps`` of the ``link`` perf row.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import minimize

from pipeline.estimation import DecoySettings, binary_entropy, decoy_core, key_length_core
from qnode import linkmodel
from qnode.linkmodel import LinkParams

LIM_F_EC = 1.16  # Lim 2014 Sec. IV
GYS_F_EC = 1.22  # Ma et al. 2005 tables
LIM_EPS_COR = 1e-15
LIM_KAPPA = 1e-15  # Lim 2014: eps_sec = kappa * l


Z, X = 0, 1  # basis indices of qnode.linkmodel (X is the key basis, pipeline/sifting.py)


def dead_time_alive_fraction(link: LinkParams, basis: int | None = None) -> float:
    """Fraction of events that survive the detectors' dead time at the link's own settings:
    of all clicks (``basis=None``) or of the sifted events of one basis (0 = Z, 1 = X), which
    is the alive fraction of that basis's detector pair."""
    if link.receiver.dead_time_ns <= 0:
        return 1.0
    with_dead = linkmodel.expected_stats(link, dead_time=True)
    without = linkmodel.expected_stats(link, dead_time=False)

    def total(stats: dict[str, linkmodel.ClassModel]) -> float:
        return sum(
            link.source.p_class(k)
            * (stats[c].gain if basis is None else stats[c].sifted_by_basis[basis])
            for k, c in enumerate(linkmodel.CLASSES)
        )

    den = total(without)
    return float(total(with_dead) / den) if den > 0 else 1.0


@dataclass(frozen=True)
class LinkCounts:
    """Expected events per pulse of the link at its own settings, per intensity class
    (signal, decoy, vacuum), each already weighted by the class probability: sifted events and
    errors in the key basis X and the test basis Z (Alice's and Bob's basis both that basis)."""

    x: tuple[float, float, float]
    z: tuple[float, float, float]
    errors_x: tuple[float, float, float]
    errors_z: tuple[float, float, float]

    @classmethod
    def from_link(cls, link: LinkParams) -> LinkCounts:
        """From :func:`qnode.linkmodel.expected_stats`, the simulator's own model."""
        stats = linkmodel.expected_stats(link)
        w = [link.source.p_class(k) for k in range(3)]
        models = [stats[c] for c in linkmodel.CLASSES]

        def per_class(field: str, basis: int) -> tuple[float, float, float]:
            a, b, c = (wk * getattr(m, field)[basis] for wk, m in zip(w, models, strict=True))
            return (a, b, c)

        return cls(
            x=per_class("sifted_by_basis", X), z=per_class("sifted_by_basis", Z),
            errors_x=per_class("errors_by_basis", X), errors_z=per_class("errors_by_basis", Z),
        )  # fmt: skip

    @property
    def sifted_x(self) -> float:
        """Key-basis sifted events per pulse (what fills a block)."""
        return sum(self.x)

    @property
    def qber_x(self) -> float:
        return sum(self.errors_x) / self.sifted_x if self.sifted_x > 0 else 0.0

    @property
    def qber_z(self) -> float:
        n = sum(self.z)
        return sum(self.errors_z) / n if n > 0 else 0.0


@dataclass(frozen=True)
class Channel:
    """Closed-form per-pulse figures of a link at one distance."""

    eta: float  # system transmittance (channel x mean detector efficiency)
    p_dc: float  # noise click probability per detector per gate
    p_ap: float  # afterpulse probability per click
    e_mis: float  # misalignment (optical error) probability
    dead_slots: int = 0  # non-paralysable dead time of each detector in slots (0: none)
    alive: Any = 1.0  # fraction of slots the detector pair is alive (see thinned)

    @classmethod
    def from_link(cls, link: LinkParams) -> Channel:
        """Lim's channel for ``link``, before dead time (see :meth:`thinned`)."""
        noise = linkmodel.noise_probs(link)
        return cls(
            eta=linkmodel.total_transmittance(link),
            p_dc=float(sum(noise) / len(noise)),
            p_ap=link.receiver.afterpulse_prob,
            e_mis=link.receiver.misalignment,
            dead_slots=linkmodel.dead_slots(link),
        )

    def thinned(self, mu: tuple, p: tuple, p_alice: Any, p_bob: Any) -> Channel:
        """The channel seen by the detector pair of one basis, which Alice picks with
        ``p_alice`` and Bob with ``p_bob``, at intensities ``mu`` sent with probabilities ``p``.

        Lim 2014 has no dead time (``self`` is returned when there is none). A non-paralysable
        detector whose primary clicks come with probability ``c`` per slot is alive a fraction
        ``A = 1 / (1 + c tau (1 + p_ap))`` of the slots, whatever the slot's pulse (renewal,
        reference §4.3; as ``qnode.linkmodel.expected_stats``), so every detection and error
        probability of the pair, and every n-photon yield, is multiplied by ``A``; the error
        rates are unchanged to first order. (Scaling ``eta`` instead is wrong under saturation:
        ``1 - exp(-A eta mu)`` exceeds ``A (1 - exp(-eta mu))`` by 5-12 % at 0-10 km.) Each
        pair has its own ``A``: its load follows how often its basis is used. Broadcasts over
        arrays of candidates (the optimiser).
        """
        if self.dead_slots == 0:
            return self
        keep = 1.0 - self.p_dc
        c = 0.0
        for mk, pk in zip(mu, p, strict=True):
            x = self.eta * mk
            same = 1.0 - keep * (np.exp(-x * (1.0 - self.e_mis)) + np.exp(-x * self.e_mis)) / 2
            other = 1.0 - keep * np.exp(-x / 2.0)
            c = c + pk * (p_alice * same + (1.0 - p_alice) * other)
        alive = 1.0 / (1.0 + p_bob * c * self.dead_slots * (1.0 + self.p_ap))
        return Channel(self.eta, self.p_dc, self.p_ap, self.e_mis, 0, alive)

    def detection(self, mu: Any) -> Any:
        """R_mu: probability that a pulse of mean photon number mu gives a detection."""
        d = 1.0 - (1.0 - 2.0 * self.p_dc) * np.exp(-self.eta * mu)
        return self.alive * d * (1.0 + self.p_ap)

    def error(self, mu: Any) -> Any:
        """Probability that a pulse of mean mu gives a detection with the wrong bit."""
        d = 1.0 - (1.0 - 2.0 * self.p_dc) * np.exp(-self.eta * mu)
        e = self.p_dc + self.e_mis * (1.0 - np.exp(-self.eta * mu)) + self.p_ap * d / 2.0
        return self.alive * e

    def single_photon(self) -> tuple[float, float]:
        """(Y_1, e_1): yield and error rate of single photons (the same forms with (1-eta)^1)."""
        d1 = 1.0 - (1.0 - 2.0 * self.p_dc) * (1.0 - self.eta)
        y1 = d1 * (1.0 + self.p_ap)
        err = self.p_dc + self.e_mis * self.eta + self.p_ap * d1 / 2.0
        return self.alive * y1, err / y1


@dataclass(frozen=True)
class KeyRateResult:
    """Expected key rate and the parameters that give it."""

    rate_per_pulse: float
    rate_bps: float
    distance_km: float
    block: int | None
    qber: float  # model key-basis QBER at the optimum
    mu: tuple[float, float, float]
    p_mu: tuple[float, float, float]
    q_x: float  # probability of the key basis X
    f_ec: float
    eps_sec: float | None
    eps_cor: float | None
    key_length: float | None = None  # bits per block (finite key)
    pulses_per_block: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def p_basis_z(self) -> float:
        return 1.0 - self.q_x

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        extra = d.pop("extra")
        d["p_basis_z"] = self.p_basis_z
        d["predicted_skr_mbps"] = self.rate_bps / 1e6
        d.update(extra)
        return d


# --------------------------------------------------------------------------- finite key


def _finite_rate(
    ch: Channel,
    mu,
    p,
    q_x,
    n_x: float,
    f_ec: float,
    eps_sec,
    eps_cor: float,
    kappa,
    exact: bool = False,
) -> tuple[Any, Any, Any]:
    """Rate per pulse (unclamped), key length and QBER for parameter arrays (broadcast), from
    Lim's forms on the channel as the key-basis and the test-basis detector pairs see it (Bob's
    basis bias following Alice's).

    With ``kappa`` the optimiser uses a fast model-based solve; ``exact`` bisects instead.
    """
    ch_x = ch.thinned(mu, p, q_x, q_x)
    ch_z = ch.thinned(mu, p, 1.0 - q_x, 1.0 - q_x)
    r = [ch_x.detection(m) for m in mu]
    e = [ch_x.error(m) for m in mu]
    r_z = [ch_z.detection(m) for m in mu]
    e_z = [ch_z.error(m) for m in mu]
    per_pulse_x = q_x**2 * sum(pk * rk for pk, rk in zip(p, r, strict=True))
    pulses = n_x / per_pulse_x
    nx = tuple(pulses * q_x**2 * pk * rk for pk, rk in zip(p, r, strict=True))
    nz = tuple(pulses * (1 - q_x) ** 2 * pk * rk for pk, rk in zip(p, r_z, strict=True))
    mz = tuple(pulses * (1 - q_x) ** 2 * pk * ek for pk, ek in zip(p, e_z, strict=True))
    qber = sum(pk * ek for pk, ek in zip(p, e, strict=True)) / sum(
        pk * rk for pk, rk in zip(p, r, strict=True)
    )
    leak = f_ec * n_x * binary_entropy(qber)
    ell = _key_length(nx, nz, mz, mu, p, leak, n_x, eps_sec, eps_cor, kappa, exact, np.shape(q_x))
    return ell / pulses, ell, qber


def _key_length(nx, nz, mz, mu, p, leak, n_x, eps_sec, eps_cor, kappa, exact, shape) -> Any:
    """Lim's Eq. (1) bracket on expected counts, at a fixed ``eps_sec`` or ``kappa * l``."""
    if kappa is None:
        bounds = decoy_core(nx, nz, mz, mu, p, eps_sec)
        return key_length_core(bounds, leak, eps_sec, eps_cor)
    # eps_sec = kappa * l: l appears on both sides of Eq. (1)
    args = (nx, nz, mz, mu, p, leak, eps_cor, kappa, np.full(shape, n_x))
    return _bisect_kappa(*args) if exact else _solve_kappa(*args)


def _own_settings_rate(
    counts: LinkCounts, mu, p, n_x: float, f_ec: float, eps_sec, eps_cor: float, kappa
) -> tuple[float, float, float, float]:
    """(rate per pulse, key length, key-basis QBER, pulses per block) of the link's own
    settings: a block of ``n_x`` key-basis events takes ``n_x / sifted_x`` pulses and carries
    the model's expected per-class counts in both bases."""
    pulses = n_x / counts.sifted_x
    nx = tuple(np.array([pulses * c]) for c in counts.x)
    nz = tuple(np.array([pulses * c]) for c in counts.z)
    mz = tuple(np.array([pulses * c]) for c in counts.errors_z)
    qber = counts.qber_x
    leak = f_ec * n_x * binary_entropy(qber)
    mu_a = tuple(np.array([m]) for m in mu)
    p_a = tuple(np.array([x]) for x in p)
    ell = float(_key_length(nx, nz, mz, mu_a, p_a, leak, n_x, eps_sec, eps_cor, kappa, True,
                            (1,))[0])  # fmt: skip
    return ell / pulses, ell, qber, pulses


def _bisect_kappa(nx, nz, mz, mu, p, leak, eps_cor, kappa, n_x) -> Any:
    """The fixed point l = F(kappa l) by bisection on ln l in [0, ln n_X] (F < n_X; F grows
    only logarithmically in l, so F(l) - l changes sign once). F(kappa) < 1: no key."""

    def g(ell):
        eps = kappa * ell
        return key_length_core(decoy_core(nx, nz, mz, mu, p, eps), leak, eps, eps_cor) - ell

    lo, hi = np.zeros_like(n_x), np.log(n_x)
    g_lo = g(np.ones_like(n_x))
    for _ in range(60):
        mid = (lo + hi) / 2
        up = g(np.exp(mid)) >= 0
        lo, hi = np.where(up, mid, lo), np.where(up, hi, mid)
    return np.where(g_lo >= 0, np.exp(lo), g_lo + 1.0)


def _solve_kappa(nx, nz, mz, mu, p, leak, eps_cor, kappa, n_x, refinements: int = 2) -> Any:
    """Solve l = F(kappa l), F = Eq. (1) at eps_sec = kappa l. F depends on l only through
    log(21/eps_sec) (the 6 log2 term, the Hoeffding deltas, gamma), nearly linearly in ln l:
    fit F = a + s ln l on two points, solve the model, refit through the new point, repeat.
    Where the model has no fixed point the key is negative and max(F - l) guides the optimiser.
    """

    def f(ell):
        eps = kappa * np.maximum(ell, 1.0)
        return key_length_core(decoy_core(nx, nz, mz, mu, p, eps), leak, eps, eps_cor)

    la = np.maximum(0.05 * n_x, 100.0)
    fa = f(la)
    fb = f(la / math.e)
    slope = np.maximum(fa - fb, 0.0)
    x = la
    for i in range(refinements + 1):
        x, gap = _model_root(fa - slope * np.log(la), slope)
        if i == refinements:
            break
        fx = f(np.maximum(x, 1.0))
        dl = np.log(np.maximum(x, 1.0)) - np.log(la)
        ok = np.abs(dl) > 1e-6
        slope = np.where(ok, np.maximum((fx - fa) / np.where(ok, dl, 1.0), 0.0), slope)
        la, fa = np.where(ok, np.maximum(x, 1.0), la), np.where(ok, fx, fa)
    return np.where(gap >= 0, x, gap)


def _model_root(a: Any, s: Any) -> tuple[Any, Any]:
    """Largest root of x = a + s ln x (s >= 0) and max_x (a + s ln x - x), which is < 0 when
    there is no root (attained at x = s)."""
    s_safe = np.maximum(s, 1e-300)
    gap = np.where(s > 0, a + s * np.log(s_safe) - s, a)
    x = np.maximum(a + s * np.log(np.maximum(a, 2.0)), s + 1.0)
    for _ in range(8):  # Newton on the concave a + s ln x - x, from the right of its maximum
        x = np.maximum(x - (x - s * np.log(x) - a) / (1.0 - s / x), s * (1.0 + 1e-12))
    return np.where(gap >= 0, x, gap), gap


def _unpack(u: np.ndarray, mu3: float) -> tuple[tuple, tuple, Any]:
    """Unconstrained coordinates -> (mu, p, q_x) satisfying Lim's constraints."""
    sig = 1.0 / (1.0 + np.exp(-np.clip(u, -40, 40)))
    mu1 = mu3 + 0.02 + 1.3 * sig[0]
    mu2 = mu3 + 1e-4 + (mu1 - 2 * mu3 - 2e-4) * sig[1]
    z = np.stack([u[2], u[3], np.zeros_like(u[2])])
    z = np.exp(np.clip(z - z.max(axis=0), -40, 0))
    p = z / z.sum(axis=0)
    q_x = 0.01 + 0.989 * sig[4]
    return (mu1, mu2, np.full_like(mu1, mu3)), (p[0], p[1], p[2]), q_x


def _optimise_finite(ch, mu3, n_x, f_ec, eps_sec, eps_cor, kappa, starts, samples, seed):
    """Random search, then Nelder-Mead from the best few points (reference §4.2).

    With eps_sec = kappa l, each local search holds eps_sec at kappa times the exact key length
    of its starting point: the optimum hardly moves with log(eps_sec), and a fixed eps_sec makes
    every evaluation a single pass of the bounds.
    """
    rng = np.random.default_rng(seed)
    u = rng.normal(0.0, 2.0, size=(5, samples))
    rate, _, _ = _finite_rate(ch, *_unpack(u, mu3), n_x, f_ec, eps_sec, eps_cor, kappa)
    rate = np.nan_to_num(rate, nan=-np.inf)
    best_u, best_rate = None, -np.inf

    def exact(x: np.ndarray) -> tuple[float, float]:
        r, ell, _ = _finite_rate(
            ch, *_unpack(x[:, None], mu3), n_x, f_ec, eps_sec, eps_cor, kappa, exact=True
        )
        return float(r[0]), float(ell[0])

    for i in np.argsort(rate)[::-1][:starts]:
        eps = eps_sec if kappa is None else kappa * max(exact(u[:, i])[1], 1.0)

        def objective(x: np.ndarray, eps=eps) -> float:
            val, _, _ = _finite_rate(ch, *_unpack(x[:, None], mu3), n_x, f_ec, eps, eps_cor, None)
            v = float(val[0])
            return -v if math.isfinite(v) else 1.0

        res = minimize(
            objective, u[:, i], method="Nelder-Mead",
            options={"xatol": 1e-4, "fatol": 1e-16, "maxiter": 800, "adaptive": True},
        )  # fmt: skip
        found = exact(res.x)[0] if kappa is not None else -res.fun
        if found > best_rate:
            best_rate, best_u = found, res.x
    return best_u


# --------------------------------------------------------------------------- asymptotic


def asymptotic_rates(ch: Channel, mu1: float, mu2: float, mu3: float, f_ec: float, q: float):
    """(R infinite decoy, R vacuum + weak decoy) per pulse at signal intensity mu1."""
    q_mu = ch.detection(mu1)
    e_mu = ch.error(mu1) / q_mu
    y1, e1 = ch.single_photon()
    leak = f_ec * q_mu * binary_entropy(e_mu)
    r_inf = q * (y1 * mu1 * math.exp(-mu1) * (1.0 - binary_entropy(e1)) - leak)
    # Decoy estimators on exact expected counts (any p_k: without fluctuations they cancel).
    mu, p = (mu1, mu2, mu3), (1 / 3, 1 / 3, 1 / 3)
    n = tuple(pk * ch.detection(m) for pk, m in zip(p, mu, strict=True))
    m = tuple(pk * ch.error(m) for pk, m in zip(p, mu, strict=True))
    b = decoy_core(n, n, m, mu, p, 1e-10, finite=False)
    tau1 = sum(pk * mk * math.exp(-mk) for pk, mk in zip(p, mu, strict=True))
    y1_low = float(b.s_x1) / tau1
    e1_up = min(float(b.v_z1) / float(b.s_z1), 0.5) if b.s_z1 > 0 else 0.5
    r_vw = q * (y1_low * mu1 * math.exp(-mu1) * (1.0 - binary_entropy(e1_up)) - leak)
    return r_inf, r_vw, y1_low, e1_up


def _best_mu1(fn, lo: float = 1e-3, hi: float = 1.5) -> float:
    grid = np.linspace(lo, hi, 300)
    vals = [fn(x) for x in grid]
    i = int(np.argmax(vals))
    a, b = grid[max(i - 1, 0)], grid[min(i + 1, grid.size - 1)]
    for _ in range(60):  # golden-section refinement around the best grid point
        c, d = b - 0.618 * (b - a), a + 0.618 * (b - a)
        if fn(c) > fn(d):
            b = d
        else:
            a = c
    return float((a + b) / 2)


# --------------------------------------------------------------------------- public API


def expected_key_rate(
    params: LinkParams,
    block: int | None = None,
    *,
    f_ec: float | None = None,
    eps_sec: float | None = None,
    eps_cor: float = LIM_EPS_COR,
    kappa: float | None = LIM_KAPPA,
    optimise: bool = True,
    sifting_factor: float | None = None,
    starts: int = 4,
    samples: int = 2000,
    seed: int = 0,
) -> KeyRateResult:
    """Expected secret key rate of the link ``params`` (at its ``fibre.length_km``).

    ``block``: n_X for the finite-key bound, or None for the asymptotic rate. ``f_ec`` defaults
    to 1.16 (Lim) for finite keys and 1.22 (Ma's tables) asymptotically. ``eps_sec`` fixed, or
    None for Lim's ``eps_sec = kappa * l``. ``optimise=False`` uses the link's own intensities,
    class probabilities and both sides' basis bias, with the finite-key counts of
    :class:`LinkCounts` (the simulator's model: what the node runtime predicts for its
    settings). ``sifting_factor`` (asymptotic only): a fixed ``q`` applied to the key basis
    alone instead of the two bases' ``P_Alice(b) P_Bob(b)``.
    """
    if block is not None and (isinstance(block, bool) or int(block) != block or block < 1):
        raise ValueError(f"block must be a positive integer or None, got {block!r}")
    if eps_sec is not None and not 0 < eps_sec < 1:
        raise ValueError(f"eps_sec must be in (0, 1), got {eps_sec}")
    if eps_sec is None and (kappa is None or not 0 < kappa < 1):
        raise ValueError("give eps_sec or a kappa in (0, 1)")
    if not 0 < eps_cor < 1:
        raise ValueError(f"eps_cor must be in (0, 1), got {eps_cor}")
    ch = Channel.from_link(params)
    src = params.source
    clock = src.clock_hz
    distance = params.fibre.length_km
    if block is None:
        f_ec = f_ec or GYS_F_EC
        return _asymptotic(params, ch, clock, distance, f_ec, sifting_factor, optimise)
    f_ec = f_ec or LIM_F_EC
    k = None if eps_sec is not None else kappa
    n_x = float(block)
    mu3 = src.mu_vacuum
    extra: dict[str, Any] = {}
    if optimise:
        u = _optimise_finite(ch, mu3, n_x, f_ec, eps_sec, eps_cor, k, starts, samples, seed)
        mu, p, q_x = _unpack(u[:, None], mu3)
        mu = tuple(float(x[0]) for x in mu)
        p = tuple(float(x[0]) for x in p)
        q_x = float(q_x[0])
        rate, ell, qber = _finite_rate(
            ch, tuple(np.array([m]) for m in mu), tuple(np.array([x]) for x in p),
            np.array([q_x]), n_x, f_ec, eps_sec, eps_cor, k, exact=True,
        )  # fmt: skip
        rate, ell, qber = float(rate[0]), float(ell[0]), float(np.ravel(qber)[0])
        ch_x = ch.thinned(mu, p, q_x, q_x)
        pulses = n_x / (q_x**2 * sum(pk * ch_x.detection(m) for pk, m in zip(p, mu, strict=True)))
    else:
        mu = (src.mu_signal, src.mu_decoy, src.mu_vacuum)
        p = (src.p_signal, src.p_decoy, src.p_vacuum)
        q_x = 1.0 - src.p_basis_z
        DecoySettings(mu, p)  # the link's own settings must satisfy Lim's constraints
        if not 0.0 < q_x < 1.0:
            raise ValueError(f"source.p_basis_z must be in (0, 1) for a finite key: {1 - q_x}")
        if not 0.0 < params.p_bob_z < 1.0:
            raise ValueError(f"receiver.p_basis_z must be in (0, 1) for a finite key: "
                             f"{params.p_bob_z}")  # fmt: skip
        counts = LinkCounts.from_link(params)
        rate, ell, qber, pulses = _own_settings_rate(counts, mu, p, n_x, f_ec, eps_sec, eps_cor, k)
        extra = {"sifted_x_per_pulse": counts.sifted_x, "qber_z": counts.qber_z,
                 "p_bob_z": params.p_bob_z}  # fmt: skip
    eps_used = eps_sec if eps_sec is not None else kappa * max(ell, 1.0)
    rate = max(rate, 0.0)
    return KeyRateResult(
        rate_per_pulse=rate, rate_bps=rate * clock, distance_km=distance, block=int(block),
        qber=qber, mu=mu, p_mu=p, q_x=q_x, f_ec=f_ec, eps_sec=eps_used, eps_cor=eps_cor,
        key_length=max(math.floor(ell), 0), pulses_per_block=pulses, extra=extra,
    )  # fmt: skip


def _asymptotic(params, ch, clock, distance, f_ec, q_fixed, optimise) -> KeyRateResult:
    """Sum over the bases of ``q_b`` times the per-basis rate (see the module docstring); with
    dead time each basis's channel is thinned at the signal intensity being tried."""
    src = params.source
    mu2, mu3 = src.mu_decoy, src.mu_vacuum
    if not mu2 > mu3 >= 0.0:
        raise ValueError(f"decoy intensity must exceed the vacuum one: mu2={mu2}, mu3={mu3}")
    if q_fixed is not None and not 0.0 < q_fixed <= 1.0:
        raise ValueError(f"sifting_factor must be in (0, 1], got {q_fixed}")
    pa, pb = src.p_basis_z, params.p_bob_z
    bases = ((pa, pb), (1 - pa, 1 - pb))  # (Alice, Bob) probabilities of Z (index Z), of X
    p_cls = (src.p_signal, src.p_decoy, src.p_vacuum)
    lo = mu2 + mu3 + 1e-6

    def channels(m: float) -> list[tuple[Channel, float]]:
        thin = [ch.thinned((m, mu2, mu3), p_cls, a, b) for a, b in bases]
        if q_fixed is not None:
            return [(thin[X], q_fixed)]
        return [(c, a * b) for c, (a, b) in zip(thin, bases, strict=True) if a * b > 0]

    def rates(m: float) -> tuple[float, float]:
        per = [asymptotic_rates(c, m, mu2, mu3, f_ec, q) for c, q in channels(m)]
        return sum(r[0] for r in per), sum(r[1] for r in per)

    mu1 = _best_mu1(lambda m: rates(m)[1], lo) if optimise else src.mu_signal
    mu1_inf = _best_mu1(lambda m: rates(m)[0]) if optimise else src.mu_signal
    r_inf = rates(mu1_inf)[0]
    r_vw = rates(mu1)[1]
    ch_x = ch.thinned((mu1, mu2, mu3), p_cls, *bases[X])
    _, _, y1_low, e1_up = asymptotic_rates(ch_x, mu1, mu2, mu3, f_ec, 1.0)
    qber = float(ch_x.error(mu1) / ch_x.detection(mu1))
    return KeyRateResult(
        rate_per_pulse=max(r_vw, 0.0), rate_bps=max(r_vw, 0.0) * clock, distance_km=distance,
        block=None, qber=qber, mu=(mu1, mu2, mu3),
        p_mu=(src.p_signal, src.p_decoy, src.p_vacuum), q_x=1.0 - src.p_basis_z, f_ec=f_ec,
        eps_sec=None, eps_cor=None,
        extra={
            "rate_per_pulse_infinite_decoy": max(r_inf, 0.0),
            "mu1_infinite_decoy": mu1_inf,
            "sifting_factor": sum(q for _, q in channels(mu1)),
            "y1_lower": y1_low,
            "e1_upper": e1_up,
        },
    )  # fmt: skip
