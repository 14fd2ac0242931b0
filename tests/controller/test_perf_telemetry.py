"""The telemetry perf row's plumbing (no figure is checked: speed lives in ``qnode perf``)."""

from __future__ import annotations

from controller.perf import _telemetry_run


def test_blast_run_receives_every_message_through_the_native_drain():
    out = _telemetry_run(3000, 0.0, lazy=True)
    assert out["received"] == 3000 and out["lost"] == 0 and out["gaps_counted"] == 0
    assert out["drain"] == "native"
    assert out["pub_cpu_us"] > 0 and out["pub_thread_cpu_us"] > 0
    assert out["msgs_per_s"] > 0


def test_paced_run_reports_latency_percentiles_with_payloads_decoded():
    out = _telemetry_run(300, 5000.0, lazy=False)
    assert out["received"] == 300 and out["lost"] == 0
    assert 0 < out["p50_ms"] <= out["p99_ms"]
