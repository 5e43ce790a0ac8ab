r"""RAdam: Adam with the variance of its adaptive learning rate rectified.

.. math::
    \rho_\infty = \frac{2}{1-\beta_2} - 1,\quad
    \rho_t = \rho_\infty - \frac{2 t \beta_2^t}{1-\beta_2^t}

    \text{if } \rho_t > 5:\ r_t = \sqrt{\frac{(\rho_t-4)(\rho_t-2)\rho_\infty}
        {(\rho_\infty-4)(\rho_\infty-2)\rho_t}},\quad
        p \leftarrow p - \eta\,\frac{m_t}{1-\beta_1^t}\, r_t\,\frac{\sqrt{1-\beta_2^t}}{\sqrt{v_t}+\epsilon}

    \text{else: } p \leftarrow p - \eta\,\frac{m_t}{1-\beta_1^t}

The rectification is a per-tensor scalar of the tensor's own step count, computed once per
tensor (or work item) in float64 by every kernel. Threshold 5 as in
torch and the authors' code. Liu et al., "On the Variance of the Adaptive Learning Rate and
Beyond", ICLR 2020.
"""
from __future__ import annotations

from .base import Algorithm, check_betas, preamble


def rectification(beta2: float, step: float) -> float:
    """RAdam's variance rectification term ``r_t`` at step ``step``, or 0.0 where ``rho_t <= 5``
    and the step takes the un-adapted branch (the kernels test ``r_t > 0``)."""
    rho_inf = 2 / (1 - beta2) - 1
    bc2 = 1 - beta2 ** step
    rho_t = rho_inf - 2 * step * (beta2 ** step) / bc2
    if rho_t > 5.0:
        return ((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)) ** 0.5
    return 0.0


class RAdamAlgorithm(Algorithm):
    name = "radam"
    defaults = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                    decoupled_weight_decay=False, maximize=False)
    SLOTS = ("exp_avg", "exp_avg_sq")
    EXTRA_HYPER = ("beta1", "beta2", "eps")
    TENSOR_SCALARS = ("bias_correction1", "bc2_sqrt", "rect")
    decoupled_key = "decoupled_weight_decay"

    def validate(self, group):
        super().validate(group)
        check_betas(group)


    def tensor_scalars(self, h, t):
        return dict(bias_correction1=1 - h["beta1"] ** t, bc2_sqrt=(1 - h["beta2"] ** t) ** 0.5,
                    rect=rectification(h["beta2"], t))

    def update(self, p, g, st, s, f):
        g = preamble(p, g, s)
        m, v = st["exp_avg"], st["exp_avg_sq"]
        m.lerp_(g, 1 - s.beta1)
        v.mul_(s.beta2).addcmul_(g, g, value=1 - s.beta2)
        corrected = m / s.bias_correction1
        if s.rect > 0:
            adaptive = s.bc2_sqrt / v.sqrt().add_(s.eps)
            p.add_(corrected * s.lr * adaptive * s.rect, alpha=-1.0)
        else:
            p.add_(corrected * s.lr, alpha=-1.0)


RADAM = RAdamAlgorithm()
