"""The frame-plan layout cache is bounded (a long run plans many different (p, s) pairs)."""

from __future__ import annotations

import numpy as np

from pipeline.ldpc import rate
from pipeline.ldpc.rate import plan_frame


def test_layout_cache_is_bounded_and_layouts_stay_correct():
    rate._layout.cache_clear()
    plans = [plan_frame(q) for q in np.linspace(0.005, 0.06, 3 * rate.LAYOUT_CACHE_SIZE)]
    plans = list({(p.code_name, p.punctured, p.shortened): p for p in plans}.values())
    assert len(plans) > rate.LAYOUT_CACHE_SIZE  # more distinct plans than the cache holds
    for plan in plans:
        plan.layout()
    assert rate._layout.cache_info().currsize == rate.LAYOUT_CACHE_SIZE
    # an evicted layout is rebuilt identically (the position order is a pure function)
    first = plans[0]
    punct, short, key, reveal = first.layout()
    n = rate.load_code(first.code_name).n
    assert punct.size == first.punctured and short.size == first.shortened
    assert np.array_equal(np.sort(np.concatenate([punct, short, key])), np.arange(n))
    order = rate.position_order(rate.load_code(first.code_name))
    free = ~np.isin(order, short)
    assert np.array_equal(reveal[: first.punctured], order[free][: first.punctured])
