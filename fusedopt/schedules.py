r"""Learning-rate schedules of the course notes, as ``torch.optim.lr_scheduler`` schedulers.

Each sets ``lr_t = lr_0 * factor(t)`` for ``t`` the scheduler's step count (``last_epoch``):

- :class:`PiecewiseConstantLR`: ``factor = values[i]`` for ``boundaries[i-1] <= t < boundaries[i]``
- :class:`ExponentialDecayLR`: ``factor = exp(-decay * t)``
- :class:`PolynomialDecayLR`: ``factor = (b * t + 1) ** (-a)``
- :class:`InverseSqrtLR`: ``factor = 1 / sqrt(t + 1)``
- :class:`LinearWarmupLR`: ``factor = min(1, (t + 1) / warmup_steps)`` (the warmup RAdam
  makes unnecessary, for comparing the two)

With a tensor ``lr`` (``capturable=True``) the new value is written into the tensor in place,
so a captured CUDA graph sees it, with no host synchronisation.
"""
from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

import torch
from torch.optim.lr_scheduler import LRScheduler


class _FactorLR(LRScheduler):
    """``lr = base_lr * factor(t)``."""

    def factor(self, t: int) -> float:
        raise NotImplementedError

    # torch's LRScheduler writes a tensor lr in place (fill_), so a captured graph sees it.
    def get_lr(self):
        f = self.factor(self.last_epoch)
        return [base * f for base in self.base_lrs]

    def _get_closed_form_lr(self):
        return self.get_lr()


def _base_lrs_as_floats(optimizer):
    for group in optimizer.param_groups:
        if isinstance(group.get("initial_lr"), torch.Tensor):
            group["initial_lr"] = float(group["initial_lr"])
        if "initial_lr" not in group and isinstance(group["lr"], torch.Tensor):
            group["initial_lr"] = float(group["lr"])


class PiecewiseConstantLR(_FactorLR):
    """``factor = values[i]`` between ``boundaries[i-1]`` and ``boundaries[i]`` (len(values) = len(boundaries) + 1)."""

    def __init__(self, optimizer, boundaries: Sequence[int], values: Sequence[float], last_epoch: int = -1):
        if len(values) != len(boundaries) + 1:
            raise ValueError(f"Invalid values: need len(boundaries) + 1 = {len(boundaries) + 1}, got {len(values)}")
        if list(boundaries) != sorted(boundaries):
            raise ValueError(f"Invalid boundaries: {list(boundaries)!r} (must be increasing)")
        self.boundaries, self.values = list(boundaries), [float(v) for v in values]
        _base_lrs_as_floats(optimizer)
        super().__init__(optimizer, last_epoch)

    def factor(self, t):
        return self.values[bisect.bisect_right(self.boundaries, t)]


class ExponentialDecayLR(_FactorLR):
    """``factor = exp(-decay * t)``."""

    def __init__(self, optimizer, decay: float, last_epoch: int = -1):
        if not decay >= 0:
            raise ValueError(f"Invalid decay: {decay!r} (must be >= 0)")
        self.decay = float(decay)
        _base_lrs_as_floats(optimizer)
        super().__init__(optimizer, last_epoch)

    def factor(self, t):
        return math.exp(-self.decay * t)


class PolynomialDecayLR(_FactorLR):
    """``factor = (b * t + 1) ** (-a)``."""

    def __init__(self, optimizer, a: float = 0.5, b: float = 1.0, last_epoch: int = -1):
        if not a >= 0:
            raise ValueError(f"Invalid a: {a!r} (must be >= 0)")
        if not b >= 0:
            raise ValueError(f"Invalid b: {b!r} (must be >= 0)")
        self.a, self.b = float(a), float(b)
        _base_lrs_as_floats(optimizer)
        super().__init__(optimizer, last_epoch)

    def factor(self, t):
        return (self.b * t + 1) ** (-self.a)


class InverseSqrtLR(_FactorLR):
    """``factor = 1 / sqrt(t + 1)``."""

    def __init__(self, optimizer, last_epoch: int = -1):
        _base_lrs_as_floats(optimizer)
        super().__init__(optimizer, last_epoch)

    def factor(self, t):
        return 1.0 / math.sqrt(t + 1)


class LinearWarmupLR(_FactorLR):
    """``factor = min(1, (t + 1) / warmup_steps)``."""

    def __init__(self, optimizer, warmup_steps: int, last_epoch: int = -1):
        if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 1:
            raise ValueError(f"Invalid warmup_steps: {warmup_steps!r} (must be an integer >= 1)")
        self.warmup_steps = warmup_steps
        _base_lrs_as_floats(optimizer)
        super().__init__(optimizer, last_epoch)

    def factor(self, t):
        return min(1.0, (t + 1) / self.warmup_steps)


__all__ = ["PiecewiseConstantLR", "ExponentialDecayLR", "PolynomialDecayLR", "InverseSqrtLR", "LinearWarmupLR"]
