"""The shared parity harness: every fused backend is compared with the reference through it.

``OPTIMIZERS`` declares each optimizer once (``CASES``, ``REPRESENTATIVE``, ``TORCH_NAMES``
derive from it); ``TOL`` is the one per-dtype tolerance table; :func:`run_parity` runs a backend
and the reference side by side on the same parameters and gradients and asserts that params
and every state tensor match.
"""
from __future__ import annotations

import gc
import itertools
import weakref
from dataclasses import dataclass

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


@dataclass(frozen=True)
class Optimizer:
    """One optimizer, declared once for every test: its option grid (each crossed with the decay
    and maximize variants), extra cases not crossed, one representative configuration for the
    expensive crossings (backends x dtypes x sizes x features), and whether torch.optim has a
    class of the same name and behaviour (the oracle of the reference; without one,
    tests/test_reference.py checks the reference against the paper's update computed by hand)."""
    name: str
    grid: tuple
    representative: dict
    torch: bool = True
    uncrossed: tuple = ()

    def cases(self):
        return [(self.name, {**core, **extra}) for core in self.grid for extra in _EXTRAS] + \
            [(self.name, dict(kw)) for kw in self.uncrossed]


OPTIMIZERS = (
    Optimizer("SGD", ({"lr": 0.01}, {"lr": 0.01, "momentum": 0.9}, {"lr": 0.01, "momentum": 0.9, "dampening": 0.5},
                      {"lr": 0.01, "momentum": 0.9, "nesterov": True}),
              {"lr": 0.01, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01}),
    Optimizer("Adagrad", ({}, {"lr_decay": 0.01}, {"initial_accumulator_value": 0.1}),
              {"lr_decay": 0.01, "weight_decay": 0.01}),
    Optimizer("Adadelta", ({}, {"rho": 0.5}), {"weight_decay": 0.01}),
    Optimizer("RMSprop", tuple({"centered": c, "momentum": m} for c, m in itertools.product((False, True), (0.0, 0.9))),
              {"centered": True, "momentum": 0.9, "weight_decay": 0.01}),
    Optimizer("Adam", tuple({"amsgrad": a, "decoupled_weight_decay": d}
                            for a, d in itertools.product((False, True), (False, True))),
              {"amsgrad": True, "weight_decay": 0.01}),
    Optimizer("AdamW", (), {}, uncrossed=({}, {"amsgrad": True, "maximize": True})),
    Optimizer("Yogi", ({}, {"betas": (0.8, 0.99), "initial_accumulator_value": 0.0}), {"weight_decay": 0.01},
              torch=False),
    Optimizer("RAdam", ({}, {"decoupled_weight_decay": True}, {"betas": (0.9, 0.99)}),
              {"decoupled_weight_decay": True, "weight_decay": 0.01}),
    Optimizer("Adamax", ({}, {"betas": (0.8, 0.99), "eps": 1e-3}), {"weight_decay": 0.01}),
    Optimizer("Lion", ({}, {"betas": (0.95, 0.98), "lr": 3e-4}), {"weight_decay": 0.1}, torch=False),
    Optimizer("NAdam", ({}, {"decoupled_weight_decay": True}, {"momentum_decay": 0.1, "betas": (0.8, 0.99)}),
              {"decoupled_weight_decay": True, "weight_decay": 0.01}),
    Optimizer("LAMB", ({}, {"weight_decay": 0.0}, {"bias_correction": False, "betas": (0.8, 0.99)}),
              {"weight_decay": 0.1}, torch=False),
)

CASES = [case for opt in OPTIMIZERS for case in opt.cases()]
# One representative configuration per optimizer, for the expensive crossings (sizes, dtypes).
REPRESENTATIVE = [(opt.name, opt.representative) for opt in OPTIMIZERS]
# The optimizers torch.optim has (checkpoints both ways, the reference against torch), and all.
TORCH_NAMES = [opt.name for opt in OPTIMIZERS if opt.torch]
ALL_NAMES = [opt.name for opt in OPTIMIZERS]

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
            if isinstance(x, torch.Tensor) and x.dim() == 0 and isinstance(y, torch.Tensor):
                # per-tensor scalars (step, NAdam's mu_product): torch.optim's load_state_dict
                # casts mu_product to the param's dtype (float64 here) and then multiplies it on
                # in that dtype, while a torch run that never loaded keeps it float32: values
                # agree to float32 precision
                torch.testing.assert_close(float(x), float(y), rtol=max(rtol, 1e-6), atol=atol,
                                           msg=lambda m: f"{what} param {i} state {key!r}: {m}")
                continue
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


