"""The compiled CPU backend (``fusedopt._C``) against the eager reference.

Every algorithm x option x param dtype x odd sizes, groups of 1,000+ tensors, bf16 states,
master weights, AMP's grad_scale / found_inf, device-mode scalars, Lookahead, layouts,
instruction-set clones and thread counts, and ``torch.library.opcheck`` on every op.
"""
from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import fusedopt
from fusedopt import _ext
from fusedopt.backends import get_backend
from parity import (CASES, MIXED_PRECISION, MIXED_PRECISION_IDS, ODD_SIZES, REPRESENTATIVE, TOL, case_id,
                    make_problem, run_parity, run_steps)

_OK, _WHY = _ext.cpu_status()
if not _OK:
    if os.environ.get("FUSEDOPT_BUILD_EXT", "1") == "0":
        pytest.skip(f"pure-Python install (FUSEDOPT_BUILD_EXT=0): {_WHY}", allow_module_level=True)
    raise RuntimeError(f"the compiled CPU backend did not load: {_WHY}")

DTYPES = [torch.float32, torch.bfloat16, torch.float16]

def _parity(name, kw, dtype, sizes, steps=10, seed=0):
    run_parity("cpu", name, kw, dtype=dtype, sizes=sizes, steps=steps, seed=seed)


def test_available():
    backend = get_backend("cpu", torch.device("cpu"))
    assert backend.name == "cpu"
    assert backend.available(torch.device("cpu")) == (True, "")
    ok, why = backend.available(torch.device("meta"))
    assert not ok and why
    assert "cpu" in fusedopt.available_backends("cpu")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_parity_odd_sizes(case, dtype):
    name, kw = case
    _parity(name, kw, dtype, ODD_SIZES)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", REPRESENTATIVE, ids=case_id)
def test_parity_many_tensors(case, dtype):
    """1,100 small tensors of mixed sizes in one group: many work items, one parallel region."""
    name, kw = case
    gen = torch.Generator().manual_seed(1)
    sizes = torch.randint(1, 300, (1100,), generator=gen).tolist()
    _parity(name, kw, dtype, sizes, steps=10)


@pytest.mark.parametrize("case", REPRESENTATIVE, ids=case_id)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("extra", MIXED_PRECISION, ids=MIXED_PRECISION_IDS)
def test_parity_mixed_precision(case, dtype, extra):
    name, kw = case
    _parity(name, {**kw, **extra}, dtype, [3, 4097, 20000])


def test_parity_bf16_states_float32_params():
    for name, kw in REPRESENTATIVE:
        _parity(name, {**kw, "state_dtype": torch.bfloat16}, torch.float32, [5, 4097])


# --- direct backend calls: grad_scale, found_inf, device-mode scalars ----------------------

def _problem(algo_name, kw, dtype, sizes, seed=0):
    """(algorithm, params, grads, states, scalars, flags) for one direct backend call."""
    opt_cls = getattr(fusedopt, algo_name)
    params, grads = make_problem(sizes, dtype, 2, seed=seed)
    ps = [p.clone().requires_grad_(True) for p in params]
    opt = opt_cls(ps, backend="reference", **kw)
    for p, g in zip(ps, grads[0]):
        p.grad = g.clone()
    opt.step()  # states exist and are non-trivial
    algo = opt.algorithm
    group = opt.param_groups[0]
    states = [[opt.state[p][s] for p in ps] if s in opt.state[ps[0]] else [] for s in algo.SLOTS]
    scalars, flags = algo.step_args(group, 2.0, False)
    return algo, [p.detach() for p in ps], grads[1], states, tuple(scalars), tuple(flags)


def _clone(x):
    return [[t.clone() for t in s] for s in x] if x and isinstance(x[0], list) else [t.clone() for t in x]


def _run_both(algo, ps, gs, states, scalars, flags, **kw):
    ref, cpu = get_backend("reference", torch.device("cpu")), get_backend("cpu", torch.device("cpu"))
    out = []
    for backend in (ref, cpu):
        p, s = _clone(ps), _clone(states)
        backend.step(algo.name, p, gs, s, scalars, flags, **kw)
        out.append((p, s))
    return out


