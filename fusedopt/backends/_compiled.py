"""What the two compiled backends (``cpu`` and ``cuda``) share: the call of an algorithm's op
(``docs/kernel-interface.md``), and the reference fallback for float64 and for tensors without a
dense layout."""
from __future__ import annotations

import torch

_LAYOUT_ERROR = "share one dense layout"
_SLOT_LISTS = 3  # every step op takes three state lists (s0, s1, s2); unused ones are empty


class CompiledBackend:
    """Calls ``torch.ops.fusedopt.<algo>``, whose kernels (of ``fusedopt._C`` or
    ``fusedopt._C_cuda``) the subclass's :meth:`available` says are loaded."""

    name = ""
    # The ops check every tensor (dtype, shape, dense layout, device, the tables) before writing
    # anything, so a caller need not check gradients in Python.
    checks_tensors = True

    def __init__(self):
        self._reference = None

    def _fallback(self):
        if self._reference is None:
            from .reference import Backend as Reference
            self._reference = Reference()
        return self._reference

    def step(self, algo, flags, params, grads, states, master, steps, index, hyper,
             grad_scale=None, found_inf=None):
        if not params:
            return
        if params[0].dtype == torch.float64:
            return self._fallback().step(algo, flags, params, grads, states, master, steps, index,
                                         hyper, grad_scale, found_inf)
        slots = list(states) + [[]] * (_SLOT_LISTS - len(states))
        try:
            getattr(torch.ops.fusedopt, algo)(params, grads, *slots, master, steps, index, hyper,
                                              [bool(f) for f in flags], grad_scale, found_inf)
        except RuntimeError as e:
            # Nothing was written: the op checks every tensor before touching memory.
            if _LAYOUT_ERROR not in str(e):
                sparse = next((i for i, g in enumerate(grads) if g.is_sparse), None)
                if sparse is not None:  # the dispatcher refuses sparse tensors before the op runs
                    raise RuntimeError(f"fusedopt::{algo}: grad {sparse} is sparse; fusedopt needs "
                                       "dense gradients") from None
                raise
            self._fallback().step(algo, flags, params, grads, states, master, steps, index, hyper,
                                  grad_scale, found_inf)

    def lookahead(self, params, slow, alpha):
        if not params:
            return
        if params[0].dtype == torch.float64:
            return self._fallback().lookahead(params, slow, alpha)
        torch.ops.fusedopt.lookahead(params, slow, float(alpha))
