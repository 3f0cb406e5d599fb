"""Benchmarks of lightgcn_ext; run them from the repository root:

    python -m bench.bench_propagate --help
"""
