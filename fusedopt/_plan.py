"""The step plan: the params with gradients of ALL param groups, bucketed into launches.

A launch (:class:`Bucket`) holds the params that share (device, param dtype, state dtype,
backend, compile-time variant, master weights), whatever their param group or step count:
each tensor's step counter and hyperparameter row are looked up by the kernels through the
bucket's ``index`` (``docs/kernel-interface.md``). A plan is built when the set of params with
gradients, the options that shape it, or the states change, and reused otherwise
(Note [step plans]).
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, field
from itertools import chain

import torch

from . import _distributed, backends
from ._steps import StepArena
from .lowbit import ABSMAX_SUFFIX, BLOCK
from .algorithms import Algorithm

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def state_dtype_for(param_dtype: torch.dtype) -> torch.dtype:
    """States are float32 for 16-bit params (the math is float32 anyway), else the param's dtype."""
    return torch.float32 if param_dtype in _LOW_PRECISION else param_dtype


# Note [8-bit states]: with state_dtype="8bit", a param of at least the group's min_8bit_size
# elements keeps each state slot as uint8 codes of its shape (state[name]) and one float32 scale
# per block of 256 (state[name + "_absmax"]), fusedopt.lowbit's block-wise dynamic quantization;
# the step dequantizes, updates in float32 and quantizes again. Such params form launches of their
# own (state dtype uint8), with the scales beside the states; smaller params keep float32 states,
# and so do DTensor params whose shards do not hold whole blocks (Note [8-bit DTensor states]).
def eight_bit(group: dict, p: torch.Tensor) -> bool:
    """Whether ``p``'s states are 8-bit in ``group`` (Note [8-bit states])."""
    return (group.get("state_dtype") == "8bit" and p.numel() >= group.get("min_8bit_size", 4096)
            and _distributed.blocks_fit(p, BLOCK))


def state_dtype_of(group: dict, p: torch.Tensor) -> torch.dtype:
    """The dtype of ``p``'s (unquantized) states in ``group``."""
    sdt = group.get("state_dtype")
    return state_dtype_for(p.dtype) if sdt in (None, "8bit") else sdt


@dataclass
class Bucket:
    """One fused launch of a step."""
    backend: object
    flags: tuple[bool, ...]
    params: list[torch.Tensor]
    # where the bucket's params are in the plan's ``params`` (the step's grads come in that
    # order); None when the bucket is all of them, in order
    order: list[int] | None
    states: list[dict]
    active: tuple[str, ...]       # the state slots present, in SLOTS order
    master: bool
    arena: StepArena
    index: torch.Tensor           # int64 [n, 2] on the CPU: (step slot, hyper row) per tensor
    slots: torch.Tensor           # the step slots on the params' device, for advancing them
    rows: torch.Tensor            # the hyper rows on the params' device (scalar states' advance)
    scalar_cells: torch.Tensor | None  # where the algorithm's SCALAR_STATES are in the counter buffer
    watched: dict[str, list[torch.Tensor]]  # the state tensors the plan was built from
    args: tuple                   # (params, states by slot, master): what the kernels walk
    dtensor: bool                 # FSDP2 / DTensor params: the kernels walk the local shards
    # a reducing algorithm on sharded params: its per-tensor sums are all-reduced between its two
    # traversals (Note [split steps]); None otherwise
    sums: _distributed.SumReduction | None = None
    # 8-bit states (Note [8-bit states]): per slot (SLOTS order), the scales of each state
    scales: list[list[torch.Tensor]] | None = None
    # stochastic rounding (Note [stochastic rounding]): per param, (seed, element offset)
    rounding: list[tuple[int, int]] | None = None
    # What a backend keeps between the calls of this launch, whose states do not change while
    # the plan lives: the compiled backends' state table (Note [cached state tables]).
    cache: dict = field(default_factory=dict)
    # whether a step compares the states with `watched` (Note [state versions]): only when an
    # entry of `states` does not count its changes in the optimizer's State
    watch: bool = True

    @property
    def device(self) -> torch.device:
        return self.arena.device


@dataclass
class Plan:
    groups: list[dict]
    params: list[torch.Tensor]
    version: int
    layouts: list[tuple]
    buckets: list[Bucket] = field(default_factory=list)

    def still_valid(self, groups: list[dict], params: list[torch.Tensor], version: int,
                    layouts: list[tuple]) -> bool:
        """Same groups, same params with gradients, same options that shape the launches, no
        state replaced (Note [step plans], Note [state versions])."""
        if (version != self.version or len(params) != len(self.params) or len(groups) != len(self.groups)
                or not all(map(operator.is_, groups, self.groups)) or layouts != self.layouts
                or not all(map(operator.is_, params, self.params))):
            return False
        for b in self.buckets:
            if not b.watch:  # its states count their changes in `version`
                continue
            for key, tensors in b.watched.items():
                if not all(map(operator.is_, map(operator.itemgetter(key), b.states), tensors)):
                    return False
        return True


