"""Benchmarks of Flux Control (run with ``python -m bench``; writes BENCHMARKS.md)."""
