"""The CUDA backend: ``torch.ops.fusedopt.<algo>`` with the kernels of ``fusedopt._C_cuda``.

One launch per group and step on torch's current CUDA stream: the group's addresses, sizes
and work items live in tables in device memory (cached while the addresses do not change), and
each block moves 16-byte vectors where the tensors are aligned (see ``csrc/cuda``). The math is
the per-algorithm headers the CPU kernels compile too. Params are float32, bfloat16 or float16,
states float32 or bfloat16, optional float32 master weights; host scalars go to the ops as
floats, device-mode scalars (a float32 tensor) to their ``.tensor`` overloads, read on the
device, so a step never synchronises with the host. float64 groups and tensors without a
dense layout go to the reference backend.
"""
from __future__ import annotations

import torch

from .. import _ext

_LAYOUT_ERROR = "share one dense layout"


def _on(t, device):
    """An optional 0-dim/one-element tensor as float32 on ``device`` (a no-op when it is)."""
    if t is None:
        return None
    return t.to(device=device, dtype=torch.float32)


class Backend:
    name = "cuda"

    def __init__(self):
        self._reference = None

    def available(self, device: torch.device) -> tuple[bool, str]:
        device = torch.device(device)
        if device.type != "cuda":
            return False, f"the cuda backend runs on CUDA tensors only, not {device.type}"
        ok, why = _ext.cuda_status()
        if not ok:
            return False, why
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
        packet = getattr(torch.ops.fusedopt, algo)
        nslots = _ext.STEP_OPS[algo]
        slots = list(states) + [[]] * (nslots - len(states))
        device = params[0].device
        if isinstance(scalars, torch.Tensor):
            # Device mode: the kernels read the scalars from device memory.
            op = packet.tensor
            args = scalars.to(device=device, dtype=torch.float32).contiguous()
        else:
            op = packet.default
            args = [float(s) for s in scalars]
        flags = [bool(f) for f in flags]
        try:
            op(params, grads, *slots, args, flags, _on(grad_scale, device), _on(found_inf, device),
               master)
        except RuntimeError as e:
            # Nothing was written: the op checks every tensor before launching.
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
