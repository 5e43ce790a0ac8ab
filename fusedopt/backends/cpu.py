"""The compiled CPU backend: ``torch.ops.fusedopt.<algo>`` from ``fusedopt._C``.

One call per bucket and step (the params of every param group that share dtypes and variant):
the whole call (params, grads, every state slot, master weights) goes to one C++ op that derives
each tensor's scalars from its row of ``hyper`` and its step count, then walks every tensor in a
single parallel region over (tensor, chunk) work items with vectorised inner loops (see
``csrc/cpu/multi_tensor.h``). Threads follow ``torch.get_num_threads()``. Params are float32,
bfloat16 or float16, states float32 or bfloat16, optional float32 master weights; float64 params
and tensors without a dense layout go to the reference backend.
"""
from __future__ import annotations

import torch

from .. import _ext
from ._compiled import CompiledBackend


class Backend(CompiledBackend):
    name = "cpu"
    lowbit = True  # 8-bit states and stochastic rounding in the C++ kernels

    def available(self, device: torch.device) -> tuple[bool, str]:
        ok, why = _ext.cpu_status()
        if not ok:
            return False, why
        device = torch.device(device)
        if device.type != "cpu":
            return False, f"the cpu backend runs on CPU tensors only, not {device.type}"
        return True, ""