def random_state(slot, n, gen, init):
    """A valid random state: moments of either sign, squares positive, RMSprop's grad_avg small
    enough that square_avg - grad_avg**2 stays positive."""
    u = torch.rand(n, generator=gen)
    if slot == "grad_avg":
        return (u - 0.5) * 0.5
    if slot in ("exp_avg", "momentum_buffer"):
        return u - 0.5 + init
    return 0.5 + 0.5 * u + init


def interface_problem(name, dtype, n=(3, 4097), seed=7, device="cpu", random_states=False,
                      step_counts=(3.0, 7.0, 1.0)):
    """One direct ``backend.step`` call of optimizer ``name`` (its representative options):
    ``(spec, call)``, ``call`` the keyword arguments of ``docs/kernel-interface.md``. The
    tensors alternate between two hyperparameter rows (the second with half the lr, twice the
    weight decay, maximize and the weight-decay mode flipped) and take their step counts from
    ``step_counts`` in turn; the state slots are at their initial values, or random around them
    with ``random_states``."""
    kw = dict(REPRESENTATIVE)[name]
    spec = getattr(fusedopt, name).algorithm
    group = {**spec.defaults, **kw}
    if name == "AdamW":
        group.update(decoupled_weight_decay=True, weight_decay=1e-2)
    other = {**group, "lr": group["lr"] * 0.5, "weight_decay": group["weight_decay"] * 2 or 0.01,
             "maximize": not group["maximize"]}
    if spec.decoupled_key:
        other[spec.decoupled_key] = not group.get(spec.decoupled_key, False)
    gen = torch.Generator().manual_seed(seed)
    ps = [torch.randn(k, generator=gen).to(device=device, dtype=dtype) for k in n]
    gs = [torch.randn(k, generator=gen).to(device=device, dtype=dtype) for k in n]
    init = spec.slot_init(group)

    def state(slot, k, fill):
        if random_states:
            return random_state(slot, k, gen, fill).to(device)
        return torch.full((k,), fill, device=device)

    states = [[state(s, k, init[s]) for k in n] if s in init else [] for s in spec.SLOTS]
    call = dict(algo=spec.name, flags=spec.flags(group), params=ps, grads=gs, states=states, master=None,
                index=torch.tensor([[0, i % 2] for i in range(len(n))], dtype=torch.int64).reshape(-1, 2),
                hyper=torch.tensor([spec.hyper_row(group), spec.hyper_row(other)], dtype=torch.float64,
                                   device=device))
    set_counters(spec, call, [step_counts[i % len(step_counts)] for i in range(len(n))])
    return spec, call


def set_counters(spec, call, counts, order=None):
    """Lay out each tensor's counters in ``call["steps"]``: tensor i's step count ``counts[i]``,
    then the algorithm's scalar states (NAdam's mu_product, here a valid product of momentum
    factors below 1), in the block ``order[i]`` (default: i) of ``1 + len(SCALAR_STATES)``
    entries; ``index[:, 0]`` points at them."""
    width = 1 + len(spec.SCALAR_STATES)
    n = len(counts)
    order = list(range(n)) if order is None else [int(k) for k in order]
    steps = [0.0] * (width * n)
    for i, (t, k) in enumerate(zip(counts, order)):
        steps[width * k: width * (k + 1)] = [float(t)] + [0.4 + 0.05 * (i % 5)] * (width - 1)
    device = call["hyper"].device
    call["steps"] = torch.tensor(steps, dtype=torch.float32, device=device)
    index = call["index"].clone()
    index[:, 0] = torch.tensor(order, dtype=torch.int64) * width
    call["index"] = index


