"""Parameters and closed-form model of a decoy-state BB84 link with weak coherent pulses.

Shared plumbing: the simulated world (``sim_hw``) and the key-rate code (``qnode keyrate``) both
read the link from here, so a link file means the same thing to the photon simulation and to the
rate prediction. Imports none of the five packages.

The model (and ``sim_hw.physics``, which samples it):

* Source: Poisson photon number with mean ``mu_k`` for the slot's intensity class ``k``
  (signal / decoy / vacuum), basis Z with ``p_basis_z``, uniform bit.
* Channel: ``eta_ch = 10^(-(alpha*L + extra_loss_db)/10)``.
* Receiver (active basis choice): Bob picks Z with ``receiver.p_basis_z`` (default: the source's)
  and only that basis's detector pair is gated. In the matched basis a photon reaches the wrong
  detector with probability ``misalignment``; in the other basis 50/50. Poisson splitting makes
  the two detectors independent: detector ``d`` clicks with ``1 - (1 - n_d) exp(-mu eta_ch f_d
  eta_d)`` where ``n_d`` is its noise (dark count + Raman) probability per gate.
* Raman noise (``classical_power_dbm`` set): generated along the fibre, so ``extra_loss_db`` (the
  attenuator) does not scale it; with the light off (source off / shutter) only dark counts remain.
* Afterpulses (first order, as Lim et al. 2014: an afterpulse spawns none): probability
  ``afterpulse_prob`` per click, on the same detector, in a slot uniformly 1..W after its dead
  time (W = ``afterpulse_window_ns`` in slots). Their slot's class is independent of the parent's,
  so they add the same rate to every class (Lim's ``R_k = D_k(1+p_ap)`` ties them to class k).
* Dead time: non-paralysable per detector (Lim's and GYS's models have none; see
  ``expected_stats(dead_time=True)`` for the renewal correction R/(1 + R tau)).
* Double click in one basis: random bit (Lim et al. 2014).

Textbook forms are kept beside the detailed model: Ma-Qi-Zhao-Lo PRA 72, 012326 (2005) for
``Y_n, e_n, Q_mu, E_mu`` (GYS system) and Lim-Curty-Walenta-Xu-Zbinden PRA 89, 022307 (2014)
for ``D_k, R_k, e_k``.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

CLASSES = ("signal", "decoy", "vacuum")
CHANNELS = ("Z0", "Z1", "X0", "X1")  # tagger channels 1..4 (docs/contracts.md §1.2)
FIBRE_DELAY_PS_PER_KM = 4.897e6  # group index 1.468: 1.468 / c = 4.897 us per km
PLANCK_J_S = 6.62607015e-34
LIGHT_M_S = 299_792_458.0


class LinkConfigError(ValueError):
    """A link file or parameter set was refused; the message names the offending key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceParams(_Section):
    """Pulsed weak-coherent source with three intensity classes and a basis bias."""

    clock_hz: float = Field(1e9, ge=1e6, le=1e10)
    mu_signal: float = Field(0.5, ge=0, le=10)
    mu_decoy: float = Field(0.1, ge=0, le=10)
    mu_vacuum: float = Field(0.0, ge=0, le=10)
    p_signal: float = Field(0.8, ge=0, le=1)
    p_decoy: float = Field(0.1, ge=0, le=1)
    p_vacuum: float = Field(0.1, ge=0, le=1)
    p_basis_z: float = Field(0.5, ge=0, le=1)

    @model_validator(mode="after")
    def _probabilities_sum_to_one(self) -> SourceParams:
        total = self.p_signal + self.p_decoy + self.p_vacuum
        if abs(total - 1.0) > 1e-9:
            raise ValueError(
                f"source.p_signal + source.p_decoy + source.p_vacuum must be 1 (got {total:.12g})"
            )
        return self

    def mu(self, k: int) -> float:
        """Mean photon number of class ``k`` (0 signal, 1 decoy, 2 vacuum)."""
        return (self.mu_signal, self.mu_decoy, self.mu_vacuum)[k]

    def p_class(self, k: int) -> float:
        return (self.p_signal, self.p_decoy, self.p_vacuum)[k]


