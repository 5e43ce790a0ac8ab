"""The reference is the oracle; here it is itself checked against torch.optim and the formulas."""
from __future__ import annotations

import math

import pytest
import torch

import fusedopt
from parity import CASES, OPTIMIZERS, TOL, TORCH_NAMES, assert_same_state, case_id, make_problem, run_steps

TORCH_CASES = [c for c in CASES if c[0] in TORCH_NAMES]


def test_every_optimizer_without_torch_counterpart_has_an_independent_oracle():
    """Declared without a torch.optim class: the reference is checked against the paper's
    update computed by hand here (``_<name>_by_hand``)."""
    for opt in OPTIMIZERS:
        if not opt.torch:
            assert callable(globals().get(f"_{opt.name.lower()}_by_hand")), opt.name


@pytest.mark.parametrize("case", TORCH_CASES, ids=case_id)
def test_reference_matches_torch_optim_float64(case):
    name, kw = case
    params, grads = make_problem([5, 1, 33, 128], torch.float64, steps=50, seed=1)
    ps_f, opt_f = run_steps(getattr(fusedopt, name), params, grads, kw, "reference")
    ps_t, opt_t = run_steps(lambda ps, backend, **k: getattr(torch.optim, name)(ps, foreach=False, **k),
                            params, grads, kw, None)
    assert_same_state(ps_f, opt_f, ps_t, opt_t, TOL[torch.float64], what=f"{name}{kw}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["SGD", "Adam", "RMSprop"])
def test_reference_low_precision_computes_in_float32(name, dtype):
    """16-bit params: the reference upcasts, so it tracks a float32 run to storage precision."""
    kw = {"momentum": 0.9} if name != "Adam" else {}
    if name == "SGD":
        kw["lr"] = 0.01
    params, grads = make_problem([64], torch.float32, steps=5, seed=2)
    low = [p.to(dtype) for p in params]
    low_grads = [[g.to(dtype) for g in gs] for gs in grads]
    ps_l, opt_l = run_steps(getattr(fusedopt, name), low, low_grads, kw, "reference")
    for p in ps_l:
        assert p.dtype == dtype
        for key, v in opt_l.state[p].items():
            if key != "step":
                assert v.dtype == torch.float32, key
    # the same inputs (already rounded to dtype) in float32, rounded once at the end
    ps_f, _ = run_steps(getattr(fusedopt, name), [p.float() for p in low],
                        [[g.float() for g in gs] for gs in low_grads], kw, "reference")
    eps = torch.finfo(dtype).eps
    for a, b in zip(ps_l, ps_f):
        torch.testing.assert_close(a.float(), b.detach(), rtol=5 * eps, atol=5 * eps)


# -- Yogi: no torch counterpart; checked against the formulas of the specification -----------

def _yogi_by_hand(p0, grads, lr, b1, b2, eps, v0, wd=0.0, maximize=False):
    """Element by element, in Python floats: the update rule exactly as specified."""
    p = list(p0)
    m = [v0] * len(p)
    v = [v0] * len(p)
    for t, g_t in enumerate(grads, start=1):
        for i in range(len(p)):
            g = -g_t[i] if maximize else g_t[i]
            g = g + wd * p[i]
            m[i] = b1 * m[i] + (1 - b1) * g
            g2 = g * g
            d = v[i] - g2
            sign = (d > 0) - (d < 0)
            v[i] = v[i] - (1 - b2) * sign * g2
            p[i] = p[i] - (lr / (1 - b1 ** t)) * m[i] / (math.sqrt(v[i]) / math.sqrt(1 - b2 ** t) + eps)
    return p, m, v


@pytest.mark.parametrize("kw", [{}, {"weight_decay": 0.1, "maximize": True},
                                {"betas": (0.5, 0.9), "initial_accumulator_value": 0.0, "lr": 0.1}])
def test_yogi_reference_matches_formulas(kw):
    params, grads = make_problem([7], torch.float64, steps=30, seed=3)
    ps, opt = run_steps(fusedopt.Yogi, params, grads, kw, "reference")
    hp = {**fusedopt.Yogi.algorithm.defaults, **kw}
    b1, b2 = hp["betas"]
    p, m, v = _yogi_by_hand(params[0].tolist(), [gs[0].tolist() for gs in grads], hp["lr"], b1, b2, hp["eps"],
                            hp["initial_accumulator_value"], hp["weight_decay"], hp["maximize"])
    st = opt.state[ps[0]]
    torch.testing.assert_close(ps[0].detach(), torch.tensor(p, dtype=torch.float64), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(st["exp_avg"], torch.tensor(m, dtype=torch.float64), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(st["exp_avg_sq"], torch.tensor(v, dtype=torch.float64), rtol=1e-12, atol=1e-14)
    assert float(st["step"]) == 30.0


def test_yogi_second_moment_moves_additively_and_boundedly():
    """|v_t - v_{t-1}| <= (1 - b2) g_t^2 elementwise, and sign(0) = 0 leaves v in place."""
    b2 = 0.9
    p = torch.randn(1000, dtype=torch.float64, requires_grad=True)
    opt = fusedopt.Yogi([p], betas=(0.9, b2), backend="reference")
    gen = torch.Generator().manual_seed(4)
    prev = None
    for step in range(20):
        g = torch.randn(1000, generator=gen, dtype=torch.float64) * 10 ** (step % 4 - 2)
        p.grad = g.clone()
        opt.step()
        v = opt.state[p]["exp_avg_sq"].clone()
        if prev is not None:
            moved = (v - prev).abs()
            # (float64 rounding of v itself is the only slack allowed)
            assert torch.all(moved <= (1 - b2) * g * g * (1 + 1e-12) + 1e-15 * prev.abs())
            # grew where g^2 > v, shrank where g^2 < v: additive, never multiplicative
            assert torch.all((v - prev)[g * g > prev] > 0)
            assert torch.all((v - prev)[g * g < prev] < 0)
        prev = v
    # sign(0) = 0: where g^2 equals v exactly, v stays put (g = 0.5, v = 0.25 are exact)
    v = opt.state[p]["exp_avg_sq"]
    v.fill_(0.25)
    p.grad = torch.full_like(p, 0.5)
    opt.step()
    assert torch.equal(opt.state[p]["exp_avg_sq"], torch.full_like(p, 0.25))


# -- RAdam's rectification: both branches, threshold 5 ---------------------------------------

def test_radam_rectification_switches_on_after_threshold():
    from fusedopt.algorithms import rectification
    flags = [rectification(0.999, t) > 0 for t in range(1, 10)]
    assert flags[:5] == [False] * 5 and all(flags[5:])  # rho_t first exceeds 5 at step 6
    # r_t from the paper's formula at step 1000 (rho_t computed independently here)
    b2, t = 0.999, 1000
    rho_inf = 2 / (1 - b2) - 1
    rho_t = rho_inf - 2 * t * b2 ** t / (1 - b2 ** t)
    expected = ((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)) ** 0.5
    assert 0 < expected < 1
    assert abs(rectification(b2, t) - expected) < 1e-15


# -- Lookahead: against an independent computation ---------------------------------------------

@pytest.mark.parametrize("inner", ["fusedopt", "torch"])
def test_lookahead_matches_formulas(inner):
    k, alpha, lr = 3, 0.4, 0.1
    params, grads = make_problem([5, 11], torch.float64, steps=10, seed=5)
    ps = [p.clone().requires_grad_(True) for p in params]
    inner_opt = (fusedopt.SGD(ps, lr=lr, backend="reference") if inner == "fusedopt"
                 else torch.optim.SGD(ps, lr=lr, foreach=False))
    opt = fusedopt.Lookahead(inner_opt, k=k, alpha=alpha)
    fast = [p.clone() for p in params]
    slow = [p.clone() for p in params]
    for t, gs in enumerate(grads, start=1):
        for p, g in zip(ps, gs):
            p.grad = g.clone()
        opt.step()
        fast = [f - lr * g for f, g in zip(fast, gs)]
        if t % k == 0:
            slow = [s + alpha * (f - s) for s, f in zip(slow, fast)]
            fast = [s.clone() for s in slow]
    for p, f, s in zip(ps, fast, slow):
        torch.testing.assert_close(p.detach(), f, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(opt.state[p]["slow_param"], s, rtol=1e-12, atol=1e-14)


# -- Lion: no torch counterpart; checked against Program 1 of Chen et al. (2023) -----------------

def _lion_by_hand(p0, grads, lr, b1, b2, wd=0.0, maximize=False):
    """The paper's update, element by element in Python floats: interpolate, take the sign,
    decay the weight, then update the momentum with beta2."""
    p = list(p0)
    m = [0.0] * len(p)
    for g_t in grads:
        for i in range(len(p)):
            g = -g_t[i] if maximize else g_t[i]
            c = b1 * m[i] + (1 - b1) * g
            sign = (c > 0) - (c < 0)
            p[i] = p[i] * (1 - lr * wd) - lr * sign
            m[i] = b2 * m[i] + (1 - b2) * g
    return p, m


@pytest.mark.parametrize("kw", [{}, {"weight_decay": 0.5, "maximize": True},
                                {"betas": (0.5, 0.9), "lr": 0.1, "weight_decay": 0.1}])
def test_lion_reference_matches_the_paper(kw):
    params, grads = make_problem([9], torch.float64, steps=30, seed=5)
    ps, opt = run_steps(fusedopt.Lion, params, grads, kw, "reference")
    hp = {**fusedopt.Lion.algorithm.defaults, **kw}
    p, m = _lion_by_hand(params[0].tolist(), [gs[0].tolist() for gs in grads], hp["lr"], *hp["betas"],
                         hp["weight_decay"], hp["maximize"])
    torch.testing.assert_close(ps[0].detach(), torch.tensor(p, dtype=torch.float64), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(opt.state[ps[0]]["exp_avg"], torch.tensor(m, dtype=torch.float64),
                               rtol=1e-12, atol=1e-14)
    assert set(opt.state[ps[0]]) == {"exp_avg"}  # no step count


def test_lion_moves_every_coordinate_by_lr():
    """Without weight decay every coordinate with a nonzero interpolation moves by exactly lr."""
    p = torch.randn(1000, dtype=torch.float64, requires_grad=True)
    before = p.detach().clone()
    opt = fusedopt.Lion([p], lr=1e-3, backend="reference")
    p.grad = torch.randn(1000, dtype=torch.float64)
    opt.step()
    torch.testing.assert_close((p.detach() - before).abs(), torch.full((1000,), 1e-3, dtype=torch.float64),
                               rtol=1e-12, atol=1e-15)


# -- LAMB: no torch counterpart; checked against Algorithm 2 of You et al. (2020) -----------------

def _lamb_by_hand(p0, grads, lr, b1, b2, eps, wd, bias_correction=True, maximize=False):
    """The paper's update for one tensor, in Python floats: Adam's moments and bias-corrected
    direction plus the decay, scaled by the trust ratio ||p|| / ||u|| (1 when either is 0)."""
    p = list(p0)
    m = [0.0] * len(p)
    v = [0.0] * len(p)
    for t, g_t in enumerate(grads, start=1):
        bc1 = 1 - b1 ** t if bias_correction else 1.0
        bc2 = 1 - b2 ** t if bias_correction else 1.0
        u = []
        for i in range(len(p)):
            g = -g_t[i] if maximize else g_t[i]
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            u.append((m[i] / bc1) / (math.sqrt(v[i] / bc2) + eps) + wd * p[i])
        pn = math.sqrt(sum(x * x for x in p))
        un = math.sqrt(sum(x * x for x in u))
        trust = pn / un if pn > 0 and un > 0 else 1.0
        p = [x - lr * trust * d for x, d in zip(p, u)]
    return p, m, v


@pytest.mark.parametrize("kw", [{}, {"weight_decay": 0.0, "maximize": True},
                                {"bias_correction": False, "betas": (0.5, 0.9), "lr": 0.1, "eps": 1e-3}])
def test_lamb_reference_matches_the_paper(kw):
    params, grads = make_problem([9, 4], torch.float64, steps=20, seed=9)
    ps, opt = run_steps(fusedopt.LAMB, params, grads, kw, "reference")
    hp = {**fusedopt.LAMB.algorithm.defaults, **kw}
    for k in range(2):
        p, m, v = _lamb_by_hand(params[k].tolist(), [gs[k].tolist() for gs in grads], hp["lr"], *hp["betas"],
                                hp["eps"], hp["weight_decay"], hp["bias_correction"], hp["maximize"])
        st = opt.state[ps[k]]
        torch.testing.assert_close(ps[k].detach(), torch.tensor(p, dtype=torch.float64), rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(st["exp_avg"], torch.tensor(m, dtype=torch.float64), rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(st["exp_avg_sq"], torch.tensor(v, dtype=torch.float64), rtol=1e-12, atol=1e-14)


def test_lamb_trust_ratio_is_per_tensor_and_one_for_a_zero_param():
    """The same gradients on a tensor scaled by 10 give a step 10x larger (||p|| / ||u||); a
    zero tensor takes the unscaled step (trust 1)."""
    g = torch.randn(50, dtype=torch.float64)
    base = torch.randn(50, dtype=torch.float64)
    ps = [base.clone().requires_grad_(True), (10 * base).requires_grad_(True), torch.zeros(50, dtype=torch.float64,
                                                                                            requires_grad=True)]
    opt = fusedopt.LAMB(ps, lr=0.01, weight_decay=0.0, backend="reference")
    for p in ps:
        p.grad = g.clone()
    opt.step()
    d0, d1 = ps[0].detach() - base, ps[1].detach() - 10 * base
    torch.testing.assert_close(d1, 10 * d0, rtol=1e-10, atol=1e-14)
    u = g / (g.abs() + 1e-6)  # the first step's direction: m/bc1 = g, sqrt(v/bc2) = |g|
    torch.testing.assert_close(ps[2].detach(), -0.01 * u, rtol=1e-10, atol=1e-14)