def set_rows(spec, call, rows):
    """Replace the call's hyper table by `rows` (dicts of column overrides on row 0) and spread
    the tensors over them in turn."""
    base = call["hyper"][0]
    table = []
    for over in rows:
        row = base.clone()
        for col, value in over.items():
            row[spec.HYPER.index(col)] = float(value)
        table.append(row)
    call["hyper"] = torch.stack(table)
    call["index"][:, 1] = torch.arange(len(call["params"])) % len(rows)


# The preamble's per-row variety: every weight-decay mode and maximize, side by side in one call.
MIXED_ROWS = [{}, {"maximize": 1, "weight_decay": 0.03, "decoupled": 0}, {"weight_decay": 0.1, "decoupled": 1},
              {"weight_decay": 0.0, "lr": 0.003}]


def exact_scalars_call(name, n=60, elems=8, seed=3, device="cpu"):
    """A call whose every non-scalar operation is exact or computed identically by the kernel
    and the reference: second moments are perfect squares after the update (sqrt(v) exact
    whatever sqrt is used), weight decay is decoupled, so only the per-tensor scalars could make
    the results differ. Tensor i is at step i + 1, rows alternate between beta2 = 7/8 and 31/32."""
    spec, call = interface_problem(name, torch.float32, n=[elems] * n, seed=seed, device=device,
                                   step_counts=tuple(float(t) for t in range(1, n + 1)))
    gen = torch.Generator().manual_seed(seed)
    rows = [{"lr": 0.0123, "weight_decay": 0.0, "decoupled": 0},
            {"lr": 0.37, "weight_decay": 0.07, "decoupled": 1, "maximize": 1}]
    extra = {"adam": [{"beta1": 0.9, "beta2": 0.875}, {"beta1": 0.8, "beta2": 0.96875}],
             "yogi": [{"beta1": 0.9, "beta2": 0.875}, {"beta1": 0.8, "beta2": 0.96875}],
             "radam": [{"beta1": 0.9, "beta2": 0.875}, {"beta1": 0.8, "beta2": 0.96875}],
             "adagrad": [{"lr_decay": 0.01}, {"lr_decay": 0.3}],
             "sgd": [{"momentum": 0.9, "dampening": 0.0}, {"momentum": 0.5, "dampening": 0.1}]}[spec.name]
    set_rows(spec, call, [{**r, **e} for r, e in zip(rows, extra)])
    # g = +-4 (row 0) or +-8 (row 1) and v = 16 or 64 before and after the update:
    # 7/8 * 16 + 1/8 * 4**2 = 16, 31/32 * 64 + 1/32 * 8**2 = 64; Yogi: sign(v - g*g) = 0.
    root = [4.0 if i % 2 == 0 else 8.0 for i in range(n)]
    call["grads"] = [torch.where(torch.rand(elems, generator=gen) < 0.5, -r, r).to(device) for r in root]
    for slot, lst in zip(spec.SLOTS, call["states"]):
        for i, t in enumerate(lst):
            if slot in ("exp_avg_sq", "max_exp_avg_sq"):
                t.fill_(root[i] ** 2)
            elif slot == "sum":
                t.zero_()  # sum = g * g
            else:
                t.copy_(torch.randn(elems, generator=gen).to(device))
    return spec, call


def mutable(call):
    """Every tensor a direct backend call may write, in a fixed order."""
    return list(call["params"]) + [t for slot in call["states"] for t in slot] + list(call["master"] or [])


def clone_call(call, device=None):
    """A copy of a direct backend call's arguments (on ``device`` when given), so that backends
    can be run side by side on the same inputs."""
    def copy(t):  # with the same strides, so layouts under test survive the copy
        return torch.empty_strided(t.size(), t.stride(), dtype=t.dtype, device=device or t.device).copy_(t)

    out = dict(call)
    for key in ("params", "grads"):
        out[key] = [copy(t) for t in call[key]]
    out["states"] = [[copy(t) for t in slot] for slot in call["states"]]
    out["master"] = None if call["master"] is None else [copy(m) for m in call["master"]]
    if call.get("scales") is not None:
        out["scales"] = [[copy(t) for t in slot] for slot in call["scales"]]
    if device is not None:
        out["steps"], out["hyper"] = call["steps"].to(device), call["hyper"].to(device)
    return out


