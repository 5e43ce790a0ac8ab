r"""Learning-rate schedules of the course notes, as ``torch.optim.lr_scheduler`` schedulers.

Each sets ``lr_t = lr_0 * factor(t)`` for ``t`` the schedule's step count:

- :class:`PiecewiseConstantLR`: ``factor = values[i]`` for ``boundaries[i-1] <= t < boundaries[i]``
- :class:`ExponentialDecayLR`: ``factor = exp(-decay * t)``
- :class:`PolynomialDecayLR`: ``factor = (b * t + 1) ** (-a)``
- :class:`InverseSqrtLR`: ``factor = 1 / sqrt(t + 1)``
- :class:`LinearWarmupLR`: ``factor = min(1, (t + 1) / warmup_steps)`` (the warmup RAdam
  makes unnecessary, for comparing the two)

With a tensor ``lr`` (``capturable=True``) the new value is written into the tensor in place,
so a captured CUDA graph sees it, with no host synchronisation.

By default ``t = last_epoch``, the number of ``scheduler.step()`` calls, as in torch. With
``skip_aware=True``, ``t`` (the scheduler's attribute ``t``) counts only the optimizer steps
that were not skipped: each ``scheduler.step()`` adds ``1 - optimizer.step_skipped``, so an AMP
overflow step, which changes nothing in a fusedopt optimizer, does not advance the schedule
either (the warmup does not run ahead of the updates). An optimizer without ``step_skipped``
(torch.optim) advances ``t`` at every call, as by default.

- Tensor ``lr`` (every group's): ``t`` is a 0-dim int64 tensor on the lr's device and the factor
  is computed there with torch ops: no host synchronisation. Keep the lr on the params' device
  (where ``step_skipped`` is).
- Float ``lr`` (every group's): the factor is a host float, so each ``scheduler.step()`` reads
  ``step_skipped``: free for CPU params, a device synchronisation on an accelerator; use a
  tensor lr there.

Under ``SequentialLR`` the milestones count every ``scheduler.step()``; within a phase a
skip-aware schedule counts its non-skipped steps from 0.
"""
from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

import torch
from torch.optim.lr_scheduler import LRScheduler


class _FactorLR(LRScheduler):
    """``lr = base_lr * factor(t)``."""

    def __init__(self, optimizer, last_epoch: int, skip_aware: bool):
        if not isinstance(skip_aware, bool):
            raise ValueError(f"Invalid skip_aware: {skip_aware!r} (must be a bool)")
        self.skip_aware = skip_aware
        if skip_aware:
            _count_device(optimizer)  # refuses a mix of float and tensor lrs before anything changes
        _base_lrs_as_floats(optimizer)
        super().__init__(optimizer, last_epoch)

    def factor(self, t: int) -> float:
        """``factor(t)`` for a host step count."""
        raise NotImplementedError

    def tensor_factor(self, t: torch.Tensor) -> torch.Tensor:
        """``factor(t)`` for ``t`` a 0-dim float64 tensor, with torch ops (no host read)."""
        raise NotImplementedError

    # torch's LRScheduler calls get_lr from step() once last_epoch has advanced by one, and
    # writes the values it returns into a tensor lr in place (fill_), so a captured graph sees them.
    def get_lr(self):
        if self.skip_aware:
            if self._step_count == 1:  # the step the constructor makes: the schedule starts here
                self.t = self._count(self.last_epoch)
            else:
                self._advance()
        return self._lrs()

    # step(epoch), and SequentialLR at a milestone, jump the schedule to t = epoch.
    def _get_closed_form_lr(self):
        if self.skip_aware:
            self.t = self._count(self.last_epoch)
        return self._lrs()

    def _lrs(self):
        if not self.skip_aware:
            f = self.factor(self.last_epoch)
        elif isinstance(self.t, torch.Tensor):
            f = self.tensor_factor(self.t.to(torch.float64))
        else:
            f = self.factor(self.t)
        return [base * f for base in self.base_lrs]

    def _advance(self) -> None:
        skipped = getattr(self.optimizer, "step_skipped", None)
        if isinstance(self.t, torch.Tensor):
            advance = 1 if skipped is None else 1 - skipped.to(device=self.t.device, dtype=torch.int64)
            self.t = self.t + advance  # out of place: a state_dict taken earlier keeps the count it saw
        elif skipped is None or not skipped:  # reads the flag: a synchronisation on an accelerator
            self.t += 1

    def _count(self, value) -> int | torch.Tensor:
        """``value`` as this scheduler's count: a host int, or an int64 tensor on the lr's device."""
        device = _count_device(self.optimizer)
        if device is None:
            return int(value)
        if isinstance(value, torch.Tensor):
            return value.to(device=device, dtype=torch.int64)
        return torch.full((), int(value), dtype=torch.int64, device=device)  # a fill: no copy to wait on

    def load_state_dict(self, state_dict) -> None:
        """Load a state saved by :meth:`state_dict`. The count ``t`` moves to this scheduler's lr
        (onto its device, or to a host int for a float lr); a state saved without one resumes
        at ``last_epoch``."""
        super().load_state_dict(state_dict)
        if self.skip_aware:
            self.t = self._count(state_dict.get("t", self.last_epoch))


