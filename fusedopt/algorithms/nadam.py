r"""NAdam: Adam with Nesterov momentum and Dozat's momentum schedule, as ``torch.optim.NAdam``.

.. math::
    \mu_t = \beta_1\,(1 - \tfrac12\, 0.96^{t\psi}),\quad
    \Pi_t = \prod_{i \le t} \mu_i \ (\texttt{mu\_product}),\quad
    m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t,\quad v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2

    p \leftarrow p - \eta\,\frac{1-\mu_t}{1-\Pi_t}\,\frac{g_t}{d_t}
                   - \eta\,\frac{\mu_{t+1}}{1-\Pi_t\mu_{t+1}}\,\frac{m_t}{d_t},\qquad
    d_t = \sqrt{v_t / (1-\beta_2^t)} + \epsilon

``psi`` is ``momentum_decay``; weight decay is coupled, or decoupled (``p *= 1 - lr * wd``) with
``decoupled_weight_decay=True`` (NAdamW). ``mu_product`` is a per-tensor float32 scalar state, as
torch keeps it: it lives beside the step count in the step-counter buffer and is multiplied by
``mu_t`` on the device before the kernels read it. Dozat, "Incorporating Nesterov Momentum into
Adam", ICLR 2016 workshop.
"""
from __future__ import annotations

import torch

from .base import Algorithm, check_betas, check_nonneg, preamble


class NAdamAlgorithm(Algorithm):
    name = "nadam"
    defaults = dict(lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, momentum_decay=4e-3,
                    decoupled_weight_decay=False, maximize=False)
    SLOTS = ("exp_avg", "exp_avg_sq")
    EXTRA_HYPER = ("beta1", "beta2", "eps", "momentum_decay")
    TENSOR_SCALARS = ("bias_correction2", "c_grad", "c_avg")
    SCALAR_STATES = {"mu_product": 1.0}
    decoupled_key = "decoupled_weight_decay"

    def validate(self, group):
        super().validate(group)
        check_betas(group)
        check_nonneg(group, "momentum_decay")


    @staticmethod
    def mu(beta1, momentum_decay, t):
        """The momentum schedule mu_t (float64, as torch computes it in Python floats)."""
        return beta1 * (1.0 - 0.5 * (0.96 ** (t * momentum_decay)))

    def tensor_scalars(self, h, t, mu_product):
        mu = self.mu(h["beta1"], h["momentum_decay"], t)
        mu_next = self.mu(h["beta1"], h["momentum_decay"], t + 1)
        return dict(bias_correction2=1 - h["beta2"] ** t,
                    c_grad=-h["lr"] * (1.0 - mu) / (1.0 - mu_product),
                    c_avg=(-h["lr"] * mu_next) / (1.0 - mu_product * mu_next))

    def advance_scalar_states(self, data, slots, rows, hyper, advance):
        # mu_product *= mu_t in float32 (torch: a float32 tensor times a Python float)
        h = hyper.index_select(0, rows)
        mu = self.mu(h[:, self.HYPER.index("beta1")], h[:, self.HYPER.index("momentum_decay")],
                     data.index_select(0, slots).double()).float()
        if isinstance(advance, torch.Tensor):  # an overflow step: 0, nothing moves
            mu = torch.where(advance != 0, mu, torch.ones_like(mu))
        cells = slots + 1
        data.index_copy_(0, cells, data.index_select(0, cells) * mu)

    def update(self, p, g, st, s, f):
        g = preamble(p, g, s)
        m, v = st["exp_avg"], st["exp_avg_sq"]
        m.lerp_(g, 1 - s.beta1)
        v.mul_(s.beta2).addcmul_(g, g, value=1 - s.beta2)
        denom = v.div(s.bias_correction2).sqrt_().add_(s.eps)
        p.addcdiv_(g, denom, value=s.c_grad)
        p.addcdiv_(m, denom, value=s.c_avg)


NADAM = NAdamAlgorithm()
