"""torch.compile: ``step()`` of every optimizer compiles, gives the eager result and does not
recompile from step to step, nor when a tensor lr changes.

The step is wrapped the way torch's docs show for optimizers (``@torch.compile(fullgraph=False)
def fn(): opt.step()``). Most tests compile with ``aot_eager`` (Dynamo and AOTAutograd, no code
generation) behind a counting backend, to stay fast on the CI machine; one compiles with the
default backend (Inductor).
"""
from __future__ import annotations

import pytest
import torch
import torch._dynamo
from torch._dynamo.testing import CompileCounterWithBackend

import fusedopt
from parity import REPRESENTATIVE, TOL

BACKENDS = ["reference"] + (["cpu"] if "cpu" in fusedopt.available_backends("cpu") else [])
STEPS = 5


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _problem(seed=0):
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(5, 3, generator=gen), torch.randn(7, generator=gen), torch.randn(33, generator=gen)]
    grads = [[torch.randn(p.shape, generator=gen) for p in params] for _ in range(STEPS)]
    return params, grads


def _run(name, kw, backend, compiler=None, lr=None, eager_steps=0, lrs=None):
    """``STEPS`` steps; ``compiler`` None runs eagerly, else the torch.compile backend. ``lrs``
    sets the lr (a tensor filled in place, or a float) before each step. Returns params,
    optimizer and the compile counter's graph count after each step."""
    init, grads = _problem()
    ps = [p.clone().requires_grad_(True) for p in init]
    kw = dict(kw)
    if lr is not None:
        kw["lr"] = lr
    opt = getattr(fusedopt, name)(ps, backend=backend, **kw)

    def fn():
        opt.step()

    counter = None
    compiled = fn
    if compiler is not None:
        counter = CompileCounterWithBackend(compiler) if compiler != "inductor" else None
        compiled = torch.compile(fn, fullgraph=False, backend=counter or "inductor")
    graphs = []
    for i, step_grads in enumerate(grads):
        if lrs is not None:
            group = opt.param_groups[0]
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(lrs[i])
            else:
                group["lr"] = lrs[i]
        for p, g in zip(ps, step_grads):
            p.grad = g.clone()
        (fn if i < eager_steps else compiled)()
        graphs.append(None if counter is None else counter.frame_count)
    return ps, opt, graphs


def _assert_same(a, b, what, tol=TOL[torch.float32]):
    (ps_a, opt_a), (ps_b, opt_b) = a, b
    rtol, atol = tol
    for i, (x, y) in enumerate(zip(ps_a, ps_b)):
        torch.testing.assert_close(x.detach(), y.detach(), rtol=rtol, atol=atol, msg=lambda m: f"{what} param {i}: {m}")
        sa, sb = opt_a.state[x], opt_b.state[y]
        assert set(sa) == set(sb), f"{what} param {i}: state keys {sorted(sa)} != {sorted(sb)}"
        for key in sa:
            torch.testing.assert_close(sa[key].cpu(), sb[key].cpu(), rtol=rtol, atol=atol,
                                       msg=lambda m: f"{what} param {i} state {key!r}: {m}")


LRS = [0.01 * (1 + i) / (1 + 0.5 * i) for i in range(STEPS)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", REPRESENTATIVE, ids=[n for n, _ in REPRESENTATIVE])
def test_compiled_step_matches_eager_without_recompiles(case, backend):
    name, kw = case
    lrs = [x * 10 for x in LRS] if name == "Adadelta" else LRS
    eager = _run(name, kw, backend, lr=torch.tensor(lrs[0]), lrs=lrs)
    ps, opt, graphs = _run(name, kw, backend, compiler="aot_eager", lr=torch.tensor(lrs[0]), lrs=lrs)
    _assert_same(eager[:2], (ps, opt), f"{name} [{backend}] compiled vs eager")
    # the lr changed before every step, the step count too: still the graphs of the first step
    assert graphs == [graphs[0]] * STEPS, f"{name} [{backend}]: recompiled, graphs after each step {graphs}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_at_most_one_graph_break_per_step(backend):
    """The step runs eagerly behind at most one graph break (it launches kernels on cached
    tables; nothing in it is worth tracing), so a compiled training step around it is split
    once at most, not at every launch."""
    init, grads = _problem()
    ps = [p.clone().requires_grad_(True) for p in init]
    opt = fusedopt.AdamW(ps, lr=torch.tensor(0.01), max_grad_norm=1.0, backend=backend)
    for p, g in zip(ps, grads[0]):
        p.grad = g.clone()

    def fn():
        opt.step()

    explanation = torch._dynamo.explain(fn)()
    assert len(explanation.break_reasons) <= 1 and explanation.graph_count <= 1, explanation.break_reasons


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_recompile_error_mode(backend):
    """Dynamo's own check: with error_on_recompile, steps 2.. (lr and step count changing) pass."""
    init, grads = _problem()
    ps = [p.clone().requires_grad_(True) for p in init]
    opt = fusedopt.RAdam(ps, lr=torch.tensor(0.01), backend=backend)

    @torch.compile(fullgraph=False, backend="eager")
    def fn():
        opt.step()

    for i, step_grads in enumerate(grads):
        for p, g in zip(ps, step_grads):
            p.grad = g.clone()
        opt.param_groups[0]["lr"].fill_(0.01 / (1 + i))
        with torch._dynamo.config.patch(error_on_recompile=i > 0):
            fn()


def test_compiled_options_clip_accumulation_float_lr_and_mixed_eager_steps():
    """max_grad_norm and accumulation_steps in the compiled step; a float lr (may recompile when
    it changes, as torch does, but gives the eager result); eager steps before compiled ones."""
    kw = {"weight_decay": 0.01, "max_grad_norm": 0.5, "accumulation_steps": 2}
    eager = _run("AdamW", kw, "reference", lrs=LRS)
    compiled = _run("AdamW", kw, "reference", compiler="aot_eager", lrs=LRS, eager_steps=2)
    _assert_same(eager[:2], compiled[:2], "AdamW options, float lr, 2 eager steps then compiled")
    sgd_kw = {"momentum": 0.9, "dampening": 0.1, "max_grad_norm": 0.5}
    eager = _run("SGD", sgd_kw, "reference", lr=torch.tensor(0.05))
    compiled = _run("SGD", sgd_kw, BACKENDS[-1], compiler="aot_eager", lr=torch.tensor(0.05))
    _assert_same(eager[:2], compiled[:2], "SGD momentum, first step compiled")


def test_inductor_with_lr_scheduler():
    """The docs' recipe with the default backend: tensor lr driven by a scheduler, no recompile."""
    init, grads = _problem()
    runs = []
    for compiled in (False, True):
        ps = [p.clone().requires_grad_(True) for p in init]
        opt = fusedopt.Adam(ps, lr=torch.tensor(0.01), weight_decay=0.01, backend=BACKENDS[-1])
        sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.7)

        def fn():
            opt.step()

        step = torch.compile(fn, fullgraph=False) if compiled else fn
        for i, step_grads in enumerate(grads):
            for p, g in zip(ps, step_grads):
                p.grad = g.clone()
            with torch._dynamo.config.patch(error_on_recompile=compiled and i > 0):
                step()
            sched.step()
        runs.append((ps, opt))
    _assert_same(runs[0], runs[1], "Adam, inductor")
