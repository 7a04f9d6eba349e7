"""Benchmarks: `python -m bench --help`, and the scripts beside it (each with --help)."""
