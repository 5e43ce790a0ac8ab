"""Behaviour users rely on: schedulers, groups, None grads, checkpoints both ways, clear errors."""
from __future__ import annotations

import copy
import io
import math

import pytest
import torch

import fusedopt
from parity import ALL_NAMES, OPTIMIZERS, TOL, TORCH_NAMES, assert_same_state, make_problem

KW = {"SGD": {"lr": 0.05, "momentum": 0.9}, "RMSprop": {"momentum": 0.5, "centered": True},
      "Adam": {"amsgrad": True}}


def test_every_optimizer_is_declared_once_for_the_tests():
    """Every optimizer class fusedopt exports and every algorithm has its one test declaration
    (tests/parity.py OPTIMIZERS), and `torch=True` exactly where torch.optim has the class."""
    classes = {name for name in fusedopt.__all__ if isinstance(getattr(fusedopt, name), type)
               and issubclass(getattr(fusedopt, name), fusedopt.optim.FusedOptimizer)}
    assert classes == set(ALL_NAMES)
    assert {getattr(fusedopt, n).algorithm.name for n in ALL_NAMES} == set(fusedopt.ALGORITHMS)
    for opt in OPTIMIZERS:
        assert opt.torch == hasattr(torch.optim, opt.name), opt.name


def _torch(name, params, **kw):
    return getattr(torch.optim, name)(params, foreach=False, **kw)


def _fused(name, params, **kw):
    return getattr(fusedopt, name)(params, **kw)


def _train(opt, params, grads):
    for gs in grads:
        for p, g in zip(params, gs):
            p.grad = None if g is None else g.clone()
        opt.step()


def _clone(params):
    return [p.clone().requires_grad_(True) for p in params]


@pytest.mark.parametrize("name", TORCH_NAMES)
def test_state_dict_round_trips_with_torch_both_ways(name):
    kw = KW.get(name, {})
    params, grads = make_problem([4, 9, 16], torch.float64, steps=20, seed=11)
    # 20 steps in torch: the target
    pt = _clone(params)
    ot = _torch(name, pt, **kw)
    _train(ot, pt, grads)
    # torch 10 -> fusedopt 10
    pa = _clone(params)
    oa = _torch(name, pa, **kw)
    _train(oa, pa, grads[:10])
    pb = [p.detach().clone().requires_grad_(True) for p in pa]
    ob = _fused(name, pb, **kw)
    ob.load_state_dict(copy.deepcopy(oa.state_dict()))
    _train(ob, pb, grads[10:])
    assert_same_state(pb, ob, pt, ot, TOL[torch.float64], what="torch->fusedopt")
    # fusedopt 10 -> torch 10
    pc = _clone(params)
    oc = _fused(name, pc, **kw)
    _train(oc, pc, grads[:10])
    pd = [p.detach().clone().requires_grad_(True) for p in pc]
    od = _torch(name, pd, **kw)
    saved = oc.state_dict()
    assert all(type(v) is dict for v in saved["state"].values()), "plain dicts, as torch.optim's"
    buffer = io.BytesIO()
    torch.save(saved, buffer)
    buffer.seek(0)
    od.load_state_dict(torch.load(buffer, weights_only=True))  # loads without fusedopt's classes
    _train(od, pd, grads[10:])
    assert_same_state(pd, od, pt, ot, TOL[torch.float64], what="fusedopt->torch")


@pytest.mark.parametrize("name", ALL_NAMES)
def test_state_dict_round_trip_in_fusedopt_continues_identically(name):
    params, grads = make_problem([4, 9], torch.float32, steps=12, seed=12)
    pa = _clone(params)
    oa = _fused(name, pa)
    _train(oa, pa, grads)
    pb = _clone(params)
    ob = _fused(name, pb)
    _train(ob, pb, grads[:6])
    saved = copy.deepcopy(ob.state_dict())
    pc = [p.detach().clone().requires_grad_(True) for p in pb]
    oc = _fused(name, pc)
    oc.load_state_dict(saved)
    _train(oc, pc, grads[6:])
    assert_same_state(pc, oc, pa, oa, (0, 0), what=name)


def _torch_adagrad_state(opt, params):
    """torch.optim.Adagrad before 2.13 creates its state only in the constructor (an added
    group's params then fail with a KeyError); create it the way 2.13's lazy init does."""
    from torch.optim.optimizer import _get_scalar_dtype
    for p in params:
        st = opt.state[p]
        if not st:
            st["step"] = torch.tensor(0.0, dtype=_get_scalar_dtype())
            st["sum"] = torch.full_like(p, opt.defaults["initial_accumulator_value"],
                                        memory_format=torch.preserve_format)


