"""Benchmarks: each module measures one PERF.md target against its baselines in one run."""
