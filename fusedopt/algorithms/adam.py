r"""Adam and AdamW.

.. math::
    m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t,\quad v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2,\quad
    \hat v_t = \max(\hat v_{t-1}, v_t) \text{ (amsgrad) or } v_t

    p \leftarrow p - \frac{\eta}{1-\beta_1^t}\,
        \frac{m_t}{\sqrt{\hat v_t}/\sqrt{1-\beta_2^t} + \epsilon}

Kingma and Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015; Reddi et al., "On the
Convergence of Adam and Beyond", ICLR 2018 (amsgrad); Loshchilov and Hutter, "Decoupled Weight
Decay Regularization", ICLR 2019 (AdamW: ``p = p * (1 - lr * wd)`` before the update).
"""
from __future__ import annotations

from .base import Algorithm, check_betas, preamble


class AdamAlgorithm(Algorithm):
    name = "adam"
    defaults = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False,
                    maximize=False, decoupled_weight_decay=False)
    SLOTS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
    EXTRA_HYPER = ("beta1", "beta2", "eps")
    TENSOR_SCALARS = ("step_size", "bc2_sqrt")
    FLAGS = ("amsgrad",)
    decoupled_key = "decoupled_weight_decay"

    def validate(self, group):
        super().validate(group)
        check_betas(group)

    def slot_init(self, group):
        slots = {"exp_avg": 0.0, "exp_avg_sq": 0.0}
        if group["amsgrad"]:
            slots["max_exp_avg_sq"] = 0.0
        return slots


    def tensor_scalars(self, h, t):
        return dict(step_size=h["lr"] / (1 - h["beta1"] ** t), bc2_sqrt=(1 - h["beta2"] ** t) ** 0.5)

    def update(self, p, g, st, s, f):
        g = preamble(p, g, s)
        m, v = st["exp_avg"], st["exp_avg_sq"]
        m.lerp_(g, 1 - s.beta1)
        v.mul_(s.beta2).addcmul_(g, g, value=1 - s.beta2)
        if f.amsgrad:
            vmax = st["max_exp_avg_sq"]
            vmax.copy_(vmax.maximum(v))
            v = vmax
        denom = (v.sqrt() / s.bc2_sqrt).add_(s.eps)
        p.addcdiv_(m, denom, value=-s.step_size)


ADAM = AdamAlgorithm()