@pytest.mark.parametrize("name", TORCH_NAMES)
def test_param_groups_none_grads_schedulers_and_add_param_group_match_torch(name):
    params, grads = make_problem([5, 6, 7, 8], torch.float64, steps=12, seed=13)
    for gs in grads[3:6]:
        gs[1] = None  # a param without grad for a few steps
    for gs in grads:
        gs[2] = None  # a param that never gets one

    def run(make):
        ps = _clone(params)
        base = {"lr": 0.01} if name == "SGD" else {}
        opt = make([{"params": ps[:2]}, {"params": ps[2:3], "lr": 0.003, "weight_decay": 0.1}], **base)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
        for t, gs in enumerate(grads):
            if t == 4:
                opt.add_param_group({"params": ps[3:], "lr": 0.02})
                if isinstance(opt, torch.optim.Adagrad):
                    _torch_adagrad_state(opt, ps[3:])
            for p, g in zip(ps, gs):
                p.grad = None if g is None else g.clone()
            opt.step()
            sched.step()
        return ps, opt

    pf, of = run(lambda groups, **kw: _fused(name, groups, **kw))
    pt, ot = run(lambda groups, **kw: _torch(name, groups, **kw))
    assert_same_state(pf, of, pt, ot, TOL[torch.float64], what=name)
    if name != "Adagrad":  # torch.optim.Adagrad creates its state in the constructor, and so do we
        assert len(of.state[pf[2]]) == 0, "a param that never had a grad has no state"
    torch.testing.assert_close(pf[2].detach(), params[2], rtol=0, atol=0)
    assert [g["lr"] for g in of.param_groups] == [g["lr"] for g in ot.param_groups]


def test_lookahead_drives_schedulers_and_round_trips():
    params, grads = make_problem([6, 3], torch.float32, steps=14, seed=14)

    def build(ps):
        return fusedopt.Lookahead(fusedopt.RAdam(ps, lr=0.01), k=3, alpha=0.5)

    pa = _clone(params)
    oa = build(pa)
    sched = torch.optim.lr_scheduler.ExponentialLR(oa, gamma=0.9)
    for gs in grads:
        for p, g in zip(pa, gs):
            p.grad = g.clone()
        oa.step()
        sched.step()
    assert oa.optimizer.param_groups[0]["lr"] == pytest.approx(0.01 * 0.9 ** 14)

    pb = _clone(params)
    ob = build(pb)
    _train(ob, pb, grads[:7])
    pc = [p.detach().clone().requires_grad_(True) for p in pb]
    oc = build(pc)
    oc.load_state_dict(copy.deepcopy(ob.state_dict()))
    _train(oc, pc, grads[7:])
    _train(ob, pb, grads[7:])
    for b, c in zip(pb, pc):
        torch.testing.assert_close(b, c, rtol=0, atol=0)
        torch.testing.assert_close(ob.state[b]["slow_param"], oc.state[c]["slow_param"], rtol=0, atol=0)


# -- errors: clear, naming the argument, and nothing changed -----------------------------------

BAD_HYPERPARAMS = [
    ("Adam", {"lr": -1.0}, "lr"), ("Adam", {"lr": math.nan}, "lr"), ("Adam", {"eps": -1e-8}, "eps"),
    ("Adam", {"weight_decay": -0.1}, "weight_decay"), ("Adam", {"betas": (1.0, 0.999)}, "betas"),
    ("Adam", {"betas": (0.9, -0.1)}, "betas"), ("AdamW", {"betas": (0.9, math.nan)}, "betas"),
    ("RAdam", {"betas": (0.9, 1.5)}, "betas"), ("Yogi", {"betas": (0.9, 1.0)}, "betas"),
    ("Adadelta", {"rho": 1.5}, "rho"), ("Adadelta", {"rho": -0.5}, "rho"),
    ("RMSprop", {"alpha": 1.2}, "alpha"), ("RMSprop", {"momentum": -1.0}, "momentum"),
    ("Adagrad", {"lr_decay": -1.0}, "lr_decay"), ("Adagrad", {"eps": math.nan}, "eps"),
    ("Yogi", {"initial_accumulator_value": -1.0}, "initial_accumulator_value"),
    ("SGD", {"nesterov": True}, "nesterov"), ("SGD", {"nesterov": True, "momentum": 0.9, "dampening": 0.1}, "nesterov"),
    ("SGD", {"momentum": -0.9}, "momentum"), ("SGD", {"lr": -0.1}, "lr"),
]


