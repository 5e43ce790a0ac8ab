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
    EXTRA_SCALARS = ("eps",)
    eager_state = True

    def validate(self, group):
        super().validate(group)
        check_nonneg(group, "lr_decay")
        check_nonneg(group, "initial_accumulator_value")

    def slot_init(self, group):
        return {"sum": float(group["initial_accumulator_value"])}

    def step_args(self, group, step, first_step=False):
        clr = float(group["lr"]) / (1 + (step - 1) * float(group["lr_decay"]))
        c, f = self.common(group, lr=clr)
        return self.Scalars(*c, float(group["eps"])), self.Flags(*f)

    def update(self, p, g, st, s, f):
        g = preamble(p, g, s, f)
        st["sum"].addcmul_(g, g, value=1)
        std = st["sum"].sqrt().add_(s.eps)
        p.addcdiv_(g, std, value=-s.lr)


ADAGRAD = AdagradAlgorithm()
