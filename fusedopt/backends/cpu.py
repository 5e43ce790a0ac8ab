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

from ._compiled import CompiledBackend


class Backend(CompiledBackend):
    name = "cpu"

    def available(self, device: torch.device) -> tuple[bool, str]:
        ok, why = _ext.cpu_status()
        if not ok:
            return False, why
        device = torch.device(device)
        if device.type != "cpu":
            return False, f"the cpu backend runs on CPU tensors only, not {device.type}"
        return True, ""

    def _op_and_scalars(self, packet, scalars, device):
        # Device-mode scalars are a float32 tensor: host memory here, so reading it is free.
        if isinstance(scalars, torch.Tensor):
            return packet.default, scalars.tolist()
        return packet.default, [float(s) for s in scalars]