def _assert_close_lists(a, b, tol):
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=tol[0], atol=tol[1])


@pytest.mark.parametrize("case", REPRESENTATIVE, ids=case_id)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_grad_scale_and_found_inf(case, dtype):
    name, kw = case
    algo, ps, gs, states, scalars, flags = _problem(name, kw, dtype, [7, 5000])
    tol = TOL[dtype]
    scale = torch.tensor(0.25)
    (rp, rs), (cp, cs) = _run_both(algo, ps, gs, states, scalars, flags, grad_scale=scale,
                                   found_inf=torch.tensor(0.0))
    _assert_close_lists(cp, rp, tol)
    for a, b in zip(cs, rs):
        _assert_close_lists(a, b, tol)
    # An overflow step writes nothing at all: bitwise unchanged.
    (_, _), (cp, cs) = _run_both(algo, ps, gs, states, scalars, flags, grad_scale=scale,
                                 found_inf=torch.tensor(1.0))
    for x, y in zip(cp, ps):
        assert torch.equal(x, y)
    for a, b in zip(cs, states):
        for x, y in zip(a, b):
            assert torch.equal(x, y)


@pytest.mark.parametrize("case", REPRESENTATIVE, ids=case_id)
def test_device_mode_scalars(case):
    """Scalars as a float32 tensor (capturable / device mode), as the reference reads them."""
    name, kw = case
    algo, ps, gs, states, scalars, flags = _problem(name, kw, torch.float32, [9, 3000])
    (rp, rs), (cp, cs) = _run_both(algo, ps, gs, states, torch.tensor(scalars, dtype=torch.float32), flags)
    _assert_close_lists(cp, rp, TOL[torch.float32])
    for a, b in zip(cs, rs):
        _assert_close_lists(a, b, TOL[torch.float32])


def test_radam_both_branches():
    """rect == 0 with rectify set takes the un-adapted branch (device mode passes rectify=True)."""
    algo, ps, gs, states, scalars, flags = _problem("RAdam", {}, torch.float32, [100, 4097])
    s = list(scalars)
    i = algo.SCALARS.index("rect")
    for rect in (0.0, 0.7):
        s[i] = rect
        f = list(flags)
        f[algo.FLAGS.index("rectify")] = True
        (rp, rs), (cp, cs) = _run_both(algo, ps, gs, states, tuple(s), tuple(f))
        _assert_close_lists(cp, rp, TOL[torch.float32])


# --- Lookahead ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_lookahead_kernel(dtype):
    params, _ = make_problem([0, 1, 3, 4097, 65537], dtype, 0)
    slow = [p.float() + 0.5 for p in params]
    ref, cpu = get_backend("reference", torch.device("cpu")), get_backend("cpu", torch.device("cpu"))
    pr, sr = _clone(params), _clone(slow)
    pc, sc = _clone(params), _clone(slow)
    ref.lookahead(pr, sr, 0.5)
    cpu.lookahead(pc, sc, 0.5)
    _assert_close_lists(pc, pr, TOL[dtype])
    _assert_close_lists(sc, sr, TOL[torch.float32])


def test_lookahead_optimizer():
    params, grads = make_problem([3, 4097], torch.float32, 12)
    out = []
    for backend in ("cpu", "reference"):
        ps = [p.clone().requires_grad_(True) for p in params]
        opt = fusedopt.Lookahead(fusedopt.Adam(ps, backend=backend), k=3, alpha=0.5)
        for step in grads:
            for p, g in zip(ps, step):
                p.grad = g.clone()
            opt.step()
        out.append(ps)
    for a, b in zip(*out):
        torch.testing.assert_close(a, b, rtol=TOL[torch.float32][0], atol=TOL[torch.float32][1])


# --- layouts, threads, instruction sets, errors ------------------------------------------

