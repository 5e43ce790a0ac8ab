r"""RMSprop, optionally centered and with momentum.

.. math::
    v_t = \alpha v_{t-1} + (1-\alpha) g_t^2,\quad
    \bar g_t = \alpha \bar g_{t-1} + (1-\alpha) g_t \text{ (centered)},\quad
    a_t = \sqrt{v_t - \bar g_t^2} + \epsilon \text{ or } \sqrt{v_t} + \epsilon

    b_t = \mu b_{t-1} + g_t / a_t,\ p \leftarrow p - \eta b_t \quad\text{or}\quad
    p \leftarrow p - \eta g_t / a_t

Tieleman and Hinton, Lecture 6.5 of "Neural Networks for Machine Learning", 2012; the centered
form from Graves, "Generating Sequences With Recurrent Neural Networks", 2013. ``eps`` is added
outside the square root, as torch does.
"""
from __future__ import annotations

from .base import Algorithm, check_nonneg, check_unit, preamble


class RMSpropAlgorithm(Algorithm):
    name = "rmsprop"
    defaults = dict(lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False, maximize=False)
    SLOTS = ("square_avg", "momentum_buffer", "grad_avg")
    EXTRA_HYPER = ("alpha", "eps", "momentum")
    FLAGS = ("centered",)

    def validate(self, group):
        super().validate(group)
        check_unit("alpha", group["alpha"])
        check_nonneg(group, "momentum")

    def slot_init(self, group):
        slots = {"square_avg": 0.0}
        if group["momentum"] > 0:
            slots["momentum_buffer"] = 0.0
        if group["centered"]:
            slots["grad_avg"] = 0.0
        return slots

    def update(self, p, g, st, s, f):
        g = preamble(p, g, s)
        sq = st["square_avg"]
        sq.mul_(s.alpha).addcmul_(g, g, value=1 - s.alpha)
        if f.centered:
            ga = st["grad_avg"]
            ga.lerp_(g, 1 - s.alpha)
            avg = sq.addcmul(ga, ga, value=-1).sqrt_()
        else:
            avg = sq.sqrt()
        avg = avg.add_(s.eps)
        buf = st.get("momentum_buffer")
        if buf is not None:
            buf.mul_(s.momentum).addcdiv_(g, avg)
            p.add_(buf, alpha=-s.lr)
        else:
            p.addcdiv_(g, avg, value=-s.lr)


RMSPROP = RMSpropAlgorithm()