@pytest.mark.parametrize("name,kw,arg", BAD_HYPERPARAMS)
def test_bad_hyperparameters_raise_naming_the_argument(name, kw, arg):
    p = torch.zeros(3, requires_grad=True)
    with pytest.raises(ValueError, match=arg.replace("[", r"\[")):
        _fused(name, [p], **kw)
    opt = _fused(name, [p])
    with pytest.raises(ValueError, match=arg.replace("[", r"\[")):
        opt.add_param_group({"params": [torch.zeros(2, requires_grad=True)], **kw})
    assert len(opt.param_groups) == 1


def test_bad_gradient_changes_nothing():
    good = torch.ones(4, requires_grad=True)
    emb = torch.nn.Embedding(5, 3, sparse=True)
    opt = fusedopt.Adam([{"params": [good]}, {"params": emb.parameters()}])
    good.grad = torch.ones(4)
    emb(torch.tensor([1, 2])).sum().backward()
    before = emb.weight.detach().clone()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()
    assert torch.equal(good.detach(), torch.ones(4)) and torch.equal(emb.weight.detach(), before)
    assert len(opt.state) == 0


def test_gradient_shape_or_dtype_mismatch_is_refused():
    p = torch.zeros(4, requires_grad=True)
    opt = fusedopt.SGD([p], lr=0.1)
    p.grad = torch.ones(4)
    p.grad.data = torch.ones(5)  # torch's setter checks shape; .data bypasses it
    with pytest.raises(ValueError, match="shape"):
        opt.step()
    assert torch.equal(p.detach(), torch.zeros(4))


STEP_BACKENDS = [b for b in ("reference", "triton", "cpu") if b in fusedopt.available_backends("cpu")]


@pytest.mark.parametrize("backend", STEP_BACKENDS)
def test_many_params_with_gradients_that_come_and_go_match_torch(backend):
    """150 params (past the step buffer's first growth), a random third of them without a
    gradient each step, a second group added midway: every param's step count, moments and
    value equal torch.optim.Adam's, and a checkpoint round trip through torch keeps them."""
    gen = torch.Generator().manual_seed(5)
    shapes = [(int(torch.randint(1, 40, (), generator=gen)),) for _ in range(150)]
    init = [torch.randn(s, generator=gen) for s in shapes]
    steps = [[None if torch.rand((), generator=gen) < 0.33 else torch.randn(s, generator=gen) for s in shapes]
             for _ in range(7)]

    def run(make):
        ps = [p.clone().requires_grad_(True) for p in init]
        opt = make(ps[:100])
        for t, gs in enumerate(steps):
            if t == 3:
                opt.add_param_group({"params": ps[100:], "lr": 0.02})
            for p, g in zip(ps, gs):
                p.grad = None if g is None else g.clone()
            opt.step()
        return ps, opt

    pf, of = run(lambda ps: fusedopt.Adam(ps, lr=0.01, backend=backend))
    pt, ot = run(lambda ps: torch.optim.Adam(ps, lr=0.01, foreach=False))
    assert_same_state(pf, of, pt, ot, TOL[torch.float32], what=f"Adam {backend}")
    counts = [float(of.state[p].get("step", 0.0)) for p in pf]
    assert counts == [float(ot.state[p].get("step", 0.0)) for p in pt]
    assert len(set(counts)) > 2, "the test needs params with different step counts"
    # the step tensors are views of one buffer; a checkpoint still round-trips through torch
    saved = copy.deepcopy(of.state_dict())
    ot2 = torch.optim.Adam([{"params": [p.detach().clone().requires_grad_(True) for p in pt[:100]]},
                            {"params": [p.detach().clone().requires_grad_(True) for p in pt[100:]]}])
    ot2.load_state_dict(saved)
    assert [float(ot2.state[p].get("step", 0.0)) for g in ot2.param_groups for p in g["params"]] == counts


@pytest.mark.parametrize("backend", STEP_BACKENDS)
def test_options_changed_between_steps_take_effect(backend):
    """A momentum schedule that starts at 0 (no buffer yet), weight decay and lr changed in the
    group between steps: the next step follows them, as torch.optim's does."""
    params, grads = make_problem([5, 70], torch.float32, steps=8, seed=31)

    def run(make):
        ps = _clone(params)
        opt = make(ps)
        for t, gs in enumerate(grads):
            if t == 3:
                opt.param_groups[0].update(momentum=0.9, weight_decay=0.01, lr=0.05)
            for p, g in zip(ps, gs):
                p.grad = g.clone()
            opt.step()
        return ps, opt

    pf, of = run(lambda ps: fusedopt.SGD(ps, lr=0.1, momentum=0.0, backend=backend))
    pt, ot = run(lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.0, foreach=False))
    assert_same_state(pf, of, pt, ot, TOL[torch.float32], what=f"SGD {backend}")


