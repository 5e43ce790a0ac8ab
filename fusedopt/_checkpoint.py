"""Checkpoints: the optimizer's ``state`` mapping, and ``load_state_dict`` of a state dict saved
by fusedopt or by torch.optim.

``state_dict()`` is torch.optim's own (the keys are torch's, ``param_names`` included when the
optimizer was built from named parameters; 8-bit states are their codes and scales, Note [8-bit
states]); loading checks every tensor against its parameter before anything changes, keeps this
optimizer's choices of backend and state storage, and converts the states to that storage:
casts them to its state dtype, quantizes float states into 8-bit ones, dequantizes 8-bit ones
for float storage. ``fusedopt.lowbit.dequantize_state_dict`` makes an 8-bit state dict one that
torch.optim loads.
"""
from __future__ import annotations

import copy
from collections import defaultdict
from typing import Any

import torch

from . import _distributed, lowbit
from ._plan import eight_bit, state_dtype_of

_SCALE = lowbit.ABSMAX_SUFFIX
# What a param group keeps of this optimizer across a load: its backend and state storage.
_OWN_OPTIONS = ("backend", "state_dtype", "min_8bit_size")


# Note [state versions]: a step plan (Note [step plans]) stays valid while no state entry was
# replaced, whether a param's whole entry (``opt.state[p] = {...}``) or one of its tensors
# (``opt.state[p]["exp_avg"] = t``). Rather than comparing every state tensor with the plan's
# before every step (a pass over thousands of scattered dicts: 1.5-2.7 ms for 10,000 params on
# the 2-core development machine, a tenth of the whole step), both levels count their changes in one
# number, ``State.version``: the entries ``State`` creates itself (torch.optim's
# ``defaultdict(dict)``) and those it is built from are ``ParamState`` dicts, which count in
# their State's version. An entry assigned by hand stays the dict it is (torch.optim's behaviour:
# it may be edited later through the caller's own reference); a plan over such an entry checks its
# tensors before each step, as before. Copies and pickles of a ParamState are plain dicts, so a
# state dict saved from fusedopt loads with ``torch.load(weights_only=True)`` and without fusedopt.
class ParamState(dict):
    """One param's entry of ``optimizer.state``: a dict that counts its replaced and removed
    entries in ``owner.version`` (Note [state versions])."""

    __slots__ = ("owner",)

    def __init__(self, owner: "State", items=()):
        super().__init__(items)
        self.owner = owner

    def __setitem__(self, key, value):
        self.owner.version += 1
        super().__setitem__(key, value)

    def __delitem__(self, key):
        self.owner.version += 1
        super().__delitem__(key)

    def __ior__(self, other):
        self.owner.version += 1
        return super().__ior__(other)

    def pop(self, *args):
        self.owner.version += 1
        return super().pop(*args)

    def popitem(self):
        self.owner.version += 1
        return super().popitem()

    def clear(self):
        self.owner.version += 1
        super().clear()

    def update(self, *args, **kwargs):
        self.owner.version += 1
        super().update(*args, **kwargs)

    def setdefault(self, key, default=None):
        self.owner.version += 1
        return super().setdefault(key, default)

    def __reduce__(self):
        return (dict, (dict(self),))


class State(defaultdict):
    """``optimizer.state``: torch.optim's ``defaultdict(dict)`` that also counts replaced and
    removed entries, its own and those of its ParamState entries, so that a step plan notices
    ``opt.state[p] = {}``, ``del opt.state[p]`` or ``opt.state[p]["exp_avg"] = t`` (Note [state
    versions]). Built from a mapping, it keeps a ParamState copy of each of its dict entries."""

    def __init__(self, items=()):
        super().__init__(dict)
        self.version = 0
        for key, value in dict(items).items():
            super().__setitem__(key, ParamState(self, value) if isinstance(value, dict) else value)

    def tracks(self, entry) -> bool:
        """Whether ``entry``'s changes count in this State's version."""
        return type(entry) is ParamState and entry.owner is self

    def __missing__(self, key):
        self.version += 1
        entry = ParamState(self)
        super().__setitem__(key, entry)
        return entry

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
        return (State, (dict(self),))


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
    group_of = {sid: {**opt.defaults, **g} for g, sg in zip(groups, saved_groups) for sid in sg["params"]}
    new_state: defaultdict = defaultdict(dict)
    for sid, value in state_dict["state"].items():
        if sid not in id_map:
            new_state[sid] = value
            continue
        p = id_map[sid]
        new_state[p] = _entry(opt, sid, p, group_of[sid], value)
    new_groups = []
    for g, sg in zip(groups, saved_groups):
        ng = copy.deepcopy({k: v for k, v in sg.items() if k != "params"})
        ng["params"] = g["params"]
        if "param_names" in g and "param_names" not in ng:  # as torch: saved names win
            ng["param_names"] = g["param_names"]
        for k, v in opt.defaults.items():
            ng.setdefault(k, v)
        for k in _OWN_OPTIONS:  # this optimizer's backend and state storage, across checkpoints
            if k in g:
                ng[k] = g[k]
        new_groups.append(ng)
    for ng in new_groups:
        opt.algorithm.validate(ng)
    opt.state = State(new_state)
    opt.param_groups = new_groups
    opt._reset_caches()
    for post_hook in opt._optimizer_load_state_dict_post_hooks.values():
        post_hook(opt)


