r"""Adamax: Adam with the infinity norm in place of the second moment.

.. math::
    m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t,\quad
    u_t = \max(\beta_2 u_{t-1},\ |g_t| + \epsilon)

    p \leftarrow p - \frac{\eta}{1-\beta_1^t}\,\frac{m_t}{u_t}

As ``torch.optim.Adamax`` (eps inside the max, coupled weight decay). Kingma and Ba, "Adam: A
Method for Stochastic Optimization", ICLR 2015, section 7.1.
"""
from __future__ import annotations

from .base import Algorithm, check_betas, preamble


class AdamaxAlgorithm(Algorithm):
    name = "adamax"
    defaults = dict(lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, maximize=False)
    SLOTS = ("exp_avg", "exp_inf")
    EXTRA_HYPER = ("beta1", "beta2", "eps")
    TENSOR_SCALARS = ("clr",)

    def validate(self, group):
        super().validate(group)
        check_betas(group)


    def tensor_scalars(self, h, t):
        return dict(clr=h["lr"] / (1 - h["beta1"] ** t))

    def update(self, p, g, st, s, f):
        g = preamble(p, g, s)
        m, u = st["exp_avg"], st["exp_inf"]
        m.lerp_(g, 1 - s.beta1)
        u.copy_(u.mul_(s.beta2).maximum(g.abs().add_(s.eps)))
        p.addcdiv_(m, u, value=-s.clr)


ADAMAX = AdamaxAlgorithm()
