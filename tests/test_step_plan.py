"""Step v2: one launch per (device, dtype, variant) across all param groups, whatever the step
counts; step counters on the device, edited by hand or loaded, are what the next step reads;
skipped steps are visible. Checked against torch.optim on the same problem."""
from __future__ import annotations

import pytest
import torch

import fusedopt
from fusedopt import backends

BACKENDS = [b for b in ("reference", "cpu", "triton") if b in fusedopt.available_backends("cpu")]


class LaunchCounter:
    """Counts backend.step calls (one call is one fused launch) and the tensors in each."""

    def __init__(self, monkeypatch, name):
        self.calls: list[int] = []
        cls = type(backends.get_backend(name, torch.device("cpu")))
        original = cls.step

        def step(backend, algo, flags, params, *args, **kwargs):
            self.calls.append(len(params))
            return original(backend, algo, flags, params, *args, **kwargs)

        monkeypatch.setattr(cls, "step", step)


def _groups(n_groups, per_group, size, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randn(size, generator=gen) for _ in range(per_group)] for _ in range(n_groups)]


def _pair(name, init, group_kw, backend, **kw):
    ours = [[p.clone().requires_grad_(True) for p in ps] for ps in init]
    theirs = [[p.clone().requires_grad_(True) for p in ps] for ps in init]
    opt = getattr(fusedopt, name)([{"params": ps, **gk} for ps, gk in zip(ours, group_kw)], backend=backend, **kw)
    ref = getattr(torch.optim, name)([{"params": ps, **gk} for ps, gk in zip(theirs, group_kw)], foreach=False, **kw)
    return (opt, [p for ps in ours for p in ps]), (ref, [p for ps in theirs for p in ps])


def _assert_match(ours, theirs, what, tol=(2e-5, 2e-5)):
    (opt, ps), (ref, qs) = ours, theirs
    for i, (p, q) in enumerate(zip(ps, qs)):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=tol[0], atol=tol[1], msg=lambda m: f"{what} param {i}: {m}")
        for key, v in ref.state[q].items():
            torch.testing.assert_close(opt.state[p][key].cpu(), v.cpu(), rtol=tol[0], atol=tol[1],
                                       msg=lambda m: f"{what} param {i} state {key}: {m}")


# The interpreted Triton backend pays per tensor and per launch (seconds a case): there, the
# algorithms with a first-step special case (SGD) and without (AdamW) only; the planning is the
# same for every backend and the other algorithms run on the others.
_PLAN_CASES = [(name, backend) for backend in BACKENDS for name in ("AdamW", "RAdam", "SGD", "Adagrad", "NAdam")
               if backend != "triton" or name in ("AdamW", "SGD")]


