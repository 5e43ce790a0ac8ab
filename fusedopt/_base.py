"""The one optimizer base class: validate, create state lazily with torch's keys, group, call.

Every ``fusedopt`` optimizer is this class plus an :class:`~fusedopt.algorithms.Algorithm`.
"""
from __future__ import annotations

import copy
import operator
from collections import defaultdict
from typing import Any

import torch
from torch.optim import Optimizer

from . import _distributed, backends
from ._grouping import bucket
from ._steps import StepArena
from .algorithms import Algorithm

_LOW_PRECISION = (torch.float16, torch.bfloat16)
_SUPPORTED = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _on_device(values, device: torch.device) -> torch.Tensor:
    """Per-step scalars as one float32 tensor on ``device``. Python floats become fills, not
    host-to-device copies: a copy from pageable memory synchronises the stream and cannot be
    captured in a CUDA graph."""
    return torch.stack([v.to(device=device, dtype=torch.float32).reshape(()) if isinstance(v, torch.Tensor)
                        else torch.full((), float(v), dtype=torch.float32, device=device) for v in values])


def _fold_host_scale(scalars, factor: float):
    """Multiply the gradient-scale entry (always first) of host or device scalars by ``factor``."""
    if isinstance(scalars, torch.Tensor):
        scalars = scalars.clone()
        scalars[0] *= factor
        return scalars
    return (scalars[0] * factor,) + tuple(scalars[1:])


def _optional_args(grad_scale, found_inf, master) -> dict:
    """The optional tensors of a backend call, as keywords; those that are None are left out."""
    return {k: v for k, v in (("grad_scale", grad_scale), ("found_inf", found_inf), ("master", master))
            if v is not None}


def state_dtype_for(param_dtype: torch.dtype) -> torch.dtype:
    """States are float32 for 16-bit params (the math is float32 anyway), else the param's dtype."""
    return torch.float32 if param_dtype in _LOW_PRECISION else param_dtype


_LR_POSITIONS: dict[str, tuple[int, ...]] = {}


def _lr_positions(algo: Algorithm, group: dict) -> tuple[int, ...]:
    """Which of ``algo``'s per-step scalars are proportional to the learning rate (the others do
    not depend on it), found once per algorithm from its host-mode scalars at two lrs."""
    found = _LR_POSITIONS.get(algo.name)
    if found is None:
        one, _ = algo.step_args({**group, "lr": 1.0}, 10.0, False)
        two, _ = algo.step_args({**group, "lr": 0.5}, 10.0, False)
        found = []
        for i, (a, b) in enumerate(zip(one, two)):
            if a != b:
                if abs(b - 0.5 * a) > 1e-12 * abs(a):
                    raise RuntimeError(f"{algo.name}: per-step scalar {algo.SCALARS[i]} is not linear in lr")
                found.append(i)
        found = _LR_POSITIONS[algo.name] = tuple(found)
    return found


class _State(defaultdict):
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

    def copy(self):
        return _State(self)

    __copy__ = copy

    def __reduce__(self):
        return (_State, (), None, None, iter(self.items()))


class _Launch:
    """One fused call of a step: the params of one (device, dtype, step count, first step)."""
    __slots__ = ("device", "backend", "idx", "params", "states", "arena", "slots", "step", "history",
                 "first", "dtensor", "master")

    def __init__(self, **kw):
        for k, v in kw.items():
            setattr(self, k, v)


class _Plan:
    """A param group's launches and states, reused while the same params have gradients."""
    __slots__ = ("group", "state", "version", "params", "states", "launches", "layout", "reusable",
                 "kernels_check")

    def __init__(self, **kw):
        for k, v in kw.items():
            setattr(self, k, v)


