"""The Triton backend: every algorithm in one multi-tensor launch per call.

Kernels, tables and the launcher live in :mod:`fusedopt.triton`. On CUDA the kernels compile
with Triton; on the CPU they run only in Triton's interpreter (``TRITON_INTERPRET=1`` set before
fusedopt's Triton kernels are first imported), which is how the CI machine tests them.
"""
from __future__ import annotations

import os

import torch

try:
    from .. import triton as _kernels
except ImportError:
    raise  # triton is not installed: the registry reports the backend unavailable
except Exception as e:  # a broken triton install must not break the registry
    raise ImportError(f"triton failed to import: {type(e).__name__}: {e}") from e


class Backend:
    name = "triton"
    checks_tensors = False  # relies on the optimizer's checks (the tables check layouts only)
    lowbit = True  # step() takes scales= and rounding= (8-bit states, stochastic rounding), fused

    def available(self, device: torch.device) -> tuple[bool, str]:
        device = torch.device(device)
        if device.type == "cuda":
            if _kernels.INTERPRETED:
                return False, ("fusedopt's Triton kernels were imported with TRITON_INTERPRET=1 "
                               "and run in the interpreter on CPU tensors only")
            if not torch.cuda.is_available():
                return False, "CUDA is not available"
            return True, ""
        if device.type == "cpu":
            if os.environ.get("TRITON_INTERPRET") != "1":
                return False, "Triton runs on CPU tensors only in its interpreter (set TRITON_INTERPRET=1)"
            if not _kernels.INTERPRETED:
                return False, ("TRITON_INTERPRET=1 was set after fusedopt's Triton kernels were imported; "
                               "set it before importing fusedopt")
            return True, ""
        return False, f"Triton does not run on {device.type} tensors"

    def step(self, algo, flags, params, grads, states, master, steps, index, hyper, grad_scale=None,
             found_inf=None, sums=None, phase=0, scales=None, rounding=None):
        """``scales``: per slot, the float32 block scales of 8-bit states (``states`` then hold
        their uint8 codes); ``rounding``: per tensor, (seed, element offset) of stochastic
        rounding of 16-bit params. Both fused in the one traversal (``fusedopt.triton.kernels``)."""
        _kernels.multi_tensor_step(algo, flags, params, grads, states, master, steps, index, hyper,
                                   grad_scale=grad_scale, found_inf=found_inf, sums=sums, phase=phase,
                                   scales=scales, rounding=rounding)

    def lookahead(self, params, slow, alpha, master=None):
        _kernels.multi_tensor_lookahead(params, slow, alpha, master)
