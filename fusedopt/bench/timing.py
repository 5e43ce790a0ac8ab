"""Timing, the copy-bandwidth roofline and the bytes model.

Times are of whole ``optimizer.step()`` calls (Python bookkeeping, state creation checks and
every kernel launch included), one sample per call: ``torch.cuda.Event`` pairs on a GPU,
``time.perf_counter`` on the CPU. Warm-up steps (state allocation, compilation, caches) are
excluded; the median of the timed samples is reported.
"""
from __future__ import annotations

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
    def iqr(self) -> float:
        s = sorted(self.samples_ms)
        if len(s) < 4:
            return s[-1] - s[0]
        q = statistics.quantiles(s, n=4)
        return q[2] - q[0]


def _one(fn: Callable[[], object], device: torch.device) -> float:
    """Milliseconds of one call, synchronised (used for warm-up and the repeat estimate)."""
    synchronize(device)
    t = time.perf_counter()
    fn()
    synchronize(device)
    return (time.perf_counter() - t) * 1e3


def time_calls(fn: Callable[[], object], device: torch.device, *, warmup: int = 2,
               repeats: int = 10, min_repeats: int = 3, max_seconds: float | None = None) -> Timing:
    """Time up to ``repeats`` calls of ``fn`` after ``warmup`` untimed ones.

    With ``max_seconds`` the timed calls are cut to about that long in all (estimated from the
    last warm-up call), never below ``min_repeats`` unless those would take over four times the
    budget. A call slower than the budget gets two warm-up calls (the first allocates state or
    compiles) and one timed sample; one slower than ten budgets, one warm-up call and one sample. The number of
    samples taken is part of the result.
    """
    budget = None if not max_seconds else max_seconds * 1e3
    est = None
    for i in range(max(warmup, 1)):
        est = _one(fn, device)
        if budget is not None and est > (10 * budget if i == 0 else budget):
            break  # the first call allocates state or compiles: only a very slow one stops here
    n = repeats
    if budget is not None and est and est > 0:
        floor = min_repeats if est * min_repeats <= 4 * budget else 1
        n = max(floor, min(repeats, int(budget / est)))
    n = max(n, 1)
    if device.type == "cuda":
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
        for s, e in zip(starts, ends):
            s.record()
            fn()
            e.record()
        torch.cuda.synchronize(device)
        samples = [s.elapsed_time(e) for s, e in zip(starts, ends)]
    else:
        samples = []
        for _ in range(n):
            t = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t) * 1e3)
    return Timing(samples)


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

    fp32: SGD 12, SGD+momentum/Adagrad/RMSprop 20, Adadelta/Adam/AdamW/Yogi/RAdam 28,
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
