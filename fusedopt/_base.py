"""The one optimizer base class: validate, create state lazily with torch's keys, group, call.

Every ``fusedopt`` optimizer is this class plus an :class:`~fusedopt.algorithms.Algorithm`.
"""
from __future__ import annotations

import copy
from collections import defaultdict
from typing import Any

import torch
from torch.optim import Optimizer

from . import backends
from ._grouping import bucket
from .algorithms import Algorithm

_LOW_PRECISION = (torch.float16, torch.bfloat16)
_SUPPORTED = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def state_dtype_for(param_dtype: torch.dtype) -> torch.dtype:
    """States are float32 for 16-bit params (the math is float32 anyway), else the param's dtype."""
    return torch.float32 if param_dtype in _LOW_PRECISION else param_dtype


class FusedOptimizer(Optimizer):
    """Base of every fusedopt optimizer. Subclasses set ``algorithm`` and a constructor."""

    algorithm: Algorithm

    def __init__(self, params, defaults: dict[str, Any], backend: str = "auto",
                 foreach: bool | None = None, fused: bool | None = None,
                 capturable: bool = False, differentiable: bool = False):
        # foreach/fused are accepted so torch.optim call sites work unchanged; fusedopt always
        # runs its fused multi-tensor step.
        del foreach, fused
        if differentiable:
            raise ValueError("differentiable=True is not supported by fusedopt; use torch.optim")
        if capturable:
            raise ValueError("capturable=True is not supported yet by fusedopt")
        backends.check_backend_name(backend)
        defaults = dict(defaults, backend=backend)
        # host copies of the per-parameter step counters: param -> (step tensor, value)
        self._host_steps: dict[torch.Tensor, tuple[torch.Tensor, float]] = {}
        super().__init__(params, defaults)
        if self.algorithm.eager_state:
            # as torch.optim does for this algorithm, so checkpoints load into it both ways
            for group in self.param_groups:
                for p in group["params"]:
                    self._init_state(p, group)

    # -- groups and validation ---------------------------------------------------------
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        group = dict(param_group)
        params = group["params"]
        params = [params] if isinstance(params, torch.Tensor) else list(params)
        group["params"] = params
        for p in params:
            if not isinstance(p, torch.Tensor):
                raise TypeError(f"{type(self).__name__} can only optimize Tensors, got {type(p).__name__}")
            if p.is_complex():
                raise ValueError(f"{type(self).__name__} does not support complex parameters; "
                                 "optimize torch.view_as_real(param) instead")
            if p.dtype not in _SUPPORTED:
                raise ValueError(f"{type(self).__name__}: unsupported parameter dtype {p.dtype}; "
                                 "use float32, float64, float16 or bfloat16")
        filled = {**self.defaults, **group}
        self.algorithm.validate(filled)
        backends.check_backend_name(filled["backend"])
        super().add_param_group(group)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            for k, v in self.defaults.items():
                group.setdefault(k, v)
        self._host_steps = {}

    def _check_grad(self, p: torch.Tensor) -> None:
        g = p.grad
        name = type(self).__name__
        if g.is_sparse:
            raise RuntimeError(f"{name} does not support sparse gradients")
        if g.shape != p.shape:
            raise ValueError(f"{name}: gradient shape {tuple(g.shape)} differs from its parameter's {tuple(p.shape)}")
        if g.device != p.device:
            raise ValueError(f"{name}: gradient on {g.device} but its parameter on {p.device}")
        if g.dtype != p.dtype:
            raise ValueError(f"{name}: gradient dtype {g.dtype} differs from its parameter's {p.dtype}")

    # -- the step ----------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure=None):
        """Perform one optimization step. ``closure`` re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        # Check everything first: a bad gradient anywhere leaves every parameter untouched.
        work = []
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            for p in params:
                self._check_grad(p)
            if params:
                work.append((group, params))
        for group, params in work:
            self._step_group(group, params)
        return loss

    def _init_state(self, p: torch.Tensor, group: dict) -> dict:
        st = self.state[p]
        sdt = state_dtype_for(p.dtype)
        for slot, fill in self.algorithm.slot_init(group).items():
            if st.get(slot) is None:
                st[slot] = torch.full_like(p, fill, dtype=sdt, memory_format=torch.preserve_format)
                if self.algorithm.needs_first_step:
                    st["_first"] = True
        if self.algorithm.has_step and "step" not in st:
            st["step"] = torch.tensor(0.0, dtype=torch.float32)
        return st

    def _advance_steps(self, params: list[torch.Tensor], states: list[dict]) -> list[float]:
        """Increment every ``state['step']`` in one call and return the new values, read from a
        host cache (no per-tensor reads on the hot path)."""
        steps = [st["step"] for st in states]
        torch._foreach_add_(steps, 1.0)
        out = []
        cache = self._host_steps
        for p, t in zip(params, steps):
            hit = cache.get(p)
            value = hit[1] + 1.0 if hit is not None and hit[0] is t else float(t)
            cache[p] = (t, value)
            out.append(value)
        return out

    def _step_group(self, group: dict, params: list[torch.Tensor]) -> None:
        algo = self.algorithm
        states = [self._init_state(p, group) for p in params]
        first = [st.pop("_first", False) for st in states]
        steps = self._advance_steps(params, states) if algo.has_step else [0.0] * len(params)
        items = range(len(params))
        groups = bucket(items, lambda i: (params[i].device, params[i].dtype, steps[i], first[i]))
        for (device, dtype, step, is_first), idx in groups.items():
            name = group["backend"]
            if name == "auto" and dtype == torch.float64:
                name = "reference"  # the fused kernels are float32/bfloat16/float16
            backend = backends.get_backend(name, device)
            scalars, flags = algo.step_args(group, step, is_first)
            ps = [params[i] for i in idx]
            gs = [p.grad for p in ps]
            slot_lists = [[states[i][s] for i in idx] if states[idx[0]].get(s) is not None else []
                          for s in algo.SLOTS]
            backend.step(algo.name, ps, gs, slot_lists, tuple(scalars), tuple(flags))

    # -- checkpoints -------------------------------------------------------------------
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict saved by this class or by the torch.optim optimizer of the same
        algorithm. Every tensor is checked against its parameter before anything changes."""
        state_dict = state_dict.copy()
        for pre_hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = pre_hook(self, state_dict)
            if result is not None:
                state_dict = result
        groups = self.param_groups
        saved_groups = state_dict["param_groups"]
        if len(groups) != len(saved_groups):
            raise ValueError("loaded state dict has a different number of parameter groups")
        for g, sg in zip(groups, saved_groups):
            if len(g["params"]) != len(sg["params"]):
                raise ValueError("loaded state dict contains a parameter group "
                                 "that doesn't match the size of the optimizer's group")
        id_map = {sid: p for g, sg in zip(groups, saved_groups) for sid, p in zip(sg["params"], g["params"])}
        new_state: defaultdict = defaultdict(dict)
        for sid, value in state_dict["state"].items():
            if sid not in id_map:
                new_state[sid] = value
                continue
            p = id_map[sid]
            entry = {}
            for key, v in value.items():
                if isinstance(v, torch.Tensor) and key != "step":
                    if v.shape != p.shape:
                        raise ValueError(f"state_dict: state {key!r} of parameter {sid} has shape "
                                         f"{tuple(v.shape)}, the parameter has {tuple(p.shape)}")
                    v = v.to(device=p.device, dtype=state_dtype_for(p.dtype), copy=True)
                elif isinstance(v, torch.Tensor):
                    v = v.to(dtype=torch.float32, device="cpu", copy=True)
                entry[key] = v
            new_state[p] = entry
        new_groups = []
        for g, sg in zip(groups, saved_groups):
            ng = copy.deepcopy({k: v for k, v in sg.items() if k != "params"})
            ng["params"] = g["params"]
            for k, v in self.defaults.items():
                ng.setdefault(k, v)
            if "backend" in g:  # keep this optimizer's backend choice across checkpoints
                ng["backend"] = g["backend"]
            new_groups.append(ng)
        for ng in new_groups:
            self.algorithm.validate(ng)
        self.state = new_state
        self.param_groups = new_groups
        self._host_steps = {}
        for post_hook in self._optimizer_load_state_dict_post_hooks.values():
            post_hook(self)
