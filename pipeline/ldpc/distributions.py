"""Published LDPC degree distributions (edge perspective) for the BSC, used to build mother codes.

``lam[i]`` is the fraction of edges on degree-``i`` variable nodes and ``rho[i]`` the fraction on
degree-``i`` check nodes (lambda(x) = sum lam_i x^(i-1)). Sources:

- Elkouss, Leverrier, Alleaume, Boutros, "Efficient reconciliation protocol for discrete-variable
  QKD", ISIT 2009 (arXiv:0901.2140), Table I (thresholds p* from density evolution).
- Martinez-Mateo, Elkouss, Martin, "Blind reconciliation", QIC 12 (2012), Appendix B: the
  hardware-friendly set (at most ~6 edges per bit).
- ``delp_r0.90``: designed here (the published R 0.9 set has f_thr 1.15-1.17) by density-
  evolution linear programming, ``pipeline/ldpc/design`` (Richardson, Shokrollahi, Urbanke 2001).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DegreeDistribution:
    """Edge-perspective degree distribution with its design rate and BSC threshold."""

    name: str
    lam: dict[int, float]
    rho: dict[int, float]
    threshold: float
    source: str

    @property
    def design_rate(self) -> float:
        """1 - (sum rho_i / i) / (sum lam_i / i), normalised."""
        sl = sum(self.lam.values())
        sr = sum(self.rho.values())
        a = sum(v / i for i, v in self.lam.items()) / sl
        b = sum(v / i for i, v in self.rho.items()) / sr
        return 1.0 - b / a

    def variable_node_fractions(self) -> dict[int, float]:
        """Node-perspective fractions Lambda_i proportional to lam_i / i."""
        w = {i: v / i for i, v in self.lam.items() if v > 0}
        t = sum(w.values())
        return {i: v / t for i, v in sorted(w.items())}


_ELKOUSS = "Elkouss et al., ISIT 2009, Table I"
_BLIND = "Martinez-Mateo et al., Blind reconciliation, QIC 2012, App. B"

_BLIND_R08_LAM = {
    2: 0.0667948, 3: 0.194832, 4: 0.0570523, 5: 0.0645024, 9: 0.204606, 15: 0.0964409,
    29: 0.23872, 35: 0.0770523,
}  # fmt: skip

_DELP_R09_LAM = {
    2: 0.0643, 3: 0.2097, 4: 0.0528, 8: 0.1176, 9: 0.0781, 10: 0.1413, 12: 0.03, 14: 0.0245,
    16: 0.055, 18: 0.042, 20: 0.1107, 24: 0.0492, 28: 0.0248,
}  # fmt: skip

DISTRIBUTIONS: dict[str, DegreeDistribution] = {
    d.name: d
    for d in (
        DegreeDistribution(
            "elkouss_r0.90",
            {2: 0.07689, 3: 0.28096, 5: 0.08933, 9: 0.19620, 12: 0.30631, 21: 0.05031},
            {50: 0.95025, 51: 0.04975},
            0.0109,
            _ELKOUSS,
        ),
        DegreeDistribution(
            "elkouss_r0.85",
            {
                2: 0.04528,
                3: 0.20537,
                4: 0.05878,
                5: 0.094274,
                6: 0.08454,
                7: 0.01176,
                9: 0.05137,
                21: 0.50015,
            },
            {41: 0.54204, 42: 0.45795},
            0.0199,
            _ELKOUSS,
        ),
        DegreeDistribution(
            "elkouss_r0.80",
            {2: 0.09420, 3: 0.18088, 6: 0.11972, 7: 0.08550, 8: 0.09816, 17: 0.07194, 26: 0.34960},
            {29: 0.58807, 30: 0.41193},
            0.0298,
            _ELKOUSS,
        ),
        DegreeDistribution(
            "elkouss_r0.75",
            {
                2: 0.10805,
                3: 0.09511,
                4: 0.01449,
                5: 0.13764,
                6: 0.10667,
                7: 0.05288,
                28: 0.01107,
                31: 0.47408,
            },
            {25: 0.74161, 26: 0.25839},
            0.0392,
            _ELKOUSS,
        ),
        DegreeDistribution(
            "elkouss_r0.65",
            {
                2: 0.10451,
                3: 0.15652,
                4: 0.08057,
                5: 0.00056,
                9: 0.12151,
                13: 0.10485,
                15: 0.10719,
                21: 0.00771,
                51: 0.31656,
            },
            {2: 0.000578, 15: 0.06089, 16: 0.47001, 21: 0.46852},
            0.0633,
            _ELKOUSS,
        ),
        DegreeDistribution(
            "elkouss_r0.55",
            {
                2: 0.16880,
                3: 0.20994,
                6: 0.18095,
                15: 0.03846,
                16: 0.02635,
                18: 0.23454,
                19: 0.05815,
                31: 0.08280,
            },
            {10: 0.27631, 11: 0.72369},
            0.0904,
            _ELKOUSS,
        ),
        DegreeDistribution(
            "blind_r0.8",
            {
                2: 0.0667948,
                3: 0.194832,
                4: 0.0570523,
                5: 0.0645024,
                9: 0.204606,
                15: 0.0964409,
                29: 0.23872,
                35: 0.0770523,
            },
            {30: 0.708874, 31: 0.291126},
            0.0289413,
            _BLIND,
        ),
        # Not published: the blind R 0.8 variable side with the check degree raised to reach
        # R 0.85 / 0.9 (the published high-rate rows converge slowly with BP at finite length).
        # Thresholds are not from density evolution; their efficiency is measured (qnode perf).
        DegreeDistribution(
            "blindvar_r0.85",
            dict(_BLIND_R08_LAM),
            {40: 0.6, 41: 0.4},
            0.0,
            _BLIND + ", variable side; check degree raised",
        ),
        DegreeDistribution(
            "blindvar_r0.90",
            dict(_BLIND_R08_LAM),
            {60: 0.4, 61: 0.6},
            0.0,
            _BLIND + ", variable side; check degree raised",
        ),
        # Designed here: pipeline/ldpc/design/de_lp.py walked from blindvar_r0.90 at BSC(0.011),
        # rho fixed; population-dynamics DE (design/density.py) gives p* = 0.0113 (f_thr 1.078;
        # blindvar_r0.90: 0.01122, 1.126; elkouss_r0.90: 0.01076, 1.167).
        DegreeDistribution(
            "delp_r0.90",
            dict(_DELP_R09_LAM),
            {60: 0.4, 61: 0.6},
            0.0113,
            "density-evolution LP, pipeline/ldpc/design (this repository)",
        ),
        DegreeDistribution(
            "blind_r0.7",
            {
                2: 0.091699,
                3: 0.171401,
                4: 0.0683878,
                5: 0.120523,
                11: 0.187471,
                28: 0.208278,
                30: 0.152239,
            },
            {19: 0.806453, 20: 0.193547},
            0.0501875,
            _BLIND,
        ),
        DegreeDistribution(
            "blind_r0.6",
            {
                2: 0.11653,
                3: 0.125646,
                4: 0.108507,
                5: 0.0534223,
                7: 0.0727228,
                8: 0.0347964,
                9: 0.0729986,
                18: 0.0752607,
                32: 0.117103,
                45: 0.223013,
            },
            {14: 0.582731, 15: 0.417269},
            0.0745261,
            _BLIND,
        ),
        DegreeDistribution(
            "blind_r0.5",
            {2: 0.159673, 3: 0.121875, 4: 0.11261, 5: 0.190871, 10: 0.0770616, 25: 0.337909},
            {9: 0.360479, 10: 0.639521},
            0.102592,
            _BLIND,
        ),
    )
}
