"""DTensor support for the fused step and for clipping (FSDP2 ``fully_shard``, tensor parallel).

- The fused step runs on the local shards: params, grads, states and master weights are
  unwrapped to their local tensors right before the backend is called, so a group is still one
  launch and no per-parameter DTensor dispatch happens on the hot path. The states themselves
  stay DTensors (created with ``torch.full_like(param)``, as torch.optim does), so distributed
  checkpointing reshards them.
- Global gradient norms: the norm of the local shards is computed locally and combined across
  the ranks that hold the shards with one all-reduce (``x^p``, sum, ``x^(1/p)``; max for the
  inf-norm), the way DTensor's own norm reduction does it.
- Per-tensor norms of a reducing algorithm (LAMB's trust ratio): its step is split in its two
  traversals, and the per-tensor sums of squares of the local shards are all-reduced in between
  (Note [split steps] in csrc/include/fusedopt/tensor_info.h), one all-reduce per step.
- 8-bit states (Note [8-bit DTensor states]) and stochastic rounding of sharded params.

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


def _shard_dims(tensors: list[torch.Tensor]):
    """For DTensors on one mesh with Shard / Replicate placements only: ``(mesh, dims, sharded)``,
    the mesh dims the sharded tensors are sharded on (the same for all of them) and whether each
    tensor is sharded; ``None`` when none is a DTensor; ``False`` for any other mix."""
    cls = _dtensor_type()
    if cls is None:
        return None
    flags = [isinstance(t, cls) for t in tensors]
    if not any(flags):
        return None
    if not all(flags):
        return False
    from torch.distributed.tensor import Replicate, Shard

    mesh = tensors[0].device_mesh
    reduce_dims = None
    sharded = []
    for t in tensors:
        if t.device_mesh != mesh:
            return False
        dims = []
        for d, placement in enumerate(t.placements):
            if isinstance(placement, Shard):
                dims.append(d)
            elif not isinstance(placement, Replicate):
                return False  # partial (pending reduction) or a custom placement
        sharded.append(bool(dims))
        if not dims:
            continue
        if reduce_dims is None:
            reduce_dims = tuple(dims)
        elif tuple(dims) != reduce_dims:
            return False
    return mesh, reduce_dims or (), sharded


# Note [8-bit DTensor states]: the scales of an 8-bit state whose param's rows (its elements
# per index of dim 0) are whole blocks are kept as [rows, blocks per row] (lowbit.scale_shape),
# the same blocks as the flat [blocks]. A DTensor param whose placements shard dim 0 only (FSDP2,
# HSDP) and whose rows are whole blocks keeps codes and scales as DTensors with the param's
# mesh and placements: every shard holds whole rows, so the blocks of its flattened local
# tensor, where the kernels quantize, are the blocks of those rows, the same on every rank and
# at every world size, and distributed checkpointing reshards codes and scales together,
# exactly, into any sharding or none. A DTensor param sharded otherwise (on another dim, tensor
# parallel) or with rows that are not whole blocks keeps float32 states, as params under
# min_8bit_size do.
def blocks_fit(p: torch.Tensor, block: int) -> bool:
    """Whether ``p``'s 8-bit states can be quantized shard by shard (Note [8-bit DTensor
    states]); always for a plain tensor."""
    if not is_dtensor(p):
        return True
    from torch.distributed.tensor import Replicate, Shard

    from .lowbit import scale_shape

    return len(scale_shape(p.shape, block)) == 2 and all(
        isinstance(q, Replicate) or (isinstance(q, Shard) and q.dim == 0) for q in p.placements)


def quantize_state(x: torch.Tensor, qmap: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``lowbit.quantize_blockwise`` of a float state, the scales in ``lowbit.scale_shape``; of
    its local shard for a DTensor (whose layout passes :func:`blocks_fit`), the codes and scales
    then DTensors laid out like it."""
    from . import lowbit

    codes, absmax = lowbit.quantize_blockwise(local(x), qmap, block)
    shape = lowbit.scale_shape(x.shape, block)
    if not is_dtensor(x):
        return codes, absmax.view(shape)
    return _like(x, codes, x.shape), _like(x, absmax.view(codes.shape[0], shape[1]), shape)


