"""Benchmarks: each measures the agent against an anchor (a reference tool or a target) in the same
run and writes its figures to `bench/results/<name>.json`. Run them all with `make bench`."""
