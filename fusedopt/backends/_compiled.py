"""What the two compiled backends (``cpu`` and ``cuda``) share: the call of an algorithm's op
(``docs/kernel-interface.md``) with a cached state table, and the reference fallback for float64
and for tensors without a dense layout.

Note [cached state tables]: the step op takes the states and master weights as a table made by
``torch.ops.fusedopt.state_table`` (addresses and what a step's params and grads are checked
against), so that a step of thousands of tensors passes only its grads through torch's
per-tensor boxing: the table also holds a reference to each param (Note [owned params] in
``csrc/include/fusedopt/tensor_info.h``), and a call with a cached table passes an empty params
list. The table is built once per ``cache`` the caller passes: the optimizer's plan keeps one
dict per launch (``_plan.Bucket.cache``) and passes the same ``params``, ``states`` and
``master`` lists every step while the plan lives (the plan is rebuilt when a state tensor is
replaced). The entry keeps those lists, so the tensors the table points to live as long as it
does, is used only for the very same list objects, and releases the table's references when it
is dropped. Without a cache (direct callers) each call builds its table. A state tensor whose
storage is swapped in place (``state["exp_avg"].data = ...``) is not seen: the plan's state
tensors are updated in place only. A param whose storage is swapped is seen: the op reads each
param through the table's reference every step.

Note [owned grads] (``csrc/include/fusedopt/tensor_info.h``): when a cached table's first grad
is the very tensor it was the step before (a weak reference tells), the grads are taken to stay
the same tensors from step to step (``zero_grad(set_to_none=False)``, grads that are views of a
flat buffer or of DDP's buckets), and the table is rebuilt to own them too: a step then passes
no list at all, only comparing its grads with the table's (identity, no tensor read). The first
step whose grads are other tensors drops that table, and the cache never owns grads again, so
grads that change every step (the default ``set_to_none=True``) are never held; the optimizer's
``zero_grad(set_to_none=True)`` drops it at once (``drop_owned_grads``), so the old grads are not
kept alive through the next backward.
"""
from __future__ import annotations

import operator
import sys
import weakref

import torch

# What the ops refuse that the reference backend serves (nothing written): tensors without a
# common dense layout (and 8-bit states of non-contiguous params), and combinations not compiled.
_FALLBACKS = ("share one dense layout", "runs on the reference backend")
_SLOT_LISTS = 3  # every step op takes three state lists (s0, s1, s2); unused ones are empty


class StateTable:
    """A ``fusedopt::state_table`` and the lists it was built from; its references to the params
    are released when it is dropped."""
    __slots__ = ("params", "states", "master", "scales", "rounding", "grads", "table")

    def __init__(self, params, states, master, scales=None, rounding=None, grads=None):
        slots = list(states) + [[]] * (_SLOT_LISTS - len(states))
        flat_scales = None if scales is None else [s for slot in scales for s in slot]
        rows = None if rounding is None else torch.tensor(
            [[seed - (1 << 64) if seed >= 1 << 63 else seed, offset] for seed, offset in rounding],
            dtype=torch.int64).reshape(-1, 2)
        self.table = torch.ops.fusedopt.state_table(params, *slots, master, flat_scales, rows, grads)
        self.params, self.states, self.master = params, states, master
        self.scales, self.rounding, self.grads = scales, rounding, grads

    def describes(self, states, master, scales, rounding) -> bool:
        """Whether the table was built from these very lists."""
        return (self.states is states and self.master is master and self.scales is scales
                and self.rounding is rounding)

    def owns(self, grads) -> bool:
        """Whether the table owns these very grads (Note [owned grads])."""
        return (self.grads is not None and len(grads) == len(self.grads)
                and all(map(operator.is_, grads, self.grads)))

    def __del__(self):
        table = getattr(self, "table", None)
        # At interpreter shutdown torch may be half torn down: the process is ending, and its
        # references go with it.
        if table is not None and not sys.is_finalizing():
            try:
                torch.ops.fusedopt.release_table(table)
            except Exception:  # pragma: no cover
                pass


