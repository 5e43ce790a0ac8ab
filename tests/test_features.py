"""Large-model training features on every backend of this machine: clipping, AMP overflow
steps, device-side (capturable) scalars, master weights, bf16 states, accumulation, schedules."""
from __future__ import annotations

import copy
import math

import pytest
import torch

import fusedopt
from parity import REPRESENTATIVE, TOL, assert_same_state, make_problem, run_steps

BACKENDS = [b for b in fusedopt.available_backends("cpu")]
NAMES = [name for name, _ in REPRESENTATIVE]


def _problem(dtype=torch.float32, steps=6, sizes=(5, 130), seed=21):
    return make_problem(list(sizes), dtype, steps, seed=seed)


# -- clipping ----------------------------------------------------------------------------------

@pytest.mark.parametrize("norm_type", [2.0, 1.0, math.inf])
def test_clip_grad_norm_matches_torch(norm_type):
    params, grads = _problem(steps=1)
    a = [p.clone().requires_grad_(True) for p in params]
    b = [p.clone().requires_grad_(True) for p in params]
    for x, y, g in zip(a, b, grads[0]):
        x.grad, y.grad = g.clone(), g.clone()
    na = fusedopt.clip_grad_norm_(a, 0.5, norm_type=norm_type)
    nb = torch.nn.utils.clip_grad_norm_(b, 0.5, norm_type=norm_type)
    torch.testing.assert_close(na, nb)
    for x, y in zip(a, b):
        torch.testing.assert_close(x.grad, y.grad)
    clipped = [x.grad.clone() for x in a]
    fusedopt.clip_grad_norm_(a, 1e9)  # below the limit: the gradients are left as they are
    for x, c in zip(a, clipped):
        torch.testing.assert_close(x.grad, c, rtol=0, atol=0)


def test_clip_grad_norm_error_if_nonfinite():
    p = torch.zeros(3, requires_grad=True)
    p.grad = torch.tensor([1.0, math.inf, 0.0])
    with pytest.raises(RuntimeError, match="non-finite"):
        fusedopt.clip_grad_norm_([p], 1.0, error_if_nonfinite=True)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["Adam", "SGD", "RMSprop"])
def test_max_grad_norm_equals_clip_then_step(name, backend):
    kw = dict(REPRESENTATIVE)[name]
    params, grads = _problem()
    pa = [p.clone().requires_grad_(True) for p in params]
    oa = getattr(fusedopt, name)(pa, backend=backend, max_grad_norm=0.3, **kw)
    pb = [p.clone().requires_grad_(True) for p in params]
    ob = getattr(fusedopt, name)(pb, backend="reference", **kw)
    for gs in grads:
        for x, y, g in zip(pa, pb, gs):
            x.grad, y.grad = g.clone(), g.clone()
        oa.step()
        torch.nn.utils.clip_grad_norm_(pb, 0.3)
        ob.step()
    assert_same_state(pa, oa, pb, ob, (1e-5, 1e-6), what=f"{name} {backend}")
    for x, g in zip(pa, grads[-1]):  # the gradients themselves are not touched
        assert torch.equal(x.grad, g)


def _scaler(init_scale):
    scaler = torch.amp.GradScaler("cpu", init_scale=init_scale, growth_interval=1000)
    scaler.scale(torch.ones(()))  # the scaler creates its scale lazily, on the first scale()
    return scaler