class FibreParams(_Section):
    """Fibre span plus lumped extra loss (connectors, the attenuator) and optional Raman noise."""

    length_km: float = Field(0.0, ge=0, le=1000)
    loss_db_per_km: float = Field(0.2, ge=0, le=10)
    extra_loss_db: float = Field(0.0, ge=0, le=300)
    classical_power_dbm: float | None = Field(None, ge=-100, le=30)
    raman_cross_section_per_km_nm: float = Field(3e-9, ge=0, le=1e-6)
    raman_direction: Literal["forward", "backward"] = "forward"
    filter_width_nm: float = Field(0.8, gt=0, le=100)
    wavelength_nm: float = Field(1550.0, ge=400, le=2000)


class ReceiverParams(_Section):
    """Bob: active basis choice, two gated detectors per basis (channels Z0, Z1, X0, X1)."""

    efficiency: float | tuple[float, float, float, float] = 0.1
    dark_count_prob: float = Field(1e-6, ge=0, lt=1)
    afterpulse_prob: float = Field(0.0, ge=0, lt=1)
    afterpulse_window_ns: float = Field(10.0, ge=0, le=1e4)
    dead_time_ns: float = Field(0.0, ge=0, le=1e6)
    jitter_ps: float = Field(50.0, ge=0, le=1e6)
    misalignment: float = Field(0.01, ge=0, le=0.5)
    gate_ps: float = Field(1000.0, gt=0, le=1e9)
    p_basis_z: float | None = Field(None, ge=0, le=1)
    cable_delay_ps: float = Field(0.0, ge=0, le=1e12)

    @field_validator("efficiency")
    @classmethod
    def _efficiency_in_range(cls, v: Any) -> Any:
        values = v if isinstance(v, tuple) else (v,)
        for x in values:
            if not 0.0 <= x <= 1.0:
                raise ValueError(f"efficiency must be in [0, 1] (got {x})")
        return v

    def efficiencies(self) -> tuple[float, float, float, float]:
        """Efficiency of each detector Z0, Z1, X0, X1 (a scalar applies to all four)."""
        e = self.efficiency
        return e if isinstance(e, tuple) else (e, e, e, e)


class LinkParams(_Section):
    """A whole link: ``[source]``, ``[fibre]``, ``[receiver]`` of a link file."""

    source: SourceParams = SourceParams()
    fibre: FibreParams = FibreParams()
    receiver: ReceiverParams = ReceiverParams()

    @classmethod
    def parse(cls, data: dict[str, Any]) -> LinkParams:
        """Validate a nested dict; raise ``LinkConfigError`` naming each bad key."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise LinkConfigError(_describe(exc)) from None

    def with_changes(self, **sections: dict[str, Any]) -> LinkParams:
        """Copy with some keys changed, re-validated: ``p.with_changes(fibre={"length_km": 25})``."""
        data = self.model_dump()
        for name, changes in sections.items():
            if name not in data:
                raise LinkConfigError(f"{name}: unknown section (expected source, fibre, receiver)")
            data[name].update(changes)
        return LinkParams.parse(data)

    def with_distance(self, km: float) -> LinkParams:
        return self.with_changes(fibre={"length_km": km})

    @property
    def period_ps(self) -> float:
        return 1e12 / self.source.clock_hz

    @property
    def p_bob_z(self) -> float:
        rz = self.receiver.p_basis_z
        return self.source.p_basis_z if rz is None else rz


def _describe(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if not isinstance(p, int))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        value = err.get("input")
        shown = "" if isinstance(value, dict) else f" (got {value!r})"
        lines.append(f"{loc or 'link'}: {msg}{shown}")
    return "; ".join(lines)


def load_link(path: str | Path) -> LinkParams:
    """Read a TOML link file; raise ``LinkConfigError`` with the file and key on bad input."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise LinkConfigError(f"{path}: no such link file") from None
    except tomllib.TOMLDecodeError as exc:
        raise LinkConfigError(f"{path}: not valid TOML: {exc}") from None
    if "efficiency" in data.get("receiver", {}) and isinstance(
        data["receiver"]["efficiency"], list
    ):
        data["receiver"]["efficiency"] = tuple(data["receiver"]["efficiency"])
    try:
        return LinkParams.parse(data)
    except LinkConfigError as exc:
        raise LinkConfigError(f"{path}: {exc}") from None


