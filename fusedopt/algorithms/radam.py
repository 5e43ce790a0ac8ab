r"""RAdam: Adam with the variance of its adaptive learning rate rectified.

.. math::
    \rho_\infty = \frac{2}{1-\beta_2} - 1,\quad
    \rho_t = \rho_\infty - \frac{2 t \beta_2^t}{1-\beta_2^t}

    \text{if } \rho_t > 5:\ r_t = \sqrt{\frac{(\rho_t-4)(\rho_t-2)\rho_\infty}
        {(\rho_\infty-4)(\rho_\infty-2)\rho_t}},\quad
        p \leftarrow p - \eta\,\frac{m_t}{1-\beta_1^t}\, r_t\,\frac{\sqrt{1-\beta_2^t}}{\sqrt{v_t}+\epsilon}

    \text{else: } p \leftarrow p - \eta\,\frac{m_t}{1-\beta_1^t}

The rectification is a per-step scalar, computed once per step on the host. Threshold 5 as in
torch and the authors' code. Liu et al., "On the Variance of the Adaptive Learning Rate and
Beyond", ICLR 2020.
"""
from __future__ import annotations

import torch

from .base import Algorithm, sqrt, check_betas, preamble


def rectification(beta2: float, step):
    """(rectify?, r_t) for step ``step``: RAdam's variance rectification term.

    ``step`` is a host number, or a device tensor in device mode; then ``rectify`` is True and
    ``r_t`` is 0 on steps that take the un-adapted branch (the kernels check ``r_t > 0``).
    """
    rho_inf = 2 / (1 - beta2) - 1
    bc2 = 1 - beta2 ** step
    rho_t = rho_inf - 2 * step * (beta2 ** step) / bc2
    if isinstance(step, torch.Tensor):
        r2 = (rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)
        return True, torch.where(rho_t > 5.0, r2.clamp(min=0) ** 0.5, torch.zeros_like(rho_t))
    if rho_t > 5.0:
        r = ((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)) ** 0.5
        return True, r
    return False, 0.0


class RAdamAlgorithm(Algorithm):
    name = "radam"
    defaults = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                    decoupled_weight_decay=False, maximize=False)
    SLOTS = ("exp_avg", "exp_avg_sq")
    EXTRA_SCALARS = ("beta1", "beta2", "eps", "bias_correction1", "bc2_sqrt", "rect")
    EXTRA_FLAGS = ("rectify",)

    def validate(self, group):
        super().validate(group)
        check_betas(group)

    def step_args(self, group, step, first_step=False):
        b1, b2 = (float(b) for b in group["betas"])
        c, f = self.common(group, decoupled=bool(group.get("decoupled_weight_decay", False)))
        rectify, rect = rectification(b2, step)
        return (self.Scalars(*c, b1, b2, float(group["eps"]), 1 - b1 ** step, sqrt(1 - b2 ** step), rect),
                self.Flags(*f, rectify))

    def update(self, p, g, st, s, f):
        g = preamble(p, g, s, f)
        m, v = st["exp_avg"], st["exp_avg_sq"]
        m.lerp_(g, 1 - s.beta1)
        v.mul_(s.beta2).addcmul_(g, g, value=1 - s.beta2)
        corrected = m / s.bias_correction1
        if f.rectify and s.rect > 0:
            adaptive = s.bc2_sqrt / v.sqrt().add_(s.eps)
            p.add_(corrected * s.lr * adaptive * s.rect, alpha=-1.0)
        else:
            p.add_(corrected * s.lr, alpha=-1.0)


RADAM = RAdamAlgorithm()
