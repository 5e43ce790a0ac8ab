r"""Stochastic gradient descent with heavy-ball or Nesterov momentum.

.. math::
    b_1 = g_1,\quad b_t = \mu b_{t-1} + (1 - \tau) g_t,\qquad
    g \leftarrow g + \mu b_t \text{ (Nesterov) or } b_t,\qquad p \leftarrow p - \eta g

Polyak (1964); Sutskever et al., "On the importance of initialization and momentum in deep
learning", ICML 2013 (the Nesterov form). ``dampening = momentum`` gives the EMA form
``v = b v + (1 - b) g``.
"""
from __future__ import annotations

from .base import Algorithm, check_nonneg, preamble


class SGDAlgorithm(Algorithm):
    name = "sgd"
    defaults = dict(lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False, maximize=False)
    SLOTS = ("momentum_buffer",)
    EXTRA_HYPER = ("momentum", "dampening")
    # 1.0 on a buffer's first step (the buffer becomes g), from a step counter that torch's SGD
    # does not keep in its state: fusedopt keeps it privately, so an overflow first step (which
    # does not advance it) is simply the first again.
    TENSOR_SCALARS = ("first_step",)
    FLAGS = ("nesterov",)
    has_step = False

    def validate(self, group):
        super().validate(group)
        check_nonneg(group, "momentum")
        check_nonneg(group, "dampening")
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError("Invalid nesterov: Nesterov momentum requires momentum > 0 and dampening = 0")

    def slot_init(self, group):
        return {"momentum_buffer": 0.0} if group["momentum"] != 0 else {}

    def tensor_scalars(self, h, t):
        return dict(first_step=float(t == 1.0))

    def update(self, p, g, st, s, f):
        g = preamble(p, g, s)
        buf = st.get("momentum_buffer")
        if buf is not None:
            if s.first_step != 0:
                buf.copy_(g)
            else:
                buf.mul_(s.momentum).add_(g, alpha=1 - s.dampening)
            g = g.add(buf, alpha=s.momentum) if f.nesterov else buf
        p.add_(g, alpha=-s.lr)


SGD = SGDAlgorithm()