def test_channels_last_and_strided_params():
    """A dense non-contiguous layout runs in the kernel; a strided view falls back to the reference."""
    cl = torch.randn(4, 6, 5, 5).contiguous(memory_format=torch.channels_last)
    strided = torch.randn(8, 10)[:, ::2]
    out = {}
    for backend in ("cpu", "reference"):
        ps = [cl.clone().requires_grad_(True), torch.zeros(8, 10)[:, ::2].copy_(strided).requires_grad_(True)]
        assert not ps[0].is_contiguous() and not ps[1].is_contiguous()
        opt = fusedopt.Adam(ps, backend=backend, weight_decay=0.01)
        for s in range(3):
            gen = torch.Generator().manual_seed(s)
            ps[0].grad = torch.randn(ps[0].shape, generator=gen).contiguous(memory_format=torch.channels_last)
            ps[1].grad = torch.randn(ps[1].shape, generator=gen)
            opt.step()
        out[backend] = ps
    for a, b in zip(out["cpu"], out["reference"]):
        torch.testing.assert_close(a, b)


def test_thread_count_does_not_change_results():
    params, grads = make_problem([70000, 123, 40000] + [300] * 200, torch.float32, 3)
    results = []
    old = torch.get_num_threads()
    try:
        for threads in (1, max(2, old)):
            torch.set_num_threads(threads)
            ps, _ = run_steps(fusedopt.AdamW, params, grads, {"weight_decay": 0.1}, "cpu")
            results.append(ps)
    finally:
        torch.set_num_threads(old)
    for a, b in zip(*results):
        assert torch.equal(a, b)


_ISA_SCRIPT = textwrap.dedent("""
    import sys, torch, fusedopt
    from fusedopt.backends import get_backend
    sys.path.insert(0, sys.argv[2])
    from parity import REPRESENTATIVE, make_problem, run_steps
    out = {}
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        params, grads = make_problem([5, 4097, 30001], dtype, 3)
        for name, kw in REPRESENTATIVE:
            ps, opt = run_steps(getattr(fusedopt, name), params, grads, kw, "cpu")
            out[(name, str(dtype))] = [p.detach() for p in ps] + [
                t for p in ps for t in opt.state[p].values() if isinstance(t, torch.Tensor)]
    torch.save(out, sys.argv[1])
""")


def test_instruction_set_clones_agree(tmp_path):
    """The baseline x86-64 clone (emulated FMA) and the best clone here agree bitwise."""
    results = []
    for isa in ("baseline", None):
        env = dict(os.environ)
        env.pop("FUSEDOPT_CPU_ISA", None)
        if isa:
            env["FUSEDOPT_CPU_ISA"] = isa
        path = tmp_path / f"{isa}.pt"
        subprocess.run([sys.executable, "-c", _ISA_SCRIPT, str(path), os.path.dirname(__file__)],
                       check=True, env=env, cwd=tmp_path)  # not the source tree: the installed package
        results.append(torch.load(path))
    base, best = results
    assert base.keys() == best.keys()
    for key in base:
        for x, y in zip(base[key], best[key]):
            assert torch.equal(x, y), key


def test_errors_write_nothing():
    p = [torch.randn(10), torch.randn(10)]
    g = [torch.randn(10), torch.randn(10, dtype=torch.float64)]
    m = [torch.zeros(10), torch.zeros(10)]
    before = [t.clone() for t in p]
    op = _ext.ops().adam
    sc = [1.0, 1e-3, 0.0, 0.9, 0.999, 1e-8, 1e-2, 0.03]
    with pytest.raises(RuntimeError, match="grad 1"):
        op(p, g, m, [t.clone() for t in m], [], sc, [False, False, False])
    with pytest.raises(RuntimeError, match="scalars"):
        op(p, [torch.randn(10)] * 2, m, m, [], sc[:-1], [False, False, False])
    with pytest.raises(RuntimeError, match="slot 2"):
        op(p, [torch.randn(10)] * 2, m, m, [], sc, [False, False, True])
    for x, y in zip(p, before):
        assert torch.equal(x, y)


def test_empty_group():
    cpu = get_backend("cpu", torch.device("cpu"))
    cpu.step("adam", [], [], [[], [], []], (1.0, 1e-3, 0.0, 0.9, 0.999, 1e-8, 1e-2, 0.03),
             (False, False, False))
    cpu.lookahead([], [], 0.5)


# --- opcheck --------------------------------------------------------------------------------

