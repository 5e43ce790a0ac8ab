"""The shape every algorithm has: hyperparameters, state slots, per-tensor scalars, flags.

An algorithm is described once, here in Python, and mirrored by the Triton and C++ kernels
(``docs/kernel-interface.md``). The contract with every backend is positional:

- ``HYPER``: the row of the per-group hyperparameter table, ``COMMON_HYPER`` first, then the
  algorithm's own (``EXTRA_HYPER``), all float64 (booleans as 0/1);
- ``TENSOR_SCALARS``: what each kernel derives once per tensor (or work item), in float64,
  from its group's row and its own step count ``t`` (:meth:`Algorithm.tensor_scalars`);
- ``SLOTS``: the state tensors, in order; an inactive slot is an empty list;
- ``SCALAR_STATES``: per-tensor scalar states beside the step count (NAdam's ``mu_product``),
  with their initial values: they live in the step-counter buffer, right after each tensor's
  count, and the kernels read them with it (:meth:`Algorithm.advance_scalar_states` moves
  them on, on the device, before the kernels run);
- ``FLAGS``: the compile-time variants (a launch never mixes them).
"""
from __future__ import annotations

import math
from collections import namedtuple
from typing import Any

import torch

COMMON_HYPER = ("lr", "weight_decay", "maximize", "decoupled")


# Note [refusals as torch]: a bad hyperparameter is refused with the exception type
# torch.optim raises for it (some of torch's are accidents of its checks, e.g. a RuntimeError for
# a multi-element tensor, an IndexError for a 0-dim tensor betas), so code that catches torch's
# errors catches ours; the messages are fusedopt's own and name the argument.

def _value(name: str, x: Any) -> float:
    """``x`` as a float for a range check; refuses what torch refuses before its comparison."""
    if isinstance(x, torch.Tensor):
        if x.numel() != 1:
            error = ValueError if name == "lr" else RuntimeError
            raise error(f"Invalid {name}: a tensor {name} must have one element, got shape {tuple(x.shape)}")
        return float(x.detach().cpu())  # only at construction / add_param_group, never in step()
    if not isinstance(x, (int, float)):
        raise TypeError(f"Invalid {name}: {x!r} (must be a number)")
    return float(x)


