"""The compiled CPU backend (``fusedopt._C``) against the eager reference.

Backend level (``backend.step`` with the interface of ``docs/kernel-interface.md``): every
algorithm x float32/bfloat16/float16 params x bfloat16 states x master weights, odd sizes, 1,100
tensors, several hyperparameter rows and step counts in ONE call (SGD's first step and RAdam's
two branches side by side, every weight-decay mode and maximize), the per-tensor scalars to the
bit, AMP's grad_scale / found_inf, layouts, argument errors that write nothing, instruction-set
clones and thread counts, the state table a step op takes (cached by the backend for the lists
it is given again), and ``torch.library.opcheck`` on every op. Through the optimizer
classes: the parity matrix of ``parity.CASES``, Lookahead.
"""
from __future__ import annotations

import gc
import math
import os
import subprocess
import sys
import textwrap
import weakref

import pytest
import torch

import fusedopt
from fusedopt import _ext
from fusedopt.algorithms import ALGORITHMS
from fusedopt.backends import get_backend
from parity import (CASES, MIXED_PRECISION, MIXED_PRECISION_IDS, MIXED_ROWS, ODD_SIZES, REPRESENTATIVE, TOL,
                    assert_calls_match, assert_owned_grads_steps, case_id, clone_call, exact_scalars_call,
                    interface_problem, make_problem, mutable, random_state, run_call, run_parity, set_counters,
                    set_rows)

_OK, _WHY = _ext.cpu_status()
if not _OK:
    if os.environ.get("FUSEDOPT_BUILD_EXT", "1") == "0":
        pytest.skip(f"pure-Python install (FUSEDOPT_BUILD_EXT=0): {_WHY}", allow_module_level=True)
    raise RuntimeError(f"the compiled CPU backend did not load: {_WHY}")

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
NAMES = [name for name, _ in REPRESENTATIVE]
CPU = torch.device("cpu")


def _cpu():
    return get_backend("cpu", CPU)


def _ref():
    return get_backend("reference", CPU)


# --- building calls -------------------------------------------------------------------------

def _call(name, dtype, n=(3, 4097), state_dtype=torch.float32, master=False, counts=(3.0, 7.0, 1.0), seed=7):
    """interface_problem's call with valid random states of `state_dtype` and, with `master`,
    float32 master weights near the 16-bit params (not their exact values, so that a kernel
    reading the param instead of its master weight shows)."""
    spec, call = interface_problem(name, dtype, n=n, seed=seed, step_counts=counts)
    gen = torch.Generator().manual_seed(seed + 1)
    init = spec.slot_init({**spec.defaults, **dict(REPRESENTATIVE)[name]})
    call["states"] = [[random_state(slot, p.numel(), gen, init[slot]).to(state_dtype) for p in call["params"]]
                      if len(lst) else [] for slot, lst in zip(spec.SLOTS, call["states"])]
    if master:
        call["master"] = [p.float() + 1e-3 * torch.randn(p.numel(), generator=gen) for p in call["params"]]
    return spec, call










def _variants():
    """(param dtype, state dtype, master) of the interface matrix."""
    for dtype in DTYPES:
        for state_dtype in (torch.float32, torch.bfloat16):
            for master in (False, True) if dtype != torch.float32 else (False,):
                yield dtype, state_dtype, master


VARIANTS = list(_variants())
VARIANT_IDS = [f"{str(d)[6:]}-{str(s)[6:]}-states" + ("-master" if m else "") for d, s, m in VARIANTS]


# --- the backend interface against the reference --------------------------------------------

def test_available():
    backend = _cpu()
    assert backend.name == "cpu" and backend.checks_tensors
    assert backend.available(CPU) == (True, "")
    ok, why = backend.available(torch.device("meta"))
    assert not ok and why
    assert "cpu" in fusedopt.available_backends("cpu")


def test_every_algorithm_has_an_op():
    assert set(_ext.STEP_OPS) == set(ALGORITHMS)
    for name in _ext.OPS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"fusedopt::{name}", "CPU"), name
    for name in _ext.STEP_OPS:
        schema = str(getattr(torch.ops.fusedopt, name).default._schema)
        assert ("(Tensor(a!)[] params, Tensor[] grads, Tensor table, Tensor steps, Tensor index, Tensor hyper, "
                "bool[] flags, Tensor? grad_scale=None, Tensor? found_inf=None, Tensor(b!)? sums=None, "
                "int phase=0) -> ()") in schema
    assert ("(Tensor(a!)[] params, Tensor(b!)[] slow, float alpha, Tensor(c!)[]? master=None) -> ()"
            in str(torch.ops.fusedopt.lookahead.default._schema))
    schema = str(torch.ops.fusedopt.state_table.default._schema)
    assert ("(Tensor[] params, Tensor[] s0, Tensor[] s1, Tensor[] s2, Tensor[]? master, "
            "Tensor[]? scales=None, Tensor? rounding=None, Tensor[]? grads=None) -> Tensor") in schema
    assert "(Tensor(a!) table) -> ()" in str(torch.ops.fusedopt.release_table.default._schema)


