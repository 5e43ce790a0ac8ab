r"""LAMB: Adam's direction with decoupled weight decay, scaled per tensor by a trust ratio.

.. math::
    m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t,\quad v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2,\quad
    u_t = \frac{m_t / (1-\beta_1^t)}{\sqrt{v_t / (1-\beta_2^t)} + \epsilon} + \lambda p

    p \leftarrow p - \eta\, r_t\, u_t,\qquad
    r_t = \frac{\lVert p \rVert}{\lVert u_t \rVert} \ (1 \text{ when either norm is } 0)

``bias_correction=False`` drops the two bias corrections. The norms are per tensor, reduced on
the device inside the fused step: one traversal updates the moments and reduces
:math:`\lVert p \rVert^2` and :math:`\lVert u \rVert^2` per tensor, a second applies the update
(``REDUCES``); nothing is read back on the host. You et al., "Large Batch Optimization for Deep
Learning: Training BERT in 76 minutes", ICLR 2020, Algorithm 2.

Compared with apex's ``FusedLAMB`` (same defaults ``lr=1e-3, betas=(0.9, 0.999), eps=1e-6,
weight_decay=0.01, bias_correction=True``, its ``adam_w_mode=True`` and ``grad_averaging=True``):
the trust ratio applies to every tensor, as in the paper and apex's ``use_nvlamb=True`` (apex's
default skips it for tensors without weight decay); apex clips the global gradient norm to
``max_grad_norm=1.0`` by default, fusedopt only when ``max_grad_norm`` is given (the same
option, folded into the step); apex's ``amsgrad`` and L2 mode (``adam_w_mode=False``) are not
offered. On FSDP2 / DTensor sharded params the norms are those of the whole tensors: the step
runs as two calls, the per-tensor sums of squares of the local shards all-reduced between the
traversals (Note [split steps], ``docs/kernel-interface.md``).
"""
from __future__ import annotations

from .base import Algorithm, check_betas, preamble


class LAMBAlgorithm(Algorithm):
    name = "lamb"
    defaults = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01, bias_correction=True,
                    maximize=False)
    SLOTS = ("exp_avg", "exp_avg_sq")
    # LAMB's weight decay is part of the update the trust ratio scales: its own column, and the
    # common weight_decay column (the preamble's decay) is 0 in its rows.
    EXTRA_HYPER = ("beta1", "beta2", "eps", "decay", "bias_correction")
    TENSOR_SCALARS = ("bc1", "bc2")
    REDUCES = True

    def validate(self, group):
        super().validate(group)
        check_betas(group)

    def hyper_row(self, group):
        lr, _, maximize, _ = super().hyper_row(group)[:4]
        return (lr, 0.0, maximize, 0.0) + self.extra_hyper(group)

    def extra_hyper(self, group):
        b1, b2 = group["betas"]
        return (float(b1), float(b2), float(group["eps"]), float(group["weight_decay"]),
                float(bool(group["bias_correction"])))

    def tensor_scalars(self, h, t):
        if h["bias_correction"]:
            return dict(bc1=1 - h["beta1"] ** t, bc2=1 - h["beta2"] ** t)
        return dict(bc1=1.0, bc2=1.0)

    # Note [reducing algorithms] (docs/kernel-interface.md): the reference runs the two
    # traversals the kernels run, with the states (and a 16-bit param) stored in between.
    @staticmethod
    def direction(p, m, v, s):
        u = m.div(s.bc1).div_(v.div(s.bc2).sqrt_().add_(s.eps))
        if s.decay != 0:
            u.add_(p, alpha=s.decay)
        return u

    def reduce(self, p, g, st, s, f) -> tuple[float, float]:
        """The first traversal: the preamble and the moments, in place; the sums of squares of
        the param and of the update (float64)."""
        g = preamble(p, g, s)
        m, v = st["exp_avg"], st["exp_avg_sq"]
        m.lerp_(g, 1 - s.beta1)
        v.mul_(s.beta2).addcmul_(g, g, value=1 - s.beta2)
        u = self.direction(p, m, v, s)
        return float(p.double().square().sum()), float(u.double().square().sum())

    def apply_reduced(self, p, st, s, f, p_sq: float, u_sq: float) -> None:
        """The second traversal: p -= lr * trust * u, from the stored moments."""
        pn, un = p_sq ** 0.5, u_sq ** 0.5
        trust = pn / un if pn > 0 and un > 0 else 1.0
        p.add_(self.direction(p, st["exp_avg"], st["exp_avg_sq"], s), alpha=-s.lr * trust)

    def update(self, p, g, st, s, f):
        self.apply_reduced(p, st, s, f, *self.reduce(p, g, st, s, f))


LAMB = LAMBAlgorithm()
