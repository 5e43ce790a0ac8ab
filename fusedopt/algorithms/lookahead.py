r"""Lookahead's slow-weight update.

Every ``k`` inner steps: :math:`\phi \leftarrow \phi + \alpha (\theta - \phi)`, then
:math:`\theta \leftarrow \phi`. Zhang, Lucas, Hinton and Ba, "Lookahead Optimizer: k steps
forward, 1 step back", NeurIPS 2019.
"""
from __future__ import annotations

import torch


def update(p: torch.Tensor, slow: torch.Tensor, alpha: float, master: torch.Tensor | None = None) -> None:
    """Eager reference: ``slow += alpha * (p - slow); p = slow``. ``slow`` is float32 or float64.

    With ``master`` (the float32 master weight of a 16-bit ``p``), the master weight is the fast
    weight the slow one moves toward, and both the master weight and ``p`` (rounded) receive the
    result."""
    fast = p if master is None else master
    slow.add_(fast.to(slow.dtype) - slow, alpha=alpha)
    if master is not None:
        master.copy_(slow)
    p.copy_(slow)