@pytest.mark.parametrize("backend", STEP_BACKENDS)
@pytest.mark.parametrize("how", ["replace", "delete", "clear"])
def test_state_reset_between_steps_starts_those_params_afresh(backend, how):
    """Resetting optimizer state between steps (``opt.state[p] = {}``, ``del opt.state[p]``,
    ``opt.state.clear()``) restarts those params at step 1, as torch.optim does."""
    params, grads = make_problem([5, 70, 9], torch.float32, steps=7, seed=37)

    def run(make):
        ps = _clone(params)
        opt = make(ps)
        for t, gs in enumerate(grads):
            if t == 4:
                if how == "replace":
                    opt.state[ps[1]] = {}
                elif how == "delete":
                    del opt.state[ps[1]]
                else:
                    opt.state.clear()
            for p, g in zip(ps, gs):
                p.grad = g.clone()
            opt.step()
        return ps, opt

    pf, of = run(lambda ps: fusedopt.Adam(ps, lr=0.01, backend=backend))
    pt, ot = run(lambda ps: torch.optim.Adam(ps, lr=0.01, foreach=False))
    assert_same_state(pf, of, pt, ot, TOL[torch.float32], what=f"Adam {backend} {how}")
    assert float(of.state[pf[1]]["step"]) == 3.0
    clone = copy.deepcopy(of)  # the state's own type survives copies and pickling
    assert float(clone.state[clone.param_groups[0]["params"][1]]["step"]) == 3.0


@pytest.mark.parametrize("backend", STEP_BACKENDS)
@pytest.mark.parametrize("bad", ["shape", "sparse", "dtype"])
@pytest.mark.parametrize("regroup", [False, True], ids=["same-params", "other-params"])
def test_bad_gradient_in_the_steady_state_is_refused_and_counts_nothing(backend, bad, regroup):
    """After steps that reuse the step plan (Note [step plans]), a gradient that does not match
    its param is still refused, by the kernel's own check on the compiled backends, and the
    refused group keeps its params, states and step counts; also on a step whose set of params
    with gradients changed (the plan is rebuilt)."""
    ps = [torch.randn(6, requires_grad=True), torch.randn(3, 4, requires_grad=True)]
    opt = fusedopt.AdamW(ps, lr=0.1, backend=backend)
    for _ in range(3):
        for p in ps:
            p.grad = torch.randn_like(p)
        opt.step()
    before = copy.deepcopy(opt.state_dict())
    params_before = [p.detach().clone() for p in ps]
    if bad == "shape":
        ps[1].grad.data = torch.ones(4, 3)  # same numel, other shape
    elif bad == "sparse":
        ps[1].grad = torch.eye(3, 4).to_sparse()
    else:
        ps[1].grad.data = torch.ones(3, 4, dtype=torch.float64)
    if regroup:
        ps[0].grad = None
    with pytest.raises((RuntimeError, ValueError), match=bad if bad != "dtype" else "dtype"):
        opt.step()
    for p, q in zip(ps, params_before):
        assert torch.equal(p.detach(), q)
    after = opt.state_dict()
    for i in (0, 1):
        for key, value in before["state"][i].items():
            assert torch.equal(after["state"][i][key], value), (i, key)
    # and the next good step is the 4th
    for p in ps:
        p.grad = torch.ones_like(p)
    opt.step()
    assert [float(opt.state[p]["step"]) for p in ps] == [4.0, 4.0]


@pytest.mark.parametrize("backend", STEP_BACKENDS)
def test_master_weights_with_float32_and_bfloat16_params_in_one_group(backend):
    """master_weights on a group mixing float32 and bfloat16 params: only the 16-bit ones get
    a master copy, each launch takes the master weights of its own params."""
    init = [torch.randn(5), torch.randn(7).bfloat16(), torch.randn(3)]
    grads = [[torch.randn(p.shape).to(p.dtype) for p in init] for _ in range(4)]

    def run(b):
        ps = [p.clone().requires_grad_(True) for p in init]
        opt = fusedopt.Adam(ps, lr=0.01, master_weights=True, backend=b)
        _train(opt, ps, grads)
        return ps, opt

    ps, opt = run(backend)
    ref_ps, ref_opt = run("reference")
    assert "master_param" in opt.state[ps[1]] and "master_param" not in opt.state[ps[0]]
    for p, q in zip(ps, ref_ps):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(opt.state[ps[1]]["master_param"], ref_opt.state[ref_ps[1]]["master_param"],
                               rtol=1e-5, atol=1e-6)


