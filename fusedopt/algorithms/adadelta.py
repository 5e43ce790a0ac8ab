r"""Adadelta: unit-consistent steps from running averages of squared gradients and updates.

.. math::
    v_t = \rho v_{t-1} + (1-\rho) g_t^2,\quad
    \Delta_t = \frac{\sqrt{u_{t-1} + \epsilon}}{\sqrt{v_t + \epsilon}} g_t,\quad
    u_t = \rho u_{t-1} + (1-\rho)\Delta_t^2,\quad p \leftarrow p - \eta \Delta_t

Zeiler, "ADADELTA: An Adaptive Learning Rate Method", arXiv:1212.5701, 2012.
"""
from __future__ import annotations

from .base import Algorithm, check_unit, preamble


class AdadeltaAlgorithm(Algorithm):
    name = "adadelta"
    defaults = dict(lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0, maximize=False)
    SLOTS = ("square_avg", "acc_delta")
    EXTRA_HYPER = ("rho", "eps")

    def validate(self, group):
        super().validate(group)
        check_unit("rho", group["rho"], closed=True)  # as torch: rho = 1 is allowed

    def update(self, p, g, st, s, f):
        g = preamble(p, g, s)
        sq, acc = st["square_avg"], st["acc_delta"]
        sq.mul_(s.rho).addcmul_(g, g, value=1 - s.rho)
        std = sq.add(s.eps).sqrt_()
        delta = acc.add(s.eps).sqrt_().div_(std).mul_(g)
        acc.mul_(s.rho).addcmul_(delta, delta, value=1 - s.rho)
        p.add_(delta, alpha=-s.lr)


ADADELTA = AdadeltaAlgorithm()
