"""Triton kernels for every fusedopt algorithm: one multi-tensor traversal, one launch per call.

``TRITON_INTERPRET=1`` when this package is first imported runs the kernels in Triton's
interpreter on CPU tensors (how the CI machine tests them); otherwise they compile for CUDA.
"""
from .launcher import (INTERPRETED, block_size, launch_count, multi_tensor_lookahead, multi_tensor_step,
                       reset_launch_count, table_cache)

__all__ = ["INTERPRETED", "block_size", "launch_count", "multi_tensor_lookahead", "multi_tensor_step",
           "reset_launch_count", "table_cache"]
