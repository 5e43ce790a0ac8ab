"""The compiled CPU backend: ``torch.ops.fusedopt.<algo>`` from ``fusedopt._C``.

One call per group and step: the whole group (params, grads, every state slot) goes to one
C++ op that walks it in a single parallel region over (tensor, chunk) work items with
vectorised inner loops (see ``csrc/cpu/multi_tensor.h``). Threads follow
``torch.get_num_threads()``. Params are float32, bfloat16 or float16, states float32; float64
groups and tensors without a dense layout go to the reference backend.
"""
from __future__ import annotations

import torch

from .. import _ext

_LAYOUT_ERROR = "share one dense layout"


class Backend:
    name = "cpu"

    def __init__(self):
        self._reference = None

    def available(self, device: torch.device) -> tuple[bool, str]:
        ok, why = _ext.cpu_status()
        if not ok:
            return False, why
        device = torch.device(device)
        if device.type != "cpu":
            return False, f"the cpu backend runs on CPU tensors only, not {device.type}"
        return True, ""

    def _fallback(self):
        if self._reference is None:
            from .reference import Backend as Reference
            self._reference = Reference()
        return self._reference

    def step(self, algo, params, grads, states, scalars, flags, grad_scale=None, found_inf=None,
             master=None):
        if not params:
            return
        if params[0].dtype == torch.float64:
            return self._fallback().step(algo, params, grads, states, scalars, flags, grad_scale,
                                         found_inf, master)
        op = getattr(torch.ops.fusedopt, algo)
        nslots = _ext.STEP_OPS[algo]
        slots = list(states) + [[]] * (nslots - len(states))
        # Device-mode scalars are a float32 tensor: host memory here, so reading it is free.
        if isinstance(scalars, torch.Tensor):
            scalars = scalars.tolist()
        else:
            scalars = [float(s) for s in scalars]
        flags = [bool(f) for f in flags]
        try:
            op(params, grads, *slots, scalars, flags, grad_scale, found_inf, master)
        except RuntimeError as e:
            # Nothing was written: the op checks every tensor before touching memory.
            if _LAYOUT_ERROR not in str(e):
                raise
            self._fallback().step(algo, params, grads, states, scalars, flags, grad_scale,
                                  found_inf, master)

    def lookahead(self, params, slow, alpha):
        if not params:
            return
        if params[0].dtype == torch.float64:
            return self._fallback().lookahead(params, slow, alpha)
        torch.ops.fusedopt.lookahead(params, slow, float(alpha))
