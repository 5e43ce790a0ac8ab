"""The one optimizer base class: validate, create state lazily with torch's keys, call.

Every ``fusedopt`` optimizer is this class plus an :class:`~fusedopt.algorithms.Algorithm`. A
step flows down the layers once: the plan (:mod:`fusedopt._plan`: which launches, cached), the
prologue (:mod:`fusedopt._prologue`: one gradient scale and the inf flag), the step counters
(:mod:`fusedopt._steps`: advanced on the device), one backend call per launch.
"""
from __future__ import annotations

from typing import Any

import torch
from torch.optim import Optimizer

from . import _checkpoint, _distributed, backends
from ._checkpoint import ParamState, State
from ._grads import Grads, read_grads
from .backends._compiled import drop_owned_grads
from ._plan import GroupSnapshot, HyperTables, Plan, build, layout
from ._states import check_storage_options, draw_seed, init_states
from ._prologue import prologue
from ._steps import StepArena
from .algorithms import Algorithm

_SUPPORTED = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


class FusedOptimizer(Optimizer):
    """Base of every fusedopt optimizer. Subclasses set ``algorithm`` and a constructor.

    Options every fusedopt optimizer takes, beyond torch.optim's:

    - ``backend="auto"``: ``"reference"``, ``"triton"``, ``"cpu"``, ``"cuda"``, or the fastest
      available for the parameters' device.
    - ``capturable=False``: accepted for torch.optim compatibility; every fusedopt step is
      capturable (step counters live on the params' device, the kernels read them and a
      tensor ``lr`` there, and nothing is read back on the host).
    - ``master_weights=False``: keep a float32 copy of 16-bit params in the state
      (``master_param``), update it and write the rounded param in the same pass.
    - ``state_dtype=None``: dtype of the moments; float32 for 16-bit params by default,
      ``torch.bfloat16`` halves their memory, ``"8bit"`` quarters it: block-wise quantized
      states (``fusedopt.lowbit``: uint8 codes of the param's shape in ``state[name]`` and one
      float32 scale per 256 elements in ``state[name + "_absmax"]``, shaped
      ``fusedopt.lowbit.scale_shape``) for params of at least ``min_8bit_size=4096`` elements;
      smaller ones keep float32 states, and so do DTensor params not sharded by whole rows of
      whole blocks (Note [8-bit DTensor states] in ``fusedopt/_distributed.py``). Fused on the
      cpu, triton and cuda backends.
    - ``stochastic_rounding=False``: store the float32 result of 16-bit params (without master
      weights) rounded up or down with probabilities proportional to the distance, so small
      updates are not lost to round-to-nearest (``fusedopt.lowbit.stochastic_round``, a Philox
      stream keyed by ``rounding_seed``, the step count and the element); ``rounding_seed=None``
      draws one from torch's default generator. The same bits on every backend, and under FSDP2
      the bits the unsharded param would draw.
    - ``max_grad_norm=None``: clip the global gradient norm to this value; the clip coefficient
      is folded into the update, so gradients are read once for the norm and once for the step.
    - ``accumulation_steps=1``: gradients summed over k micro-batches are scaled by ``1/k``
      inside the update (no extra pass over memory).

    One step is one fused launch per (device, param dtype, state dtype, compile-time variant)
    across all param groups. Under ``torch.amp.GradScaler`` the step unscales the gradients
    inside the update and, on an overflow step, changes nothing (params, states, step
    counters), with no host synchronisation; ``step_skipped`` is then a 0-dim tensor on the
    device, 1 for a skipped step and 0 otherwise (None before the first step).
    """

    algorithm: Algorithm
    _step_supports_amp_scaling = True

    def __init__(self, params, defaults: dict[str, Any], backend: str = "auto",
                 foreach: bool | None = None, fused: bool | None = None,
                 capturable: bool = False, differentiable: bool = False, *,
                 master_weights: bool = False, state_dtype: torch.dtype | str | None = None,
                 max_grad_norm: float | None = None, accumulation_steps: int = 1, min_8bit_size: int = 4096,
                 stochastic_rounding: bool = False, rounding_seed: int | None = None):
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
        self.step_skipped: torch.Tensor | None = None
        self._reset_caches()
        defaults = dict(defaults, backend=backend, capturable=bool(capturable),
                        master_weights=bool(master_weights), state_dtype=state_dtype, min_8bit_size=min_8bit_size,
                        stochastic_rounding=stochastic_rounding,
                        rounding_seed=draw_seed() if stochastic_rounding is True and rounding_seed is None
                        else rounding_seed)
        super().__init__(params, defaults)
        self.state = State(self.state)
        if self.algorithm.eager_state:
            # as torch.optim does for this algorithm, so checkpoints load into it both ways
            self._init_states([(p, g) for g in self.param_groups for p in g["params"]])

    def _reset_caches(self) -> None:
        self._plan: Plan | None = None
        self._arenas: dict[torch.device, StepArena] = {}
        self._hyper = HyperTables()
        self._groups_seen = GroupSnapshot()
        self._not_skipped: dict[torch.device, torch.Tensor] = {}

    # -- groups and validation ---------------------------------------------------------
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        group = dict(param_group)
        params = group["params"]
        params = [params] if isinstance(params, torch.Tensor) else params
        if not isinstance(params, set):  # torch refuses sets (unordered) with its own TypeError
            params = list(params)
        group["params"] = params
        for p in params:
            # named parameters are (name, tensor) pairs: torch's add_param_group splits them
            t = p[1] if isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str) else p
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{type(self).__name__} can only optimize Tensors, got {type(t).__name__}")
            if t.is_complex():
                raise ValueError(f"{type(self).__name__} does not support complex parameters; "
                                 "optimize torch.view_as_real(param) instead")
            if t.dtype not in _SUPPORTED:
                raise ValueError(f"{type(self).__name__}: unsupported parameter dtype {t.dtype}; "
                                 "use float32, float64, float16 or bfloat16")
        filled = {**self.defaults, **group}
        self.algorithm.validate(filled)
        backends.check_backend_name(filled["backend"])
        check_storage_options(filled, group)
        super().add_param_group(group)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.state = State(self.state)
        for group in self.param_groups:
            for k, v in self.defaults.items():
                group.setdefault(k, v)
        self._reset_caches()

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

    # -- state -------------------------------------------------------------------------
    def _init_states(self, items) -> set[int]:
        """Create the missing state of every (param, group) of ``items`` (``fusedopt._states``);
        the ids of the params one of whose slots was created."""
        return init_states(self.algorithm, self.state, items)

    def _arena(self, device: torch.device) -> StepArena:
        arena = self._arenas.get(device)
        if arena is None:
            arena = self._arenas[device] = StepArena(device)
        return arena

    # Note [step plans]: what a step needs beyond the gradients (the states, the grouping into
    # launches with their backends, the step-counter slots, the address tables the backends
    # cache) is found once and reused while the same params of the same groups have gradients,
    # the options that shape launches are unchanged and no state entry was replaced (Note [state
    # versions] in _checkpoint.py). A rebuilt plan checks every gradient in Python before any
    # launch, so a bad one changes nothing; a reused plan leaves the checks to the compiled backends' ops (which check every tensor
    # before writing) and checks in Python only for the others. So in the steady state a bad
    # gradient of a later launch is refused after earlier launches of that step have run.
    def _current_plan(self, groups, read: Grads, unchanged=False) -> Plan:
        """The step plan for this step's gradients ``read``."""
        algo = self.algorithm
        plan = self._plan
        # Note [group snapshots]
        layouts = plan.layouts if unchanged and plan is not None else [layout(algo, g) for g in groups]
        if plan is not None and plan.still_valid(groups, read.flat, self.state.version, layouts):
            for b in plan.buckets:
                if not b.backend.checks_tensors:
                    for p in b.params:
                        self._check_grad(p)
            return plan
        for p in read.flat:
            self._check_grad(p)
        with_grads = read.with_grads
        fresh = self._init_states([(p, g) for g, ps in zip(groups, with_grads) for p in ps])
        states = [[self.state[p] for p in ps] for ps in with_grads]
        plan = build(algo, groups, with_grads, states, fresh, self._arena, self.state.version, layouts)
        tracks = self.state.tracks  # Note [state versions]
        for b in plan.buckets:
            b.watch = not all(map(tracks, b.states))
        plan.version = self.state.version  # after the plan's own writes (its step counters)
        self._plan = plan
        return plan

    # -- the step ----------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure=None):
        """Perform one optimization step. ``closure`` re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._step()
        return loss

    # Under torch.compile the whole step runs eagerly behind one graph break: it launches
    # kernels on tables it caches, and nothing in it is worth tracing.
    @torch.compiler.disable
    def _step(self) -> None:
        groups = self.param_groups
        read = read_grads(groups)  # Note [one pass over the grads] in _grads.py
        if not read.grads:  # nothing to update; not an overflow either
            self.step_skipped = self._skipped(None, groups[0]["params"][0].device)
            return
        grads, flat = read.grads, read.flat
        unchanged = self._groups_seen.unchanged(groups)  # Note [group snapshots]
        plan = self._current_plan(groups, read, unchanged)
        pro = prologue(self, grads, flat[0].device)
        if pro is None:  # an overflow seen on the host: nothing happens
            self.step_skipped = torch.ones(())
            return
        algo = self.algorithm
        per_device: dict[torch.device, tuple] = {}  # the hyper table and the counters' advance
        for b in plan.buckets:
            device = b.device
            scale, found_inf = pro.on(device)
            if device not in per_device:  # an overflow step does not count
                per_device[device] = (self._hyper.get(algo, groups, device, unchanged),
                                      1.0 if found_inf is None else 1.0 - found_inf)
            hyper, advance = per_device[device]
            b.arena.advance(b.slots, advance)
            kept = None
            if b.scalar_cells is not None:  # NAdam's mu_product: moved on before the kernels read it
                kept = b.arena.data[b.scalar_cells]  # restored if the launch is refused
                algo.advance_scalar_states(b.arena.data, b.slots, b.rows, hyper, advance)
            try:
                self._launch(b, hyper, grads, scale, found_inf)
            except Exception:
                # refused before writing (the ops check every tensor first): the counts stay
                b.arena.advance(b.slots, -advance)
                if kept is not None:
                    b.arena.data.index_copy_(0, b.scalar_cells, kept)
                raise
        self.step_skipped = self._skipped(pro.found_inf, flat[0].device)
        self._groups_seen.commit()

    def _launch(self, b, hyper: torch.Tensor, grads: list[torch.Tensor], scale=None, found_inf=None) -> None:
        """One backend call: bucket ``b``'s tensors with this step's gradients (``grads``: those
        of the plan's params, in order)."""
        params, states, master = b.args
        if b.order is not None:
            grads = [grads[i] for i in b.order]
        if b.dtensor:  # FSDP2: the kernels update the local shards
            params, grads = _distributed.local_list(b.params), _distributed.local_list(grads)
        kw = {"cache": b.cache} if getattr(b.backend, "caches_state_table", False) else {}
        args = (self.algorithm.name, b.flags, params, grads, states, master, b.arena.data, b.index, hyper, scale,
                found_inf)
        if b.scales is not None:  # Note [8-bit states]
            kw["scales"] = b.scales
        if b.rounding is not None:  # Note [stochastic rounding]
            kw["rounding"] = b.rounding
        if b.sums is None:
            b.backend.step(*args, **kw)
            return
        # Note [split steps]: a reducing algorithm on shards; its sums are those of whole tensors
        sums = torch.zeros(len(params), 2, dtype=torch.float64, device=b.device)
        b.backend.step(*args, sums=sums, phase=1, **kw)
        _distributed.all_reduce_sums(sums, b.sums)
        b.backend.step(*args, sums=sums, phase=2, **kw)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """torch.optim's ``zero_grad``; with ``set_to_none`` the compiled backends also let go of
        grads their state tables hold (Note [owned grads] in ``fusedopt/backends/_compiled.py``),
        so the old grads are not kept alive through the next backward."""
        super().zero_grad(set_to_none)
        if set_to_none and self._plan is not None:
            for b in self._plan.buckets:
                drop_owned_grads(b.cache)

    def launch_replay(self):
        """For benchmarks: a function that makes the backend calls of the last step again (same
        tensors, tables and step counts), without planning, prologue or counter updates; None
        before the first step."""
        plan = self._plan
        if plan is None:
            return None
        calls = [(b, self._hyper.get(self.algorithm, plan.groups, b.device)) for b in plan.buckets]

        @torch.no_grad()
        def replay():
            grads = [p.grad for p in plan.params]
            for b, hyper in calls:
                self._launch(b, hyper, grads)
        return replay

    def _skipped(self, found_inf: torch.Tensor | None, device: torch.device) -> torch.Tensor:
        if found_inf is not None:
            return torch.clamp(found_inf, max=1.0)
        zero = self._not_skipped.get(device)
        if zero is None:
            zero = self._not_skipped[device] = torch.zeros((), device=device)
        return zero

    # -- checkpoints -------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """torch.optim's state dict, its entries plain dicts (Note [state versions])."""
        state_dict = super().state_dict()
        state_dict["state"] = {k: dict(v) if isinstance(v, ParamState) else v for k, v in state_dict["state"].items()}
        return state_dict

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict saved by this class or by the torch.optim optimizer of the same
        algorithm. Every tensor is checked against its parameter before anything changes."""
        _checkpoint.load(self, state_dict)