@pytest.mark.parametrize("scaler", [False, True], ids=["plain", "grad-scaler"])
@pytest.mark.parametrize("name,backend", _PLAN_CASES, ids=lambda v: v)
def test_one_launch_per_step_across_100_groups_with_missing_grads(monkeypatch, backend, scaler, name):
    """100 param groups with different lr and weight decay, 10% of the gradients missing at
    every step (a different 10% each time, so the step counts drift apart): one launch per
    step, and the result of torch.optim with the same groups."""
    # the interpreted Triton backend pays per tensor: one per group there
    n_groups, per_group = 100, 1 if backend == "triton" else 3
    size = 5 if backend == "triton" else 17
    init = _groups(n_groups, per_group, size)
    group_kw = [{"lr": 1e-3 * (1 + g % 7), "weight_decay": 0.01 * (g % 3)} for g in range(n_groups)]
    if name == "SGD":
        group_kw = [{**kw, "momentum": 0.9, "dampening": 0.1 * (g % 2)} for g, kw in enumerate(group_kw)]
    if name == "Adagrad":
        group_kw = [{**kw, "lr_decay": 0.01 * (g % 4)} for g, kw in enumerate(group_kw)]
    ours, theirs = _pair(name, init, group_kw, backend)
    counter = LaunchCounter(monkeypatch, backend)
    gen = torch.Generator().manual_seed(1)
    scalers = {id(o): torch.amp.GradScaler("cpu", init_scale=1024.0) for o in (ours[0], theirs[0])} if scaler else {}
    for sc in scalers.values():
        sc.scale(torch.ones(()))  # creates the scale tensor, as scaling the first loss does
    n = len(ours[1])
    for step in range(6):
        missing = set(torch.randperm(n, generator=gen)[: n // 10].tolist())
        grads = [None if i in missing else torch.randn(size, generator=gen) for i in range(n)]
        if scaler and step == 3:  # an overflow step: skipped by both, counters included
            grads[next(i for i in range(n) if grads[i] is not None)][0] = float("inf")
        for opt, ps in (ours, theirs):
            for i, p in enumerate(ps):
                p.grad = None if grads[i] is None else grads[i] * (1024.0 if scaler else 1.0)
            if scaler:
                scalers[id(opt)].step(opt)
                scalers[id(opt)].update(1024.0)
            else:
                opt.step()
    launches = [n - n // 10] * (5 if scaler else 6)
    assert counter.calls == launches, counter.calls
    _assert_match(ours, theirs, f"{name} [{backend}] 100 groups")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("how", ["fill_", "assign", "load_state_dict"])
@pytest.mark.parametrize("name", ["Adam", "RAdam", "Adagrad", "NAdam"])
def test_step_count_edited_between_steps_is_what_the_next_step_uses(backend, how, name):
    """state['step'] edited in place, replaced by a new tensor, or loaded: the next step's bias
    corrections (RAdam: its branch too) follow the edited count, as torch.optim's do."""
    init = _groups(1, 3, 9, seed=3)
    ours, theirs = _pair(name, init, [{}], backend)
    gen = torch.Generator().manual_seed(4)
    for step in range(5):
        grads = [torch.randn(9, generator=gen) for _ in range(3)]
        if step == 2:  # jump param 0 to step 100 and param 2 back to step 0
            for opt, ps in (ours, theirs):
                for i, value in ((0, 100.0), (2, 0.0)):
                    st = opt.state[ps[i]]
                    if how == "fill_" or opt is theirs[0]:
                        st["step"].fill_(value)
                    elif how == "assign":
                        st["step"] = torch.tensor(value)
                if how == "load_state_dict" and opt is ours[0]:
                    sd = opt.state_dict()
                    sd["state"][0]["step"] = torch.tensor(100.0)
                    sd["state"][2]["step"] = torch.tensor(0.0)
                    opt.load_state_dict(sd)
        for opt, ps in (ours, theirs):
            for p, g in zip(ps, grads):
                p.grad = g.clone()
            opt.step()
    _assert_match(ours, theirs, f"{name} [{backend}] step edited by {how}")
    assert float(ours[0].state[ours[1][0]]["step"]) == 103.0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("how", ["fill_", "assign", "load_state_dict"])
def test_nadam_mu_product_edited_between_steps_is_what_the_next_step_uses(backend, how):
    """NAdam's per-tensor scalar state lives beside the step count: edited in place, replaced
    or loaded, the next step multiplies and reads the edited value, as torch.optim's NAdam."""
    init = _groups(1, 3, 9, seed=5)
    ours, theirs = _pair("NAdam", init, [{}], backend)
    gen = torch.Generator().manual_seed(6)
    for step in range(5):
        grads = [torch.randn(9, generator=gen) for _ in range(3)]
        if step == 2:
            for opt, ps in (ours, theirs):
                st = opt.state[ps[1]]
                if how == "fill_" or opt is theirs[0]:
                    st["mu_product"].fill_(0.5)
                elif how == "assign":
                    st["mu_product"] = torch.tensor(0.5)
                if how == "load_state_dict" and opt is ours[0]:
                    sd = opt.state_dict()
                    sd["state"][1]["mu_product"] = torch.tensor(0.5)
                    opt.load_state_dict(sd)
        for opt, ps in (ours, theirs):
            for p, g in zip(ps, grads):
                p.grad = g.clone()
            opt.step()
    _assert_match(ours, theirs, f"NAdam [{backend}] mu_product edited by {how}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_nadam_overflow_step_moves_neither_count_nor_mu_product(backend):
    """Capturable (the inf flag stays a tensor): an overflow step leaves the step count and
    mu_product as they were; the next good step continues as torch.optim's NAdam, which never
    saw the skipped step."""
    init = _groups(1, 2, 7, seed=7)
    ours, theirs = _pair("NAdam", init, [{}], backend)
    ours[0].param_groups[0]["capturable"] = True
    gen = torch.Generator().manual_seed(8)
    for step in range(4):
        grads = [torch.randn(7, generator=gen) for _ in range(2)]
        for opt, ps in (ours, theirs):
            for p, g in zip(ps, grads):
                p.grad = g.clone()
        if step == 2:
            before = [dict(ours[0].state[p]) for p in ours[1]]
            before = [{k: v.clone() for k, v in st.items()} for st in before]
            ours[0].grad_scale, ours[0].found_inf = torch.ones(()), torch.ones(())
            ours[0].step()
            for p, st in zip(ours[1], before):
                for key, v in st.items():
                    assert torch.equal(ours[0].state[p][key], v), key
            ours[0].found_inf = torch.zeros(())
        for opt, _ in (ours, theirs):
            opt.step()
    _assert_match(ours, theirs, f"NAdam [{backend}] after an overflow step")


@pytest.mark.parametrize("backend", BACKENDS)
def test_step_skipped_is_a_device_flag_and_counters_do_not_advance(backend):
    """Capturable (the inf flag stays a tensor): an overflow step writes nothing, does not
    advance the counters, and says so in ``step_skipped``; a good step says 0."""
    p = torch.randn(10, requires_grad=True)
    opt = fusedopt.Adam([p], lr=0.1, backend=backend, capturable=True)
    assert opt.step_skipped is None
    p.grad = torch.ones(10)
    opt.step()
    assert opt.step_skipped is not None and float(opt.step_skipped) == 0.0
    before = p.detach().clone()
    opt.grad_scale, opt.found_inf = torch.ones(()), torch.ones(())
    opt.step()
    assert float(opt.step_skipped) == 1.0 and torch.equal(p.detach(), before)
    assert float(opt.state[p]["step"]) == 1.0
    opt.found_inf = torch.zeros(())
    opt.step()
    assert float(opt.step_skipped) == 0.0 and float(opt.state[p]["step"]) == 2.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_groups_with_different_variants_split_and_nothing_else_does(monkeypatch, backend):
    """Only compile-time variants split launches: amsgrad on/off gives two launches per step;
    maximize, decoupled decay, lr and betas per group do not."""
    init = _groups(4, 2, 7, seed=5)
    group_kw = [{"amsgrad": False, "maximize": True}, {"amsgrad": True, "betas": (0.8, 0.9)},
                {"amsgrad": False, "decoupled_weight_decay": True, "weight_decay": 0.1}, {"amsgrad": True, "lr": 0.01}]
    ours, theirs = _pair("Adam", init, group_kw, backend)
    counter = LaunchCounter(monkeypatch, backend)
    gen = torch.Generator().manual_seed(6)
    for _ in range(3):
        grads = [torch.randn(7, generator=gen) for _ in range(8)]
        for opt, ps in (ours, theirs):
            for p, g in zip(ps, grads):
                p.grad = g.clone()
            opt.step()
    assert sorted(counter.calls) == [4, 4] * 3
    _assert_match(ours, theirs, f"Adam [{backend}] variants")


def test_sgd_first_momentum_step_per_param_in_one_launch(monkeypatch):
    """A param that gets its first gradient late takes its buffer's first step (buf = g) in the
    same launch as params on later steps."""
    backend = BACKENDS[-1]
    init = _groups(1, 4, 6, seed=8)
    ours, theirs = _pair("SGD", init, [{"momentum": 0.9, "dampening": 0.5}], backend)
    counter = LaunchCounter(monkeypatch, backend)
    gen = torch.Generator().manual_seed(9)
    for step in range(4):
        grads = [torch.randn(6, generator=gen) for _ in range(4)]
        for opt, ps in (ours, theirs):
            for i, (p, g) in enumerate(zip(ps, grads)):
                p.grad = None if (i == 3 and step < 2) else g.clone()
            opt.step()
    assert counter.calls == [3, 3, 4, 4]
    _assert_match(ours, theirs, "SGD late first step")


def test_hyper_table_fills_tensor_cells_in_place_and_rebuilds_only_on_host_changes(monkeypatch):
    """A tensor lr on an accelerator stays a tensor cell of the row: the cached table is filled
    from it at every step (the same table object, so nothing is re-uploaded), and rebuilt only
    when a host value changes. (Here the cell's tensor is on the CPU, standing in for one on a
    GPU: ``hyper_row`` keeps it a tensor as it does for an accelerator's.)"""
    from fusedopt._plan import HyperTables
    algo = fusedopt.Adam.algorithm
    base = type(algo).hyper_row
    monkeypatch.setattr(type(algo), "hyper_row",
                        lambda self, g: (g["lr"],) + base(self, {**g, "lr": 0.0})[1:])
    lr = torch.tensor(0.5)
    groups = [{**algo.defaults, "lr": lr}, {**algo.defaults, "lr": lr * 2, "weight_decay": 0.1}]
    tables = HyperTables()
    first = tables.get(algo, groups, torch.device("cpu"))
    assert first[:, 0].tolist() == [0.5, 1.0] and first[1, 1] == 0.1
    lr.fill_(0.25)
    groups[1]["lr"].fill_(0.125)
    again = tables.get(algo, groups, torch.device("cpu"))
    assert again is first and again[:, 0].tolist() == [0.25, 0.125]
    groups[1]["weight_decay"] = 0.2
    rebuilt = tables.get(algo, groups, torch.device("cpu"))
    assert rebuilt is not first and rebuilt[1, 1] == 0.2 and rebuilt[:, 0].tolist() == [0.25, 0.125]


def test_new_states_are_contiguous_aligned_views_and_checkpoint_at_their_size(tmp_path):
    """Note [contiguous states]: a plan's new states are views of one buffer per slot, each on a
    64-byte boundary; a saved state dict holds that buffer once (not once per view) and loads
    back into torch.optim and fusedopt alike."""
    ps = [torch.randn(n, requires_grad=True) for n in (3, 17, 1000, 0, 64)]
    opt = fusedopt.Adam(ps, lr=0.1, backend=BACKENDS[-1])
    for p in ps:
        p.grad = torch.ones_like(p)
    opt.step()
    for key in ("exp_avg", "exp_avg_sq"):
        states = [opt.state[p][key] for p in ps]
        assert len({t.untyped_storage().data_ptr() for t in states}) == 1
        assert all(t.data_ptr() % 64 == 0 for t in states if t.numel())
    path = tmp_path / "opt.pt"
    torch.save(opt.state_dict(), path)
    state_bytes = sum(t.numel() * 4 for p in ps for t in (opt.state[p]["exp_avg"], opt.state[p]["exp_avg_sq"]))
    assert path.stat().st_size < state_bytes + 64 * 4 * 2 * len(ps) + 20_000
    loaded = torch.load(path)
    ref_ps = [p.detach().clone().requires_grad_(True) for p in ps]
    ref = torch.optim.Adam(ref_ps, lr=0.1)
    ref.load_state_dict(loaded)
    for p, q in zip(ps, ref_ps):
        torch.testing.assert_close(ref.state[q]["exp_avg"], opt.state[p]["exp_avg"])


# -- a reducing algorithm's step in two calls (Note [split steps]) ------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_split_lamb_step_is_the_whole_step_and_reads_the_sums_given(backend):
    """LAMB's two traversals in two calls: with the sums of phase 1 untouched the result is the
    whole step's, bit for bit; the sums are each tensor's sums of p^2 and u^2 (the reference's);
    with other sums (those of p times 4: twice the trust ratio) phase 2 scales the update by the
    trust ratio they make, as the reference does given the same sums."""
    from parity import interface_problem, mutable, run_call, run_split_call as _split
    be = backends.get_backend(backend, torch.device("cpu"))
    ref = backends.get_backend("reference", torch.device("cpu"))
    sizes = (0, 3, 4097, 1, 130) if backend != "triton" else (0, 3, 4097, 1)
    spec, call = interface_problem("LAMB", torch.float32, n=sizes, random_states=True)
    whole = run_call(be, call)
    sums = torch.full((len(sizes), 2), float("nan"), dtype=torch.float64)
    split = _split(be, call, sums)
    for a, b in zip(mutable(split), mutable(whole)):
        assert torch.equal(a, b)
    ref_sums = torch.zeros(len(sizes), 2, dtype=torch.float64)
    _split(ref, call, ref_sums)
    torch.testing.assert_close(sums, ref_sums, rtol=1e-6, atol=0)
    assert sums[0].tolist() == [0.0, 0.0]  # the zero-size tensor
    scale = torch.tensor([4.0, 1.0], dtype=torch.float64)
    got = _split(be, call, torch.zeros(len(sizes), 2, dtype=torch.float64), scale=scale)
    want = _split(ref, call, torch.zeros(len(sizes), 2, dtype=torch.float64), scale=scale)
    for i, (a, b) in enumerate(zip(mutable(got), mutable(want))):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=lambda m: f"tensor {i}: {m}")
    assert not all(torch.equal(a, b) for a, b in zip(got["params"], whole["params"]))


@pytest.mark.parametrize("backend", BACKENDS)
def test_split_step_refusals_change_nothing(backend):
    from parity import clone_call, interface_problem, mutable
    be = backends.get_backend(backend, torch.device("cpu"))
    _, lamb = interface_problem("LAMB", torch.float32, n=(3, 5))
    _, adam = interface_problem("Adam", torch.float32, n=(3, 5))
    good = torch.zeros(2, 2, dtype=torch.float64)
    for call, kw in ((adam, dict(sums=good, phase=1)), (lamb, dict(sums=None, phase=1)),
                     (lamb, dict(sums=good, phase=3)), (lamb, dict(sums=good, phase=0)),
                     (lamb, dict(sums=torch.zeros(3, 2, dtype=torch.float64), phase=1)),
                     (lamb, dict(sums=torch.zeros(2, 2), phase=2))):
        out = clone_call(call)
        before = [t.clone() for t in mutable(out)]
        with pytest.raises((RuntimeError, ValueError), match="sums|phase"):
            be.step(**out, **kw)
        assert all(torch.equal(a, b) for a, b in zip(mutable(out), before)), kw


def _replace_exp_avg(how, st, value):
    """Replace st['exp_avg'] by `value` through one of a dict's mutators."""
    if how == "setitem":
        st["exp_avg"] = value
    elif how == "update":
        st.update(exp_avg=value)
    elif how == "ior":
        st |= {"exp_avg": value}
    elif how == "pop-setdefault":
        st.pop("exp_avg")
        st.setdefault("exp_avg", value)
    elif how == "del-setitem":
        del st["exp_avg"]
        st["exp_avg"] = value


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "triton"])
@pytest.mark.parametrize("how", ["setitem", "update", "ior", "pop-setdefault", "del-setitem", "entry",
                                 "entry-then-edit", "load-then-setitem"])
def test_state_tensor_replaced_between_steps_is_what_the_next_step_uses(backend, how):
    """Note [state versions]: a state tensor replaced between steps by any of a dict's mutators,
    after a checkpoint load too, or a whole entry assigned by hand (and edited later through the
    caller's own reference), is what the next step reads, as torch.optim's; meanwhile a step plan
    over untouched states is reused, without comparing them with the states, step after step."""
    init = _groups(2, 3, 9, seed=5)
    ours, theirs = _pair("Adam", init, [{}, {"lr": 0.01}], backend)
    (opt, ps), (ref, qs) = ours, theirs
    gen = torch.Generator().manual_seed(6)
    edit_at = 4 if how == "entry-then-edit" else 3
    entries = {}
    for step in range(6):
        grads = [torch.randn(9, generator=gen) for _ in range(6)]
        if step == 1 and how == "load-then-setitem":
            opt.load_state_dict(opt.state_dict())
        if step == 3 and how.startswith("entry"):  # the caller's own dict as the whole entry
            for i in (1, 4):
                entries[i] = opt.state[ps[i]] = dict(opt.state[ps[i]])
        if step == edit_at:
            for i in (1, 4):
                value = torch.full((9,), 0.25 * i)
                ref.state[qs[i]]["exp_avg"] = value.clone()
                if how.startswith("entry"):
                    entries[i]["exp_avg"] = value
                elif how in ("setitem", "load-then-setitem"):
                    opt.state[ps[i]]["exp_avg"] = value
                else:
                    _replace_exp_avg(how, opt.state[ps[i]], value)
        for o, params in ((opt, ps), (ref, qs)):
            for p, g in zip(params, grads):
                p.grad = g.clone()
            o.step()
        if step == 1:
            plan = opt._plan
        if step == 2:  # untouched states made by the optimizer (or loaded) are not compared
            assert opt._plan is plan, "a plan over untouched states is reused"
            assert not any(b.watch for b in plan.buckets)
        if step == edit_at:
            assert opt._plan is not plan, "a replaced state rebuilds the plan"
    _assert_match(ours, theirs, f"Adam [{backend}] exp_avg replaced by {how}")
    assert any(b.watch for b in opt._plan.buckets) == how.startswith("entry"), \
        "only an entry assigned by hand is compared before each step"


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "triton"])
def test_group_options_changed_in_place_replaced_or_after_a_refused_step_take_effect(backend, monkeypatch):
    """Note [group snapshots]: the last step's hyperparameter table and layouts serve again only
    while every option is the very immutable object it was; a new lr, betas given as a list and
    changed in place, a CPU tensor lr filled in place, an lr changed before a refused step: each
    next step uses what the group says, as torch.optim does."""
    init = _groups(3, 2, 9, seed=8)
    kws = [{"betas": [0.9, 0.99]}, {"lr": torch.tensor(0.01)}, {"amsgrad": False}]
    ours, theirs = _pair("Adam", init, kws, backend)
    (opt, ps), (ref, qs) = ours, theirs
    rows = []
    algo_cls = type(opt.algorithm)
    original = algo_cls.hyper_row
    monkeypatch.setattr(algo_cls, "hyper_row", lambda self, g: rows.append(1) or original(self, g))
    gen = torch.Generator().manual_seed(9)
    for step in range(9):
        grads = [torch.randn(9, generator=gen) for _ in range(6)]
        for o in (opt, ref):
            g0, g1, g2 = o.param_groups
            if step == 2:
                g0["betas"][1] = 0.9  # in place
            if step == 3:
                g1["lr"].fill_(0.05)  # in place
            if step == 4:
                g2["lr"] = 0.002  # replaced
            if step == 5:  # every option immutable from now on: the snapshots serve
                g0["betas"], g1["lr"] = (0.9, 0.9), 0.05
            if step == 6:
                g2["lr"] = 0.003
        if step == 6:  # refused (a grad of the wrong shape) after an option changed
            for p, g in zip(ps, grads):
                p.grad = g.clone()
            ps[5].grad.data = torch.zeros(3, 3)  # same numel, other shape
            with pytest.raises((RuntimeError, ValueError)):
                opt.step()
        for o, params in ((opt, ps), (ref, qs)):
            for p, g in zip(params, grads):
                p.grad = g.clone()
            o.step()
    _assert_match(ours, theirs, f"Adam [{backend}] options changed")
    rows.clear()  # the same options, all immutable: no row is computed again
    opt.step()
    opt.step()
    assert rows == [], "unchanged immutable options reuse the last step's tables"