def _table(cache, params, grads, states, master, scales, rounding) -> StateTable:
    """The state table for a call: the cached one when it still describes the call's lists (and
    owns these grads if it owns any), else a new one, cached, owning the grads when they look
    like they stay the same tensors (Note [owned grads])."""
    if cache is None:
        return StateTable(params, states, master, scales, rounding)
    entry = cache.get("state_table")
    if entry is not None and entry.grads is not None and not entry.owns(grads):
        entry = cache["state_table"] = None  # other grads now: let the owned ones go, for good
        cache["grads_vary"] = True
    last = cache.get("grad0")
    steady = (bool(grads) and last is not None and last() is grads[0] and not cache.get("grads_vary")
              and (entry is None or (entry.grads is None and entry.params is params)))
    cache["grad0"] = weakref.ref(grads[0]) if grads else None
    if entry is not None and entry.describes(states, master, scales, rounding) and not steady:
        return entry
    entry = None
    if steady:
        try:
            entry = StateTable(params, states, master, scales, rounding, grads)
        except RuntimeError:  # a grad the step will refuse, with its own message
            cache["grads_vary"] = True
    if entry is None:
        entry = StateTable(params, states, master, scales, rounding)
    cache["state_table"] = entry
    return entry


def drop_owned_grads(cache) -> None:
    """Drop the cached state table if it owns grads (Note [owned grads]): for
    ``zero_grad(set_to_none=True)``."""
    entry = cache.get("state_table")
    if entry is not None and entry.grads is not None:
        cache["state_table"] = None


class CompiledBackend:
    """Calls ``torch.ops.fusedopt.<algo>``, whose kernels (of ``fusedopt._C`` or
    ``fusedopt._C_cuda``) the subclass's :meth:`available` says are loaded."""

    name = ""
    # The ops check every tensor (dtype, shape, dense layout, device, the tables) before writing
    # anything, so a caller need not check gradients in Python.
    checks_tensors = True
    # step() takes cache= (Note [cached state tables]).
    caches_state_table = True

    def __init__(self):
        self._reference = None

    def _fallback(self):
        if self._reference is None:
            from .reference import Backend as Reference
            self._reference = Reference()
        return self._reference

    def step(self, algo, flags, params, grads, states, master, steps, index, hyper,
             grad_scale=None, found_inf=None, sums=None, phase=0, scales=None, rounding=None, cache=None):
        """``cache``: a dict the caller keeps for these ``params``, ``states``, ``master``,
        ``scales`` and ``rounding`` lists, or None (Note [cached state tables])."""
        if not params:
            return
        if params[0].dtype == torch.float64:
            return self._fallback().step(algo, flags, params, grads, states, master, steps, index,
                                         hyper, grad_scale, found_inf, sums, phase, scales, rounding)
        try:
            entry = _table(cache, params, grads, states, master, scales, rounding)
            # The table's own params when they are the very list it was built from; else the
            # params given (FSDP2's local shards are a new list every step), checked against the
            # table as always. Its own grads too when it owns these (Note [owned grads]).
            call_params = [] if entry.params is params else params
            call_grads = [] if not call_params and entry.grads is not None else grads
            getattr(torch.ops.fusedopt, algo)(call_params, call_grads, entry.table, steps, index, hyper,
                                              [bool(f) for f in flags], grad_scale, found_inf, sums, phase)
        except RuntimeError as e:
            # Nothing was written: the op checks every tensor before touching memory.
            if not any(reason in str(e) for reason in _FALLBACKS):
                sparse = next((i for i, g in enumerate(grads) if g.is_sparse), None)
                if sparse is not None:  # the dispatcher refuses sparse tensors before the op runs
                    raise RuntimeError(f"fusedopt::{algo}: grad {sparse} is sparse; fusedopt needs "
                                       "dense gradients") from None
                raise
            self._fallback().step(algo, flags, params, grads, states, master, steps, index, hyper,
                                  grad_scale, found_inf, sums, phase, scales, rounding)

    def lookahead(self, params, slow, alpha, master=None):
        if not params:
            return
        if params[0].dtype == torch.float64:
            return self._fallback().lookahead(params, slow, alpha, master)
        torch.ops.fusedopt.lookahead(params, slow, float(alpha), master)
