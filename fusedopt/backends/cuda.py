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
from ._compiled import CompiledBackend


def _on(t, device):
    """An optional 0-dim/one-element tensor as float32 on ``device`` (a no-op when it is)."""
    if t is None:
        return None
    return t.to(device=device, dtype=torch.float32)


class Backend(CompiledBackend):
    name = "cuda"

    def available(self, device: torch.device) -> tuple[bool, str]:
        device = torch.device(device)
        if device.type != "cuda":
            return False, f"the cuda backend runs on CUDA tensors only, not {device.type}"
        ok, why = _ext.cuda_status()
        if not ok:
            return False, why
        return True, ""

    def _op_and_scalars(self, packet, scalars, device):
        if isinstance(scalars, torch.Tensor):
            # Device mode: the kernels read the scalars from device memory.
            return packet.tensor, scalars.to(device=device, dtype=torch.float32).contiguous()
        return packet.default, [float(s) for s in scalars]

    def _aux(self, t, device):
        return _on(t, device)
