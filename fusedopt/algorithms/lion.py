r"""Lion: the sign of an interpolated momentum, found by program search.

.. math::
    c_t = \beta_1 m_{t-1} + (1-\beta_1) g_t,\qquad
    p \leftarrow p\,(1 - \eta\lambda) - \eta\,\mathrm{sign}(c_t),\qquad
    m_t = \beta_2 m_{t-1} + (1-\beta_2) g_t

Every coordinate moves by exactly ``lr`` (or not at all where ``c_t = 0``), so Lion wants a
learning rate 3-10x smaller than AdamW's and a weight decay as much larger (the product
``lr * weight_decay`` sets the decay strength, always decoupled). One state tensor per param,
no step count. Chen et al., "Symbolic Discovery of Optimization Algorithms", NeurIPS 2023,
Program 1.
"""
from __future__ import annotations

from .base import Algorithm, check_betas, preamble


class LionAlgorithm(Algorithm):
    name = "lion"
    defaults = dict(lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0, maximize=False)
    SLOTS = ("exp_avg",)
    EXTRA_HYPER = ("beta1", "beta2")
    has_step = False        # nothing depends on a step count
    always_decoupled = True  # p * (1 - lr * wd), as the paper

    def validate(self, group):
        super().validate(group)
        check_betas(group)


    def update(self, p, g, st, s, f):
        g = preamble(p, g, s)
        m = st["exp_avg"]
        c = m.lerp(g, 1 - s.beta1)
        p.add_(c.sign_(), alpha=-s.lr)
        m.lerp_(g, 1 - s.beta2)


LION = LionAlgorithm()