def layout(algo: Algorithm, group: dict) -> tuple:
    """What a group's options fix in a plan: backend, active slots, variants, master weights,
    stochastic rounding and its seed."""
    return (group["backend"], tuple(algo.slot_init(group)), algo.flags(group), bool(group.get("master_weights")),
            rounds(group), group.get("rounding_seed"))


# Note [stochastic rounding]: with stochastic_rounding=True a 16-bit param (without master
# weights) is stored as fusedopt.lowbit.stochastic_round of its float32 result, the random bits of
# element i keyed by (the group's rounding_seed, the tensor's step count, i + the param's offset),
# the offset being its position among all params of the optimizer times 2**40 (no two params
# share a stream; params up to 2**40 elements). Such params form launches of their own.
def rounds(group: dict) -> bool:
    """Whether ``group`` rounds its params stochastically (Note [stochastic rounding])."""
    return bool(group.get("stochastic_rounding"))


def build(algo: Algorithm, groups: list[dict], with_grads: list[list[torch.Tensor]], states: list[list[dict]],
          fresh: set[int], arena_for, version: int, layouts: list[tuple]) -> Plan:
    """Bucket the params with gradients of every group into launches and place their step
    counters. ``states[g][i]`` is the state of ``with_grads[g][i]``; ``fresh`` the ids of params
    whose state was just created."""
    keyed: dict[tuple, list[tuple[int, int, torch.Tensor, dict]]] = {}
    at = 0  # the position of each param in the plan's params
    for gi, (group, params, sts) in enumerate(zip(groups, with_grads, states)):
        active = tuple(algo.slot_init(group))
        flags = algo.flags(group)
        name = group["backend"]
        for p, st in zip(params, sts):
            sdt = st[active[0]].dtype if active else None  # uint8: 8-bit states (Note [8-bit states])
            master = "master_param" in st and bool(group.get("master_weights"))
            sr = rounds(group) and p.dtype in _LOW_PRECISION and not master
            chosen = "reference" if name == "auto" and p.dtype == torch.float64 else name
            key = (p.device, p.dtype, sdt, chosen, flags, active, master, sr)
            keyed.setdefault(key, []).append((gi, at, p, st))
            at += 1
    plan = Plan(groups=list(groups), params=[p for ps in with_grads for p in ps], version=version,
                layouts=layouts)
    position = None  # every param's place in the optimizer, when stochastic rounding needs it
    for (device, _, sdt, name, flags, active, master, sr), members in keyed.items():
        params = [p for _, _, p, _ in members]
        sts = [st for _, _, _, st in members]
        order = [i for _, i, _, _ in members]
        arena = arena_for(device)
        slots = arena.place(params, sts, algo.COUNTERS, fresh, algo.COUNTER_INITS)
        index = torch.tensor([[k, gi] for k, (gi, _, _, _) in zip(slots, members)], dtype=torch.int64).reshape(-1, 2)
        scale_keys = tuple(s + ABSMAX_SUFFIX for s in active) if sdt == torch.uint8 else ()
        rounding = None
        if sr:
            position = position or _positions(groups)
            rounding = _rounding(groups, members, position)
        watched = {key: [st[key] for st in sts] for key in active + algo.COUNTERS + scale_keys}
        if master:
            watched["master_param"] = [st["master_param"] for st in sts]
        local = _distributed.local_list
        args = (local(params),
                [local(watched[s]) if s in active else [] for s in algo.SLOTS],
                local(watched["master_param"]) if master else None)
        plan.buckets.append(Bucket(
            backend=backends.get_backend(name, device, lowbit=sdt == torch.uint8 or sr), flags=flags, params=params,
            order=None if order == list(range(at)) else order, states=sts, active=active,
            master=master, arena=arena, index=index,
            slots=index[:, 0].contiguous().to(device, non_blocking=True),
            rows=index[:, 1].contiguous().to(device, non_blocking=True), watched=watched, args=args,
            scalar_cells=(torch.cat([index[:, 0] + i for i in range(1, 1 + len(algo.SCALAR_STATES))])
                          .to(device, non_blocking=True) if algo.SCALAR_STATES else None),
            dtensor=args[0] is not params,
            scales=[_flat_scales(watched[s + ABSMAX_SUFFIX]) if s in active else [] for s in algo.SLOTS] if scale_keys else None,
            rounding=rounding,
            sums=_distributed.sum_reduction(params, device, algo.name) if algo.REDUCES else None))
    return plan


def _flat_scales(scales: list[torch.Tensor]) -> list[torch.Tensor]:
    """The kernels take each state's scales as one flat run of blocks: views of scales kept as
    [rows, blocks per row], and of a DTensor's local shard (Note [8-bit DTensor states])."""
    return [t.view(-1) for t in _distributed.local_list(scales)]


