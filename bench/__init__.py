"""Benchmarks: an emulated cluster (network namespaces + tc HTB) running the real hfbt processes.

`python -m bench.cluster --help` runs one; `python -m bench.plot` draws bench/results/cluster.jsonl.
See bench/README.md for what is measured and how.
"""