def _entry(opt, sid, p: torch.Tensor, group: dict, value: dict) -> dict:
    """A saved param state for ``p`` in the storage ``group`` asks for (checked, copied)."""
    slots = opt.algorithm.SLOTS
    quantized = eight_bit(group, p)
    sdt = state_dtype_of(group, p)
    entry = {}
    for key, v in value.items():
        if key.endswith(_SCALE) and key[: -len(_SCALE)] in value:
            continue  # with its codes, below
        if not isinstance(v, torch.Tensor):
            entry[key] = v
        elif key in opt.algorithm.COUNTERS:
            # the step counters adopt it (one copy for all params) at the next step
            entry[key] = v.to(dtype=torch.float32, copy=True)
        else:
            if v.shape != p.shape:
                raise ValueError(f"state_dict: state {key!r} of parameter {sid} has shape "
                                 f"{tuple(v.shape)}, the parameter has {tuple(p.shape)}")
            absmax = value.get(key + _SCALE)
            if absmax is not None:  # saved as 8-bit codes and scales
                _check_8bit(sid, key, v, absmax, p)
                if quantized and key in slots:
                    entry[key] = v.to(device=p.device, copy=True)
                    absmax = absmax.to(device=p.device, copy=True)
                    entry[key + _SCALE] = absmax if _distributed.is_dtensor(p) else absmax.view(lowbit.scale_shape(p.shape))
                    continue
                v = _distributed.dequantize_state(v.to(p.device), absmax.to(p.device), lowbit.state_map(key, p.device),
                                                  lowbit.BLOCK)
            if key == "master_param":
                entry[key] = v.to(device=p.device, dtype=torch.float32, copy=True)
            elif quantized and key in slots:
                entry[key], entry[key + _SCALE] = _distributed.quantize_state(
                    v.to(device=p.device, dtype=torch.float32), lowbit.state_map(key, p.device), lowbit.BLOCK)
            else:
                entry[key] = v.to(device=p.device, dtype=sdt, copy=True)
    return entry


def _check_8bit(sid, key: str, codes: torch.Tensor, absmax: torch.Tensor, p: torch.Tensor) -> None:
    """Saved 8-bit codes and scales that fit ``p``: uint8 codes, float32 scales in
    ``lowbit.scale_shape`` or flat (as saved before scales had that shape); DTensors for a
    DTensor param (Note [8-bit DTensor states])."""
    shapes = {lowbit.scale_shape(p.shape), lowbit.scale_shape((p.numel(),))}
    if codes.dtype != torch.uint8 or absmax.dtype != torch.float32 or tuple(absmax.shape) not in shapes:
        raise ValueError(f"state_dict: 8-bit state {key!r} of parameter {sid} must be uint8 codes with float32 "
                         f"scales of shape {' or '.join(str(s) for s in sorted(shapes))}; got {codes.dtype} codes "
                         f"and {absmax.dtype} {tuple(absmax.shape)} scales")
    if _distributed.is_dtensor(p) != (_distributed.is_dtensor(codes) and _distributed.is_dtensor(absmax)):
        raise ValueError(f"state_dict: 8-bit state {key!r} of parameter {sid}: codes and scales must be DTensors "
                         "exactly when the parameter is one (set_optimizer_state_dict of "
                         "torch.distributed.checkpoint.state_dict distributes a full state dict)")
