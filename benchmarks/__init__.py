"""Benchmarks (speed, memory, scaling), run as scripts: python benchmarks/NAME.py; results in benchmarks/RESULTS.md."""