def test_complex_params_are_refused_clearly():
    with pytest.raises(ValueError, match="complex.*view_as_real"):
        fusedopt.Adam([torch.zeros(3, dtype=torch.complex64, requires_grad=True)])


def test_state_dict_that_does_not_match_is_refused_and_changes_nothing():
    p = torch.zeros(4, requires_grad=True)
    q = torch.zeros(5, requires_grad=True)
    opt = fusedopt.Adam([p])
    p.grad = torch.ones(4)
    opt.step()
    saved = opt.state_dict()
    other = fusedopt.Adam([q])
    before = copy.deepcopy(other.state_dict())
    with pytest.raises(ValueError, match="shape"):
        other.load_state_dict(saved)
    assert other.state_dict()["state"] == before["state"]
    with pytest.raises(ValueError, match="number of parameter groups"):
        fusedopt.Adam([{"params": [p]}, {"params": [q]}]).load_state_dict(saved)


def test_unknown_or_unavailable_backend_names_what_is_available():
    p = torch.zeros(3, requires_grad=True)
    with pytest.raises(ValueError, match="'reference'"):
        fusedopt.Adam([p], backend="magic")
    opt = fusedopt.Adam([p], backend="cuda")
    p.grad = torch.ones(3)
    with pytest.raises(RuntimeError, match="Available on cpu: .*reference"):
        opt.step()
    assert torch.equal(p.detach(), torch.zeros(3))


def test_foreach_and_fused_flags_are_accepted_for_drop_in_use():
    p = torch.zeros(3, requires_grad=True)
    fusedopt.Adam([p], foreach=True, fused=False)
    fusedopt.SGD([p], lr=0.1, foreach=False)
    with pytest.raises(ValueError, match="differentiable"):
        fusedopt.Adam([p], differentiable=True)


@pytest.mark.parametrize("name", ["Adam", "SGD", "NAdam", "RMSprop"])
def test_empty_and_zero_size_params(name):
    """A zero-size param beside ordinary ones (and one alone): it keeps zero-size states with
    torch's keys and its step count advances, the others step as torch.optim's do."""
    kw = KW.get(name, {})
    sizes = ([0, 5, 0, 3], [0])
    for shape in sizes:
        params, grads = make_problem(shape, torch.float32, steps=3, seed=13)
        ps, qs = _clone(params), _clone(params)
        ours, theirs = _fused(name, ps, **kw), _torch(name, qs, **kw)
        _train(ours, ps, grads)
        _train(theirs, qs, grads)
        for p, q in zip(ps, qs):
            assert p.shape == q.shape
            torch.testing.assert_close(p.detach(), q.detach())
            assert set(ours.state[p]) == set(theirs.state[q])
            for key, v in theirs.state[q].items():
                torch.testing.assert_close(ours.state[p][key].float(), v.float(), msg=key)
    with pytest.raises(ValueError, match="empty parameter list"):
        fusedopt.Adam([])


@pytest.mark.parametrize("name", ["Adam", "SGD"])
def test_loading_into_a_running_optimizer_and_changing_param_sets(name):
    """The step reuses last step's plan only while nothing changed: a checkpoint loaded into the
    same optimizer, and params that gain or lose grads, are picked up."""
    kw = KW.get(name, {})
    params, grads = make_problem([4, 9, 16], torch.float64, steps=12, seed=15)
    for gs in grads[7:9]:
        gs[0] = None
    pa = _clone(params)
    oa = _fused(name, pa, **kw)
    _train(oa, pa, grads[:4])
    saved = copy.deepcopy(oa.state_dict())
    saved_params = [p.detach().clone() for p in pa]
    _train(oa, pa, grads[4:])  # run on, then go back to the checkpoint in the same optimizer
    with torch.no_grad():
        for p, s in zip(pa, saved_params):
            p.copy_(s)
    oa.load_state_dict(saved)
    _train(oa, pa, grads[4:])
    pt = _clone(params)
    ot = _torch(name, pt, **kw)
    _train(ot, pt, grads)
    assert_same_state(pa, oa, pt, ot, TOL[torch.float64], what=name)