@pytest.mark.parametrize("dtype,state_dtype,master", VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("name", NAMES)
def test_interface_odd_sizes(name, dtype, state_dtype, master):
    """Odd sizes, two rows and step counts 3, 7, 1 in one call (SGD's first step beside later
    ones, RAdam's un-rectified and rectified branches side by side)."""
    spec, call = _call(name, dtype, n=ODD_SIZES, state_dtype=state_dtype, master=master)
    assert_calls_match(run_call(_cpu(), call), run_call(_ref(), call), f"{name} {dtype}")


def test_interface_covers_both_branches():
    """The step counts of the interface calls above do reach both branches of SGD and RAdam."""
    for name, key, values in (("SGD", "first_step", {0.0, 1.0}), ("RAdam", "rect", None)):
        spec, call = _call(name, torch.float32, n=ODD_SIZES)
        seen = {spec.scalars(call["hyper"][r].tolist(), call["steps"][k].item())._asdict()[key]
                for k, r in call["index"].tolist()}
        if values is None:
            assert 0.0 in seen and any(v > 0 for v in seen), seen
        else:
            assert seen == values


@pytest.mark.parametrize("name", NAMES)
def test_interface_rows_mix_preamble_modes(name):
    """Rows with no decay, coupled decay with maximize, and decoupled decay in one call: the
    weight-decay mode is the tensor's own."""
    spec, call = _call(name, torch.float32, n=(3, 4097, 5, 17, 1000, 33, 2, 70000))
    set_rows(spec, call, MIXED_ROWS)
    assert_calls_match(run_call(_cpu(), call), run_call(_ref(), call), name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", NAMES)
def test_interface_many_tensors(name, dtype):
    """1,100 small tensors over four rows and assorted step counts: many work items, many plans,
    one parallel region."""
    gen = torch.Generator().manual_seed(1)
    sizes = torch.randint(1, 300, (1100,), generator=gen).tolist()
    counts = (1.0, 2.0, 3.0, 7.0, 50.0, 1000.0)
    spec, call = _call(name, dtype, n=sizes, counts=counts)
    set_rows(spec, call, MIXED_ROWS)
    call["index"][:, 1] = torch.randint(0, len(MIXED_ROWS), (len(sizes),), generator=gen)
    assert_calls_match(run_call(_cpu(), call), run_call(_ref(), call), name)


@pytest.mark.parametrize("name", NAMES)
def test_interface_distinct_step_count_per_tensor(name):
    """600 tensors, each with its own step counter and value (more distinct (row, t) pairs than
    the plan cache holds), rows interleaved."""
    n = 600
    spec, call = _call(name, torch.float32, n=[7] * n, counts=(1.0,))
    set_counters(spec, call, torch.arange(1, n + 1).flip(0).tolist())
    assert_calls_match(run_call(_cpu(), call), run_call(_ref(), call), name)





@pytest.mark.parametrize("name", ["SGD", "Adagrad", "Adam", "Yogi", "RAdam"])
def test_per_tensor_scalars_are_the_references_to_the_bit(name):
    """Note [python pow]: the kernels compute each tensor's scalars (bias corrections, RAdam's
    rectification and branch, Adagrad's decayed lr, the decoupled decay factor, SGD's first step)
    in float64 from its row and t as Python does and round them once: with every other operation
    exact, the results are the reference's bit for bit, steps 1 to 60, two rows."""
    spec, call = exact_scalars_call(name)
    got, want = run_call(_cpu(), call), run_call(_ref(), call)
    for i, (a, b) in enumerate(zip(mutable(got), mutable(want))):
        assert torch.equal(a, b), f"{name} tensor {i}: {a} != {b}"


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_grad_scale_and_found_inf(name, dtype):
    """The 0-dim grad_scale multiplies g; found_inf != 0 writes nothing at all (bitwise)."""
    spec, call = _call(name, dtype, n=(7, 5000), master=dtype != torch.float32)
    scale = torch.tensor(0.25)
    got = run_call(_cpu(), call, grad_scale=scale, found_inf=torch.tensor(0.0))
    assert_calls_match(got, run_call(_ref(), call, grad_scale=scale, found_inf=torch.tensor(0.0)), name)
    assert not torch.equal(got["params"][1], call["params"][1])
    # GradScaler's found_inf is one element of shape [1]: accepted as well.
    for found_inf in (torch.tensor(1.0), torch.tensor([float("inf")])):
        skipped = run_call(_cpu(), call, grad_scale=scale, found_inf=found_inf)
        for a, b in zip(mutable(skipped), mutable(call)):
            assert torch.equal(a, b)


def test_empty_call():
    """A call without tensors does nothing (no table, no check of the empty tables fails); one
    whose tensors are all zero-size leaves them, the counters and the table as they were."""
    cpu = _cpu()
    spec, call = _call("Adam", torch.float32, n=())
    steps = call["steps"].clone()
    assert cpu.step(**call) is None and torch.equal(call["steps"], steps)
    cpu.lookahead([], [], 0.5)
    spec, call = _call("Adam", torch.float32, n=(0, 0))
    before = [t.clone() for t in mutable(call)] + [call["steps"].clone(), call["hyper"].clone()]
    cpu.step(**call)
    after = mutable(call) + [call["steps"], call["hyper"]]
    assert all(a.shape == b.shape and torch.equal(a, b) for a, b in zip(after, before))


# --- layouts ----------------------------------------------------------------------------------

def test_channels_last_runs_in_the_kernel_and_strided_falls_back():
    """A dense non-contiguous layout shared by a param and its tensors runs in the kernel; a
    strided view is refused by the op (writing nothing) and the backend falls back to the
    reference."""
    spec, call = _call("Adam", torch.float32, n=(600, 80))
    channels_last = torch.empty(4, 6, 5, 5).contiguous(memory_format=torch.channels_last)

    def shaped(t, i):
        if i == 0:
            return t.reshape(4, 5, 5, 6).permute(0, 3, 1, 2)  # channels_last
        return torch.zeros(8, 20)[:, ::2].copy_(t.reshape(8, 10))  # strided, not dense

    for key in ("params", "grads"):
        call[key] = [shaped(t, i) for i, t in enumerate(call[key])]
    call["states"] = [[shaped(t, i) for i, t in enumerate(slot)] for slot in call["states"]]
    assert call["params"][0].stride() == channels_last.stride() and not call["params"][1].is_contiguous()
    assert_calls_match(run_call(_cpu(), call), run_call(_ref(), call), "layouts")

    only_cl = clone_call(call)  # the channels_last tensor alone: the op itself takes it
    for key in ("params", "grads"):
        only_cl[key] = only_cl[key][:1]
    only_cl["states"] = [slot[:1] for slot in only_cl["states"]]
    only_cl["index"] = only_cl["index"][:1]
    want = run_call(_ref(), only_cl)
    torch.ops.fusedopt.adam(*_op_args(only_cl))
    assert_calls_match(only_cl, want, "channels_last")

    op_call = clone_call(call)
    before = [t.clone() for t in mutable(op_call)]
    with pytest.raises(RuntimeError, match="share one dense layout"):
        torch.ops.fusedopt.adam(*_op_args(op_call))
    for a, b in zip(mutable(op_call), before):
        assert torch.equal(a, b)

    # A param re-pointed to another layout than its states' (same sizes): refused by the step.
    cl_call = clone_call(only_cl)
    args = _op_args(cl_call)
    cl_call["params"][0] = args[0][0] = cl_call["params"][0].contiguous()
    before = [t.clone() for t in mutable(cl_call)]
    with pytest.raises(RuntimeError, match="param 0, its grad and states must be contiguous or share one"):
        torch.ops.fusedopt.adam(*args)
    for a, b in zip(mutable(cl_call), before):
        assert torch.equal(a, b)


# --- argument errors: every refused call writes nothing ---------------------------------------

def _table_args(call):
    """state_table's arguments for a backend call (three state lists)."""
    states = list(call["states"]) + [[]] * (3 - len(call["states"]))
    return call["params"], *states, call["master"]


def _op_args(call):
    """The step op's positional arguments for a backend call, with a state table of its tensors."""
    return [call["params"], call["grads"], torch.ops.fusedopt.state_table(*_table_args(call)), call["steps"],
            call["index"], call["hyper"], list(call["flags"])]


def _bad_calls():
    """(id, algorithm, edit, message): `edit(args, call)` spoils one argument of the step op of a
    three-tensor call (always about its last tensor where it is about one tensor, so that a kernel
    checking as it goes would already have written the others); `table(call, ...)` is a state
    table of the call's tensors with some replaced."""
    def grads(f):
        return lambda a, c: a[1].__setitem__(2, f(a[1][2]))

    def params(f):
        return lambda a, c: a[0].__setitem__(2, f(a[0][2]))

    def index(row):
        def edit(a, c):
            a[4] = a[4].clone()
            a[4][2] = torch.tensor(row)
        return edit

    def table(**changes):
        def edit(a, c):
            args = dict(zip(("params", "s0", "s1", "s2", "master"), _table_args(c)), **changes)
            a[2] = torch.ops.fusedopt.state_table(*[args[k](c) if callable(args[k]) else args[k]
                                                    for k in ("params", "s0", "s1", "s2", "master")])
        return edit

    def numel(t):
        return torch.zeros(t.numel() + 1)

    yield "flags", "Adam", lambda a, c: a.__setitem__(6, []), r"expected 1 flags"
    yield "grad-count", "Adam", lambda a, c: a.__setitem__(1, a[1][:2]), r"3 params but 2 grads"
    yield "table-count", "Adam", table(params=lambda c: c["params"][:2], s0=lambda c: c["states"][0][:2],
                                       s1=lambda c: c["states"][1][:2], s2=lambda c: c["states"][2][:2]), \
        r"the state table describes 2 tensors, for 3 params"
    yield "table-other", "Adam", table(params=lambda c: [torch.zeros(4)] * 3, s0=lambda c: [torch.zeros(4)] * 3,
                                       s1=lambda c: [torch.zeros(4)] * 3, s2=lambda c: [torch.zeros(4)] * 3), \
        r"param 0 has 10 elements but its states in the state table have 4"
    yield "table-int64", "Adam", lambda a, c: a.__setitem__(2, torch.zeros_like(a[2])), \
        r"table must be a state table of fusedopt::state_table .*; got another int64 tensor"
    yield "table-dtype", "Adam", lambda a, c: a.__setitem__(2, a[2].double()), r"table must be a state table"
    yield "slot-required", "Adam", table(s2=[]), r"state slot 2 is required by the flags but the state table has none"
    yield "slot-extra", "Yogi", table(s2=lambda c: [t.clone() for t in c["states"][0]]), \
        r"state slot 2 must be empty for these flags"
    yield "grad-dtype", "Adam", grads(lambda g: g.double()), r"grad 2 must be"
    yield "grad-shape", "Adam", grads(lambda g: g[:-1].clone()), r"grad 2 does not have its param's shape"
    yield "param-dtype", "Adam", params(lambda p: p.double()), r"param 2 is float64 but the state table is for float32"
    yield "param-numel", "Adam", lambda a, c: (params(numel)(a, c), grads(numel)(a, c)), \
        r"param 2 has 11 elements but its states in the state table have 10"
    yield "param-layout", "Adam", lambda a, c: (params(lambda p: p.reshape(5, 2).t())(a, c),
                                                grads(lambda g: g.reshape(5, 2).t())(a, c)), \
        r"param 2, its grad and states must be contiguous or share one dense layout"
    yield "steps-dtype", "Adam", lambda a, c: a.__setitem__(3, a[3].double()), r"steps must be a contiguous 1-D float32"
    yield "steps-dim", "Adam", lambda a, c: a.__setitem__(3, a[3].reshape(1, -1)), r"steps must be"
    yield "steps-strided", "Adam", lambda a, c: a.__setitem__(3, a[3].repeat_interleave(2)[::2]), r"steps must be"
    yield "hyper-dtype", "Adam", lambda a, c: a.__setitem__(5, a[5].float()), r"hyper must be a contiguous float64"
    yield "hyper-cols", "Adam", lambda a, c: a.__setitem__(5, a[5][:, :-1].contiguous()), \
        r"hyper must be .* \[rows, 7\]"
    yield "hyper-strided", "Adam", lambda a, c: a.__setitem__(5, a[5].t().contiguous().t()), r"hyper must be"
    yield "index-dtype", "Adam", lambda a, c: a.__setitem__(4, a[4].int()), r"index must be a contiguous int64"
    yield "index-shape", "Adam", lambda a, c: a.__setitem__(4, a[4][:2].contiguous()), \
        r"index must have one row per param"
    yield "index-cols", "Adam", lambda a, c: a.__setitem__(4, torch.zeros(3, 3, dtype=torch.int64)), r"index must be"
    yield "index-step", "Adam", index([3, 0]), r"index\[2\] has step slot 3, out of range for steps of 3"
    yield "index-row", "Adam", index([0, 2]), r"index\[2\] has hyper row 2, out of range for hyper of 2 rows"
    yield "index-negative", "Adam", index([-1, 0]), r"index\[2\] has step slot -1"
    # The dispatcher refuses a sparse tensor before the op runs.
    yield "grad-sparse", "Adam", grads(lambda g: g.to_sparse()), r"(?i)sparse"


BAD_CALLS = list(_bad_calls())


@pytest.mark.parametrize("what,name,edit,message", BAD_CALLS, ids=[b[0] for b in BAD_CALLS])
def test_errors_write_nothing(what, name, edit, message):
    spec, call = _call(name, torch.float32, n=(10, 10, 10))
    args = _op_args(call)
    args[0], args[1] = list(args[0]), list(args[1])
    edit(args, call)
    before = [t.clone() for t in mutable(call)]
    with pytest.raises(RuntimeError, match=message):
        getattr(torch.ops.fusedopt, spec.name)(*args)
    for a, b in zip(mutable(call), before):
        assert torch.equal(a, b)


# A call of at least this many tensors checks them on every thread first (Note [parallel checks]
# in csrc/include/fusedopt/tensor_info.h).
PARALLEL_CHECKS = 2048


def _spoil(what, args, k):
    """Spoil tensor k's param or grad of a step op's arguments as `what` says."""
    if what == "grad-shape":
        args[1][k] = args[1][k][:-1].clone()
    elif what == "grad-dtype":
        args[1][k] = args[1][k].double()
    elif what == "param-dtype":
        args[0][k] = args[0][k].double()
    elif what == "param-numel":
        args[0][k], args[1][k] = torch.zeros(args[0][k].numel() + 1), torch.zeros(args[0][k].numel() + 1)
    elif what == "layout":
        args[0][k], args[1][k] = args[0][k].reshape(2, 3).t(), args[1][k].reshape(2, 3).t()


@pytest.mark.parametrize("k", [0, 1500, 2999])
@pytest.mark.parametrize("what,message", [
    ("grad-shape", "grad {k} does not have its param's shape"),
    ("grad-dtype", "grad {k} must be a tensor of the param's dtype"),
    ("param-dtype", "param {k} is float64 but the state table is for float32"),
    ("param-numel", "param {k} has 7 elements but its states in the state table have 6"),
    ("layout", "param {k}, its grad and states must be contiguous or share one dense layout"),
])
def test_errors_in_a_call_of_thousands_of_tensors_name_the_first_and_write_nothing(what, message, k):
    """Above PARALLEL_CHECKS tensors the checks run on every thread before anything is written;
    a refusal still names its tensor (the first refused, here one in each thread's share) and
    leaves every tensor as it was; a second refused tensor later does not hide the first."""
    spec, call = _call("Adam", torch.float32, n=(6,) * 3000)
    assert len(call["params"]) > PARALLEL_CHECKS
    args = _op_args(call)
    args[0], args[1] = list(args[0]), list(args[1])
    _spoil(what, args, k)
    if k < 2999:
        _spoil("grad-shape", args, 2999)
    before = [t.clone() for t in mutable(call)]
    with pytest.raises(RuntimeError, match=message.format(k=k)):
        getattr(torch.ops.fusedopt, spec.name)(*args)
    for a, b in zip(mutable(call), before):
        assert torch.equal(a, b)


def _bad_tables():
    """(id, edit, message): `edit` spoils one argument of state_table for a three-tensor Adam call
    (args: params, s0, s1, s2, master)."""
    def last(i, f):
        return lambda a: a[i].__setitem__(2, f(a[i][2]))

    yield "slot-count", lambda a: a.__setitem__(2, a[2][:2]), r"state slot 1 has 2 tensors for 3 params"
    yield "state-dtype", last(2, lambda t: t.half()), r"state slot 1 of param 2"
    yield "state-numel", last(1, lambda t: torch.zeros(t.numel() + 1)), r"state slot 0 of param 2"
    yield "states-mixed", lambda a: a.__setitem__(3, [t.bfloat16() for t in a[3]]), r"state slot 2 of param 0"
    yield "param-dtype", lambda a: a.__setitem__(0, [p.double() for p in a[0]]), r"params must be float32"
    yield "param-dtypes", last(0, lambda p: p.half()), r"all params of a call must share one dtype \(param 2\)"
    yield "master-f32", lambda a: a.__setitem__(4, [p.clone() for p in a[0]]), r"master weights are for"
    yield "master-count", lambda a: a.__setitem__(4, [p.float() for p in a[0][:2]]), r"2 master weights"
    yield "layout", last(1, lambda t: t.reshape(5, 2).t()), r"param 2, its grad and states must be contiguous"


BAD_TABLES = list(_bad_tables())


@pytest.mark.parametrize("what,edit,message", BAD_TABLES, ids=[b[0] for b in BAD_TABLES])
def test_state_table_errors(what, edit, message):
    spec, call = _call("Adam", torch.float32, n=(10, 10, 10))
    args = [list(a) if a is not None else None for a in _table_args(call)]
    if what == "master-count":
        args[0] = [p.bfloat16() for p in args[0]]
    edit(args)
    with pytest.raises(RuntimeError, match=message):
        torch.ops.fusedopt.state_table(*args)


def test_state_table_layout():
    """The header and rows of docs/kernel-interface.md: dtypes, slots, master, device, then per
    tensor its state and master addresses and element count."""
    spec, call = _call("Adam", torch.bfloat16, n=(10, 7), master=True)
    table = torch.ops.fusedopt.state_table(*_table_args(call))
    head, rows = table[0].tolist(), table[1:].tolist()
    assert table.shape == (3, _ext.STATE_TABLE_COLS) and head[1] == 2 and head[4] == 0b111 and head[5] == 1
    for t, row in enumerate(rows):
        assert row[:3] == [call["states"][k][t].data_ptr() for k in range(3)]
        assert row[3] == call["master"][t].data_ptr() and row[4] == call["params"][t].numel() and row[6] == 1
        assert row[8] != 0  # the table's own reference to the param (Note [owned params])
    torch.ops.fusedopt.release_table(table)
    assert table[1:, 8].eq(0).all()
    torch.ops.fusedopt.release_table(table)  # a second release does nothing


def _assert_table_holds_until_released(what):
    """A one-tensor table keeps its param (or, made with grads, its grad) alive, Python object
    included, until release_table."""
    probe = torch.randn(4)
    watch = weakref.ref(probe)
    param = probe if what == "param" else torch.zeros(4)
    grads = [probe] if what == "grad" else None
    probe_table = torch.ops.fusedopt.state_table([param], [torch.zeros(4)], [torch.zeros(4)], [], None, None, None,
                                                 grads)
    del probe, param, grads
    gc.collect()
    assert watch() is not None, f"the table's reference keeps its {what} alive"
    torch.ops.fusedopt.release_table(probe_table)
    gc.collect()
    assert watch() is None


def test_state_table_owns_its_params_until_released():
    """The table keeps each param alive (its own reference) until release_table; a step with an
    empty params list updates the table's params as a step given them explicitly does."""
    spec, call = _call("Adam", torch.float32, n=(5, 300))
    want = run_call(_ref(), call)
    got = clone_call(call)
    table = torch.ops.fusedopt.state_table(*_table_args(got))
    args = [[], got["grads"], table, got["steps"], got["index"], got["hyper"], list(got["flags"])]
    getattr(torch.ops.fusedopt, spec.name)(*args)
    assert_calls_match(got, want, "owned params")
    _assert_table_holds_until_released("param")
    torch.ops.fusedopt.release_table(table)
    with pytest.raises(RuntimeError, match="state table was released"):
        getattr(torch.ops.fusedopt, spec.name)(*args)


def test_state_table_owns_grads_when_asked():
    """Note [owned grads]: a table made with grads keeps each alive until release_table; a step
    with both lists empty reads the table's params and grads, bit for bit as a step given them;
    a table without grads, or released, refuses such a call; a grad that does not fit its param
    is refused when the table is made."""
    spec, call = _call("Adam", torch.float32, n=(5, 300))
    want = clone_call(call)
    getattr(torch.ops.fusedopt, spec.name)(*_op_args(want))
    got = clone_call(call)
    table = torch.ops.fusedopt.state_table(*_table_args(got), None, None, got["grads"])
    assert table.shape == (3, _ext.STATE_TABLE_COLS) and int(table[0, 9]) == 1
    args = [[], [], table, got["steps"], got["index"], got["hyper"], list(got["flags"])]
    getattr(torch.ops.fusedopt, spec.name)(*args)
    for a, b in zip(mutable(got), mutable(want)):
        assert torch.equal(a, b)
    _assert_table_holds_until_released("grad")
    torch.ops.fusedopt.release_table(table)
    with pytest.raises(RuntimeError, match="state table was released"):
        getattr(torch.ops.fusedopt, spec.name)(*args)
    plain = torch.ops.fusedopt.state_table(*_table_args(got))
    with pytest.raises(RuntimeError, match="params and grads are empty but the state table holds no grads"):
        getattr(torch.ops.fusedopt, spec.name)([], [], plain, *args[3:])
    bad = list(got["grads"])
    bad[1] = bad[1][:-1]
    with pytest.raises(RuntimeError, match="grad 1 must be a dense tensor of its param's dtype and shape"):
        torch.ops.fusedopt.state_table(*_table_args(got), None, None, bad)
    with pytest.raises(RuntimeError, match="1 grads for 2 params"):
        torch.ops.fusedopt.state_table(*_table_args(got), None, None, bad[:1])


def test_backend_owns_grads_that_stay_the_same_tensors():
    """Note [owned grads]: from the second call with the very same first grad, the cached table
    owns the grads and a call passes no lists; the first call with other grads drops it (the old
    grads are freed) and the cache does not own grads again; results are those of uncached calls."""
    spec, call = _call("Adam", torch.float32, n=(10, 4097))
    want, got, cache = clone_call(call), clone_call(call), {}
    for step in range(5):
        if step == 3:  # other grad tensors from now on
            old = weakref.ref(got["grads"][1])
            got["grads"] = [g.clone() for g in got["grads"]]
            want["grads"] = [g.clone() for g in want["grads"]]
        _cpu().step(**want)
        _cpu().step(**got, cache=cache)
        entry = cache["state_table"]
        assert (entry.grads is got["grads"]) == (step in (1, 2)), step
        if step == 3:
            gc.collect()
            assert old() is None, "the grads the table owned are let go"
            assert cache["grads_vary"]
        for a, b in zip(mutable(got), mutable(want)):
            assert torch.equal(a, b), step


def test_optimizer_owns_persistent_grads_and_zero_grad_lets_them_go():
    """Grads kept from step to step (zero_grad(set_to_none=False), filled in place) are owned by
    the state table from the second step; zero_grad() (set_to_none) drops them at once (they are
    freed); every step matches torch.optim's AdamW throughout."""
    assert_owned_grads_steps("cpu", "cpu")


def test_owned_params_see_a_param_re_pointed():
    """A param whose storage is replaced between steps (`p.data = ...`) is updated in its new
    storage by a step through a cached table, as torch.optim updates it."""
    ps = [torch.randn(n, requires_grad=True) for n in (10, 300)]
    ref = [p.detach().clone().requires_grad_(True) for p in ps]
    opt, topt = fusedopt.AdamW(ps, backend="cpu"), torch.optim.AdamW(ref)
    for step in range(3):
        for p, r in zip(ps, ref):
            p.grad = torch.full_like(p, 0.1 * (step + 1))
            r.grad = p.grad.clone()
        if step == 2:
            old = ps[1].data
            ps[1].data = torch.randn(300)
            ref[1].data = ps[1].data.clone()
        opt.step()
        topt.step()
    assert not torch.equal(old, ps[1].detach())
    for p, r in zip(ps, ref):
        torch.testing.assert_close(p.detach(), r.detach())


def test_backend_caches_the_state_table_per_lists():
    """The same states and master lists reuse their table (Note [cached state tables]); other
    lists get a new one; results are those of an uncached call."""
    spec, call = _call("Adam", torch.float32, n=(10, 4097))
    want = run_call(_cpu(), call)
    got, cache = clone_call(call), {}
    _cpu().step(**got, cache=cache)
    entry = cache["state_table"]
    assert entry.states is got["states"] and entry.master is got["master"] and entry.params is got["params"]
    assert_calls_match(got, want, "cached")
    got["grads"] = [g.clone() for g in got["grads"]]  # new grads: the same table
    _cpu().step(**got, cache=cache)
    assert cache["state_table"] is entry
    other = clone_call(call)
    _cpu().step(**other, cache=cache)
    assert cache["state_table"] is not entry and cache["state_table"].states is other["states"]
    assert_calls_match(other, want, "rebuilt")


def test_optimizer_keeps_one_table_per_plan():
    ps = [torch.randn(n, requires_grad=True) for n in (10, 300)]
    for p in ps:
        p.grad = torch.randn_like(p)
    opt = fusedopt.AdamW(ps, backend="cpu")
    opt.step()
    bucket = opt._plan.buckets[0]
    entry = bucket.cache["state_table"]
    ps[0].grad = torch.randn_like(ps[0])  # a new grad tensor: the same plan and table
    opt.step()
    assert opt._plan.buckets[0] is bucket and bucket.cache["state_table"] is entry
    ps[0].grad = None  # another set of params: a new plan, a new table
    opt.step()
    assert opt._plan.buckets[0].cache["state_table"].table.shape[0] == 2


@pytest.mark.parametrize("kw,message", [
    ({"grad_scale": torch.tensor(0.5, dtype=torch.float64)}, r"grad_scale must be a 0-dim float32"),
    ({"found_inf": torch.zeros(2)}, r"found_inf must be a 0-dim float32"),
], ids=["grad_scale-dtype", "found_inf-shape"])
def test_scalar_tensor_errors_write_nothing(kw, message):
    spec, call = _call("Adam", torch.float32, n=(10, 10, 10))
    before = [t.clone() for t in mutable(call)]
    with pytest.raises(RuntimeError, match=message):
        torch.ops.fusedopt.adam(*_op_args(call), **kw)
    for a, b in zip(mutable(call), before):
        assert torch.equal(a, b)


def test_sparse_grad_through_the_backend():
    spec, call = _call("Adam", torch.float32, n=(10, 10))
    call["grads"][1] = call["grads"][1].to_sparse()
    with pytest.raises(RuntimeError, match="grad 1 is sparse"):
        _cpu().step(**call)


# --- threads, instruction sets ----------------------------------------------------------------

def test_thread_count_does_not_change_results():
    spec, call = _call("Adam", torch.float32, n=[70000, 123, 40000] + [300] * 200, master=False)
    set_rows(spec, call, MIXED_ROWS)
    results = []
    old = torch.get_num_threads()
    try:
        for threads in (1, max(2, old)):
            torch.set_num_threads(threads)
            results.append(run_call(_cpu(), call))
    finally:
        torch.set_num_threads(old)
    for a, b in zip(mutable(results[0]), mutable(results[1])):
        assert torch.equal(a, b)


_ISA_SCRIPT = textwrap.dedent("""
    import sys, torch
    sys.path.insert(0, sys.argv[2])
    import test_cpu_backend as t
    out = {}
    for name in t.NAMES:
        for dtype, state_dtype, master in t.VARIANTS:
            for sr in (False, True) if dtype != torch.float32 and not master else (False,):
                spec, call = t._call(name, dtype, n=(5, 4097, 30001), state_dtype=state_dtype, master=master)
                t.set_rows(spec, call, t.MIXED_ROWS)
                if sr:  # element indices crossing 2**32 in the first and last tensors
                    call["rounding"] = [(2 ** 63 + 5, (1 << 32) - 4099 * i - 3) for i in range(len(call["params"]))]
                out[(name, str(dtype), str(state_dtype), master, sr)] = t.mutable(t.run_call(t._cpu(), call))
    torch.save(out, sys.argv[1])
""")


def test_instruction_set_clones_agree(tmp_path):
    """The baseline x86-64 clone (emulated FMA) and the best clone here agree bitwise, with
    stochastic rounding too (portable random bits against AVX2 ones: Note [random bits by run])."""
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


# --- opcheck ----------------------------------------------------------------------------------

def _op_samples():
    gs, fi = torch.tensor(0.5), torch.tensor(0.0)
    for name in NAMES:
        for dtype, state_dtype, master, kw in ((torch.float32, torch.float32, False, {}),
                                               (torch.bfloat16, torch.bfloat16, True, {"grad_scale": gs}),
                                               (torch.float16, torch.float32, False, {"found_inf": fi})):
            spec, call = _call(name, dtype, n=(5, 3, 1), state_dtype=state_dtype, master=master)
            yield spec.name, tuple(_op_args(call)), kw
            yield "state_table", _table_args(call), {"grads": call["grads"]} if master else {}
            if spec.REDUCES:  # Note [split steps]: its two traversals as two calls
                for phase in (1, 2):
                    sums = torch.zeros(3, 2, dtype=torch.float64)
                    yield spec.name, tuple(_op_args(call)), {**kw, "sums": sums, "phase": phase}
    released = torch.ops.fusedopt.state_table([torch.randn(5)], [torch.zeros(5)], [], [], None)
    torch.ops.fusedopt.release_table(released)  # opcheck releases copies of it: nothing to drop
    yield "release_table", (released,), {}
    yield "lookahead", ([torch.randn(5), torch.randn(3)], [torch.randn(5), torch.randn(3)], 0.5), {}
    yield "lookahead", ([torch.randn(5).bfloat16()], [torch.randn(5)], 0.5), {}
    yield "lookahead", ([torch.randn(5).bfloat16()], [torch.randn(5)], 0.5, [torch.randn(5)]), {}


OP_SAMPLES = list(_op_samples())


@pytest.mark.parametrize("name,args,kwargs", OP_SAMPLES, ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(OP_SAMPLES)])
def test_opcheck(name, args, kwargs):
    # A state table holds its tensors' addresses, so it differs between the copies of the inputs
    # that test_aot_dispatch_dynamic runs on: every other check.
    utils = (("test_schema", "test_autograd_registration", "test_faketensor")
             if name in ("state_table", "release_table") else None)
    torch.library.opcheck(getattr(_ext.ops(), name).default, args, kwargs,
                          **({"test_utils": utils} if utils else {}))


def test_every_op_has_an_opcheck_sample():
    assert {n for n, _, _ in OP_SAMPLES} == set(_ext.OPS)


# --- Lookahead ----------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_lookahead_kernel(dtype):
    params, _ = make_problem([0, 1, 3, 4097, 65537], dtype, 0)
    slow = [p.float() + 0.5 for p in params]
    pr, sr = [p.clone() for p in params], [s.clone() for s in slow]
    pc, sc = [p.clone() for p in params], [s.clone() for s in slow]
    _ref().lookahead(pr, sr, 0.5)
    _cpu().lookahead(pc, sc, 0.5)
    for a, b in zip(pc + sc, pr + sr):
        torch.testing.assert_close(a, b, rtol=TOL[a.dtype][0], atol=TOL[a.dtype][1])


@pytest.mark.parametrize("pdtype,sdtype", [(torch.bfloat16, torch.float32), (torch.float16, torch.float32),
                                           (torch.bfloat16, torch.bfloat16), (torch.float16, torch.float16)], ids=str)
@pytest.mark.parametrize("with_master", [False, True], ids=["plain", "master"])
def test_lookahead_kernel_16bit(pdtype, sdtype, with_master):
    """16-bit params, slow weights float32 or of the params' dtype, master weights or not: the
    kernel against the reference, bit for bit with float32 slow weights (16-bit ones: the
    reference rounds p - slow to 16 bits, the kernel rounds once, so within the dtype's
    tolerance)."""
    if with_master and sdtype != torch.float32:
        pytest.skip("master weights go with float32 slow weights (refused: see the test below)")
    gen = torch.Generator().manual_seed(5)
    sizes = [0, 1, 3, 4097, 65537]
    master = [torch.randn(n, generator=gen) for n in sizes]
    params = [m.to(pdtype) for m in master]
    slow = [torch.randn(n, generator=gen).to(sdtype) for n in sizes]
    out = []
    for backend in (_ref(), _cpu()):
        p, s, m = [x.clone() for x in params], [x.clone() for x in slow], [x.clone() for x in master]
        backend.lookahead(p, s, 0.3, m if with_master else None)
        out.append((p, s, m))
    (pr, sr, mr), (pc, sc, mc) = out
    for a, b in zip(pc + sc + mc, pr + sr + mr):
        if sdtype == torch.float32:
            assert torch.equal(a, b)
        else:
            torch.testing.assert_close(a, b, rtol=TOL[pdtype][0], atol=TOL[pdtype][1])
    if with_master:  # the param is its master weight, rounded; the master is the slow weight
        for p, s, m in zip(pc, sc, mc):
            assert torch.equal(m, s) and torch.equal(p, m.to(pdtype))


def test_lookahead_refusals_change_nothing():
    cpu = torch.ops.fusedopt
    p = [torch.randn(4).bfloat16(), torch.randn(3).bfloat16()]
    slow = [torch.randn(4), torch.randn(3)]
    before = [t.clone() for t in p + slow]
    cases = [
        (p, slow, 0.5, [torch.randn(4)], "2 params but 1 master weights"),
        (p, slow, 0.5, [torch.randn(4).double(), torch.randn(3)], "master weight 0 must be a contiguous float32"),
        (p, slow, 0.5, [torch.randn(4), torch.randn(5)], "master weight 1 must be"),
        ([q.float() for q in p], slow, 0.5, [torch.randn(4), torch.randn(3)], "master weights go with 16-bit"),
        (p, [s.half() for s in slow], 0.5, None, "slow weights must be float32 or the params' dtype"),
        (p, [slow[0], slow[1].bfloat16()], 0.5, None, "must share one dtype"),
        (p, [slow[0], torch.randn(4)], 0.5, None, "param 1 and its slow weight"),
        ([q.double() for q in p], [s.double() for s in slow], 0.5, None, "params must be float32, bfloat16 or float16"),
    ]
    for params, sl, alpha, master, match in cases:
        with pytest.raises(RuntimeError, match=match):
            cpu.lookahead(params, sl, alpha, master)
    for a, b in zip(p + slow, before):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_conversions_match_torch(dtype):
    """Every 16-bit value upcasts exactly; float32 values (specials, subnormals, ties) round
    to nearest even as torch does. Lookahead with alpha 0 stores p = slow; with alpha 1 and
    slow 0 it stores slow = p."""
    cpu = _cpu()
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


# --- through the optimizer classes -------------------------------------------------------------

def _parity(name, kw, dtype, sizes, steps=10, seed=0):
    run_parity("cpu", name, kw, dtype=dtype, sizes=sizes, steps=steps, seed=seed)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_parity_odd_sizes(case, dtype):
    name, kw = case
    _parity(name, kw, dtype, ODD_SIZES)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", REPRESENTATIVE, ids=case_id)
def test_parity_many_tensors(case, dtype):
    """1,100 small tensors of mixed sizes in one group: many work items, one parallel region.
    (Three steps: what depends on the step count is tested on few tensors, above.)"""
    name, kw = case
    gen = torch.Generator().manual_seed(1)
    sizes = torch.randint(1, 300, (1100,), generator=gen).tolist()
    _parity(name, kw, dtype, sizes, steps=3)


@pytest.mark.parametrize("case", REPRESENTATIVE, ids=case_id)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("extra", MIXED_PRECISION, ids=MIXED_PRECISION_IDS)
def test_parity_mixed_precision(case, dtype, extra):
    name, kw = case
    _parity(name, {**kw, **extra}, dtype, [3, 4097, 20000])


def test_parity_bf16_states_float32_params():
    for name, kw in REPRESENTATIVE:
        _parity(name, {**kw, "state_dtype": torch.bfloat16}, torch.float32, [5, 4097])


def test_parity_param_groups_in_one_call():
    """Param groups with their own lr, weight decay and step counts (a group added later starts
    at step 1) step together, as the reference does."""
    params, grads = make_problem([3, 4097, 50, 7], torch.float32, 6)
    out = []
    for backend in ("cpu", "reference"):
        ps = [p.clone().requires_grad_(True) for p in params]
        opt = fusedopt.AdamW([{"params": ps[:2]}, {"params": ps[2:3], "lr": 0.1, "weight_decay": 0.0}],
                             backend=backend, weight_decay=0.05)
        for s, step_grads in enumerate(grads):
            if s == 3:
                opt.add_param_group({"params": ps[3:], "lr": 0.01, "maximize": True})
            for p, g in zip(ps, step_grads):
                p.grad = g.clone()
            opt.step()
        out.append(ps)
    for a, b in zip(*out):
        torch.testing.assert_close(a, b, rtol=TOL[torch.float32][0], atol=TOL[torch.float32][1])


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
