"""The optimizer classes: torch.optim's constructors and state keys, fused steps.

Each class only collects its hyperparameters; :class:`~fusedopt._optimizer.FusedOptimizer` does the
rest. ``backend`` is ``"auto"`` (the fastest available for the parameters' device),
``"reference"``, ``"triton"``, ``"cpu"`` or ``"cuda"``. ``foreach`` and ``fused`` are accepted so
that torch.optim call sites work unchanged, and ignored: the step is always fused.

Every class also takes the options of :class:`~fusedopt._optimizer.FusedOptimizer`
(``capturable``, ``master_weights``, ``state_dtype``, ``max_grad_norm``,
``accumulation_steps``) as keywords.
"""
from __future__ import annotations

import sys

from ._optimizer import FusedOptimizer
from .algorithms import ADADELTA, ADAGRAD, ADAM, ADAMAX, LAMB as _LAMB, LION, NADAM, RADAM, RMSPROP, SGD as _SGD, YOGI

# The optimizer classes, exported as they are by ``fusedopt``: a new class is a name here.
__all__ = ["SGD", "Adagrad", "Adadelta", "RMSprop", "Adam", "AdamW", "Yogi", "RAdam", "Adamax", "Lion", "NAdam",
           "LAMB"]


class SGD(FusedOptimizer):
    """SGD with optional momentum, dampening and Nesterov momentum (``torch.optim.SGD``).

    Defaults ``lr=1e-3, momentum=0, dampening=0, weight_decay=0`` (coupled, L2),
    ``nesterov=False, maximize=False``. State: ``momentum_buffer`` when momentum != 0.
    """
    algorithm = _SGD

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False,
                 *, maximize=False, foreach=None, differentiable=False, fused=None, backend="auto", **options):
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                                      nesterov=nesterov, maximize=maximize),
                         backend, foreach=foreach, fused=fused, differentiable=differentiable, **options)


class Adagrad(FusedOptimizer):
    """Adagrad (``torch.optim.Adagrad``).

    Defaults ``lr=1e-2, lr_decay=0, weight_decay=0`` (coupled), ``initial_accumulator_value=0,
    eps=1e-10``. State: ``step``, ``sum``.
    """
    algorithm = ADAGRAD

    def __init__(self, params, lr=1e-2, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0,
                 eps=1e-10, foreach=None, *, maximize=False, differentiable=False, fused=None, backend="auto", **options):
        super().__init__(params, dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                                      initial_accumulator_value=initial_accumulator_value, eps=eps,
                                      maximize=maximize),
                         backend, foreach=foreach, fused=fused, differentiable=differentiable, **options)


class Adadelta(FusedOptimizer):
    """Adadelta (``torch.optim.Adadelta``).

    Defaults ``lr=1.0, rho=0.9, eps=1e-6, weight_decay=0`` (coupled). State: ``step``,
    ``square_avg``, ``acc_delta``.
    """
    algorithm = ADADELTA

    def __init__(self, params, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0, foreach=None, *,
                 capturable=False, maximize=False, differentiable=False, backend="auto", **options):
        super().__init__(params, dict(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay, maximize=maximize),
                         backend, foreach=foreach, capturable=capturable, differentiable=differentiable, **options)


class RMSprop(FusedOptimizer):
    """RMSprop, optionally centered and with momentum (``torch.optim.RMSprop``).

    Defaults ``lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0`` (coupled), ``momentum=0,
    centered=False``. State: ``step``, ``square_avg``, ``momentum_buffer`` (momentum > 0),
    ``grad_avg`` (centered).
    """
    algorithm = RMSPROP

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False,
                 capturable=False, foreach=None, maximize=False, differentiable=False, *, backend="auto", **options):
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
                                      centered=centered, maximize=maximize),
                         backend, foreach=foreach, capturable=capturable, differentiable=differentiable, **options)


class Adam(FusedOptimizer):
    """Adam, with amsgrad and coupled or decoupled weight decay (``torch.optim.Adam``).

    Defaults ``lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False,
    decoupled_weight_decay=False``. State: ``step``, ``exp_avg``, ``exp_avg_sq``, and
    ``max_exp_avg_sq`` with amsgrad.
    """
    algorithm = ADAM

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False, *,
                 foreach=None, maximize=False, capturable=False, differentiable=False, fused=None,
                 decoupled_weight_decay=False, backend="auto", **options):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      amsgrad=amsgrad, maximize=maximize,
                                      decoupled_weight_decay=decoupled_weight_decay),
                         backend, foreach=foreach, fused=fused, capturable=capturable,
                         differentiable=differentiable, **options)


