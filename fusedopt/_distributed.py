"""DTensor support for the fused step and for clipping (FSDP2 ``fully_shard``, tensor parallel).

- The fused step runs on the local shards: params, grads, states and master weights are
  unwrapped to their local tensors right before the backend is called, so a group is still one
  launch and no per-parameter DTensor dispatch happens on the hot path. The states themselves
  stay DTensors (created with ``torch.full_like(param)``, as torch.optim does), so distributed
  checkpointing reshards them.
- Global gradient norms: the norm of the local shards is computed locally and combined across
  the ranks that hold the shards with one all-reduce (``x^p``, sum, ``x^(1/p)``; max for the
  inf-norm), the way DTensor's own norm reduction does it.

Nothing here imports ``torch.distributed`` unless DTensors exist: if the DTensor module has
not been imported, no tensor can be a DTensor.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import torch

_DTENSOR_MODULE = "torch.distributed.tensor"


def _dtensor_type():
    module = sys.modules.get(_DTENSOR_MODULE)
    return None if module is None else module.DTensor


def is_dtensor(t) -> bool:
    cls = _dtensor_type()
    return cls is not None and isinstance(t, cls)


def local(t: torch.Tensor) -> torch.Tensor:
    """The local tensor of a DTensor (the shard this rank holds and updates in place), else ``t``."""
    cls = _dtensor_type()
    if cls is not None and isinstance(t, cls):
        return t._local_tensor
    return t


def local_list(ts: list[torch.Tensor]) -> list[torch.Tensor]:
    """:func:`local` of every tensor of ``ts`` (the same list when none is a DTensor)."""
    cls = _dtensor_type()
    if cls is None or not any(isinstance(t, cls) for t in ts):
        return ts
    return [t._local_tensor if isinstance(t, cls) else t for t in ts]


@dataclass
class NormReduction:
    """How to turn the norm of local shards into the global norm: which mesh dims to reduce
    over, and the local tensors split into sharded and replicated ones."""
    mesh: object
    reduce_dims: tuple[int, ...]
    sharded: list[torch.Tensor]
    replicated: list[torch.Tensor]


def norm_reduction(grads: list[torch.Tensor]) -> NormReduction | None | bool:
    """``None`` when no gradient is a DTensor (plain local norm). A :class:`NormReduction` when
    every gradient is a DTensor on one mesh, none partial, and the sharded ones are sharded over
    the same mesh dims: then one all-reduce (one per sharded mesh dim) gives the global norm.
    ``False`` for any other mix (the caller falls back to DTensor's own, slower, reduction)."""
    cls = _dtensor_type()
    if cls is None:
        return None
    flags = [isinstance(g, cls) for g in grads]
    if not any(flags):
        return None
    if not all(flags):
        return False
    from torch.distributed.tensor import Replicate, Shard

    mesh = grads[0].device_mesh
    reduce_dims = None
    sharded, replicated = [], []
    for g in grads:
        if g.device_mesh != mesh:
            return False
        dims = []
        for d, placement in enumerate(g.placements):
            if isinstance(placement, Shard):
                dims.append(d)
            elif not isinstance(placement, Replicate):
                return False  # partial (pending reduction) or a custom placement
        if not dims:
            replicated.append(g._local_tensor)
            continue
        if reduce_dims is None:
            reduce_dims = tuple(dims)
        elif tuple(dims) != reduce_dims:
            return False
        sharded.append(g._local_tensor)
    return NormReduction(mesh, reduce_dims or (), sharded, replicated)


def reduce_norm(local_sharded: torch.Tensor | None, local_replicated: torch.Tensor | None,
                norm_type: float, red: NormReduction) -> torch.Tensor:
    """For ``norm_type > 0`` (inf included): combine the ``norm_type``-norm of this rank's sharded local tensors with the other ranks'
    (one all-reduce per sharded mesh dim, one for the usual 1-D FSDP mesh) and with the norm of
    the replicated tensors (the same on every rank, so not reduced)."""
    import torch.distributed as dist

    inf = math.isinf(norm_type)
    if local_sharded is not None and red.reduce_dims:
        value = local_sharded.clone() if inf else local_sharded ** norm_type
        op = dist.ReduceOp.MAX if inf else dist.ReduceOp.SUM
        for d in red.reduce_dims:
            dist.all_reduce(value, op=op, group=red.mesh.get_group(d))
        if local_replicated is not None:
            if inf:
                value = torch.maximum(value, local_replicated)
            else:
                value = value + local_replicated ** norm_type
        return value if inf else value ** (1.0 / norm_type)
    return local_replicated if local_replicated is not None else local_sharded


def as_replicated(norm: torch.Tensor, red: NormReduction):
    """The global norm as a DTensor replicated over ``red``'s mesh: what torch's
    ``clip_grad_norm_`` returns for DTensor gradients, with the reduction already done."""
    from torch.distributed.tensor import DTensor, Replicate

    return DTensor.from_local(norm, red.mesh, [Replicate()] * red.mesh.ndim, run_check=False)
