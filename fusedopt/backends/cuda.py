"""The CUDA backend: ``torch.ops.fusedopt.<algo>`` with the kernels of ``fusedopt._C_cuda``.

One launch per bucket and step on torch's current CUDA stream: the call's addresses, sizes, step
slots and hyperparameter rows live in tables in device memory (cached while they do not change),
each block derives its tensor's scalars from ``steps`` and ``hyper`` on the device (so a step
never synchronises with the host) and moves 16-byte vectors where the tensors are aligned (see
``csrc/cuda``). The math is the per-algorithm headers the CPU kernels compile too. Params are
float32, bfloat16 or float16, states float32 or bfloat16 or 8-bit codes with their block scales
(``fusedopt.lowbit``: dequantized, updated and quantized again in the same pass, one warp per
block of 256), optional float32 master weights or the stochastic rounding of 16-bit params;
float64 params and tensors without a dense layout (contiguous, with 8-bit states) go to the
reference backend.
"""
from __future__ import annotations

import torch

from .. import _ext
from ._compiled import CompiledBackend


class Backend(CompiledBackend):
    name = "cuda"
    lowbit = True  # 8-bit states and stochastic rounding in the CUDA kernels (csrc/cuda/lowbit.cuh)

    def available(self, device: torch.device) -> tuple[bool, str]:
        device = torch.device(device)
        if device.type != "cuda":
            return False, f"the cuda backend runs on CUDA tensors only, not {device.type}"
        ok, why = _ext.cuda_status()
        if not ok:
            return False, why
        return True, ""