class AdamW(Adam):
    """AdamW: Adam with decoupled weight decay, default ``weight_decay=1e-2`` (``torch.optim.AdamW``)."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False, *,
                 maximize=False, foreach=None, capturable=False, differentiable=False, fused=None,
                 backend="auto", **options):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                         foreach=foreach, maximize=maximize, capturable=capturable,
                         differentiable=differentiable, fused=fused, decoupled_weight_decay=True,
                         backend=backend, **options)


class Yogi(FusedOptimizer):
    """Yogi (no torch.optim counterpart).

    Defaults ``lr=1e-2, betas=(0.9, 0.999), eps=1e-3, initial_accumulator_value=1e-6,
    weight_decay=0`` (coupled). State: ``step``, ``exp_avg``, ``exp_avg_sq`` (both start at
    ``initial_accumulator_value``).
    """
    algorithm = YOGI

    def __init__(self, params, lr=1e-2, betas=(0.9, 0.999), eps=1e-3, initial_accumulator_value=1e-6,
                 weight_decay=0.0, *, maximize=False, foreach=None, fused=None, backend="auto", **options):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps,
                                      initial_accumulator_value=initial_accumulator_value,
                                      weight_decay=weight_decay, maximize=maximize),
                         backend, foreach=foreach, fused=fused, **options)


class RAdam(FusedOptimizer):
    """RAdam, rectified Adam (``torch.optim.RAdam``).

    Defaults ``lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
    decoupled_weight_decay=False``. State: ``step``, ``exp_avg``, ``exp_avg_sq``.
    """
    algorithm = RADAM

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 decoupled_weight_decay=False, *, foreach=None, maximize=False, capturable=False,
                 differentiable=False, backend="auto", **options):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      decoupled_weight_decay=decoupled_weight_decay, maximize=maximize),
                         backend, foreach=foreach, capturable=capturable, differentiable=differentiable, **options)


class Adamax(FusedOptimizer):
    """Adamax, Adam with the infinity norm (``torch.optim.Adamax``).

    Defaults ``lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0`` (coupled). State:
    ``step``, ``exp_avg``, ``exp_inf``.
    """
    algorithm = ADAMAX

    def __init__(self, params, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, foreach=None, *,
                 maximize=False, differentiable=False, capturable=False, backend="auto", **options):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, maximize=maximize),
                         backend, foreach=foreach, capturable=capturable, differentiable=differentiable, **options)


class Lion(FusedOptimizer):
    """Lion, EvoLved Sign Momentum (no torch.optim counterpart).

    Defaults ``lr=1e-4, betas=(0.9, 0.99), weight_decay=0`` (always decoupled: ``p *= 1 - lr *
    weight_decay``). State: ``exp_avg`` (no step count).
    """
    algorithm = LION

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0, *, maximize=False, foreach=None,
                 fused=None, backend="auto", **options):
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay, maximize=maximize),
                         backend, foreach=foreach, fused=fused, **options)


class NAdam(FusedOptimizer):
    """NAdam, Adam with Nesterov momentum (``torch.optim.NAdam``).

    Defaults ``lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, momentum_decay=4e-3,
    decoupled_weight_decay=False``. State: ``step``, ``mu_product`` (0-dim float32, as torch),
    ``exp_avg``, ``exp_avg_sq``.
    """
    algorithm = NADAM

    def __init__(self, params, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, momentum_decay=4e-3,
                 decoupled_weight_decay=False, *, foreach=None, maximize=False, capturable=False,
                 differentiable=False, backend="auto", **options):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      momentum_decay=momentum_decay,
                                      decoupled_weight_decay=decoupled_weight_decay, maximize=maximize),
                         backend, foreach=foreach, capturable=capturable, differentiable=differentiable, **options)


class LAMB(FusedOptimizer):
    """LAMB, layer-wise adaptive moments (no torch.optim counterpart).

    Defaults ``lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01, bias_correction=True``
    (weight decay inside the update the trust ratio scales). State: ``step``, ``exp_avg``,
    ``exp_avg_sq``.
    """
    algorithm = _LAMB

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01, bias_correction=True, *,
                 maximize=False, foreach=None, fused=None, backend="auto", **options):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      bias_correction=bias_correction, maximize=maximize),
                         backend, foreach=foreach, fused=fused, **options)


# Each docstring ends with its algorithm's math and paper, written once in fusedopt.algorithms.
for _cls in (globals()[_name] for _name in __all__):
    _cls.__doc__ += "\n" + (sys.modules[type(_cls.algorithm).__module__].__doc__ or "")
