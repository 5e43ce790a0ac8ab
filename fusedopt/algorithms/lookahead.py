r"""Lookahead's slow-weight update.

Every ``k`` inner steps: :math:`\phi \leftarrow \phi + \alpha (\theta - \phi)`, then
:math:`\theta \leftarrow \phi`. Zhang, Lucas, Hinton and Ba, "Lookahead Optimizer: k steps
forward, 1 step back", NeurIPS 2019.
"""
from __future__ import annotations

import torch


def update(p: torch.Tensor, slow: torch.Tensor, alpha: float) -> None:
    """Eager reference: ``slow += alpha * (p - slow); p = slow``. ``slow`` is float32 or float64."""
    slow.add_(p.to(slow.dtype) - slow, alpha=alpha)
    p.copy_(slow)