def test_grads_read_in_one_pass_keep_each_groups_params_and_grads_in_order():
    """fusedopt._grads.read_grads reads every group's grads in one pass: with grads missing
    (first and last of a group, a whole group, an empty group) each group keeps its params that
    have one, in order, and the grads line up with them; with none missing, every param."""
    from fusedopt._grads import read_grads
    ps = [torch.zeros(2, requires_grad=True) for _ in range(9)]
    for i in (1, 2, 4, 8):
        ps[i].grad = torch.full((2,), float(i))
    groups = [{"params": ps[0:3]}, {"params": []}, {"params": ps[3:4]}, {"params": ps[4:9]}]
    index = {id(p): i for i, p in enumerate(ps)}
    got = read_grads(groups)
    assert [[index[id(p)] for p in w] for w in got.with_grads] == [[1, 2], [], [], [4, 8]]
    assert [index[id(p)] for p in got.flat] == [1, 2, 4, 8]
    assert [int(g[0]) for g in got.grads] == [1, 2, 4, 8]
    for i, p in enumerate(ps):
        p.grad = torch.full((2,), float(i))
    got = read_grads(groups)
    assert [[index[id(p)] for p in w] for w in got.with_grads] == [[0, 1, 2], [], [3], [4, 5, 6, 7, 8]]
    assert [index[id(p)] for p in got.flat] == list(range(9))
    assert [int(g[0]) for g in got.grads] == list(range(9))


def test_group_snapshot_sees_an_option_moved_between_groups():
    """Note [group snapshots]: the same option objects in the same order, but one group's
    entry moved to the next group, is a change."""
    from fusedopt._plan import GroupSnapshot
    first, second, lr = [], [], 0.5
    snap = GroupSnapshot()
    groups = [{"params": first, "lr": lr}, {"params": second}]
    assert not snap.unchanged(groups)
    snap.commit()
    assert snap.unchanged(groups)
    snap.commit()
    assert not snap.unchanged([{"params": first}, {"lr": lr, "params": second}])
