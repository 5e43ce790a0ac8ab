"""The shape every algorithm has: state slots, per-step scalars and flags, reference math.

An algorithm is described once, here in Python, and mirrored by the Triton and C++ kernels.
The positional order of ``SLOTS``, ``SCALARS`` and ``FLAGS`` is the contract with every
backend (see ``docs/kernel-interface.md``).
"""
from __future__ import annotations

import math
from collections import namedtuple
from typing import Any

import torch

COMMON_SCALARS = ("grad_scale", "lr", "weight_decay")
COMMON_FLAGS = ("maximize", "decoupled")


def _is_bad(x: Any) -> bool:
    if isinstance(x, torch.Tensor):
        if x.numel() != 1:
            return True
        x = float(x.detach().cpu())  # only at construction / add_param_group, never in step()
    return math.isnan(x)


def check_nonneg(group: dict, name: str) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``group[name]`` is a number >= 0."""
    x = group[name]
    if _is_bad(x) or float(x) < 0.0:
        raise ValueError(f"Invalid {name}: {x!r} (must be a number >= 0)")


def check_unit(name: str, x: Any) -> None:
    """Raise ``ValueError`` naming ``name`` unless 0 <= x < 1."""
    if _is_bad(x) or not 0.0 <= float(x) < 1.0:
        raise ValueError(f"Invalid {name}: {x!r} (must be in [0, 1))")


def check_betas(group: dict) -> None:
    betas = group["betas"]
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"Invalid betas: {betas!r} (must be a pair (beta1, beta2))")
    check_unit("betas[0]", betas[0])
    check_unit("betas[1]", betas[1])


class Algorithm:
    """Base of the per-algorithm descriptions.

    Subclasses set ``name``, ``defaults``, ``SLOTS``, ``EXTRA_SCALARS``, ``EXTRA_FLAGS`` and
    implement :meth:`validate`, :meth:`slot_init`, :meth:`step_args` and :meth:`update`.
    """

    name: str = ""
    defaults: dict = {}
    SLOTS: tuple[str, ...] = ()
    EXTRA_SCALARS: tuple[str, ...] = ()
    EXTRA_FLAGS: tuple[str, ...] = ()
    has_step: bool = True           # keeps torch's per-parameter ``step`` state
    needs_first_step: bool = False  # SGD: the first momentum step copies g
    eager_state: bool = False       # Adagrad: torch creates its state in the constructor

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        cls.SCALARS = COMMON_SCALARS + cls.EXTRA_SCALARS
        cls.FLAGS = COMMON_FLAGS + cls.EXTRA_FLAGS
        cls.Scalars = namedtuple(f"{cls.__name__}Scalars", cls.SCALARS)
        cls.Flags = namedtuple(f"{cls.__name__}Flags", cls.FLAGS)

    # -- hyperparameters ---------------------------------------------------------------
    def validate(self, group: dict) -> None:
        check_nonneg(group, "lr")
        check_nonneg(group, "weight_decay")
        if "eps" in group:
            check_nonneg(group, "eps")

    # -- state -------------------------------------------------------------------------
    def slot_init(self, group: dict) -> dict[str, float]:
        """The active slots for ``group`` and the value each starts at."""
        return {s: 0.0 for s in self.SLOTS}

    # -- per step ----------------------------------------------------------------------
    def step_args(self, group: dict, step: float, first_step: bool = False):
        """The per-step (scalars, flags) for tensors at step count ``step`` (1-based)."""
        raise NotImplementedError

    def common(self, group: dict, lr=None, decoupled: bool = False):
        lr = as_scalar(group["lr"]) if lr is None else lr
        return (1.0, lr, float(group["weight_decay"])), (bool(group.get("maximize", False)), decoupled)

    # -- reference ---------------------------------------------------------------------
    def update(self, p: torch.Tensor, g: torch.Tensor, st: dict, s, f) -> None:
        """Eager per-tensor update, in place on ``p`` and the slots in ``st``.

        All tensors are in the compute dtype (float32, or float64 for float64 params).
        ``s`` and ``f`` are this algorithm's ``Scalars`` and ``Flags`` namedtuples.
        """
        raise NotImplementedError


def as_scalar(x):
    """A hyperparameter as a host float, or as a tensor when it lives on an accelerator
    (reading it would synchronise; the per-step scalars are then computed on the device)."""
    if isinstance(x, torch.Tensor):
        return float(x) if x.device.type == "cpu" else x
    return float(x)


def sqrt(x):
    """Square root of a host float or of a device tensor (per-step scalars in device mode)."""
    return x ** 0.5


def preamble(p: torch.Tensor, g: torch.Tensor, s, f) -> torch.Tensor:
    """maximize, gradient scale, weight decay: the common start of every update."""
    if f.maximize:
        g = -g
    if s.grad_scale != 1.0:
        g = g * s.grad_scale
    if s.weight_decay != 0:
        if f.decoupled:
            p.mul_(1 - s.lr * s.weight_decay)
        else:
            g = g.add(p, alpha=s.weight_decay)
    return g
