"""Timing, the copy-bandwidth roofline, the bytes model and the machine's load.

Times are of whole calls (``optimizer.step()``: Python bookkeeping, state creation checks and
every kernel launch included), one sample per call: ``torch.cuda.Event`` pairs on a GPU,
``time.perf_counter`` on the CPU. The contenders of a comparison are timed interleaved: each
is warmed up (state allocation, compilation, caches), then rounds call every contender once,
in an order shuffled per round, so that a change in the machine's load during the
measurement hits every contender alike instead of whichever ran at that moment. A
contender's median, minimum and quartiles are over all its samples.
"""
from __future__ import annotations

import os
import random
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timing:
    samples_ms: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.samples_ms)

    @property
    def min(self) -> float:
        return min(self.samples_ms)

    @property
    def quartiles(self) -> tuple[float, float]:
        """First and third quartile; the minimum and maximum below four samples, where
        quartiles would be extrapolated past the data."""
        s = sorted(self.samples_ms)
        if len(s) < 4:
            return s[0], s[-1]
        q = statistics.quantiles(s, n=4)
        return q[0], q[2]

    @property
    def iqr(self) -> float:
        q1, q3 = self.quartiles
        return q3 - q1


def _one(fn: Callable[[], object], device: torch.device) -> float:
    """Milliseconds of one call, synchronised (used for warm-up and the estimates)."""
    synchronize(device)
    t = time.perf_counter()
    fn()
    synchronize(device)
    return (time.perf_counter() - t) * 1e3


def warm_up(fn: Callable[[], object], device: torch.device, warmup: int = 2,
            budget_ms: float | None = None) -> float:
    """Make ``warmup`` untimed calls of ``fn`` (at least one) and return the milliseconds of
    the last, the estimate of a timed call. A call slower than ``budget_ms`` ends the warm-up
    early, the first call only past ten budgets (it allocates state or compiles)."""
    est = 0.0
    for i in range(max(warmup, 1)):
        est = _one(fn, device)
        if budget_ms is not None and est > (10 * budget_ms if i == 0 else budget_ms):
            break
    return est


def interleave(fns: list[Callable[[], object]], device: torch.device, est_ms: list[float], *,
               repeats: int = 10, min_repeats: int = 3, max_seconds: float | None = None,
               seed: int = 0, before: list[Callable[[], object] | None] | None = None) -> list[Timing]:
    """Time the warmed-up ``fns`` in rounds; each round calls every function once, in an order
    shuffled per round (seeded: the same run makes the same orders), one sample per call;
    ``before[i]``, where given, is called right before each call of ``fns[i]``, untimed.

    Rounds go on until there are ``repeats`` of them or, with ``max_seconds``, until the next
    round (as long as the last, at first the sum of ``est_ms``) would take the rounds past
    about that many seconds in all; but never fewer than ``min_repeats`` rounds (``repeats``
    permitting), however slow: fewer samples say nothing of the spread. Every function gets
    the same number of samples. One call per turn, not several, so that every sample is taken
    alike: right after some other contender's call, as in training, where forward and
    backward run between two steps, rather than a mix of a first call after a switch and
    calls after its own.
    """
    budget = None if not max_seconds else max_seconds * 1e3
    last = sum(est_ms)
    rng = random.Random(seed)
    order = list(range(len(fns)))
    samples: list[list[float]] = [[] for _ in fns]
    spent = 0.0
    before = before or [None] * len(fns)
    while len(samples[0]) < repeats and (len(samples[0]) < min_repeats or budget is None or spent + last <= budget):
        rng.shuffle(order)
        synchronize(device)
        t_round = time.perf_counter()
        if device.type == "cuda":
            events = []
            for i in order:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                if before[i] is not None:
                    before[i]()
                start.record()
                fns[i]()
                end.record()
                events.append((i, start, end))
            torch.cuda.synchronize(device)
            for i, start, end in events:
                samples[i].append(start.elapsed_time(end))
        else:
            for i in order:
                if before[i] is not None:
                    before[i]()
                t = time.perf_counter()
                fns[i]()
                samples[i].append((time.perf_counter() - t) * 1e3)
        last = (time.perf_counter() - t_round) * 1e3
        spent += last
    return [Timing(s) for s in samples]


def time_calls(fn: Callable[[], object], device: torch.device, *, warmup: int = 2,
               repeats: int = 10, min_repeats: int = 3, max_seconds: float | None = None) -> Timing:
    """Time up to ``repeats`` calls of ``fn`` alone after ``warmup`` untimed ones, the timed
    calls capped at about ``max_seconds`` in all: :func:`interleave` with one function."""
    budget_ms = None if not max_seconds else max_seconds * 1e3
    est = warm_up(fn, device, warmup, budget_ms)
    return interleave([fn], device, [est], repeats=repeats, min_repeats=min_repeats,
                      max_seconds=max_seconds)[0]