def dequantize_state(codes: torch.Tensor, absmax: torch.Tensor, qmap: torch.Tensor, block: int) -> torch.Tensor:
    """``lowbit.dequantize_blockwise`` of codes and scales of either shape; of the local shards
    for DTensors (a float32 DTensor like ``codes``)."""
    from . import lowbit

    x = lowbit.dequantize_blockwise(local(codes), local(absmax), qmap, block)
    return _like(codes, x, codes.shape) if is_dtensor(codes) else x


def _like(p, local_tensor: torch.Tensor, shape) -> torch.Tensor:
    """``local_tensor`` as this rank's shard of a DTensor of global ``shape`` with ``p``'s mesh
    and placements (contiguous)."""
    from torch.distributed.tensor import DTensor

    shape = torch.Size(shape)
    stride = tuple(math.prod(shape[i + 1:]) for i in range(len(shape)))
    return DTensor.from_local(local_tensor, p.device_mesh, p.placements, run_check=False, shape=shape,
                              stride=stride)


def shard_offset(p: torch.Tensor) -> int:
    """Where this rank's shard of ``p`` starts in ``p`` flattened, for a DTensor sharded on dim 0
    only (its shard is then a run of whole rows); 0 otherwise. Stochastic rounding adds it to
    the element index, so a sharded param draws the bits the whole param would."""
    if not is_dtensor(p) or p.dim() == 0:
        return 0
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    if not all(type(q) is Replicate or (type(q) is Shard and q.dim == 0) for q in p.placements):
        return 0
    _, offset = compute_local_shape_and_global_offset(p.shape, p.device_mesh, p.placements)
    return offset[0] * (p.numel() // p.shape[0]) if p.shape[0] else 0


@dataclass
class SumReduction:
    """How a split step's per-tensor sums (over each rank's shard) become the sums over whole
    tensors: the rows of the sharded params all-reduced over the mesh dims they are sharded on;
    those of replicated params (the whole tensor on every rank) kept."""
    mesh: object
    reduce_dims: tuple[int, ...]
    rows: torch.Tensor | None  # the sharded params' rows, on their device; None: every row


def sum_reduction(params: list[torch.Tensor], device: torch.device, name: str) -> SumReduction | None:
    """The :class:`SumReduction` of a reducing algorithm's bucket, or None when no param is
    sharded (the sums of the local tensors are those of the whole tensors)."""
    found = _shard_dims(params)
    if found is None:
        return None
    if found is False:
        raise RuntimeError(f"fusedopt {name}: its per-tensor norms need DTensor params on one mesh, sharded "
                           "(Shard) over the same mesh dims or replicated; these params mix meshes, "
                           "placements, or DTensors and plain tensors")
    mesh, dims, sharded = found
    if not dims:
        return None
    rows = None if all(sharded) else torch.tensor([i for i, s in enumerate(sharded) if s], device=device)
    return SumReduction(mesh, dims, rows)


def all_reduce_sums(sums: torch.Tensor, red: SumReduction) -> None:
    """Sum the rows of ``sums`` that ``red`` says are over shards across the ranks holding the
    other shards (in place, no host synchronisation)."""
    import torch.distributed as dist

    part = sums if red.rows is None else sums.index_select(0, red.rows)
    for d in red.reduce_dims:
        dist.all_reduce(part, group=red.mesh.get_group(d))
    if red.rows is not None:
        sums.index_copy_(0, red.rows, part)


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
    found = _shard_dims(grads)
    if not found:
        return found
    mesh, dims, is_sharded = found
    return NormReduction(mesh, dims, [g._local_tensor for g, s in zip(grads, is_sharded) if s],
                         [g._local_tensor for g, s in zip(grads, is_sharded) if not s])


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
