"""Benchmarks: `python -m bench.<name>` from the repository root; results land in `bench/results/`."""