def dump_toml(params: LinkParams) -> str:
    """The link as a TOML link file (round-trips through ``load_link``)."""
    out = []
    for name, section in params.model_dump().items():
        out.append(f"[{name}]")
        for key, value in section.items():
            if value is None:
                continue
            if isinstance(value, str):
                out.append(f'{key} = "{value}"')
            elif isinstance(value, tuple | list):
                out.append(f"{key} = [{', '.join(repr(float(v)) for v in value)}]")
            else:
                out.append(f"{key} = {value!r}")
        out.append("")
    return "\n".join(out)


# --- presets -------------------------------------------------------------------------------

_PRESETS: dict[str, dict[str, Any]] = {
    # Gobby-Yuan-Shields 2004 as tabulated by Ma-Qi-Zhao-Lo 2005: alpha 0.21 dB/km, e_det 3.3 %,
    # Y0 1.7e-6 (whole receiver, so 8.5e-7 per detector of the gated pair), eta_Bob 4.5 %,
    # mu 0.48 with vacuum + weak decoy nu = 0.1. The table is per pulse: no dead time or
    # afterpulsing; the clock, class probabilities and jitter are not in it (chosen here).
    "gys": {
        "source": dict(clock_hz=1e9, mu_signal=0.48, mu_decoy=0.1, mu_vacuum=0.0,
                       p_signal=0.8, p_decoy=0.1, p_vacuum=0.1, p_basis_z=0.5),
        "fibre": dict(length_km=50.0, loss_db_per_km=0.21),
        "receiver": dict(efficiency=0.045, dark_count_prob=8.5e-7, afterpulse_prob=0.0,
                         dead_time_ns=0.0, jitter_ps=50.0, misalignment=0.033),
    },
    # Lim-Curty-Walenta-Xu-Zbinden 2014 Sec. IV: InGaAs APDs eta 10 %, p_dc 6e-7, p_ap 4e-2,
    # alpha 0.2, e_mis 5e-3, mu3 2e-4. mu1, mu2, the probabilities and the basis bias are the
    # kind of values their optimiser picks for large blocks. Lim keys from X, and so does the
    # pipeline (pipeline/sifting.py): X is the likely basis, P(Z) = p_basis_z = 0.1.
    "lim2014": {
        "source": dict(clock_hz=1e9, mu_signal=0.5, mu_decoy=0.1, mu_vacuum=2e-4,
                       p_signal=0.7, p_decoy=0.2, p_vacuum=0.1, p_basis_z=0.1),
        "fibre": dict(length_km=50.0, loss_db_per_km=0.2),
        "receiver": dict(efficiency=0.1, dark_count_prob=6e-7, afterpulse_prob=0.04,
                         afterpulse_window_ns=10.0, dead_time_ns=0.0, jitter_ps=100.0,
                         misalignment=0.005),
    },
    # A modern SNSPD receiver: 80 % efficiency, ~100 cps dark (1e-7 per 1 ns gate), 30 ns dead
    # time, 30 ps jitter, negligible afterpulsing; 1 GHz clock, 0.2 dB/km.
    "snspd": {
        "source": dict(clock_hz=1e9, mu_signal=0.5, mu_decoy=0.1, mu_vacuum=0.0,
                       p_signal=0.7, p_decoy=0.2, p_vacuum=0.1, p_basis_z=0.1),
        "fibre": dict(length_km=50.0, loss_db_per_km=0.2),
        "receiver": dict(efficiency=0.8, dark_count_prob=1e-7, afterpulse_prob=0.0,
                         dead_time_ns=30.0, jitter_ps=30.0, misalignment=0.01),
    },
}  # fmt: skip


def list_presets() -> list[str]:
    return sorted(_PRESETS)