def check_nonneg(group: dict, name: str) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``group[name]`` is a number >= 0."""
    x = group[name]
    v = _value(name, x)
    if math.isnan(v) or v < 0.0:
        raise ValueError(f"Invalid {name}: {x!r} (must be a number >= 0)")


def check_unit(name: str, x: Any, closed: bool = False) -> None:
    """Raise ``ValueError`` naming ``name`` unless 0 <= x < 1 (0 <= x <= 1 when ``closed``)."""
    v = _value(name, x)
    if math.isnan(v) or not (0.0 <= v <= 1.0 if closed else 0.0 <= v < 1.0):
        raise ValueError(f"Invalid {name}: {x!r} (must be in [0, 1{']' if closed else ')'})")


def check_betas(group: dict) -> None:
    betas = group["betas"]
    if isinstance(betas, torch.Tensor) and betas.dim() == 0:
        raise IndexError(f"Invalid betas: {betas!r} (must be a pair (beta1, beta2))")
    if not isinstance(betas, (tuple, list, torch.Tensor)):
        raise TypeError(f"Invalid betas: {betas!r} (must be a pair (beta1, beta2))")
    if len(betas) < 2:
        raise IndexError(f"Invalid betas: {betas!r} (must be a pair (beta1, beta2))")
    if len(betas) > 2:
        raise ValueError(f"Invalid betas: {betas!r} (must be a pair (beta1, beta2))")
    if isinstance(betas[0], torch.Tensor) != isinstance(betas[1], torch.Tensor):
        raise ValueError(f"Invalid betas: {betas!r} (both floats or both tensors)")
    check_unit("betas[0]", betas[0])
    check_unit("betas[1]", betas[1])


class Algorithm:
    """Base of the per-algorithm declarations.

    Subclasses set ``name``, ``defaults``, ``SLOTS``, ``EXTRA_HYPER``, ``TENSOR_SCALARS``,
    ``FLAGS`` (and ``SCALAR_STATES``), implement :meth:`update`, and override what differs from
    the defaults here: :meth:`validate`, :meth:`slot_init`, :meth:`extra_hyper`,
    :meth:`tensor_scalars`, :meth:`advance_scalar_states`.
    """

    name: str = ""
    defaults: dict = {}
    SLOTS: tuple[str, ...] = ()
    EXTRA_HYPER: tuple[str, ...] = ()
    TENSOR_SCALARS: tuple[str, ...] = ()
    SCALAR_STATES: dict[str, float] = {}
    FLAGS: tuple[str, ...] = ()
    # Two traversals per step (LAMB): the first updates the states and reduces per-tensor sums
    # of squares of the param and of the update, the second applies the update scaled by them.
    REDUCES: bool = False
    has_step: bool = True       # keeps torch's per-parameter ``state['step']`` (SGD counts privately)
    eager_state: bool = False   # Adagrad: torch creates its state in the constructor
    decoupled_key: str | None = None  # the group option that selects decoupled weight decay
    always_decoupled: bool = False    # decoupled weight decay without an option (Lion)

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        cls.HYPER = COMMON_HYPER + cls.EXTRA_HYPER
        # the state keys of a tensor's block in the step-counter buffer (empty: a private counter)
        cls.COUNTERS = ("step",) + tuple(cls.SCALAR_STATES) if cls.has_step else ()
        cls.COUNTER_INITS = (0.0,) + tuple(cls.SCALAR_STATES.values()) if cls.has_step else ()
        cls.Scalars = namedtuple(f"{cls.__name__}Scalars", cls.HYPER + cls.TENSOR_SCALARS)
        cls.Flags = namedtuple(f"{cls.__name__}Flags", cls.FLAGS)

    # -- hyperparameters ---------------------------------------------------------------
    def validate(self, group: dict) -> None:
        check_nonneg(group, "lr")
        check_nonneg(group, "weight_decay")
        if "eps" in group:
            check_nonneg(group, "eps")

    def hyper_row(self, group: dict) -> tuple:
        """The group's row of the hyperparameter table, in ``HYPER`` order. ``lr`` stays a
        tensor when it lives on an accelerator (the table is then filled on the device)."""
        lr = group["lr"]
        if not (isinstance(lr, torch.Tensor) and lr.device.type != "cpu"):
            lr = float(lr)
        decoupled = bool(group.get(self.decoupled_key, False)) if self.decoupled_key else self.always_decoupled
        return (lr, float(group["weight_decay"]), float(bool(group.get("maximize", False))),
                float(decoupled)) + tuple(self.extra_hyper(group))

    def extra_hyper(self, group: dict) -> tuple[float, ...]:
        """The algorithm's own columns (``EXTRA_HYPER``), each the group's option of that name;
        ``beta1`` and ``beta2`` are the two halves of its ``betas``."""
        betas = group.get("betas")
        return tuple(float(betas[0] if k == "beta1" else betas[1] if k == "beta2" else group[k])
                     for k in self.EXTRA_HYPER)

    def flags(self, group: dict) -> tuple[bool, ...]:
        """The compile-time variants for ``group``, in ``FLAGS`` order."""
        return tuple(bool(group[k]) for k in self.FLAGS)

    # -- state -------------------------------------------------------------------------
    def slot_init(self, group: dict) -> dict[str, float]:
        """The active slots for ``group`` and the value each starts at."""
        return {s: 0.0 for s in self.SLOTS}

    # -- per tensor --------------------------------------------------------------------
    def scalars(self, row, t: float, scalar_states=()):
        """Everything one tensor's update reads: its group's row and the per-tensor scalars
        at step count ``t`` (after this step's increment; the first step is 1) and with its
        ``SCALAR_STATES`` values (after this step's advance)."""
        h = dict(zip(self.HYPER, (float(x) for x in row)))
        return self.Scalars(**h, **self.tensor_scalars(h, float(t), *(float(x) for x in scalar_states)))

    def tensor_scalars(self, h: dict, t: float) -> dict[str, float]:
        """The per-tensor scalars from the hyperparameters ``h`` and the step count ``t`` (and
        the ``SCALAR_STATES`` values, as further arguments), in float64 (the kernels compute
        the same once per tensor or work item)."""
        return {}

    def advance_scalar_states(self, data: torch.Tensor, slots: torch.Tensor, rows: torch.Tensor,
                              hyper: torch.Tensor, advance) -> None:
        """Move the ``SCALAR_STATES`` of the tensors whose counters are at ``slots`` of the
        buffer ``data`` (already advanced) on by one step, in place, on the device; ``rows``
        are their rows of ``hyper``; ``advance`` is 1.0, or a 0-dim tensor that is 0 on an
        overflow step (nothing moves). Nothing to do without scalar states."""

    # -- reference ---------------------------------------------------------------------
    def update(self, p: torch.Tensor, g: torch.Tensor, st: dict, s, f) -> None:
        """Eager per-tensor update, in place on ``p`` and the slots in ``st``.

        All tensors are in the compute dtype (float32, or float64 for float64 params).
        ``s`` and ``f`` are this algorithm's ``Scalars`` and ``Flags`` namedtuples.
        """
        raise NotImplementedError


def preamble(p: torch.Tensor, g: torch.Tensor, s) -> torch.Tensor:
    """maximize and weight decay: the common start of every update (the gradient scale is
    applied by the backend)."""
    if s.maximize:
        g = -g
    if s.weight_decay != 0:
        if s.decoupled:
            p.mul_(1 - s.lr * s.weight_decay)
        else:
            g = g.add(p, alpha=s.weight_decay)
    return g