def copy_bandwidth(device: torch.device, nbytes: int, repeats: int = 10) -> float:
    """GB/s of ``dst.copy_(src)`` for two float32 tensors of ``nbytes`` on ``device``, counting
    the read and the write (2 * nbytes per copy); median of ``repeats`` copies."""
    n = max(nbytes // 4, 1)
    src = torch.ones(n, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    t = time_calls(lambda: dst.copy_(src), device, warmup=2, repeats=repeats)
    del src, dst
    return 2 * n * 4 / (t.median * 1e-3) / 1e9


def inplace_bandwidth(device: torch.device, nbytes: int, repeats: int = 10) -> float:
    """GB/s of ``a.add_(b)`` (read a and b, write a in place: 3 * nbytes per call). An
    optimizer step updates in place like this, so it does not pay the write-allocate read that
    a copy's destination costs on CPUs; on a CPU it can therefore beat the copy bandwidth."""
    n = max(nbytes // 4, 1)
    a = torch.ones(n, dtype=torch.float32, device=device)
    b = torch.ones_like(a)
    t = time_calls(lambda: a.add_(b, alpha=0.0), device, warmup=2, repeats=repeats)
    del a, b
    return 3 * n * 4 / (t.median * 1e-3) / 1e9


# -- the bytes model ---------------------------------------------------------------------------
def bytes_per_param(param_dtype: torch.dtype, grad_dtype: torch.dtype,
                    state_dtypes: list[torch.dtype], master: bool = False) -> int:
    """Bytes moved per parameter per step (reads + writes): the param read and written, the
    gradient read, each state read and written; with float32 master weights the master is read
    and written and the 16-bit param only written.

    fp32: SGD 12, SGD+momentum/Adagrad/RMSprop/Lion 20, Adadelta/Adam/AdamW/Yogi/RAdam/Adamax/NAdam 28,
    amsgrad 36. bf16 params and grads with fp32 states: Adam 22; with fp32 master weights 28;
    torch's bf16 Adam (bf16 states) 14.
    """
    p = torch.empty((), dtype=param_dtype).element_size()
    g = torch.empty((), dtype=grad_dtype).element_size()
    b = g + sum(2 * torch.empty((), dtype=s).element_size() for s in state_dtypes)
    b += (p + 2 * 4) if master else 2 * p
    return b


def observed_state_dtypes(optimizer: torch.optim.Optimizer, param: torch.Tensor) -> list[torch.dtype] | None:
    """The dtypes of the per-element states ``optimizer`` keeps for ``param`` (tensors of the
    param's shape; the step counter and master weights excluded), or None if it keeps its
    state elsewhere."""
    st = optimizer.state.get(param)
    if st is None:
        return None
    return [v.dtype for k, v in st.items()
            if isinstance(v, torch.Tensor) and k != "step" and "master" not in k
            and v.shape == param.shape]


# -- the machine's load ------------------------------------------------------------------------
def _machine_cpu_seconds() -> float | None:
    """CPU seconds all processes on the machine have used since boot, from /proc/stat: every
    state but idle and iowait, steal included (a hypervisor's other guests take the CPUs too);
    None without /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    """CPU seconds of this process (all its threads) and of the children it has waited for
    (DeepSpeed's JIT build of its op, say)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


@dataclass(frozen=True)
class CpuSnapshot:
    """The clocks :func:`other_cpu_use` compares, at one moment."""
    wall: float
    machine: float | None
    own: float
    load: float | None  # 1-minute load average

    @classmethod
    def take(cls) -> "CpuSnapshot":
        return cls(time.monotonic(), _machine_cpu_seconds(), _own_cpu_seconds(),
                   os.getloadavg()[0] if hasattr(os, "getloadavg") else None)


def other_cpu_use(start: CpuSnapshot, end: CpuSnapshot) -> float | None:
    """How many cores other processes kept busy on average between two snapshots: the
    machine's CPU time less this process's, over the wall time. This run's own work is left
    out, so the figure reads the same whether the run used one core or all of them (a load
    average counts the run itself). None where /proc/stat is missing."""
    if start.machine is None or end.machine is None or end.wall <= start.wall:
        return None
    other = (end.machine - start.machine) - (end.own - start.own)
    return max(other, 0.0) / (end.wall - start.wall)
