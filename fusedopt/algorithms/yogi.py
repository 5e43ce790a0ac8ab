r"""Yogi: Adam with an additive, sign-controlled second moment.

.. math::
    m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t,\quad
    v_t = v_{t-1} - (1-\beta_2)\,\mathrm{sign}(v_{t-1} - g_t^2)\, g_t^2

    p \leftarrow p - \frac{\eta}{1-\beta_1^t}\,\frac{m_t}{\sqrt{v_t}/\sqrt{1-\beta_2^t} + \epsilon}

``v`` moves by at most ``(1 - beta2) * g**2`` per step, never multiplicatively; ``sign(0) = 0``.
Both moments start at ``initial_accumulator_value``. Zaheer et al., "Adaptive Methods for
Nonconvex Optimization", NeurIPS 2018.
"""
from __future__ import annotations

from .adam import AdamAlgorithm
from .base import Algorithm, check_betas, check_nonneg, preamble


class YogiAlgorithm(Algorithm):
    name = "yogi"
    defaults = dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-3, initial_accumulator_value=1e-6,
                    weight_decay=0.0, maximize=False)
    SLOTS = ("exp_avg", "exp_avg_sq")
    EXTRA_HYPER = ("beta1", "beta2", "eps")
    TENSOR_SCALARS = ("step_size", "bc2_sqrt")

    def validate(self, group):
        super().validate(group)
        check_betas(group)
        check_nonneg(group, "initial_accumulator_value")

    def slot_init(self, group):
        v0 = float(group["initial_accumulator_value"])
        return {"exp_avg": v0, "exp_avg_sq": v0}


    tensor_scalars = AdamAlgorithm.tensor_scalars  # Adam's bias corrections

    def update(self, p, g, st, s, f):
        g = preamble(p, g, s)
        m, v = st["exp_avg"], st["exp_avg_sq"]
        m.mul_(s.beta1).add_(g, alpha=1 - s.beta1)
        g2 = g * g
        v.sub_(g2 * (v - g2).sign(), alpha=1 - s.beta2)
        denom = (v.sqrt() / s.bc2_sqrt).add_(s.eps)
        p.addcdiv_(m, denom, value=-s.step_size)


YOGI = YogiAlgorithm()
