r"""Adagrad: per-coordinate learning rates from the sum of squared gradients.

.. math::
    \eta_t = \frac{\eta}{1 + (t - 1)\,\lambda_{decay}},\quad
    s_t = s_{t-1} + g_t^2,\quad p \leftarrow p - \eta_t \frac{g_t}{\sqrt{s_t} + \epsilon}

Duchi, Hazan and Singer, "Adaptive Subgradient Methods for Online Learning and Stochastic
Optimization", JMLR 2011.
"""
from __future__ import annotations

from .base import Algorithm, check_nonneg, preamble


class AdagradAlgorithm(Algorithm):
    name = "adagrad"
    defaults = dict(lr=1e-2, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0, eps=1e-10, maximize=False)
    SLOTS = ("sum",)
    EXTRA_HYPER = ("lr_decay", "eps")
    TENSOR_SCALARS = ("clr",)  # the decayed learning rate
    eager_state = True

    def validate(self, group):
        super().validate(group)
        check_nonneg(group, "lr_decay")
        check_nonneg(group, "initial_accumulator_value")

    def slot_init(self, group):
        return {"sum": float(group["initial_accumulator_value"])}

    def tensor_scalars(self, h, t):
        return dict(clr=h["lr"] / (1 + (t - 1) * h["lr_decay"]))

    def update(self, p, g, st, s, f):
        g = preamble(p, g, s)
        st["sum"].addcmul_(g, g, value=1)
        std = st["sum"].sqrt().add_(s.eps)
        p.addcdiv_(g, std, value=-s.clr)


ADAGRAD = AdagradAlgorithm()
