"""fusedopt-bench: optimizer-step throughput of every backend against torch and the roofline.

Run ``fusedopt-bench`` or ``python -m fusedopt.bench`` (``--help`` for the options), or from
Python ``fusedopt.bench.main(["--quick"])``. See ``benchmarks/README.md``.
"""
from __future__ import annotations

from .cli import build_parser, main, run
from .timing import bytes_per_param, copy_bandwidth
from .workloads import workload_shapes

__all__ = ["main", "run", "build_parser", "bytes_per_param", "copy_bandwidth", "workload_shapes"]
