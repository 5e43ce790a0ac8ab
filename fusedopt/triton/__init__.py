"""Triton kernels for every fusedopt algorithm: one multi-tensor traversal, one launch per call.

- :mod:`.kernels`: the traversal kernel and, per algorithm, one scalars function (its float64
  per-tensor scalars from the tensor's hyperparameter row and step count, rounded once to
  float32) and one float32 math function (plus Lookahead's slow-weight update); the
  algorithm's flags, dtypes and present slots are ``tl.constexpr``.
- :mod:`.tables`: the device-resident table of addresses, sizes, step slots, hyperparameter
  rows and ``(tensor, chunk start)`` work items, cached across steps on the tensors' addresses
  and the index's contents; uploaded from pinned memory with a non-blocking copy on CUDA.
- :mod:`.launcher`: the interface's call to the one launch per call; :func:`launch_count`
  counts launches (tests check one per call, whatever its param groups and step counts).

8-bit states (uint8 codes with float32 block scales) and stochastic rounding of 16-bit params
(``fusedopt/lowbit.py``'s rules) are fused in the same traversal: dequantize, update, quantize
and round in the program that updates the chunk.

One program handles one chunk of ``block_size()`` elements of one tensor: 2048 on the GPU
(4 warps), 4096 in the interpreter. A tensor's full chunks run unmasked with 16-byte vector
accesses when every address of the table is 16-byte aligned; its last chunk is masked.

``TRITON_INTERPRET=1`` when this package is first imported runs the kernels in Triton's
interpreter on CPU tensors (how the CI machine tests them); otherwise they compile for CUDA.
"""
from .launcher import (INTERPRETED, block_size, launch_count, multi_tensor_lookahead, multi_tensor_step,
                       reset_launch_count, table_cache)

__all__ = ["INTERPRETED", "block_size", "launch_count", "multi_tensor_lookahead", "multi_tensor_step",
           "reset_launch_count", "table_cache"]
