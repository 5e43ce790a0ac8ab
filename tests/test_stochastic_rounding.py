"""stochastic_rounding=True (Note [stochastic rounding]): 16-bit params stored as one of the two
neighbours of their float32 result, with the bits of fusedopt.lowbit.stochastic_round keyed by
(rounding_seed, step count, element index + the param's offset); small updates that
round-to-nearest loses accumulate in expectation, so training tracks float32."""
from __future__ import annotations

import copy

import pytest
import torch

import fusedopt
from fusedopt import lowbit

SIZES = (1000, 37)


def _params(dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(n, generator=gen).to(dtype)) for n in SIZES]


def _grads(steps, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randn(n, generator=gen) for n in SIZES] for _ in range(steps)]


def _run(opt, params, grads):
    for gs in grads:
        for p, g in zip(params, gs):
            p.grad = g.to(p.dtype)
        opt.step()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_each_step_stores_the_stochastic_rounding_of_the_float32_result(dtype):
    """Step by step, from the same 16-bit params and states: the param is lowbit.stochastic_round
    of the float32 result of the same step with float32 params (the rounding's oracle), keyed by
    the seed, the step count and the element's index plus the param's offset (its position times
    2**40); and it is one of the result's two neighbours."""
    params = _params(dtype)
    opt = fusedopt.AdamW(params, lr=1e-3, stochastic_rounding=True, rounding_seed=1234)
    for t, gs in enumerate(_grads(4), start=1):
        exact = [torch.nn.Parameter(p.detach().float()) for p in params]
        ref = fusedopt.AdamW(exact, lr=1e-3, backend="reference")
        if t > 1:
            sd = copy.deepcopy(opt.state_dict())
            sd["param_groups"][0].update(stochastic_rounding=False, rounding_seed=None)
            ref.load_state_dict(sd)
        _run(opt, params, [gs])
        _run(ref, exact, [[g.to(dtype).float() for g in gs]])
        for i, (p, x) in enumerate(zip(params, exact)):
            x = x.detach()
            want = lowbit.stochastic_round(x, dtype, 1234, t, i << 40)
            assert torch.equal(p.detach(), want), (t, i)
            nearest = x.to(dtype)  # one neighbour; the other is one 16-bit step toward x
            other = torch.where(nearest.float() == x, nearest, _next16(nearest, x))
            assert ((p.detach() == nearest) | (p.detach() == other)).all(), (t, i)


def _next16(v, x):
    """The 16-bit neighbour of ``v`` on ``x``'s side (the other candidate of a stochastic rounding)."""
    bits = v.view(torch.int16).to(torch.int32)  # sign-magnitude: +1 moves away from zero
    up = (x > v.float()) == (v.float() >= 0)
    stepped = torch.where(up, bits + 1, bits - 1).to(torch.int16).view(v.dtype)
    return torch.where(v.float() == 0, torch.where(x > 0, _tiny(v.dtype), -_tiny(v.dtype)).to(v.dtype), stepped)


def _tiny(dtype):
    return torch.tensor(1, dtype=torch.int16).view(dtype).float()


def test_tiny_updates_accumulate_with_stochastic_rounding_and_vanish_without():
    """SGD steps of a tenth of a bf16 ulp: round-to-nearest never moves the params, stochastic
    rounding moves them as far as float32 does, on average."""
    n, steps, lr = 4096, 200, 1e-3
    p0 = torch.full((n,), 1.0)
    g = torch.full((n,), 0.78125)  # lr * g = 2**-7 * 0.1: 1/10 of bf16's ulp at 1.0 (2**-7)
    finals = {}
    for label, kw, dtype in (("float32", {}, torch.float32), ("nearest", {}, torch.bfloat16),
                             ("stochastic", {"stochastic_rounding": True, "rounding_seed": 7}, torch.bfloat16)):
        p = torch.nn.Parameter(p0.to(dtype, copy=True))
        opt = fusedopt.SGD([p], lr=lr, backend="reference", **kw)
        for _ in range(steps):
            p.grad = g.to(dtype)
            opt.step()
        finals[label] = p.detach().float()
    moved = 1.0 - finals["float32"].mean()
    assert torch.equal(finals["nearest"], p0)  # every update lost
    assert abs((1.0 - finals["stochastic"].mean()) - moved) < 0.02 * moved, (finals["stochastic"].mean(), moved)


def test_same_seed_same_bits_other_seed_other_bits_and_checkpoints_keep_the_seed():
    def run(seed, grads, state=None):
        params = _params(torch.bfloat16, seed=3)
        opt = fusedopt.Adam(params, lr=1e-3, stochastic_rounding=True, rounding_seed=seed)
        if state is not None:
            for p, v in zip(params, state[0]):
                p.data.copy_(v)
            opt.load_state_dict(state[1])
        _run(opt, params, grads)
        return [p.detach().clone() for p in params], opt

    grads = _grads(6, seed=4)
    a, _ = run(11, grads)
    b, _ = run(11, grads)
    c, _ = run(12, grads)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))
    half, opt = run(11, grads[:3])
    state = ([p.clone() for p in half], copy.deepcopy(opt.state_dict()))
    assert state[1]["param_groups"][0]["rounding_seed"] == 11
    resumed, _ = run(99, grads[3:], state)  # the checkpoint's seed, not the constructor's
    assert all(torch.equal(x, y) for x, y in zip(a, resumed))


def test_float32_params_and_master_weights_are_unaffected():
    params = _params(torch.float32)
    plain = [torch.nn.Parameter(p.detach().clone()) for p in params]
    o1 = fusedopt.AdamW(params, stochastic_rounding=True, rounding_seed=5)
    o2 = fusedopt.AdamW(plain)
    _run(o1, params, _grads(3))
    _run(o2, plain, _grads(3))
    for a, b in zip(params, plain):
        assert torch.equal(a, b)


def test_seed_drawn_from_torch_generator_when_not_given():
    torch.manual_seed(0)
    a = fusedopt.SGD(_params(torch.bfloat16), stochastic_rounding=True).param_groups[0]["rounding_seed"]
    torch.manual_seed(0)
    b = fusedopt.SGD(_params(torch.bfloat16), stochastic_rounding=True).param_groups[0]["rounding_seed"]
    assert isinstance(a, int) and a == b
    state = torch.get_rng_state()
    assert fusedopt.SGD(_params(torch.bfloat16)).param_groups[0]["rounding_seed"] is None
    assert torch.equal(torch.get_rng_state(), state)  # no draw without stochastic rounding


@pytest.mark.parametrize("kw,match", [
    ({"stochastic_rounding": True, "master_weights": True}, "stochastic_rounding"),
    ({"stochastic_rounding": 1}, "stochastic_rounding"),
    ({"stochastic_rounding": True, "rounding_seed": -1}, "rounding_seed"),
    ({"stochastic_rounding": True, "rounding_seed": 2 ** 64}, "rounding_seed"),
])
def test_invalid_rounding_options_name_the_argument(kw, match):
    with pytest.raises(ValueError, match=match):
        fusedopt.Adam(_params(torch.bfloat16), **kw)