# -- AMP ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("capturable", [False, True])
def test_grad_scaler_overflow_step_changes_nothing_and_scaled_steps_match(name, backend, capturable):
    kw = dict(REPRESENTATIVE)[name]
    params, grads = _problem(steps=4)
    ps = [p.clone().requires_grad_(True) for p in params]
    opt = getattr(fusedopt, name)(ps, backend=backend, capturable=capturable, **kw)
    ref_ps = [p.clone().requires_grad_(True) for p in params]
    ref = getattr(fusedopt, name)(ref_ps, backend="reference", **kw)
    scaler = _scaler(1024.0)
    for t, gs in enumerate(grads):
        scale = scaler.get_scale()
        for p, g in zip(ps, gs):
            p.grad = g * scale
        if t == 2:  # an overflow step: nothing may change, SGD's first momentum step included
            ps[1].grad[3] = math.inf
            before = (copy.deepcopy(opt.state_dict()), [p.detach().clone() for p in ps])
        scaler.step(opt)
        scaler.update()
        if t == 2:
            after = opt.state_dict()
            for p, old in zip(ps, before[1]):
                assert torch.equal(p.detach(), old)
            for i, st in before[0]["state"].items():
                for key, v in st.items():
                    assert torch.equal(after["state"][i][key].cpu(), v.cpu()), (i, key)
            continue
        for p, g in zip(ref_ps, gs):
            p.grad = g.clone()
        ref.step()
    assert_same_state(ps, opt, ref_ps, ref, (1e-5, 1e-6), what=f"{name} {backend}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("capturable", [False, True])
def test_sgd_overflow_on_first_momentum_steps_keeps_the_buffer_uninitialised(backend, capturable):
    """The first momentum step copies g; if it overflows, the next good step is the first."""
    params, grads = _problem(steps=3)
    ps = [p.clone().requires_grad_(True) for p in params]
    opt = fusedopt.SGD(ps, lr=0.1, momentum=0.9, backend=backend, capturable=capturable)
    scaler = _scaler(8.0)
    for _ in range(2):  # two overflow steps in a row
        for p in ps:
            p.grad = torch.full_like(p, math.inf)
        scaler.step(opt)
        scaler.update()
    ref_ps = [p.clone().requires_grad_(True) for p in params]
    ref = torch.optim.SGD(ref_ps, lr=0.1, momentum=0.9)
    for gs in grads:
        for p, q, g in zip(ps, ref_ps, gs):
            p.grad = g * scaler.get_scale()
            q.grad = g.clone()
        scaler.step(opt)
        scaler.update()
        ref.step()
    assert_same_state(ps, opt, ref_ps, ref, (1e-5, 1e-6), what="SGD")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["Adam", "RAdam"])
def test_intermittent_grads_with_device_overflow_keep_each_params_step_count(name, backend):
    """Device mode (capturable: the inf flag is read on the device): A overflows alone on step 1,
    B steps alone on step 2; on step 3 both have made two calls but A has one counted step and B
    two. They must not share a launch (Note [step histories]): each gets its own bias correction."""
    kw = dict(REPRESENTATIVE)[name]
    params, grads = _problem(steps=5, sizes=(7, 9))
    present = [(True, False), (False, True), (True, True), (True, True), (False, True)]
    overflow = [True, False, False, False, False]

    def run(backend, capturable):
        ps = [p.clone().requires_grad_(True) for p in params]
        opt = getattr(fusedopt, name)(ps, backend=backend, capturable=capturable, **kw)
        scaler = _scaler(64.0)
        for t, gs in enumerate(grads):
            for p, g, here in zip(ps, gs, present[t]):
                p.grad = g * scaler.get_scale() if here else None
            if overflow[t]:
                ps[0].grad[2] = math.inf
            scaler.step(opt)
            scaler.update()
        return ps, opt

    ps, opt = run(backend, True)
    ref_ps, ref = run("reference", False)  # host-read flag: an overflow step is skipped outright
    assert [float(opt.state[p]["step"]) for p in ps] == [2.0, 4.0]
    assert_same_state(ps, opt, ref_ps, ref, (1e-5, 1e-6), what=f"{name} {backend}")


# -- device-side scalars (capturable) ----------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", NAMES)
def test_capturable_matches_host_scalars_with_tensor_lr_and_schedule(name, backend):
    kw = dict(REPRESENTATIVE)[name]
    params, grads = _problem(steps=8)

    def run(capturable):
        ps = [p.clone().requires_grad_(True) for p in params]
        lr = kw.get("lr", getattr(fusedopt, name).algorithm.defaults["lr"])
        extra = {k: v for k, v in kw.items() if k != "lr"}
        opt = getattr(fusedopt, name)(ps, lr=torch.tensor(lr) if capturable else lr, backend=backend,
                                      capturable=capturable, **extra)
        sched = fusedopt.schedules.ExponentialDecayLR(opt, decay=0.1)
        for gs in grads:
            for p, g in zip(ps, gs):
                p.grad = g.clone()
            opt.step()
            sched.step()
        return ps, opt

    pa, oa = run(True)
    pb, ob = run(False)
    assert isinstance(oa.param_groups[0]["lr"], torch.Tensor)
    assert_same_state(pa, oa, pb, ob, (1e-5, 1e-6), what=f"{name} {backend}")


# -- master weights and bf16 states ------------------------------------------------------------

# 100 steps through Triton's interpreter take seconds per algorithm: there, two algorithms (its
# master-weight parity with the reference, every algorithm, is in test_triton_backend.py).
@pytest.mark.parametrize("name,backend", [(n, b) for b in BACKENDS for n in NAMES
                                          if b != "triton" or n in ("AdamW", "SGD")], ids=lambda v: v)