class FusedOptimizer(Optimizer):
    """Base of every fusedopt optimizer. Subclasses set ``algorithm`` and a constructor.

    Options every fusedopt optimizer takes, beyond torch.optim's:

    - ``backend="auto"``: ``"reference"``, ``"triton"``, ``"cpu"``, ``"cuda"``, or the fastest
      available for the parameters' device.
    - ``capturable=False``: step counters, the learning rate (may be a tensor) and every per-step
      scalar live on the device, so a step can be captured in a CUDA graph.
    - ``master_weights=False``: keep a float32 copy of 16-bit params in the state
      (``master_param``), update it and write the rounded param in the same pass.
    - ``state_dtype=None``: dtype of the moments; float32 for 16-bit params by default,
      ``torch.bfloat16`` halves their memory.
    - ``max_grad_norm=None``: clip the global gradient norm to this value; the clip coefficient
      is folded into the update, so gradients are read once for the norm and once for the step.
    - ``accumulation_steps=1``: gradients summed over k micro-batches are scaled by ``1/k``
      inside the update (no extra pass over memory).

    Under ``torch.amp.GradScaler`` the step unscales the gradients inside the update and, on
    an overflow step, changes nothing (params, states, step counters), with no host
    synchronisation.
    """

    algorithm: Algorithm
    _step_supports_amp_scaling = True

    def __init__(self, params, defaults: dict[str, Any], backend: str = "auto",
                 foreach: bool | None = None, fused: bool | None = None,
                 capturable: bool = False, differentiable: bool = False, *,
                 master_weights: bool = False, state_dtype: torch.dtype | None = None,
                 max_grad_norm: float | None = None, accumulation_steps: int = 1):
        # foreach/fused are accepted so torch.optim call sites work unchanged; fusedopt always
        # runs its fused multi-tensor step.
        del foreach, fused
        if differentiable:
            raise ValueError("differentiable=True is not supported by fusedopt; use torch.optim")
        if max_grad_norm is not None and not (max_grad_norm > 0):
            raise ValueError(f"Invalid max_grad_norm: {max_grad_norm!r} (must be > 0 or None)")
        if isinstance(accumulation_steps, bool) or not isinstance(accumulation_steps, int) or accumulation_steps < 1:
            raise ValueError(f"Invalid accumulation_steps: {accumulation_steps!r} (must be an integer >= 1)")
        backends.check_backend_name(backend)
        self.max_grad_norm = max_grad_norm
        self.accumulation_steps = accumulation_steps
        defaults = dict(defaults, backend=backend, capturable=bool(capturable),
                        master_weights=bool(master_weights), state_dtype=state_dtype)
        # host copies of the per-parameter step counts: id(param) -> (param, step tensor,
        # value, history); keyed by id because a tensor's __hash__ is a Python call. In device
        # mode the value counts calls, overflow steps included, and only groups tensors; the
        # history tells apart params whose device counts may differ (Note [step histories]).
        self._host_steps: dict[int, tuple[torch.Tensor, torch.Tensor, float, int]] = {}
        self._serial = 0  # steps taken, for the histories
        self._arenas: dict[torch.device, StepArena] = {}  # the step tensors, per device
        self._pending_first: dict[torch.Tensor, torch.Tensor] = {}
        # per param group (by id): the plan of its last step (Note [step plans])
        self._plans: dict[int, _Plan] = {}
        super().__init__(params, defaults)
        self.state = _State(self.state)
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
        if filled["state_dtype"] not in (None, torch.float32, torch.bfloat16):
            raise ValueError(f"Invalid state_dtype: {filled['state_dtype']!r} (None, torch.float32 or torch.bfloat16)")
        super().add_param_group(group)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.state = _State(self.state)
        for group in self.param_groups:
            for k, v in self.defaults.items():
                group.setdefault(k, v)
        self._host_steps = {}
        self._pending_first = {}
        self._plans = {}
        self._arenas = {}

    def _check_grad(self, p: torch.Tensor) -> None:
        g = p.grad
        if not g.is_sparse and g.shape == p.shape and g.dtype == p.dtype and g.device == p.device:
            return
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
        # Check everything first: a bad gradient anywhere leaves every parameter untouched. In
        # the steady state of the compiled backends the kernels check (Note [step plans]).
        work = []
        compiling = torch.compiler.is_compiling()
        if not compiling and len(self._plans) > len(self.param_groups):
            live = {id(g) for g in self.param_groups}  # a group was removed: drop its plan
            self._plans = {k: v for k, v in self._plans.items() if k in live}
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            # compiled: the plans are looked up behind the graph break (no guards on them)
            plan = None if compiling else self._live_plan(group, params)
            checked = not compiling and self._kernels_check(group, plan)
            if not checked:
                for p in params:
                    self._check_grad(p)
            work.append((group, params, plan, checked))
        if not work:
            return loss
        # AMP: GradScaler sets these attributes for optimizers that unscale inside the step.
        amp_scale = getattr(self, "grad_scale", None)
        found_inf = getattr(self, "found_inf", None)
        if (found_inf is not None and found_inf.device.type == "cpu"
                and not any(g.get("capturable") for g, _, _, _ in work)
                and not compiling):  # compiled: the flag stays a tensor
            if float(found_inf) != 0:  # host memory: reading it is no synchronisation
                return loss
            found_inf = None
        scale = None if amp_scale is None else torch.reciprocal(amp_scale.to(torch.float32))
        if self.max_grad_norm is not None:
            from .clip import total_norm
            norm = total_norm([p.grad for _, ps, _, _ in work for p in ps], 2.0)
            if scale is not None:
                norm = norm * scale.to(norm.device)
            coef = torch.clamp(self.max_grad_norm / (norm + 1e-6), max=1.0)
            scale = coef if scale is None else scale.to(coef.device) * coef
        per_device: dict[torch.device, tuple] = {}

        def on(device):  # the scale and the inf flag on ``device``, moved once per step
            if device not in per_device:
                per_device[device] = (
                    None if scale is None else scale.to(device, non_blocking=True),
                    None if found_inf is None else found_inf.to(device, non_blocking=True))
            return per_device[device]

        if compiling:
            self._step_compiled(work, on)
            return loss
        self._serial += 1
        for group, params, plan, kernels_check in work:
            if plan is None:
                plan = self._new_plan(group, params)
                if kernels_check and not plan.kernels_check:  # e.g. a float64 param came back
                    for p in params:
                        self._check_grad(p)
            self._step_group(group, plan, on)
        return loss

    def _state_dtype(self, p: torch.Tensor, group: dict) -> torch.dtype:
        return group.get("state_dtype") or state_dtype_for(p.dtype)

    def _init_states(self, params: list[torch.Tensor], group: dict) -> list[dict]:
        """Every param's state, created lazily; the common case (all there) costs a lookup."""
        required = set(self.algorithm.slot_init(group))
        if self.algorithm.has_step:
            required.add("step")
        state = self.state
        out = []
        for p in params:
            st = state.get(p)
            if st is None or not st.keys() >= required:
                st = self._init_state(p, group)
            out.append(st)
        return out

    def _init_state(self, p: torch.Tensor, group: dict) -> dict:
        st = self.state[p]
        sdt = self._state_dtype(p, group)
        for slot, fill in self.algorithm.slot_init(group).items():
            if st.get(slot) is None:
                st[slot] = torch.full_like(p, fill, dtype=sdt, memory_format=torch.preserve_format)
                if self.algorithm.needs_first_step:
                    st["_first"] = True
        if group.get("master_weights") and p.dtype in _LOW_PRECISION and "master_param" not in st:
            st["master_param"] = p.detach().to(torch.float32, copy=True)
        if self.algorithm.has_step and "step" not in st:
            device = p.device if group.get("capturable") else "cpu"
            st["step"] = torch.zeros((), dtype=torch.float32, device=device)
            self._host_steps[id(p)] = (p, st["step"], 0.0, 0)
        return st

    def _arena(self, device: torch.device) -> StepArena:
        arena = self._arenas.get(device)
        if arena is None:
            arena = self._arenas[device] = StepArena(device)
        return arena

    def _host_counts(self, params: list[torch.Tensor], states: list[dict]) -> list[tuple[float, int]]:
        """The step counts so far and their histories, from the host cache; a tensor is read
        only when it is not known yet (a new or loaded state: then it is on the CPU, so reading
        it does not sync, and its count is exact: history 0)."""
        cache = self._host_steps
        out = []
        for p, st in zip(params, states):
            t = st["step"]
            hit = cache.get(id(p))
            known = hit is not None and hit[0] is p and (hit[1] is t or t.device.type != "cpu")
            out.append(hit[2:] if known else (float(t), 0))
        return out

    # Note [step histories]: in device mode (AMP's inf flag on the device, capturable) a step
    # that overflows does not advance the device step counters, and the host cannot know it
    # without a sync, so the host count (calls) only groups tensors. Two params with equal host
    # counts can still differ on the device if they took part in different steps that carried
    # an inf flag (e.g. intermittent gradients, as in mixture-of-experts layers). Each launch
    # therefore hashes the serial numbers of such steps into a history, and params with
    # different histories never share a launch (whose kernels read one step count).
    def _record_flagged_step(self, launch: _Launch) -> None:
        launch.history = hash((launch.history, self._serial))

    # Note [step plans]: what a param group's step needs beyond the gradients (the states, host
    # step counts, and the grouping into launches with their backends) is found once and reused
    # while the same params have gradients and no first momentum step is pending. A reused
    # plan's step looks at nothing per parameter but its gradient: the compiled backends'
    # kernels check every gradient (dtype, shape, layout, device) before writing anything, so
    # their plans skip the Python check (then an earlier group of the same step may already be
    # updated when a later one is refused), and so do rebuilt plans of a group whose last plan
    # did; the reference and Triton backends, and every group's first step, are checked here.
    def _live_plan(self, group: dict, params: list[torch.Tensor]) -> _Plan | None:
        plan = self._plans.get(id(group))
        if (plan is not None and plan.group is group and plan.state is self.state
                and plan.version == getattr(self.state, "version", 0)
                and plan.reusable and not self._pending_first
                and plan.layout == self._layout(group) and len(plan.params) == len(params)
                and all(map(operator.is_, plan.params, params))):
            return plan
        return None

    def _kernels_check(self, group: dict, plan: _Plan | None) -> bool:
        """Whether this step's gradients are left to the kernels' checks: the group's plan (the
        live one, or the last one when the set of params with gradients changed) ran on
        compiled backends only, with the same options. A group's first step is checked here."""
        if plan is None:
            last = self._plans.get(id(group))
            plan = last if (last is not None and last.group is group and last.state is self.state
                            and last.layout == self._layout(group)) else None
        return plan is not None and plan.kernels_check

    def _layout(self, group: dict) -> tuple:
        """What a plan fixes that a param group's options can change between steps: the backend,
        the active state slots (e.g. SGD's momentum rising from 0) and master weights."""
        return (group["backend"], tuple(self.algorithm.slot_init(group)), bool(group.get("master_weights")))

    def _drop_plan(self, group: dict) -> None:
        """Forget a group's plan, writing its step counts back to the per-param host cache."""
        plan = self._plans.pop(id(group), None)
        if plan is None or plan.state is not self.state or not self.algorithm.has_step:
            return
        cache, params, states = self._host_steps, plan.params, plan.states
        for launch in plan.launches:
            for i in launch.idx:
                st = states[i]
                if "step" in st:
                    p = params[i]
                    cache[id(p)] = (p, st["step"], launch.step, launch.history)

    def _new_plan(self, group: dict, params: list[torch.Tensor]) -> _Plan:
        """Create the missing state and group the params into launches: one per (device, dtype,
        step count, first momentum step) with the backend that runs it."""
        self._drop_plan(group)
        algo = self.algorithm
        states = self._init_states(params, group)
        n = len(params)
        first = [st.pop("_first", False) for st in states] if algo.needs_first_step else [False] * n
        if algo.needs_first_step and self._pending_first:
            # a first momentum step that may have been skipped on the device (AMP overflow)
            first = [self._pending_first.get(p, f) for p, f in zip(params, first)]
        steps = self._host_counts(params, states) if algo.has_step else [(0.0, 0)] * n
        groups = bucket(range(n), lambda i: (params[i].device, params[i].dtype, steps[i],
                                             first[i] if isinstance(first[i], bool) else id(first[i])))
        launches = []
        for (device, dtype, (step, history), _), idx in groups.items():
            name = group["backend"]
            if name == "auto" and dtype == torch.float64:
                name = "reference"  # the fused kernels are float32/bfloat16/float16
            ps = [params[i] for i in idx]
            sts = [states[i] for i in idx]
            arena = slots = None
            if algo.has_step:  # the steps stay where they are (CPU unless capturable) until device mode
                arena = self._arena(sts[0]["step"].device)
                slots = arena.place(ps, sts)
            launches.append(_Launch(
                device=device, backend=backends.get_backend(name, device), idx=idx, params=ps,
                states=sts, arena=arena, slots=slots, step=step, history=history,
                first=first[idx[0]], dtensor=_distributed.local_list(ps) is not ps,
                master=bool(group.get("master_weights")) and "master_param" in sts[0]))
        plan = _Plan(group=group, state=self.state, version=getattr(self.state, "version", 0),
                     params=params, states=states, launches=launches,
                     layout=self._layout(group),
                     reusable=all(launch.first is False for launch in launches),
                     kernels_check=all(getattr(launch.backend, "checks_tensors", False)
                                       and launch.params[0].dtype != torch.float64 for launch in launches))
        self._plans[id(group)] = plan
        return plan

    def _launch_tensors(self, plan: _Plan, launch: _Launch):
        """A launch's params, grads, state slots and master weights (local shards of DTensors)."""
        states = launch.states
        ps = launch.params
        gs = [p.grad for p in ps]
        slots = [[st[s] for st in states] if states[0].get(s) is not None else [] for s in self.algorithm.SLOTS]
        master = [st["master_param"] for st in states] if launch.master else None
        if launch.dtensor:  # FSDP2: the kernels update the local shards, one launch per group
            local = _distributed.local_list
            ps, gs, slots = local(ps), local(gs), [local(s) for s in slots]
            master = None if master is None else local(master)
        return ps, gs, slots, master

    def _device_steps(self, plan: _Plan, launch: _Launch) -> None:
        """Move the launch's step tensors (once) to its device: torch keeps non-capturable
        steps on the CPU, and device-mode steps read them on the device."""
        if launch.arena.device != launch.device:
            launch.arena = self._arena(launch.device)
            launch.slots = launch.arena.place(launch.params, launch.states)

    def _finish_first(self, launch: _Launch, ps, found_inf) -> None:
        """SGD: an overflow first step leaves the momentum buffer unwritten; the next step is
        then the first again, decided on the device from the inf flag."""
        if found_inf is None:
            for p in ps:
                self._pending_first.pop(p, None)
        else:
            pending = found_inf.clone() if launch.first is True else launch.first * found_inf
            for p in ps:
                self._pending_first[p] = pending

    def _step_group(self, group: dict, plan: _Plan, on) -> None:
        algo = self.algorithm
        lr = group["lr"]
        lr_on_device = isinstance(lr, torch.Tensor) and lr.device.type != "cpu"
        for launch in plan.launches:
            device = launch.device
            scale, found_inf = on(device)
            is_first = launch.first
            device_mode = (bool(group.get("capturable")) or found_inf is not None or lr_on_device
                           or isinstance(is_first, torch.Tensor))
            launch.step += 1.0  # in device mode: calls, overflow steps included (groups only)
            step_arg, advance = launch.step, 1.0
            if algo.has_step:
                if device_mode:
                    self._device_steps(plan, launch)
                    if found_inf is not None:
                        advance = 1.0 - found_inf  # an overflow step does not count
                launch.arena.advance(launch.slots, advance)
                if device_mode:
                    step_arg = launch.states[0]["step"]
            scalars, flags = algo.step_args(group, step_arg, is_first)
            if device_mode:
                scalars = _on_device(scalars, device)
            else:
                scalars = tuple(scalars)
            if self.accumulation_steps != 1:
                scalars = _fold_host_scale(scalars, 1.0 / self.accumulation_steps)
            ps, gs, slots, master = self._launch_tensors(plan, launch)
            try:
                launch.backend.step(algo.name, ps, gs, slots, scalars, tuple(flags),
                                    **_optional_args(scale, found_inf, master))
            except Exception:
                # refused before writing (a kernel's argument check): the counts stay as they were
                launch.step -= 1.0
                if algo.has_step:
                    launch.arena.advance(launch.slots, -advance)
                raise
            if isinstance(advance, torch.Tensor):
                self._record_flagged_step(launch)
            if algo.needs_first_step and is_first is not False:
                self._finish_first(launch, launch.params, found_inf)
                launch.first = False
                plan.reusable = False  # regroup next step: no launch is a first one any more

    # -- the step under torch.compile -------------------------------------------------
    # Always the device-scalar path: step counters are tensors and the per-step scalars are
    # computed from them (and from a tensor lr) in the graph, so nothing the guards see changes
    # from step to step. Host bookkeeping (the plan: lazy state, grouping, host step counts)
    # runs eagerly before the graph and the kernel launches after it (two graph breaks per
    # step, none inside a loop); the scalars reach the kernels as a tensor.
    def _step_compiled(self, work, on) -> None:
        algo = self.algorithm
        launches = []
        for group, lr_positions, entries in self._compiled_plan(work):
            lr = group["lr"]
            for launch, ps, gs, slots, steps, first, master in entries:
                device = launch.device
                scale, found_inf = on(device)
                step_arg = 0.0
                if steps:
                    torch._foreach_add_(steps, 1.0)
                    if found_inf is not None:  # an overflow step does not count
                        torch._foreach_sub_(steps, [found_inf] * len(steps))
                    step_arg = steps[0]
                # the per-step scalars at lr=1, then the lr-carrying ones times lr
                scalars, flags = algo.step_args({**group, "lr": 1.0}, step_arg, False if first is None else first)
                lr_here = lr.to(device=device, dtype=torch.float32) if isinstance(lr, torch.Tensor) else lr
                scalars = _on_device([v * lr_here if i in lr_positions else v for i, v in enumerate(scalars)],
                                     device)
                if self.accumulation_steps != 1:
                    scalars = _fold_host_scale(scalars, 1.0 / self.accumulation_steps)
                launches.append((launch, ps, gs, slots, scalars, tuple(flags), scale, found_inf, master, first))
        self._compiled_launch(launches)

    @torch.compiler.disable
    def _compiled_plan(self, work):
        """Eager host side of a compiled step: the plans (state, grouping, backends), step
        counters on the params' devices, SGD's first-step flag as a tensor. Per group: the
        group, the positions of its per-step scalars that carry the lr, and per launch: the
        launch, its tensors, step tensors, first-step flag and master weights."""
        out = []
        self._serial += 1
        for group, params, _, _ in work:
            plan = self._live_plan(group, params) or self._new_plan(group, params)
            entries = []
            for launch in plan.launches:
                launch.step += 1.0  # calls: they only group tensors here
                steps = []
                if self.algorithm.has_step:
                    self._device_steps(plan, launch)
                    steps = [st["step"] for st in launch.states]
                first = None
                if self.algorithm.needs_first_step:
                    first = launch.first
                    if not isinstance(first, torch.Tensor):
                        first = torch.full((), float(first), device=launch.device)
                ps, gs, slots, master = self._launch_tensors(plan, launch)
                entries.append((launch, ps, gs, slots, steps, first, master))
            if any(launch.first is not False for launch in plan.launches):
                plan.reusable = False  # regroup next step: no launch is a first one any more
            out.append((group, _lr_positions(self.algorithm, group), entries))
        return out

    @torch.compiler.disable
    def _compiled_launch(self, launches) -> None:
        for launch, ps, gs, slots, scalars, flags, scale, found_inf, master, first in launches:
            launch.backend.step(self.algorithm.name, ps, gs, slots, scalars, flags,
                                **_optional_args(scale, found_inf, master))
            if found_inf is not None and launch.arena is not None:
                self._record_flagged_step(launch)
            if first is not None:  # SGD's first momentum step, as in _step_group
                launch.first = first
                self._finish_first(launch, launch.params, found_inf)
                launch.first = False

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
                if isinstance(v, torch.Tensor) and key != "step":
                    if v.shape != p.shape:
                        raise ValueError(f"state_dict: state {key!r} of parameter {sid} has shape "
                                         f"{tuple(v.shape)}, the parameter has {tuple(p.shape)}")
                    dtype = torch.float32 if key == "master_param" else (sdt_of[sid] or state_dtype_for(p.dtype))
                    v = v.to(device=p.device, dtype=dtype, copy=True)
                elif isinstance(v, torch.Tensor):
                    # read on the CPU: the first step takes its count from here without a sync
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
        self.state = _State(new_state)
        self.param_groups = new_groups
        self._host_steps = {}
        self._pending_first = {}
        self._plans = {}
        self._arenas = {}
        for post_hook in self._optimizer_load_state_dict_post_hooks.values():
            post_hook(self)