def preset(name: str) -> LinkParams:
    """A named link (``gys``, ``lim2014``, ``snspd``); ``LinkConfigError`` for an unknown name."""
    if name not in _PRESETS:
        raise LinkConfigError(f"unknown preset {name!r} (known: {', '.join(list_presets())})")
    return LinkParams.parse(_PRESETS[name])


# --- textbook closed forms -------------------------------------------------------------------


def yield_n(n: int, eta: float, y0: float) -> float:
    """n-photon yield ``Y_n = Y0 + 1 - (1-eta)^n`` (Ma et al. 2005, as printed there)."""
    return y0 + 1.0 - (1.0 - eta) ** n


def error_n(n: int, eta: float, y0: float, e_det: float, e0: float = 0.5) -> float:
    """n-photon error rate ``e_n = (e0 Y0 + e_det (1-(1-eta)^n)) / Y_n`` (Ma et al. 2005)."""
    return (e0 * y0 + e_det * (1.0 - (1.0 - eta) ** n)) / yield_n(n, eta, y0)


def gain_poisson(mu: float, eta: float, y0: float) -> float:
    """Gain ``Q_mu = Y0 + 1 - exp(-eta mu)`` of a Poisson source (Lo-Ma-Chen 2005, Ma 2005)."""
    return y0 + 1.0 - math.exp(-eta * mu)


def qber_poisson(mu: float, eta: float, y0: float, e_det: float, e0: float = 0.5) -> float:
    """QBER ``E_mu = (e0 Y0 + e_det (1 - exp(-eta mu))) / Q_mu`` (Ma et al. 2005)."""
    return (e0 * y0 + e_det * (1.0 - math.exp(-eta * mu))) / gain_poisson(mu, eta, y0)


def lim_detection_prob(k: float, eta_sys: float, p_dc: float, p_ap: float) -> float:
    """``R_k = D_k (1 + p_ap)``, ``D_k = 1 - (1 - 2 p_dc) exp(-eta_sys k)`` (Lim 2014 Sec. IV)."""
    return (1.0 - (1.0 - 2.0 * p_dc) * math.exp(-eta_sys * k)) * (1.0 + p_ap)


def lim_error_prob(k: float, eta_sys: float, p_dc: float, p_ap: float, e_mis: float) -> float:
    """``e_k = p_dc + e_mis (1 - exp(-eta_sys k)) + p_ap D_k / 2`` (Lim 2014, with eta_sys)."""
    d_k = 1.0 - (1.0 - 2.0 * p_dc) * math.exp(-eta_sys * k)
    return p_dc + e_mis * (1.0 - math.exp(-eta_sys * k)) + p_ap * d_k / 2.0


# --- the link's own closed forms ---------------------------------------------------------------


def channel_transmittance(p: LinkParams) -> float:
    """Fibre plus extra loss: ``10^(-(alpha L + extra)/10)``."""
    f = p.fibre
    return 10.0 ** (-(f.loss_db_per_km * f.length_km + f.extra_loss_db) / 10.0)


def total_transmittance(p: LinkParams) -> float:
    """``eta = eta_Bob 10^(-alpha L / 10)`` with eta_Bob the mean detector efficiency (GYS eta)."""
    return channel_transmittance(p) * sum(p.receiver.efficiencies()) / 4.0


def raman_photons_per_gate(p: LinkParams) -> float:
    """Mean Raman photons per gate in the quantum pass-band at Bob's input (before efficiency).

    Eraerds et al. NJP 12, 063027 (2010) / Patel et al. PRX 2, 041010 (2012), see reference §4.4:
    forward ``P = P_out rho L dlambda``, backward ``P = P_out rho dlambda sinh(alpha L)/alpha``,
    ``P_out = P_in exp(-alpha L)``; photons = ``P / (h nu) * gate``.
    """
    f = p.fibre
    if f.classical_power_dbm is None or f.raman_cross_section_per_km_nm == 0.0:
        return 0.0
    p_in_w = 1e-3 * 10.0 ** (f.classical_power_dbm / 10.0)
    alpha = f.loss_db_per_km * math.log(10.0) / 10.0  # 1/km
    length = f.length_km
    p_out = p_in_w * math.exp(-alpha * length)
    rho_dl = f.raman_cross_section_per_km_nm * f.filter_width_nm
    if f.raman_direction == "forward":
        p_ram = p_out * rho_dl * length
    else:
        p_ram = p_out * rho_dl * (math.sinh(alpha * length) / alpha if alpha > 0 else length)
    photon_j = PLANCK_J_S * LIGHT_M_S / (f.wavelength_nm * 1e-9)
    return p_ram / photon_j * p.receiver.gate_ps * 1e-12