def _op_samples():
    def t(n, dtype=torch.float32):
        return torch.randn(n, dtype=dtype)

    def pg(dtype):
        return [t(5, dtype), t(3, dtype)], [t(5, dtype), t(3, dtype)]

    def st(k, dtype=torch.float32):
        return [[torch.rand(5).to(dtype), torch.rand(3).to(dtype)] for _ in range(k)]

    gs, fi = torch.tensor(0.5), torch.tensor(0.0)
    common = [1.0, 1e-2, 0.01]
    yield "sgd", (*pg(torch.float32), *st(1), common + [0.9, 0.0, 0.0], [False, False, True]), {}
    yield "sgd", (*pg(torch.bfloat16), [], common + [0.0, 0.0, 0.0], [True, True, False]), {}
    yield "adagrad", (*pg(torch.float16), *st(1), common + [1e-10], [False, False]), {"grad_scale": gs}
    yield "adadelta", (*pg(torch.float32), *st(2), common + [0.9, 1e-6], [False, True]), {"found_inf": fi}
    yield "rmsprop", (*pg(torch.float32), *st(3), common + [0.99, 1e-8, 0.9], [False, False, True]), {}
    yield "adam", (*pg(torch.float32), *st(3), common + [0.9, 0.999, 1e-8, 0.01, 0.03], [False, True, True]), {}
    bf = pg(torch.bfloat16)
    yield "adam", (*bf, *st(2, torch.bfloat16), [], common + [0.9, 0.999, 1e-8, 0.01, 0.03],
                   [False, True, False]), {"master": [p.float() for p in bf[0]]}
    yield "yogi", (*pg(torch.float32), *st(2), common + [0.9, 0.999, 1e-3, 0.01, 0.03], [False, False]), {}
    yield "radam", (*pg(torch.float16), *st(2), common + [0.9, 0.999, 1e-8, 0.1, 0.03, 0.5], [False, False, True]), {}
    yield "lookahead", ([t(5), t(3)], [t(5), t(3)], 0.5), {}
    yield "lookahead", ([t(5, torch.bfloat16)], [t(5)], 0.5), {}


@pytest.mark.parametrize("name,args,kwargs", list(_op_samples()),
                         ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(_op_samples())])
def test_opcheck(name, args, kwargs):
    torch.library.opcheck(getattr(_ext.ops(), name).default, args, kwargs)


def test_every_op_has_an_opcheck_sample():
    assert {n for n, _, _ in _op_samples()} == set(_ext.OPS)


# --- storage conversions ------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_conversions_match_torch(dtype):
    """Every 16-bit value upcasts exactly; float32 values (specials, subnormals, ties) round
    to nearest even as torch does. Lookahead with alpha 0 stores p = slow; with alpha 1 and
    slow 0 it stores slow = p."""
    cpu = get_backend("cpu", torch.device("cpu"))
    every = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(dtype).clone()
    slow = [torch.zeros(every.numel())]
    p = [every.clone()]
    cpu.lookahead(p, slow, 1.0)
    finite = ~torch.isnan(every.float())
    assert torch.equal(slow[0][finite], every.float()[finite] + 0.0)
    assert torch.isnan(slow[0][~finite]).all()
    gen = torch.Generator().manual_seed(0)
    bits = torch.randint(-2**31, 2**31 - 1, (200000,), generator=gen, dtype=torch.int64).to(torch.int32)
    x = torch.cat([bits.view(torch.float32), every.float(),
                   (every.float().double() + every.float().double().nextafter(torch.tensor(math.inf))
                    .sub(every.float().double()) / 2).float(),  # near ties
                   torch.tensor([0.0, -0.0, 65504.0, 65520.0, 1e-8, -6e-8, 3e38])])
    x = x[~torch.isinf(x)]  # slow + 0 * (p - inf) is NaN, in the reference too
    p = [torch.zeros(x.numel(), dtype=dtype)]
    cpu.lookahead(p, [x.clone()], 0.0)
    want = x.to(dtype)
    same = (p[0].view(torch.int16) == want.view(torch.int16)) | (torch.isnan(want) & torch.isnan(p[0]))
    same |= (want == 0) & (p[0] == 0)  # slow + 0 * (0 - slow) turns -0 into +0
    assert same.all(), x[~same][:10]
