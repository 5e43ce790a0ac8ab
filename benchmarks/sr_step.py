"""Stochastic rounding's cost in a whole CPU step: AdamW on bf16 params with
``stochastic_rounding=True`` against the same step rounding to nearest, timed interleaved in one
process (benchmarks/results/cpu-sr-philox-2026-12-03.md).

    python benchmarks/sr_step.py [--tensors 1000] [--size 32768] [--threads N] [--rounds 8] [--8bit]

Prints one JSON line: the fusedopt it imported, the threads, the machine's other load (cores
other processes kept busy), and per rounding mode the median, first and third quartiles of the
step in ms and the median in ns per parameter per thread (ms * threads / parameters). To compare
two builds, run it alternately with each on PYTHONPATH. ``--8bit``: both with 8-bit states.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import time

import torch

import fusedopt
from fusedopt.bench.timing import CpuSnapshot, other_cpu_use


def make(sr: bool, tensors: int, size: int, eight_bit: bool):
    gen = torch.Generator().manual_seed(1)
    params = [torch.nn.Parameter(torch.randn(size, generator=gen).to(torch.bfloat16)) for _ in range(tensors)]
    for p in params:
        p.grad = (torch.randn(size, generator=gen) * 1e-2).to(torch.bfloat16)
    opt = fusedopt.AdamW(params, lr=1e-3, backend="cpu", stochastic_rounding=sr,
                         **({"rounding_seed": 5} if sr else {}), **({"state_dtype": "8bit"} if eight_bit else {}))
    return opt


def quartiles(xs):
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return statistics.median(xs), q[0], q[2]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tensors", type=int, default=1000)
    ap.add_argument("--size", type=int, default=32768)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--8bit", dest="eight_bit", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    opts = {"nearest": make(False, args.tensors, args.size, args.eight_bit),
            "stochastic": make(True, args.tensors, args.size, args.eight_bit)}
    for opt in opts.values():
        for _ in range(args.warmup):
            opt.step()
    times = {k: [] for k in opts}
    order = list(opts)
    rng = random.Random(0)
    start = CpuSnapshot.take()
    for _ in range(args.rounds):
        rng.shuffle(order)  # one step of each per round, in a shuffled order
        for k in order:
            t0 = time.perf_counter()
            opts[k].step()
            times[k].append((time.perf_counter() - t0) * 1e3)
    other = other_cpu_use(start, CpuSnapshot.take())
    n = args.tensors * args.size
    threads = torch.get_num_threads()
    out = {"fusedopt": fusedopt.__file__, "threads": threads, "params": n, "rounds": args.rounds,
           "states": "8bit" if args.eight_bit else "float32",
           "other_cores_busy": None if other is None else round(other, 2)}
    for k, ts in times.items():
        med, q1, q3 = quartiles(ts)
        out[k] = {"ms": round(med, 2), "q1": round(q1, 2), "q3": round(q3, 2),
                  "ns_per_param_thread": round(med * 1e6 * threads / n, 2)}
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