def noise_probs(p: LinkParams) -> tuple[float, float, float, float]:
    """Per-gate noise click probability of each detector: dark count and Raman (split 50/50
    over the gated pair, unpolarised), ``1 - (1 - p_dc) exp(-n_ram eta_d / 2)``."""
    n_ram = raman_photons_per_gate(p)
    pdc = p.receiver.dark_count_prob
    return tuple(1.0 - (1.0 - pdc) * math.exp(-n_ram * e / 2.0) for e in p.receiver.efficiencies())


def click_probs(
    p: LinkParams, k: int, alice_basis: int, alice_bit: int, bob_basis: int
) -> tuple[float, float, float, float]:
    """Primary click probability of each detector (Z0, Z1, X0, X1) in one slot, before dead
    time and afterpulses; detectors outside Bob's basis are not gated (0)."""
    eta_ch = channel_transmittance(p)
    mu = p.source.mu(k)
    eff = p.receiver.efficiencies()
    noise = noise_probs(p)
    e_mis = p.receiver.misalignment
    out = [0.0, 0.0, 0.0, 0.0]
    for bit in (0, 1):
        d = 2 * bob_basis + bit
        if alice_basis == bob_basis:
            frac = e_mis if bit != alice_bit else 1.0 - e_mis
        else:
            frac = 0.5
        out[d] = 1.0 - (1.0 - noise[d]) * math.exp(-mu * eta_ch * frac * eff[d])
    return (out[0], out[1], out[2], out[3])


def dead_slots(p: LinkParams) -> int:
    """Slots after a click in which the detector cannot click (non-paralysable dead time)."""
    dead_ps = p.receiver.dead_time_ns * 1e3
    return max(0, math.ceil(dead_ps / p.period_ps - 1e-9) - 1) if dead_ps > 0 else 0


def afterpulse_window_slots(p: LinkParams) -> int:
    """Afterpulses fall uniformly 1..W slots after the dead time (W >= 1)."""
    return max(1, round(p.receiver.afterpulse_window_ns * 1e3 / p.period_ps))


@dataclass(frozen=True)
class ClassModel:
    """Expected per-pulse figures of one intensity class."""

    gain: float  # P(at least one click) per pulse
    sifted: float  # P(click and Bob's basis == Alice's) per pulse
    errors: float  # P(sifted and Bob's bit != Alice's bit) per pulse
    qber: float  # errors / sifted
    # The same two figures split by the (common) basis, index 0 = Z, 1 = X: what the finite-key
    # bound needs (key from X, test from Z). They sum to ``sifted`` and ``errors``.
    sifted_by_basis: tuple[float, float] = (0.0, 0.0)
    errors_by_basis: tuple[float, float] = (0.0, 0.0)

    def qber_in(self, basis: int) -> float:
        """QBER of the sifted events in one basis (0 = Z, 1 = X)."""
        s = self.sifted_by_basis[basis]
        return self.errors_by_basis[basis] / s if s > 0 else 0.0


def _configs(p: LinkParams):
    """(weight, alice_basis, alice_bit, bob_basis) over the 8 equally-treated configurations."""
    pa, pb = p.source.p_basis_z, p.p_bob_z
    for ab in (0, 1):
        for x in (0, 1):
            for bb in (0, 1):
                w = (pa if ab == 0 else 1 - pa) * 0.5 * (pb if bb == 0 else 1 - pb)
                yield w, ab, x, bb


