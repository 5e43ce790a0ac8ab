"""The shared parity harness: every fused backend is compared with the reference through it.

``CASES`` declares each optimizer's option combinations once; ``TOL`` is the one per-dtype
tolerance table; :func:`run_parity` runs a backend and the reference side by side on the same
parameters and gradients and asserts that params and every state tensor match.
"""
from __future__ import annotations

import itertools

import torch

import fusedopt

# (rtol, atol) per parameter dtype: kernels and reference both compute in float32, so they
# differ only by rounding order; 16-bit params may differ by one ulp of the storage type
# (the Triton interpreter truncates to bfloat16 instead of rounding).
# Note [float32 atol]: ATen's CPU torch.sqrt is not correctly rounded for about 1 element in 6
# of long float32 tensors, while the kernels use the IEEE square root; RMSprop's momentum
# buffer sums terms g / avg of size ~10 that cancel, so one ulp of avg leaves ~1e-6 absolute
# on elements near zero. atol 1e-5 covers that; rtol stays at 1e-5.
TOL = {
    torch.float64: (1e-12, 1e-14),
    torch.float32: (1e-5, 1e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
}

# Decay and maximize variants crossed with every algorithm's own options.
_EXTRAS = ({}, {"weight_decay": 0.01}, {"maximize": True, "weight_decay": 0.01})


def _cross(name, cores):
    return [(name, {**core, **extra}) for core in cores for extra in _EXTRAS]


CASES = (
    _cross("SGD", [{"lr": 0.01}, {"lr": 0.01, "momentum": 0.9}, {"lr": 0.01, "momentum": 0.9, "dampening": 0.5},
                   {"lr": 0.01, "momentum": 0.9, "nesterov": True}])
    + _cross("Adagrad", [{}, {"lr_decay": 0.01}, {"initial_accumulator_value": 0.1}])
    + _cross("Adadelta", [{}, {"rho": 0.5}])
    + _cross("RMSprop", [{"centered": c, "momentum": m} for c, m in itertools.product((False, True), (0.0, 0.9))])
    + _cross("Adam", [{"amsgrad": a, "decoupled_weight_decay": d} for a, d in itertools.product((False, True), (False, True))])
    + [("AdamW", {}), ("AdamW", {"amsgrad": True, "maximize": True})]
    + _cross("Yogi", [{}, {"betas": (0.8, 0.99), "initial_accumulator_value": 0.0}])
    + _cross("RAdam", [{}, {"decoupled_weight_decay": True}, {"betas": (0.9, 0.99)}])
)

# One representative configuration per optimizer, for the expensive crossings (sizes, dtypes).
REPRESENTATIVE = [
    ("SGD", {"lr": 0.01, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01}),
    ("Adagrad", {"lr_decay": 0.01, "weight_decay": 0.01}),
    ("Adadelta", {"weight_decay": 0.01}),
    ("RMSprop", {"centered": True, "momentum": 0.9, "weight_decay": 0.01}),
    ("Adam", {"amsgrad": True, "weight_decay": 0.01}),
    ("AdamW", {}),
    ("Yogi", {"weight_decay": 0.01}),
    ("RAdam", {"decoupled_weight_decay": True, "weight_decay": 0.01}),
]

ODD_SIZES = [0, 1, 3, 4095, 4097, 65537]

# Mixed-precision options crossed with bfloat16/float16 params, and their test ids.
MIXED_PRECISION = [{"master_weights": True}, {"state_dtype": torch.bfloat16},
                   {"master_weights": True, "state_dtype": torch.bfloat16}]
MIXED_PRECISION_IDS = ["master", "bf16-states", "master-bf16-states"]


def case_id(case) -> str:
    name, kw = case
    return name + "-" + "-".join(f"{k}={v}" for k, v in kw.items()) if kw else name


def make_problem(sizes, dtype, steps, device="cpu", seed=0):
    """Parameters of the given numels and one gradient list per step, deterministic."""
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(n, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype) for n in sizes]
    grads = [[(torch.randn(n, generator=gen, dtype=torch.float64) * (1 + s % 3)).to(device=device, dtype=dtype)
              for n in sizes] for s in range(steps)]
    return params, grads


def run_steps(opt_cls, params, grads, kwargs, backend):
    ps = [p.clone().requires_grad_(True) for p in params]
    opt = opt_cls(ps, backend=backend, **kwargs)
    for step_grads in grads:
        for p, g in zip(ps, step_grads):
            p.grad = g.clone()
        opt.step()
    return ps, opt


def assert_same_state(ps_a, opt_a, ps_b, opt_b, tol, what=""):
    rtol, atol = tol
    for i, (a, b) in enumerate(zip(ps_a, ps_b)):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=rtol, atol=atol, msg=lambda m: f"{what} param {i}: {m}")
        sa, sb = opt_a.state[a], opt_b.state[b]
        assert set(sa) == set(sb), f"{what} param {i}: state keys {sorted(sa)} != {sorted(sb)}"
        for key in sa:
            x, y = sa[key], sb[key]
            if isinstance(x, torch.Tensor):
                torch.testing.assert_close(x, y.to(x.device), rtol=rtol, atol=atol,
                                           msg=lambda m: f"{what} param {i} state {key!r}: {m}")
            else:
                assert x == y, f"{what} param {i} state {key!r}: {x!r} != {y!r}"


def run_parity(backend: str, opt_name: str, kwargs: dict, dtype=torch.float32, sizes=(3, 4097),
               steps: int = 10, device="cpu", seed: int = 0):
    """Run ``fusedopt.<opt_name>`` with ``backend`` and with the reference on the same problem
    for ``steps`` steps; assert params and every state tensor agree within ``TOL[dtype]``."""
    opt_cls = getattr(fusedopt, opt_name)
    params, grads = make_problem(list(sizes), dtype, steps, device=device, seed=seed)
    ps_a, opt_a = run_steps(opt_cls, params, grads, kwargs, backend)
    ps_b, opt_b = run_steps(opt_cls, params, grads, kwargs, "reference")
    assert_same_state(ps_a, opt_a, ps_b, opt_b, TOL[dtype], what=f"{opt_name}{kwargs} [{backend}, {dtype}]")


def interface_problem(name, dtype, n=(3, 4097), seed=7, device="cpu", random_states=False):
    """Arguments of one direct ``backend.step`` call of optimizer ``name`` (its representative
    options, step 3): the algorithm, params, grads, state slots (at their initial values, or
    random around them with ``random_states``), host scalars and flags."""
    kw = dict(REPRESENTATIVE)[name]
    spec = getattr(fusedopt, name).algorithm
    group = {**spec.defaults, **kw}
    if name == "AdamW":
        group["decoupled_weight_decay"] = True
        group.setdefault("weight_decay", 1e-2)
    gen = torch.Generator().manual_seed(seed)
    ps = [torch.randn(k, generator=gen).to(device=device, dtype=dtype) for k in n]
    gs = [torch.randn(k, generator=gen).to(device=device, dtype=dtype) for k in n]
    init = spec.slot_init(group)

    def state(k, fill):
        if random_states:
            return torch.rand(k, generator=gen).to(device) + fill
        return torch.full((k,), fill, device=device)

    states = [[state(k, init[s]) for k in n] if s in init else [] for s in spec.SLOTS]
    scalars, flags = spec.step_args(group, 3.0, False)
    return spec, ps, gs, states, tuple(scalars), tuple(flags)