def _count_device(optimizer) -> torch.device | None:
    """The device of the skip-aware count: that of the tensor lrs, None for float lrs."""
    lrs = [g["lr"] for g in optimizer.param_groups]
    devices = {lr.device for lr in lrs if isinstance(lr, torch.Tensor)}
    if not devices:
        return None
    if len(devices) > 1 or not all(isinstance(lr, torch.Tensor) for lr in lrs):
        raise ValueError("skip_aware=True needs every param group's lr to be a float, or every one a "
                         f"tensor on one device; got {[type(lr).__name__ for lr in lrs]} "
                         f"on {sorted(map(str, devices))}")
    return devices.pop()


def _base_lrs_as_floats(optimizer):
    for group in optimizer.param_groups:
        if isinstance(group.get("initial_lr"), torch.Tensor):
            group["initial_lr"] = float(group["initial_lr"])
        if "initial_lr" not in group and isinstance(group["lr"], torch.Tensor):
            group["initial_lr"] = float(group["lr"])


class PiecewiseConstantLR(_FactorLR):
    """``factor = values[i]`` between ``boundaries[i-1]`` and ``boundaries[i]`` (len(values) = len(boundaries) + 1)."""

    def __init__(self, optimizer, boundaries: Sequence[int], values: Sequence[float], last_epoch: int = -1, *,
                 skip_aware: bool = False):
        if len(values) != len(boundaries) + 1:
            raise ValueError(f"Invalid values: need len(boundaries) + 1 = {len(boundaries) + 1}, got {len(values)}")
        if list(boundaries) != sorted(boundaries):
            raise ValueError(f"Invalid boundaries: {list(boundaries)!r} (must be increasing)")
        self.boundaries, self.values = list(boundaries), [float(v) for v in values]
        super().__init__(optimizer, last_epoch, skip_aware)

    def factor(self, t):
        return self.values[bisect.bisect_right(self.boundaries, t)]

    # A chain of selects rather than a lookup: no boundary or value table to keep on the device.
    def tensor_factor(self, t):
        f = torch.full_like(t, self.values[-1])
        for b, v in zip(reversed(self.boundaries), reversed(self.values[:-1])):
            f = torch.where(t < b, v, f)
        return f


class ExponentialDecayLR(_FactorLR):
    """``factor = exp(-decay * t)``."""

    def __init__(self, optimizer, decay: float, last_epoch: int = -1, *, skip_aware: bool = False):
        if not decay >= 0:
            raise ValueError(f"Invalid decay: {decay!r} (must be >= 0)")
        self.decay = float(decay)
        super().__init__(optimizer, last_epoch, skip_aware)

    def factor(self, t):
        return math.exp(-self.decay * t)

    def tensor_factor(self, t):
        return torch.exp(t * -self.decay)


class PolynomialDecayLR(_FactorLR):
    """``factor = (b * t + 1) ** (-a)``."""

    def __init__(self, optimizer, a: float = 0.5, b: float = 1.0, last_epoch: int = -1, *,
                 skip_aware: bool = False):
        if not a >= 0:
            raise ValueError(f"Invalid a: {a!r} (must be >= 0)")
        if not b >= 0:
            raise ValueError(f"Invalid b: {b!r} (must be >= 0)")
        self.a, self.b = float(a), float(b)
        super().__init__(optimizer, last_epoch, skip_aware)

    def factor(self, t):
        return (self.b * t + 1) ** (-self.a)

    def tensor_factor(self, t):
        return torch.pow(t * self.b + 1, -self.a)


class InverseSqrtLR(_FactorLR):
    """``factor = 1 / sqrt(t + 1)``."""

    def __init__(self, optimizer, last_epoch: int = -1, *, skip_aware: bool = False):
        super().__init__(optimizer, last_epoch, skip_aware)

    def factor(self, t):
        return 1.0 / math.sqrt(t + 1)

    def tensor_factor(self, t):
        return torch.rsqrt(t + 1)


class LinearWarmupLR(_FactorLR):
    """``factor = min(1, (t + 1) / warmup_steps)``."""

    def __init__(self, optimizer, warmup_steps: int, last_epoch: int = -1, *, skip_aware: bool = False):
        if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 1:
            raise ValueError(f"Invalid warmup_steps: {warmup_steps!r} (must be an integer >= 1)")
        self.warmup_steps = warmup_steps
        super().__init__(optimizer, last_epoch, skip_aware)

    def factor(self, t):
        return min(1.0, (t + 1) / self.warmup_steps)

    def tensor_factor(self, t):
        return torch.clamp((t + 1) / self.warmup_steps, max=1.0)


__all__ = ["PiecewiseConstantLR", "ExponentialDecayLR", "PolynomialDecayLR", "InverseSqrtLR", "LinearWarmupLR"]