def _positions(groups: list[dict]) -> dict[int, int]:
    """Every param's place among all params of the optimizer, by id."""
    return {id(p): i for i, p in enumerate(p for g in groups for p in g["params"])}


def _rounding(groups, members, position) -> list[tuple[int, int]]:
    """Each member's (rounding_seed of its group, element offset), Note [stochastic rounding]; a
    shard of a DTensor param starts at its place in the whole param."""
    return [(int(groups[gi]["rounding_seed"]), (position[id(p)] << 40) + _distributed.shard_offset(p))
            for gi, _, p, _ in members]


# Note [group snapshots]: a step computes each param group's layout (what shapes its launches)
# and hyperparameter row only when an option may have changed since the last step: when every
# option of every group is the very object it was then, and each is immutable (None, a bool,
# number, string, dtype or device, or a tuple of those), nothing can have changed, and the last
# step's layouts and tables serve again. A scheduler assigns a new lr (a new object); an option that could
# change in place (a tensor lr, a list of betas) makes every step compute them all, as before.
# For 1,000 x 4K AdamW params in 100 groups on the 2-core development machine, the step went from
# 1.24-1.29x to 1.09-1.10x the time of the same params in one group; with the snapshot compared in
# one pass and the grads of all groups read in one (fusedopt/_grads.py), 1.02-1.06x.
def _frozen(value) -> bool:
    if value is None or type(value) in (bool, int, float, str, torch.dtype, torch.device):
        return True
    return type(value) is tuple and all(map(_frozen, value))


class GroupSnapshot:
    """Whether the options of the param groups are the very objects of the last completed step
    (Note [group snapshots]); the params are not options (the step reads them every time). A
    step that does not complete (refused, or an overflow seen on the host) leaves no snapshot,
    so the next one computes everything."""

    _NOT_OPTIONS = ("params", "param_names")

    def __init__(self):
        # each group's number of entries, and every entry's value, group after group
        self.values: tuple[list[int], list] | None = None
        self._pending: tuple[list[int], list] | None = None

    def unchanged(self, groups: list[dict]) -> bool:
        values = (list(map(len, groups)), list(chain.from_iterable(map(dict.values, groups))))
        last, self.values = self.values, None  # until commit()
        same = (last is not None and values[0] == last[0] and len(values[1]) == len(last[1])
                and all(map(operator.is_, values[1], last[1])))
        frozen = same or all(_frozen(v) for g in groups for k, v in g.items() if k not in self._NOT_OPTIONS)
        self._pending = values if frozen else None
        return same

    def commit(self) -> None:
        """The step that called unchanged() completed: its options are the snapshot."""
        self.values, self._pending = self._pending, None


class HyperTables:
    """The per-group hyperparameter table of each device, float64 ``[groups, len(HYPER)]``,
    rebuilt only when a host value changes. A tensor lr on an accelerator is copied into its
    cell on the device at every step, with device-resident cell indices: no host
    synchronisation, and a captured CUDA graph replays the copy."""

    def __init__(self):
        self.rows: list | None = None
        self.tables: dict[torch.device, tuple[torch.Tensor, torch.Tensor | None]] = {}

    def get(self, algo: Algorithm, groups: list[dict], device: torch.device, unchanged: bool = False) -> torch.Tensor:
        """The table for ``groups`` on ``device``; ``unchanged``: the groups' options are those
        of the last call (Note [group snapshots])."""
        got = self.tables.get(device) if unchanged else None
        if got is not None and got[1] is None:
            return got[0]
        rows = [algo.hyper_row(g) for g in groups]
        # tensor cells are None here, so where they are is part of what must not change
        host = [[None if isinstance(v, torch.Tensor) else v for v in row] for row in rows]
        if host != self.rows:
            self.rows, self.tables = host, {}
        got = self.tables.get(device)
        if got is None:
            width = len(algo.HYPER)
            table = torch.tensor([[0.0 if v is None else v for v in row] for row in host],
                                 dtype=torch.float64).reshape(len(host), width)
            cells = [r * width + c for r, row in enumerate(host) for c, v in enumerate(row) if v is None]
            index = torch.tensor(cells, dtype=torch.int64) if cells else None
            if device.type != "cpu":
                table = table.pin_memory().to(device, non_blocking=True)
                index = None if index is None else index.pin_memory().to(device, non_blocking=True)
            got = self.tables[device] = (table, index)
        table, index = got
        if index is not None:
            values = torch.stack([v.reshape(()).to(device=device, dtype=torch.float64)
                                  for row in rows for v in row if isinstance(v, torch.Tensor)])
            table.view(-1).index_copy_(0, index, values)
        return table
