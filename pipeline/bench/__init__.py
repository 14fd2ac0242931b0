"""Benchmark rows for qnode perf, one module per stage."""
