"""Benchmarks and studies, run as scripts (python benchmarks/NAME.py); results in benchmarks/RESULTS.md."""
