"""Offline design tools for the stored mother codes (not imported at run time).

- :mod:`.density`: density evolution for the BSC by population dynamics (Monte Carlo DE): the
  BP threshold of a degree distribution (``python -m pipeline.ldpc.design.density NAME...``);
- :mod:`.de_lp`: density-evolution linear programming that moves the variable-side distribution
  to a higher rate at a fixed channel, i.e. a better threshold at a given rate
  (``python -m pipeline.ldpc.design.de_lp`` re-runs the walk that gave ``delp_r0.90``).

A Gaussian-approximation EXIT design was tried first and dropped: on the BSC at rate 0.9 its
distributions measured f_thr ~ 1.2 by density evolution, worse than the published ones.
"""