def expected_stats(
    p: LinkParams, dead_time: bool = True, afterpulses: bool = True, light_on: bool = True
) -> dict[str, ClassModel]:
    """Per-class gain, sifted gain, errors and QBER of exactly the process ``sim_hw.physics``
    samples (Bob's basis from the clicked channels; clicks in both bases -> random basis;
    double click in one basis -> random bit).

    Afterpulses land in a later slot whose class is independent of the parent's, so they add
    the same rate ``p_ap * P_np * c_d * A_d`` to every class (unlike Lim's ``R_k = D_k(1+p_ap)``,
    which ties them to the parent's class). Dead time: renewal argument for a non-paralysable
    detector with i.i.d. slots, alive fraction ``A_d = 1 / (1 + c_d tau (1 + p_ap P_np))``
    (the R/(1 + R tau) of reference §4.3, exact without afterpulses, first order with them).
    """
    configs = list(_configs(p))
    per_class = []
    for k in range(3):
        rows = []
        for w, ab, x, bb in configs:
            c = click_probs(p, k, ab, x, bb) if light_on else dark_click_probs(p, bb)
            rows.append((w, ab, x, c))
        per_class.append(rows)
    # Mean primary click probability of each detector per slot.
    c_mean = [0.0] * 4
    for k in range(3):
        pk = p.source.p_class(k)
        for w, _, _, c in per_class[k]:
            for d in range(4):
                c_mean[d] += pk * w * c[d]
    tau = dead_slots(p) if dead_time else 0
    p_ap = p.receiver.afterpulse_prob if afterpulses else 0.0
    win = afterpulse_window_slots(p)
    alive, ap_rate = [1.0] * 4, [0.0] * 4
    for d in range(4):
        cm = c_mean[d]
        # Afterpulse fires unless a primary click in the min(delta-1, tau) slots before it
        # made the detector dead again.
        p_np = sum((1.0 - cm) ** min(delta - 1, tau) for delta in range(1, win + 1)) / win
        alive[d] = 1.0 / (1.0 + cm * tau * (1.0 + p_ap * p_np))
        ap_rate[d] = p_ap * p_np * cm * alive[d]
    result = {}
    for k, name in enumerate(CLASSES):
        gain = 0.0
        sifted, errors = [0.0, 0.0], [0.0, 0.0]
        for w, ab, x, c in per_class[k]:
            # A primary click and an afterpulse in the same slot are one click (union).
            o = [1.0 - (1.0 - alive[d] * c[d]) * (1.0 - ap_rate[d]) for d in range(4)]
            g, s, e = _pattern_sums(o, ab, x)
            gain += w * g
            sifted[ab] += w * s
            errors[ab] += w * e
        s_all, e_all = sum(sifted), sum(errors)
        result[name] = ClassModel(
            gain, s_all, e_all, e_all / s_all if s_all > 0 else 0.0,
            (sifted[0], sifted[1]), (errors[0], errors[1]),
        )  # fmt: skip
    return result


def dark_click_probs(p: LinkParams, bob_basis: int) -> tuple[float, float, float, float]:
    """Click probabilities with the light off: dark counts of the gated pair only."""
    pdc = p.receiver.dark_count_prob
    out = [0.0, 0.0, 0.0, 0.0]
    out[2 * bob_basis] = out[2 * bob_basis + 1] = pdc
    return (out[0], out[1], out[2], out[3])


def _pattern_sums(o: list[float], alice_basis: int, alice_bit: int) -> tuple[float, float, float]:
    """Sum over the 16 click patterns of independent detectors: P(any), P(sifted), P(error)."""
    gain = sifted = errors = 0.0
    for pattern in range(1, 16):
        prob = 1.0
        for d in range(4):
            prob *= o[d] if pattern >> d & 1 else 1.0 - o[d]
        if prob == 0.0:
            continue
        gain += prob
        bases = [b for b in (0, 1) if pattern >> (2 * b) & 3]
        w_basis = 1.0 / len(bases)  # clicks in both bases: Bob's basis is chosen at random
        if alice_basis not in bases:
            continue
        pair = pattern >> (2 * alice_basis) & 3
        sifted += prob * w_basis
        if pair == 3:
            errors += prob * w_basis * 0.5  # double click: random bit
        elif pair != (1 << alice_bit):
            errors += prob * w_basis
    return gain, sifted, errors