def test_master_weights_track_float64_better_than_plain_bf16(name, backend):
    kw = dict(REPRESENTATIVE)[name]
    kw = {**kw, "lr": kw.get("lr", 1e-3) if name not in ("Adadelta",) else 1.0}
    params, grads = _problem(torch.float64, steps=100, sizes=(257,), seed=22)
    p64, _ = run_steps(getattr(fusedopt, name), params, grads, kw, "reference")
    bf = [p.to(torch.bfloat16) for p in params]
    bf_grads = [[g.to(torch.bfloat16) for g in gs] for gs in grads]
    plain, _ = run_steps(getattr(fusedopt, name), bf, bf_grads, kw, backend)
    master, om = run_steps(getattr(fusedopt, name), bf, bf_grads, {**kw, "master_weights": True}, backend)
    st = om.state[master[0]]
    assert st["master_param"].dtype == torch.float32
    err_plain = (plain[0].double() - p64[0]).abs().mean()
    err_master = (master[0].double() - p64[0]).abs().mean()
    assert err_master < err_plain, (float(err_master), float(err_plain))
    # the param is the master, rounded
    assert torch.equal(master[0].detach(), st["master_param"].to(torch.bfloat16))
    # and it is in the state dict, so it survives a checkpoint
    sd = om.state_dict()
    assert "master_param" in sd["state"][0]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_lookahead_moves_the_master_weights(dtype, backend):
    """Lookahead around an optimizer with master weights: the float32 master weights are the fast
    weights, so they follow exactly the float32 params of the same run without master weights
    (same float32 math, same 16-bit grads), and the 16-bit params are them rounded. (Before, the
    slow step moved only the 16-bit params and the next inner step undid it.)"""
    params, grads = _problem(torch.float32, steps=9, sizes=(5, 130, 4097), seed=23)
    low = [p.to(dtype).requires_grad_(True) for p in params]
    full = [p.detach().to(dtype).float().requires_grad_(True) for p in params]
    o_low = fusedopt.Lookahead(fusedopt.AdamW(low, lr=1e-2, master_weights=True, backend=backend), k=2, alpha=0.5)
    o_full = fusedopt.Lookahead(fusedopt.AdamW(full, lr=1e-2, backend=backend), k=2, alpha=0.5)
    for gs in grads:
        for a, b, g in zip(low, full, gs):
            a.grad = g.to(dtype)
            b.grad = g.to(dtype).float()
        o_low.step()
        o_full.step()
    for a, b in zip(low, full):
        master = o_low.optimizer.state[a]["master_param"]
        torch.testing.assert_close(master, b.detach(), rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(o_low.state[a]["slow_param"], o_full.state[b]["slow_param"], rtol=1e-6, atol=1e-7)
        assert torch.equal(a.detach(), master.to(dtype))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", NAMES)
def test_bf16_states_follow_float32_states(name, backend):
    kw = dict(REPRESENTATIVE)[name]
    params, grads = _problem(steps=10)
    pa, oa = run_steps(getattr(fusedopt, name), params, grads, {**kw, "state_dtype": torch.bfloat16}, backend)
    pb, ob = run_steps(getattr(fusedopt, name), params, grads, kw, "reference")
    for key, v in oa.state[pa[1]].items():
        if key not in oa.algorithm.COUNTERS:  # 0-dim float32 counters (step, mu_product)
            assert v.dtype == torch.bfloat16, key
    for a, b in zip(pa, pb):  # bf16 moments: the trajectory stays close, not equal
        torch.testing.assert_close(a, b, rtol=0.05, atol=0.02)
    if backend != "reference":  # bit-for-bit against the reference with the same bf16 states
        pc, oc = run_steps(getattr(fusedopt, name), params, grads, {**kw, "state_dtype": torch.bfloat16}, "reference")
        assert_same_state(pa, oa, pc, oc, TOL[torch.bfloat16], what=f"{name} {backend}")


# -- gradient accumulation ---------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["Adam", "SGD"])
def test_accumulation_steps_fold_one_over_k_into_the_update(name, backend):
    kw = dict(REPRESENTATIVE)[name]
    params, grads = _problem(steps=4)
    k = 4
    pa = [p.clone().requires_grad_(True) for p in params]
    oa = getattr(fusedopt, name)(pa, backend=backend, accumulation_steps=k, **kw)
    for gs in grads:
        for p, g in zip(pa, gs):
            p.grad = g * k  # what summing k micro-batch gradients of mean g gives
        oa.step()
    pb, ob = run_steps(getattr(fusedopt, name), params, grads, kw, "reference")
    assert_same_state(pa, oa, pb, ob, (1e-5, 1e-6), what=name)


# -- schedules ---------------------------------------------------------------------------------

SCHEDULES = [
    ("PiecewiseConstantLR", {"boundaries": [3, 6], "values": [1.0, 0.5, 0.1]},
     lambda t: [1.0, 0.5, 0.1][(t >= 3) + (t >= 6)]),
    ("ExponentialDecayLR", {"decay": 0.2}, lambda t: math.exp(-0.2 * t)),
    ("PolynomialDecayLR", {"a": 0.7, "b": 2.0}, lambda t: (2.0 * t + 1) ** -0.7),
    ("InverseSqrtLR", {}, lambda t: 1 / math.sqrt(t + 1)),
    ("LinearWarmupLR", {"warmup_steps": 4}, lambda t: min(1.0, (t + 1) / 4)),
]


@pytest.mark.parametrize("tensor_lr", [False, True])
@pytest.mark.parametrize("cls,kw,formula", SCHEDULES, ids=[s[0] for s in SCHEDULES])
def test_schedules_follow_their_formulas(cls, kw, formula, tensor_lr):
    p = torch.zeros(2, requires_grad=True)
    lr0 = 0.1
    opt = fusedopt.Adam([p], lr=torch.tensor(lr0) if tensor_lr else lr0, capturable=tensor_lr)
    lr_obj = opt.param_groups[0]["lr"]
    sched = getattr(fusedopt.schedules, cls)(opt, **kw)
    for t in range(10):
        lr = opt.param_groups[0]["lr"]
        assert float(lr) == pytest.approx(lr0 * formula(t), rel=1e-6), t
        if tensor_lr:
            assert lr is lr_obj  # updated in place: a captured graph sees the new value
        p.grad = torch.ones(2)
        opt.step()
        sched.step()
    assert sched.get_last_lr()[0] == pytest.approx(lr0 * formula(10), rel=1e-6)


def test_schedules_compose_with_torch_schedulers():
    p = torch.zeros(2, requires_grad=True)
    opt = fusedopt.SGD([p], lr=1.0)
    seq = torch.optim.lr_scheduler.SequentialLR(
        opt, [fusedopt.schedules.LinearWarmupLR(opt, warmup_steps=3), fusedopt.schedules.InverseSqrtLR(opt)],
        milestones=[3])
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        seq.step()
    assert lrs[:3] == pytest.approx([1 / 3, 2 / 3, 1.0])


# -- CUDA graphs (GPU only) --------------------------------------------------------------------

GPU_BACKENDS = [b for b in ("cuda", "triton") if torch.cuda.is_available() and b in fusedopt.available_backends("cuda")]


@pytest.mark.skipif(not GPU_BACKENDS, reason="needs a CUDA device with the cuda or triton backend")
@pytest.mark.parametrize("backend", GPU_BACKENDS or ["none"])
@pytest.mark.parametrize("name", ["AdamW", "RAdam", "SGD"])
def test_cuda_graph_captures_a_whole_training_step_with_clipping_and_a_schedule(name, backend):
    """Forward, backward, clipping and step captured once and replayed while a scheduler moves
    a tensor lr: the same trajectory as running the same steps eagerly."""
    torch.manual_seed(0)
    xs = [torch.randn(16, 32, device="cuda") for _ in range(8)]
    kw = {"momentum": 0.9} if name == "SGD" else {}

    def build():
        torch.manual_seed(1)
        model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.Tanh(), torch.nn.Linear(64, 1)).cuda()
        opt = getattr(fusedopt, name)(model.parameters(), lr=torch.tensor(0.01, device="cuda"), capturable=True,
                                      max_grad_norm=0.5, backend=backend, **kw)
        sched = fusedopt.schedules.ExponentialDecayLR(opt, decay=0.1)
        return model, opt, sched

    def train_step(model, opt, x):
        loss = model(x).pow(2).mean()
        loss.backward()
        opt.step()

    eager_model, eager_opt, eager_sched = build()
    for x in xs:
        eager_opt.zero_grad(set_to_none=False)
        train_step(eager_model, eager_opt, x)
        eager_sched.step()

    model, opt, sched = build()
    static_x = xs[0].clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up step, eagerly, on a side stream (torch's recipe)
        opt.zero_grad(set_to_none=False)
        train_step(model, opt, static_x)
        sched.step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    opt.zero_grad(set_to_none=False)
    with torch.cuda.graph(graph):
        train_step(model, opt, static_x)
    for x in xs[1:]:
        static_x.copy_(x)
        for p in model.parameters():
            p.grad.zero_()
        graph.replay()
        sched.step()
    torch.cuda.synchronize()
    for a, b in zip(model.parameters(), eager_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
