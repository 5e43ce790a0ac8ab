"""What the two compiled backends (``cpu`` and ``cuda``) share: the call of the op of an
algorithm, and the reference fallback for float64 and for tensors without a dense layout."""
from __future__ import annotations

import torch

from .. import _ext

_LAYOUT_ERROR = "share one dense layout"


class CompiledBackend:
    """Calls ``torch.ops.fusedopt.<algo>``; subclasses say how scalars and the optional
    scale / inf-flag tensors reach the op (:meth:`_op_and_scalars`, :meth:`_aux`)."""

    name = ""
    # The ops check every tensor (dtype, shape, dense layout, device) before writing anything,
    # so a reused step plan need not check gradients in Python (Note [step plans] in _base.py).
    checks_tensors = True

    def __init__(self):
        self._reference = None

    def _fallback(self):
        if self._reference is None:
            from .reference import Backend as Reference
            self._reference = Reference()
        return self._reference

    def _op_and_scalars(self, packet, scalars, device):
        raise NotImplementedError

    def _aux(self, t, device):
        return t

    def step(self, algo, params, grads, states, scalars, flags, grad_scale=None, found_inf=None,
             master=None):
        if not params:
            return
        if params[0].dtype == torch.float64:
            return self._fallback().step(algo, params, grads, states, scalars, flags, grad_scale,
                                         found_inf, master)
        device = params[0].device
        op, args = self._op_and_scalars(getattr(torch.ops.fusedopt, algo), scalars, device)
        slots = list(states) + [[]] * (_ext.STEP_OPS[algo] - len(states))
        try:
            op(params, grads, *slots, args, [bool(f) for f in flags], self._aux(grad_scale, device),
               self._aux(found_inf, device), master)
        except RuntimeError as e:
            # Nothing was written: the op checks every tensor before touching memory.
            if _LAYOUT_ERROR not in str(e):
                sparse = next((i for i, g in enumerate(grads) if g.is_sparse), None)
                if sparse is not None:  # the dispatcher refuses sparse tensors before the op runs
                    raise RuntimeError(f"fusedopt::{algo}: grad {sparse} is sparse; fusedopt needs "
                                       "dense gradients") from None
                raise
            self._fallback().step(algo, params, grads, states, scalars, flags, grad_scale,
                                  found_inf, master)

    def lookahead(self, params, slow, alpha):
        if not params:
            return
        if params[0].dtype == torch.float64:
            return self._fallback().lookahead(params, slow, alpha)
        torch.ops.fusedopt.lookahead(params, slow, float(alpha))
