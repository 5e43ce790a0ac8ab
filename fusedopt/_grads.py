"""A step's gradients: one pass over the params' ``.grad`` (Note [one pass over the grads])."""
from __future__ import annotations

import operator
from dataclasses import dataclass
from itertools import chain, repeat

import torch

# Note [one pass over the grads]: a step reads each param's ``.grad`` once. With thousands of
# small tensors allocated one by one, their metadata is spread over as much memory as their
# data, and every pass over it costs cache and TLB misses: measured on 10,000 x 1K params, one
# Python pass over ``p.grad`` takes 2.5-5 ms where the whole fused update takes 6-7 ms.


@dataclass
class Grads:
    """What a step reads of its params' gradients."""
    with_grads: list[list[torch.Tensor]]  # per group, its params with a gradient
    grads: list[torch.Tensor]             # their gradients, in that order
    flat: list[torch.Tensor]              # the params of with_grads, in that order


def read_grads(groups: list[dict]) -> Grads:
    """The gradients of every group's params, in one pass (over all groups at once: a model
    with a group per layer pays no per-group cost when every param has a gradient)."""
    flat = groups[0]["params"] if len(groups) == 1 else list(chain.from_iterable(g["params"] for g in groups))
    grads = [p.grad for p in flat]
    if all(map(operator.is_not, grads, repeat(None, len(grads)))):
        return Grads([g["params"] for g in groups], grads, flat)
    with_grads, grads, at = [], [g for g in grads if g is not None], iter(grads)
    for g in groups:
        params = g["params"]
        with_grads.append([p for p, gr in zip(params, at) if gr is not None])
    return Grads(with_grads, grads, list(chain.from_iterable(with_grads)))
