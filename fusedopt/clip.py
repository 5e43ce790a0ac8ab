"""Global-norm gradient clipping without host synchronisation.

``g = g * min(1, max_norm / ||g||)`` with ``||g||`` the norm over all gradients of the call.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch

from . import _distributed
from ._grouping import bucket


def _local_norm(grads: list[torch.Tensor], norm_type: float) -> torch.Tensor:
    first = grads[0].device
    partial = []
    for (_device, _dtype), gs in bucket(grads, lambda g: (g.device, g.dtype)).items():
        partial.extend(n.to(first) for n in torch._foreach_norm(gs, norm_type))
    return torch.linalg.vector_norm(torch.stack(partial).float(), norm_type)


def _global_norm(grads: list[torch.Tensor], norm_type: float):
    """(the global norm as a plain 0-dim tensor, the DTensor reduction or None)."""
    red = _distributed.norm_reduction(grads)
    if red is None:
        return _local_norm(grads, norm_type), None
    if red is False or not norm_type > 0:
        # a mix of meshes or placements: DTensor's own reduction (one collective per tensor group)
        norm = torch.nn.utils.get_total_norm(grads, norm_type)
        return norm.full_tensor().float(), None
    sharded = _local_norm(red.sharded, norm_type) if red.sharded else None
    replicated = _local_norm(red.replicated, norm_type) if red.replicated else None
    return _distributed.reduce_norm(sharded, replicated, norm_type, red), red


def total_norm(grads: list[torch.Tensor], norm_type: float = 2.0) -> torch.Tensor:
    """The ``norm_type``-norm of all ``grads`` together, as a 0-dim float32 tensor on the first
    gradient's device. One multi-tensor norm launch per (device, dtype) group; the per-tensor
    norms are combined in a fixed order, so the result is deterministic.

    For DTensor gradients (FSDP2) it is the global norm over every rank's shards, a plain
    tensor equal on every rank: the local shards' norm, then one all-reduce."""
    norm_type = float(norm_type)
    if not grads:
        return torch.zeros(())
    return _global_norm(grads, norm_type)[0]


@torch.no_grad()
def clip_grad_norm_(parameters: torch.Tensor | Iterable[torch.Tensor], max_norm: float, norm_type: float = 2.0,
                    error_if_nonfinite: bool = False, foreach: bool | None = None) -> torch.Tensor:
    """Clip the gradients of ``parameters`` to a global norm of at most ``max_norm``, in place.

    The signature and result of :func:`torch.nn.utils.clip_grad_norm_`: returns the total norm
    before clipping. The coefficient ``min(1, max_norm / (norm + 1e-6))`` stays on the device
    (no host synchronisation unless ``error_if_nonfinite``). To avoid even the scaling pass, give
    the optimizer ``max_grad_norm=`` instead: the coefficient is then folded into the update.

    For DTensor gradients (FSDP2) the norm is global across ranks (one all-reduce), the
    gradients' local shards are scaled, and the result is a DTensor, as torch returns then
    (replicated: its value is the global norm on every rank).
    """
    del foreach
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    norm, red = _global_norm(grads, float(norm_type))
    if error_if_nonfinite and bool(torch.logical_or(norm.isnan(), norm.isinf())):
        raise RuntimeError(f"The total norm of order {float(norm_type)} for gradients from `parameters` is "
                           "non-finite, so it cannot be clipped. To disable this error and scale the gradients "
                           "by the non-finite norm anyway, set `error_if_nonfinite=False`")
    coef = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
    for (device, _dtype), gs in bucket(_distributed.local_list(grads), lambda g: (g.device, g.dtype)).items():
        torch._foreach_mul_(gs, coef.to(device))
    return norm if red is None else _distributed.as_replicated(norm, red)