def run_call(backend, call, **kw):
    """``backend.step`` on a copy of ``call``; returns the copy, updated."""
    out = clone_call(call)
    backend.step(**out, **kw)
    return out


def run_split_call(backend, call, sums, scale=None):
    """A reducing algorithm's step in two calls (Note [split steps]) on a copy of ``call``: phase
    1 (writing ``sums``), the sums multiplied by ``scale`` when given (as combining the sums of
    shards would change them), phase 2; returns the copy, updated."""
    out = clone_call(call)
    backend.step(**out, sums=sums, phase=1)
    if scale is not None:
        sums.mul_(scale)
    backend.step(**out, sums=sums, phase=2)
    return out


def assert_calls_match(got, want, what=""):
    """Params, every state tensor and the master weights, each within its dtype's tolerance."""
    for i, (a, b) in enumerate(zip(mutable(got), mutable(want))):
        rtol, atol = TOL[a.dtype]
        torch.testing.assert_close(a, b.to(a.device), rtol=rtol, atol=atol, msg=lambda m: f"{what} tensor {i}: {m}")


def count_cuda_kernels(fn) -> int:
    """Launches of fusedopt's CUDA kernels while running fn()."""
    from torch.profiler import ProfilerActivity, profile
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return sum(1 for e in prof.events() if "step_kernel" in e.name)  # Lookahead's too: one traversal


def cuda_skip_reason() -> str:
    """Why the cuda backend cannot run here ("" when it can)."""
    from fusedopt import backends
    if not torch.cuda.is_available():
        return "no CUDA device (torch.cuda.is_available() is False)"
    ok, why = backends.availability("cuda", torch.device("cuda"))
    return "" if ok else f"the cuda backend is not available: {why}"


def compile_for_sm90(script: str, tmp_path) -> str:
    """Run ``script`` (Triton ahead-of-time compilation for an H100, no GPU needed) in a fresh
    interpreter with the compiled, not interpreted, Triton and this fusedopt; its stdout. Skips
    where Triton has no ``compile`` or no NVIDIA backend."""
    import os
    import subprocess
    import sys

    import pytest
    triton = pytest.importorskip("triton")
    if not hasattr(triton, "compile"):
        pytest.skip("triton.compile unavailable")
    if not os.path.isdir(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia")):
        pytest.skip("this triton has no NVIDIA backend")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    root = os.path.dirname(os.path.dirname(os.path.abspath(fusedopt.__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                         timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def assert_owned_grads_steps(device: str, backend: str) -> None:
    """Note [owned grads]: AdamW on `device` with grads filled in place step after step (owned by
    the backend's state table from the second step), then zero_grad() (which frees them at
    once) and new grads filled in place again; every step matches torch.optim's AdamW."""
    gen = torch.Generator().manual_seed(3)
    ps = [torch.randn(n, generator=gen).to(device).requires_grad_(True) for n in (10, 3000, 7)]
    ref = [p.detach().clone().requires_grad_(True) for p in ps]
    opt = fusedopt.AdamW(ps, lr=0.01, backend=backend)
    topt = torch.optim.AdamW(ref, lr=0.01, foreach=False)
    for step in range(6):
        if step == 4:
            watch = weakref.ref(ps[0].grad)
            opt.zero_grad()
            topt.zero_grad()
            gc.collect()
            assert watch() is None, "zero_grad(set_to_none=True) lets the owned grads go"
        for p, r in zip(ps, ref):
            g = torch.randn(p.shape, generator=gen).to(device)
            if p.grad is None:
                p.grad, r.grad = g.clone(), g.clone()
            else:
                p.grad.copy_(g)
                r.grad.copy_(g)
        opt.step()
        topt.step()
        owns = opt._plan.buckets[0].cache["state_table"].grads is not None
        assert owns == (step in (1, 2, 3, 5)), step
        for p, r in zip(ps, ref):
            torch.testing.assert_close(p.detach(), r.detach(), msg=f"step {step}")
