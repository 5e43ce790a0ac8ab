"""Checkpoints: the optimizer's ``state`` mapping, and ``load_state_dict`` of a state dict saved
by fusedopt or by torch.optim.

``state_dict()`` is torch.optim's own (the keys are torch's, ``param_names`` included when the
optimizer was built from named parameters); loading checks every tensor against its parameter
before anything changes, casts states to the optimizer's state dtype, and keeps this
optimizer's backend choice.
"""
from __future__ import annotations

import copy
from collections import defaultdict
from typing import Any

import torch

from ._plan import state_dtype_for


class State(defaultdict):
    """``optimizer.state``: torch.optim's ``defaultdict(dict)`` that also counts replaced and
    removed entries, so a step plan notices ``opt.state[p] = {}`` or ``del opt.state[p]``."""

    def __init__(self, items=()):
        super().__init__(dict, items)
        self.version = 0

    def __setitem__(self, key, value):
        self.version += 1
        super().__setitem__(key, value)

    def __delitem__(self, key):
        self.version += 1
        super().__delitem__(key)

    def pop(self, *args):
        self.version += 1
        return super().pop(*args)

    def popitem(self):
        self.version += 1
        return super().popitem()

    def clear(self):
        self.version += 1
        super().clear()

    def update(self, *args, **kwargs):
        self.version += 1
        super().update(*args, **kwargs)

    def setdefault(self, key, default=None):
        self.version += 1
        return super().setdefault(key, default)

    def copy(self):
        return State(self)

    __copy__ = copy

    def __reduce__(self):
        return (State, (), None, None, iter(self.items()))


def load(opt, state_dict: dict[str, Any]) -> None:
    """Load ``state_dict`` into ``opt`` (a FusedOptimizer), as torch.optim does, all or nothing."""
    state_dict = state_dict.copy()
    for pre_hook in opt._optimizer_load_state_dict_pre_hooks.values():
        result = pre_hook(opt, state_dict)
        if result is not None:
            state_dict = result
    groups = opt.param_groups
    saved_groups = state_dict["param_groups"]
    if len(groups) != len(saved_groups):
        raise ValueError("loaded state dict has a different number of parameter groups")
    for g, sg in zip(groups, saved_groups):
        if len(g["params"]) != len(sg["params"]):
            raise ValueError("loaded state dict contains a parameter group "
                             "that doesn't match the size of the optimizer's group")
    id_map = {sid: p for g, sg in zip(groups, saved_groups) for sid, p in zip(sg["params"], g["params"])}
    sdt_of = {sid: sg.get("state_dtype", g.get("state_dtype"))
              for g, sg in zip(groups, saved_groups) for sid in sg["params"]}
    new_state: defaultdict = defaultdict(dict)
    for sid, value in state_dict["state"].items():
        if sid not in id_map:
            new_state[sid] = value
            continue
        p = id_map[sid]
        entry = {}
        for key, v in value.items():
            if isinstance(v, torch.Tensor) and key not in opt.algorithm.COUNTERS:
                if v.shape != p.shape:
                    raise ValueError(f"state_dict: state {key!r} of parameter {sid} has shape "
                                     f"{tuple(v.shape)}, the parameter has {tuple(p.shape)}")
                dtype = torch.float32 if key == "master_param" else (sdt_of[sid] or state_dtype_for(p.dtype))
                v = v.to(device=p.device, dtype=dtype, copy=True)
            elif isinstance(v, torch.Tensor):
                # the step counters adopt it (one copy for all params) at the next step
                v = v.to(dtype=torch.float32, copy=True)
            entry[key] = v
        new_state[p] = entry
    new_groups = []
    for g, sg in zip(groups, saved_groups):
        ng = copy.deepcopy({k: v for k, v in sg.items() if k != "params"})
        ng["params"] = g["params"]
        if "param_names" in g and "param_names" not in ng:  # as torch: saved names win
            ng["param_names"] = g["param_names"]
        for k, v in opt.defaults.items():
            ng.setdefault(k, v)
        if "backend" in g:  # keep this optimizer's backend choice across checkpoints
            ng["backend"] = g["backend"]
        new_groups.append(ng)
    for ng in new_groups:
        opt.algorithm.validate(ng)
    opt.state = State(new_state)
    opt.param_groups = new_groups
    opt._reset_caches()
    for post_hook in opt._optimizer_load_state_dict_post_hooks.values():
        post_hook(opt)
