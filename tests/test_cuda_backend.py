"""The CUDA backend (``fusedopt._C_cuda``) against the eager reference.

On a GPU: every algorithm x option x param dtype x odd sizes through the optimizer classes,
1,100-tensor calls and several param groups in one launch per step, bf16 states and master
weights, AMP's grad_scale / found_inf, a tensor lr on the device, and at the backend level
(``docs/kernel-interface.md``): several hyperparameter rows and per-tensor step counts in ONE
launch (SGD's first step and RAdam's two branches side by side, every weight-decay mode), the
per-tensor scalars against the reference's and the CPU kernels' to the bit, tables read at run
time and cached on their full contents, argument errors that write nothing, CUDA graph capture,
Lookahead, layouts, no host synchronisation, and one tensor of 2**31 + 17 elements (64-bit
offsets; needs ~17 GiB free).

Without a GPU (CI): the built library itself — present when the build had nvcc, exporting its
marker symbol, linked only against torch's CPU libraries, the CUDA runtime and the system's,
and registering a CUDA kernel for every op, all with the one step schema, when loaded into a
CPU-only torch.
"""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys

import pytest
import torch

import fusedopt
from fusedopt import _ext, algorithms, backends, lowbit
from parity import (CASES, MIXED_PRECISION, MIXED_PRECISION_IDS, MIXED_ROWS, ODD_SIZES, REPRESENTATIVE, TOL,
                    assert_calls_match, assert_same_state, case_id, clone_call, exact_scalars_call,
                    count_cuda_kernels, cuda_skip_reason, interface_problem, make_problem, mutable, random_state,
                    run_call, run_parity, run_split_call, set_rows)
from lowbit_parity import LOWBIT_VARIANTS, assert_lowbit_calls_match, exact_sgd_call, lowbit_call, lowbit_variant_id

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
NAMES = [name for name, _ in REPRESENTATIVE]


_WHY_NOT = cuda_skip_reason()
cuda = pytest.mark.skipif(bool(_WHY_NOT), reason=_WHY_NOT or "-")


# -- the built library, without a GPU ----------------------------------------------------------

def _cuda_library():
    """Path of the installed fusedopt._C_cuda, or None."""
    pkg = os.path.dirname(fusedopt.__file__)
    found = sorted(glob.glob(os.path.join(pkg, "_C_cuda*.so")))
    return found[0] if found else None


def _library_or_skip():
    lib = _cuda_library()
    if lib is not None:
        return lib
    if os.environ.get("FUSEDOPT_BUILD_EXT", "1") == "0" or os.environ.get("FUSEDOPT_BUILD_CUDA") == "0":
        pytest.skip("built without the CUDA extension (FUSEDOPT_BUILD_EXT=0 or FUSEDOPT_BUILD_CUDA=0)")
    if shutil.which("nvcc") is None and not os.environ.get("FUSEDOPT_NVCC") and not os.environ.get("CUDA_HOME"):
        pytest.skip("no nvcc here, so the build had none: fusedopt._C_cuda was not built")
    pytest.fail("nvcc is available but the installed fusedopt has no _C_cuda library: "
                f"{os.path.dirname(fusedopt.__file__)}")


def test_cuda_library_is_built_and_exports_its_marker():
    lib = _library_or_skip()
    if shutil.which("nm") is None:
        pytest.skip("nm is not installed")
    out = subprocess.run(["nm", "-D", "--defined-only", lib], capture_output=True, text=True, check=True).stdout
    exported = {line.split()[-1] for line in out.splitlines() if line.split()[1:2] == ["T"]}
    # -fvisibility=hidden: the marker is the only exported function of our own.
    assert "fusedopt_cuda_info" in exported, exported


def test_cuda_library_links_only_expected_libraries():
    lib = _library_or_skip()
    if shutil.which("readelf") is None:
        pytest.skip("readelf is not installed")
    out = subprocess.run(["readelf", "-d", lib], capture_output=True, text=True, check=True).stdout
    needed = {line.split("[")[1].split("]")[0] for line in out.splitlines() if "(NEEDED)" in line}
    assert {"libtorch_cpu.so", "libc10.so"} <= needed, needed
    allowed = {"libtorch_cpu.so", "libc10.so", "libstdc++.so.6", "libgcc_s.so.1", "libc.so.6", "libm.so.6",
               "libdl.so.2", "libpthread.so.0", "librt.so.1", "ld-linux-x86-64.so.2", "ld-linux-aarch64.so.1"}
    # The CUDA runtime is linked dynamically (setup.py, Note [shared cudart]): libcudart.so.<major>
    # is the one torch's CUDA wheels ship and have loaded before this library is; a static one
    # binds glibc 2.34 symbol versions and would keep the wheel off manylinux_2_28. No CUDA
    # build of torch, no libpython (one binary for every torch/Python).
    cudart = {lib for lib in needed if lib.startswith("libcudart.so.")}
    assert len(cudart) == 1, needed
    assert needed - cudart <= allowed, f"unexpected libraries: {sorted(needed - cudart - allowed)}"


_LOAD_SCRIPT = r'''
import ctypes, sys
import torch
from fusedopt import _ext
assert _ext.cpu_status()[0], _ext.cpu_status()
torch.ops.load_library(sys.argv[1])
lib = ctypes.CDLL(sys.argv[1])
lib.fusedopt_cuda_info.restype = ctypes.c_char_p
info = lib.fusedopt_cuda_info().decode()
print(info)
has = torch._C._dispatch_has_kernel_for_dispatch_key
for name in _ext.OPS:
    if name != "release_table":  # takes a state table, host memory whatever the device
        assert has(f"fusedopt::{name}", "CUDA"), name
    assert has(f"fusedopt::{name}", "CPU"), name
for name in _ext.STEP_OPS:
    assert f" {name}" in info, (name, info)
    packet = getattr(torch.ops.fusedopt, name)
    assert packet.overloads() == ["default"], packet.overloads()
    schema = str(packet.default._schema)
    assert "Tensor steps, Tensor index, Tensor hyper, bool[] flags" in schema, schema
print("ok")
'''


def test_cuda_library_registers_every_op_without_a_gpu():
    """Loading the library into a CPU-only torch registers its kernels (nothing touches a GPU)."""
    lib = _library_or_skip()
    if not _ext.cpu_status()[0]:
        pytest.skip(f"the CPU extension is not loaded: {_ext.cpu_status()[1]}")
    res = subprocess.run([sys.executable, "-c", _LOAD_SCRIPT, lib], capture_output=True, text=True, timeout=300,
                         cwd=os.path.dirname(lib))  # not the source tree: the installed package
    assert res.returncode == 0, res.stderr[-3000:]
    assert "fusedopt CUDA kernels" in res.stdout and res.stdout.strip().endswith("ok"), res.stdout


def test_unavailable_reasons():
    backend = backends._load("cuda")[0]
    ok, why = backend.available(torch.device("cpu"))
    assert not ok and "CUDA tensors only" in why
    if not torch.cuda.is_available():
        ok, why = backend.available(torch.device("cuda"))
        assert not ok and why


# -- helpers -----------------------------------------------------------------------------------

def _cu():
    return backends.get_backend("cuda", torch.device("cuda"))


def _ref():
    return backends.get_backend("reference", torch.device("cuda"))


# The preamble's per-row variety: every weight-decay mode and maximize, side by side in one call.






def _call(name, dtype, n=(3, 4097, 20011), state_dtype=torch.float32, master=False, counts=(3.0, 7.0, 1.0),
          seed=7, rows=MIXED_ROWS):
    """A backend call on the GPU (interface_problem's), with valid random states of
    `state_dtype`, float32 master weights near the params with `master`, and the tensors spread
    over `rows`."""
    spec, call = interface_problem(name, dtype, n=n, seed=seed, device="cuda", step_counts=counts)
    gen = torch.Generator().manual_seed(seed + 1)
    init = spec.slot_init({**spec.defaults, **dict(REPRESENTATIVE)[name]})
    call["states"] = [[random_state(slot, p.numel(), gen, init[slot]).to("cuda", state_dtype) for p in call["params"]]
                      if len(lst) else [] for slot, lst in zip(spec.SLOTS, call["states"])]
    if master:
        call["master"] = [(p.float().cpu() + 1e-3 * torch.randn(p.numel(), generator=gen)).cuda()
                          for p in call["params"]]
    if rows:
        set_rows(spec, call, rows)
    return spec, call





def _assert_unchanged(call, before):
    for a, b in zip(mutable(call), before):
        assert torch.equal(a, b)


VARIANTS = [(d, s, m) for d in DTYPES for s in (torch.float32, torch.bfloat16)
            for m in ((False, True) if d != torch.float32 else (False,))]
VARIANT_IDS = [f"{str(d)[6:]}-{str(s)[6:]}-states" + ("-master" if m else "") for d, s, m in VARIANTS]


# -- GPU: parity through the optimizer classes -----------------------------------------------

@cuda
def test_available():
    backend = _cu()
    assert backend.name == "cuda" and backend.checks_tensors
    assert backend.available(torch.device("cuda")) == (True, "")
    assert "cuda" in fusedopt.available_backends("cuda")
    assert backends.get_backend("auto", torch.device("cuda")).name == "cuda"


@cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_parity_odd_sizes(case, dtype):
    name, kw = case
    run_parity("cuda", name, kw, dtype, sizes=ODD_SIZES, steps=10, device="cuda")


@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", REPRESENTATIVE, ids=case_id)
def test_parity_many_tensors(case, dtype):
    """1,100 tensors of mixed sizes in one group (far beyond a kernel-argument table)."""
    name, kw = case
    sizes = torch.randint(1, 5000, (1100,), generator=torch.Generator().manual_seed(1)).tolist()
    run_parity("cuda", name, kw, dtype, sizes=sizes, steps=5, device="cuda")


@cuda
@pytest.mark.parametrize("case", REPRESENTATIVE, ids=case_id)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("extra", MIXED_PRECISION, ids=MIXED_PRECISION_IDS)
def test_parity_mixed_precision(case, dtype, extra):
    name, kw = case
    run_parity("cuda", name, {**kw, **extra}, dtype, sizes=(3, 4097, 20000), steps=8, device="cuda")


@cuda
def test_parity_bf16_states_float32_params():
    for name, kw in REPRESENTATIVE:
        run_parity("cuda", name, {**kw, "state_dtype": torch.bfloat16}, torch.float32, sizes=(5, 4097),
                   device="cuda")


@cuda
def test_one_launch_per_step():
    sizes = torch.randint(1, 5000, (1100,), generator=torch.Generator().manual_seed(3)).tolist()
    params, grads = make_problem(sizes, torch.float32, 4, device="cuda", seed=4)
    ps = [p.clone().requires_grad_(True) for p in params]
    opt = fusedopt.Adam(ps, backend="cuda", amsgrad=True)

    def steps():
        for step_grads in grads:
            for p, g in zip(ps, step_grads):
                p.grad = g
            opt.step()

    assert count_cuda_kernels(steps) == len(grads)


@cuda
def test_owned_grads_on_the_gpu_match_torch_and_zero_grad_lets_them_go():
    """Note [owned grads] on the GPU: grads filled in place step after step are owned by the CUDA
    step's state table from the second step; zero_grad() drops them; every step matches
    torch.optim's AdamW."""
    assert_owned_grads_steps("cuda", "cuda")


@cuda
def test_param_groups_share_one_launch_per_step():
    """Groups with their own lr, weight decay, maximize and step counts (one added two steps
    later starts at step 1) are one launch per step, and match the reference."""
    params, grads = make_problem([3, 4097, 50, 7, 20011], torch.float32, 6, device="cuda", seed=8)
    out = []
    for backend in ("cuda", "reference"):
        ps = [p.clone().requires_grad_(True) for p in params]
        opt = fusedopt.AdamW([{"params": ps[:2]}, {"params": ps[2:3], "lr": 0.1, "weight_decay": 0.0},
                              {"params": ps[3:4], "lr": 0.02, "maximize": True}],
                             backend=backend, weight_decay=0.05)
        launches = []
        for s, step_grads in enumerate(grads):
            if s == 2:
                opt.add_param_group({"params": ps[4:], "lr": 0.01})
            for p, g in zip(ps, step_grads):
                p.grad = g.clone()
            if backend == "cuda":
                launches.append(count_cuda_kernels(opt.step))
            else:
                opt.step()
        assert backend == "reference" or launches == [1] * len(grads)
        out.append((ps, opt))
    (pc, oc), (pr, orf) = out
    assert_same_state(pc, oc, pr, orf, TOL[torch.float32], what="param groups")


@cuda
@pytest.mark.parametrize("name", ["AdamW", "RAdam", "SGD"])
def test_tensor_lr_and_amp_step_never_synchronises_and_matches(name):
    """A tensor lr on the GPU and an AMP scale and inf flag on the GPU: the rows are filled on the
    device, the counters advance there, the kernels read both, and nothing synchronises; the
    result equals a float-lr optimizer's on unscaled gradients (RAdam crosses into its rectified
    branch at step 6, SGD's buffer starts with its first step)."""
    kw = {"momentum": 0.9} if name == "SGD" else {}
    gen = torch.Generator().manual_seed(41)
    init = [torch.randn(n, generator=gen) for n in (3, 4097, 65537)]
    grads = [[torch.randn(n, generator=gen) for n in (3, 4097, 65537)] for _ in range(7)]
    ps = [p.cuda().requires_grad_(True) for p in init]
    opt = getattr(fusedopt, name)(ps, lr=torch.tensor(0.01, device="cuda"), backend="cuda", **kw)
    opt.grad_scale = torch.tensor(4.0, device="cuda")
    opt.found_inf = torch.zeros((), device="cuda")
    ref_ps = [p.cuda().requires_grad_(True) for p in init]
    ref = getattr(fusedopt, name)(ref_ps, lr=0.01, backend="cuda", **kw)
    for t, gs in enumerate(grads):
        for p, q, g in zip(ps, ref_ps, gs):
            p.grad = (g * 4.0).cuda()
            q.grad = g.cuda()
        torch.cuda.synchronize()
        if t > 0:  # the first step creates the state and builds the plan
            torch.cuda.set_sync_debug_mode("error")
        try:
            opt.step()
        finally:
            torch.cuda.set_sync_debug_mode(0)
        ref.step()
    torch.cuda.synchronize()
    assert_same_state(ps, opt, ref_ps, ref, (1e-5, 1e-6), what=f"{name} tensor lr")


@cuda
def test_transposed_params_and_non_dense_fallback():
    base = torch.randn(64, 33, device="cuda")
    for make in (lambda t: t.t(), lambda t: t[:, ::2]):  # dense transposed; non-dense (reference)
        out = []
        for backend in ("cuda", "reference"):
            p = make(base.clone()).requires_grad_(True)
            opt = fusedopt.Adam([p], backend=backend)
            for s in range(3):
                p.grad = make(torch.full_like(base, 0.1 * (s + 1)))
                opt.step()
            out.append((p, opt))
        (pc, oc), (pr, orf) = out
        assert_same_state([pc], oc, [pr], orf, TOL[torch.float32], what="layout")


# -- GPU: the backend interface directly -----------------------------------------------------

@cuda
@pytest.mark.parametrize("dtype,state_dtype,master", VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("name", NAMES)
def test_interface_matches_reference(name, dtype, state_dtype, master):
    """Odd sizes over four rows (every weight-decay mode, maximize) and step counts 3, 7, 1 in
    one launch: SGD's first step beside later ones, RAdam's two branches side by side."""
    spec, call = _call(name, dtype, n=ODD_SIZES, state_dtype=state_dtype, master=master)
    assert count_cuda_kernels(lambda: run_call(_cu(), call)) == 1
    assert_calls_match(run_call(_cu(), call), run_call(_ref(), call), f"{name} {dtype}")


@cuda
@pytest.mark.skipif(not _ext.cpu_status()[0], reason="the compiled CPU backend is not loaded")
@pytest.mark.parametrize("dtype,state_dtype,master", VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("name", NAMES)
def test_bitwise_equal_to_the_cpu_kernels(name, dtype, state_dtype, master):
    """The CUDA and CPU kernels compile the same header, in float32 with the same explicit FMAs
    and IEEE division and square root, and derive the same per-tensor scalars from the rows and
    step counts (float64, rounded once; Note [python pow]), so they agree to the bit."""
    spec, call = _call(name, dtype, state_dtype=state_dtype, master=master,
                       counts=(1.0, 2.0, 3.0, 6.0, 7.0, 100.0), n=(3, 4097, 20011, 5, 1, 65537))
    got = run_call(_cu(), call)
    want = run_call(backends.get_backend("cpu", torch.device("cpu")), clone_call(call, "cpu"))
    for i, (a, b) in enumerate(zip(mutable(got), mutable(want))):
        assert torch.equal(a.cpu(), b), (name, i, (a.cpu().float() - b.float()).abs().max())





@cuda
@pytest.mark.parametrize("name", ["SGD", "Adagrad", "Adam", "Yogi", "RAdam"])
def test_per_tensor_scalars_are_the_references(name):
    """Each block derives its tensor's scalars on the device from its row and step count; with
    every other operation exact, the results are the reference's bit for bit, steps 1 to 60.
    (CUDA's float64 pow is within 2 ulp of libm's, which moves a float32 scalar only when it
    lies within 2 ulp of a rounding boundary: not for these.)"""
    spec, call = exact_scalars_call(name, device="cuda")
    got, want = run_call(_cu(), call), run_call(_ref(), call)
    for i, (a, b) in enumerate(zip(mutable(got), mutable(want))):
        assert torch.equal(a, b), f"{name} tensor {i}: {a} != {b}"


@cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", NAMES)
def test_amp_grad_scale_and_found_inf(name, dtype):
    """The scale tensor multiplies g on the device; found_inf != 0 (0-dim, or GradScaler's [1])
    writes nothing at all."""
    spec, call = _call(name, dtype, master=dtype != torch.float32)
    scale = torch.tensor(0.25, device="cuda")
    zero = torch.zeros((), device="cuda")
    got = run_call(_cu(), call, grad_scale=scale, found_inf=zero)
    assert_calls_match(got, run_call(_ref(), call, grad_scale=scale, found_inf=zero), name)
    assert not torch.equal(got["params"][1], call["params"][1])
    for found_inf in (torch.ones((), device="cuda"), torch.full((1,), float("inf"), device="cuda")):
        _assert_unchanged(run_call(_cu(), call, grad_scale=scale, found_inf=found_inf), mutable(call))


@cuda
def test_tables_are_read_at_run_time():
    """The kernels read steps and hyper when they run: new values in the same tensors (the
    same params, so the cached device table) give the new update."""
    spec, call = _call("RAdam", torch.float32, counts=(3.0,), rows=[{}])
    cu, ref = _cu(), _ref()
    cu.step(**call)  # the table is cached now
    call["steps"].fill_(9.0)  # the rectified branch
    call["hyper"][0, spec.HYPER.index("lr")] = 0.5
    call["hyper"][0, spec.HYPER.index("maximize")] = 1.0
    want = run_call(ref, call)
    cu.step(**call)
    assert_calls_match(call, want, "new values")


@cuda
def test_table_cache_keys_on_each_tensors_slot_and_row():
    """The same tensors with another index (rows, then step slots, swapped) are another table."""
    spec, call = _call("Adam", torch.float32, n=(4097, 4097), counts=(1.0, 50.0),
                       rows=[{}, {"lr": 0.1, "weight_decay": 0.0}])
    cu, ref = _cu(), _ref()
    for column in (None, 1, 0):
        if column is not None:
            call["index"] = call["index"].clone()
            call["index"][:, column] = call["index"][:, column].flip(0)
        want = run_call(ref, call)
        cu.step(**call)
        assert_calls_match(call, want, f"index column {column} swapped")


@cuda
def test_unaligned_tensors_take_the_element_path():
    """Views at odd offsets cannot use 16-byte accesses; results are the same."""
    spec, call = _call("Adam", torch.float32, n=(5000, 9000))
    want = run_call(_ref(), call)
    got = clone_call(call)
    got["params"] = [torch.cat([torch.zeros(1, device="cuda"), p])[1:] for p in got["params"]]  # 4-byte offset
    assert got["params"][0].data_ptr() % 16 != 0
    _cu().step(**got)
    assert_calls_match(got, want, "unaligned")


def _table_args(call):
    return call["params"], *call["states"], call["master"]


def _op_args(call):
    """The step op's arguments, with a state table of the call's tensors."""
    return [call["params"], call["grads"], torch.ops.fusedopt.state_table(*_table_args(call)), call["steps"],
            call["index"], call["hyper"], list(call["flags"])]


def _bad_calls():
    """(id, edit, message): one spoiled argument of a three-tensor Adam call; `edit(args, call)`."""
    def index(row):
        def edit(a, c):
            a[4] = a[4].clone()
            a[4][2] = torch.tensor(row)
        return edit

    def cpu_table(a, c):
        cpu = [[t.cpu() for t in lst] for lst in _table_args(c)[:-1]]
        a[2] = torch.ops.fusedopt.state_table(*cpu, None)

    yield "steps-on-cpu", lambda a, c: a.__setitem__(3, a[3].cpu()), r"steps must be .* on the params' device \(cuda"
    yield "hyper-on-cpu", lambda a, c: a.__setitem__(5, a[5].cpu()), r"hyper must be .* on the params' device \(cuda"
    yield "hyper-dtype", lambda a, c: a.__setitem__(5, a[5].float()), r"hyper must be a contiguous float64"
    yield "index-on-gpu", lambda a, c: a.__setitem__(4, a[4].cuda()), r"index must be a contiguous int64 CPU tensor"
    yield "index-row", index([0, 4]), r"index\[2\] has hyper row 4"
    yield "index-step", index([3, 0]), r"index\[2\] has step slot 3"
    yield "grad-on-cpu", lambda a, c: a[1].__setitem__(2, a[1][2].cpu()), r"grad 2 must be"
    yield "param-on-cpu", lambda a, c: (a[0].__setitem__(2, a[0][2].cpu()), a[1].__setitem__(2, a[1][2].cpu())), \
        r"param 2 is not on the state table's device \(cuda:0\)"
    yield "table-of-cpu-tensors", cpu_table, r"the state table describes tensors of another device type"
    yield "table-on-gpu", lambda a, c: a.__setitem__(2, a[2].cuda()), r"table must be a state table"


BAD_CALLS = list(_bad_calls())


@cuda
@pytest.mark.parametrize("what,edit,message", BAD_CALLS, ids=[b[0] for b in BAD_CALLS])
def test_errors_write_nothing(what, edit, message):
    spec, call = _call("Adam", torch.float32, n=(10, 10, 10))
    args = _op_args(call)
    args[0], args[1] = list(args[0]), list(args[1])
    edit(args, call)
    before = [t.clone() for t in mutable(call)]
    with pytest.raises(RuntimeError, match=message):
        torch.ops.fusedopt.adam(*args)
    torch.cuda.synchronize()
    _assert_unchanged(call, before)


@cuda
def test_state_table_refuses_a_state_on_another_device():
    spec, call = _call("Adam", torch.float32, n=(10, 10, 10))
    args = list(_table_args(call))
    args[2] = args[2][:2] + [args[2][2].cpu()]
    with pytest.raises(RuntimeError, match=r"state slot 1 of param 2"):
        torch.ops.fusedopt.state_table(*args)


@cuda
@pytest.mark.parametrize("key,make,message", [
    ("grad_scale", lambda: torch.tensor(0.5), r"grad_scale must be a 0-dim float32 tensor on the params' device"),
    ("found_inf", lambda: torch.zeros(2, device="cuda"), r"found_inf must be"),
], ids=["grad_scale-on-cpu", "found_inf-shape"])
def test_scalar_tensor_errors_write_nothing(key, make, message):
    spec, call = _call("Adam", torch.float32, n=(10, 10, 10))
    before = [t.clone() for t in mutable(call)]
    with pytest.raises(RuntimeError, match=message):
        torch.ops.fusedopt.adam(*_op_args(call), **{key: make()})
    torch.cuda.synchronize()
    _assert_unchanged(call, before)


# -- GPU: Lookahead ----------------------------------------------------------------------------

@cuda
@pytest.mark.parametrize("pdtype,sdtype", [(torch.float32, torch.float32), (torch.bfloat16, torch.float32),
                                           (torch.float16, torch.float32), (torch.bfloat16, torch.bfloat16),
                                           (torch.float16, torch.float16)], ids=str)
@pytest.mark.parametrize("with_master", [False, True], ids=["plain", "master"])
def test_lookahead(pdtype, sdtype, with_master):
    if with_master and (pdtype == torch.float32 or sdtype != torch.float32):
        pytest.skip("master weights go with 16-bit params and float32 slow weights")
    gen = torch.Generator().manual_seed(11)
    sizes = ODD_SIZES + [3000] * 5
    master = [torch.randn(n, generator=gen).to("cuda") for n in sizes]
    ps = [m.to(pdtype) for m in master]
    slow = [torch.randn(n, generator=gen).to("cuda", sdtype) for n in sizes]
    p1, s1, m1 = [p.clone() for p in ps], [s.clone() for s in slow], [m.clone() for m in master]
    p2, s2, m2 = [p.clone() for p in ps], [s.clone() for s in slow], [m.clone() for m in master]
    assert count_cuda_kernels(lambda: _cu().lookahead(p1, s1, 0.5, m1 if with_master else None)) == 1
    _ref().lookahead(p2, s2, 0.5, m2 if with_master else None)
    rtol, atol = TOL[pdtype]
    for a, b in zip(p1 + s1 + m1, p2 + s2 + m2):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


# -- GPU: no host synchronisation, CUDA graphs -------------------------------------------------

@cuda
@pytest.mark.parametrize("options", [{}, {"master_weights": True}], ids=["plain", "master"])
def test_step_never_synchronises(options):
    """The optimizer's step, a table rebuild, a backend call with an AMP scale and inf flag, and
    Lookahead: no host synchronisation anywhere."""
    dtype = torch.bfloat16 if options.get("master_weights") else torch.float32
    gen = torch.Generator().manual_seed(13)
    ps = [torch.randn(n, generator=gen).to("cuda", dtype).requires_grad_(True) for n in (3, 4097, 65537)]
    opt = fusedopt.AdamW(ps, backend="cuda", **options)
    for p in ps:
        p.grad = torch.randn_like(p)
    opt.step()  # creates the state, builds the plan and the table
    cu = _cu()
    spec, call = _call("Adam", dtype, master=options.get("master_weights", False))
    scale, found_inf = torch.tensor(0.5, device="cuda"), torch.tensor(0.0, device="cuda")
    slow = [q.float() for q in call["params"]]
    cu.step(**call, grad_scale=scale, found_inf=found_inf)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            opt.step()
        ps[0].grad = torch.randn_like(ps[0])  # a new address: a new table is uploaded, no sync
        opt.step()
        cu.step(**call, grad_scale=scale, found_inf=found_inf)
        cu.lookahead(call["params"], slow, 0.5)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()


@cuda
@pytest.mark.parametrize("warm", [True, False], ids=["cached-table", "table-built-in-capture"])
def test_cuda_graph_capture_and_replay(warm):
    """The op captured in a CUDA graph (rows and step counts, AMP tensors on the device) replays
    like eager calls: with its table cached before capture (used from the capture stream), and
    with the table built and uploaded inside the capture. The rows, the counts and the inf flag
    are read at replay time."""
    cu = _cu()
    n = (3, 4097, 65537, 1000 + (0 if warm else 7))  # a size of its own: a cold table
    spec, call = _call("Adam", torch.float32, n=n, seed=23)
    scale, found_inf = torch.tensor(0.5, device="cuda"), torch.zeros((), device="cuda")
    eager = clone_call(call)
    for _ in range(4 if warm else 3):
        cu.step(**eager, grad_scale=scale, found_inf=found_inf)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    if warm:
        with torch.cuda.stream(side):
            cu.step(**call, grad_scale=scale, found_inf=found_inf)
        torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        cu.step(**call, grad_scale=scale, found_inf=found_inf)
    for _ in range(3):
        graph.replay()
    torch.cuda.synchronize()
    for a, b in zip(mutable(call), mutable(eager)):
        assert torch.equal(a, b)
    # New step counts and a new lr in the same tensors: the replay reads them.
    call["steps"].add_(5.0)
    call["hyper"][:, spec.HYPER.index("lr")] *= 2.0
    graph.replay()
    cu.step(**eager, grad_scale=scale, found_inf=found_inf)
    torch.cuda.synchronize()
    for a, b in zip(mutable(call), mutable(eager)):
        assert torch.equal(a, b)
    found_inf.fill_(1.0)  # the flag is read at replay time
    before = [t.clone() for t in mutable(call)]
    graph.replay()
    torch.cuda.synchronize()
    _assert_unchanged(call, before)


@cuda
def test_table_built_in_capture_is_not_used_outside_it():
    """A table first built inside a capture is uploaded by the graph, at replay: an eager call
    with the same tensors before any replay (or after an abandoned capture) must upload its
    own, not read the captured buffer."""
    cu = _cu()
    n = (3, 4097, 1013)  # sizes of its own: no table of an earlier test can match
    spec, call = _call("Adam", torch.float32, n=n, seed=29)
    eager = clone_call(call)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=side):
        cu.step(**call)
    torch.cuda.synchronize()
    cu.step(**call)  # eager, the graph not replayed yet
    graph.replay()
    for _ in range(2):
        cu.step(**eager)
    torch.cuda.synchronize()
    for a, b in zip(mutable(call), mutable(eager)):
        assert torch.equal(a, b)


@cuda
def test_optimizer_step_in_a_cuda_graph():
    """A whole optimizer step (counters advanced on the device, then one launch that reads them)
    captured once and replayed equals the same number of eager steps."""
    gen = torch.Generator().manual_seed(31)
    init = [torch.randn(n, generator=gen) for n in (3, 4097, 20011)]
    grads = [[torch.randn(n, generator=gen).cuda() for n in (3, 4097, 20011)] for _ in range(6)]
    out = []
    for graphed in (True, False):
        ps = [p.cuda().requires_grad_(True) for p in init]
        opt = fusedopt.RAdam(ps, backend="cuda", weight_decay=0.01)
        for p, g in zip(ps, grads[0]):
            p.grad = g.clone()
        opt.step()  # eager: state, plan, tables
        if graphed:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=side):
                opt.step()
        for k, step_grads in enumerate(grads[1:]):
            for p, g in zip(ps, step_grads):
                p.grad.copy_(g)
            if graphed:
                graph.replay()
            else:
                opt.step()
        torch.cuda.synchronize()
        out.append((ps, opt))
    (pg, og), (pe, oe) = out
    assert_same_state(pg, og, pe, oe, (0.0, 0.0), what="graphed")


# -- GPU: 64-bit offsets -----------------------------------------------------------------------

HUGE = 2 ** 31 + 17


@cuda
@pytest.mark.skipif(os.environ.get("FUSEDOPT_SKIP_HUGE") == "1", reason="FUSEDOPT_SKIP_HUGE=1")
def test_huge_tensor_of_2_31_plus_17_elements():
    """HUGE MEMORY (~17 GiB): one bfloat16 Adam call of 2**31 + 17 elements (param, grad, two
    bf16 states), beside a small tensor, compared with the same update on a small copy."""
    need = HUGE * 2 * 4 + (2 << 30)
    if torch.cuda.mem_get_info()[0] < need:
        pytest.skip(f"needs {need / 2 ** 30:.1f} GiB of free GPU memory")
    cu = _cu()
    spec = algorithms.ALGORITHMS["adam"]
    group = dict(spec.defaults, lr=0.01, weight_decay=0.1)
    tables = dict(steps=torch.ones(1, device="cuda"),
                  hyper=torch.tensor([spec.hyper_row(group)], dtype=torch.float64, device="cuda"))
    flags = spec.flags(group)
    # A pattern of 4099 values, tiled: every element's expected result is the small run's.
    gen = torch.Generator().manual_seed(5)
    pat_p = torch.randn(4099, generator=gen).to("cuda", torch.bfloat16)
    pat_g = torch.randn(4099, generator=gen).to("cuda", torch.bfloat16)
    reps = HUGE // 4099 + 1

    def tiled(pat):
        return pat.repeat(reps)[:HUGE]

    p, g = tiled(pat_p), tiled(pat_g)
    m = torch.zeros(HUGE, dtype=torch.bfloat16, device="cuda")
    v = torch.zeros(HUGE, dtype=torch.bfloat16, device="cuda")
    small_p, small_g = pat_p[:5].clone(), pat_g[:5].clone()
    small_m, small_v = torch.zeros(5, dtype=torch.bfloat16, device="cuda"), torch.zeros(5, dtype=torch.bfloat16, device="cuda")
    cu.step("adam", flags, [small_p, p], [small_g, g], [[small_m, m], [small_v, v], []], None,
            index=torch.zeros(2, 2, dtype=torch.int64), **tables)
    ref_p, ref_m, ref_v = pat_p.clone(), torch.zeros_like(pat_p), torch.zeros_like(pat_p)
    cu.step("adam", flags, [ref_p], [pat_g], [[ref_m], [ref_v], []], None,
            index=torch.zeros(1, 2, dtype=torch.int64), **tables)
    del g
    for lo in (0, 2 ** 31 - 4099 * 2, 2 ** 31 - 3, HUGE - 4099 * 3):
        hi = min(lo + 4099 * 3, HUGE)
        idx = torch.arange(lo, hi, device="cuda") % 4099
        for big, small in ((p, ref_p), (m, ref_m), (v, ref_v)):
            assert torch.equal(big[lo:hi], small[idx]), f"elements {lo}..{hi}"
    assert torch.equal(small_p, ref_p[:5])


# -- GPU: a reducing algorithm's step in two calls (Note [split steps]) -------------------------

@cuda
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_split_lamb_step_is_the_whole_step(backend):
    """Phase 1 writes every tensor's sums (the zero-size one's too) as the reference computes
    them, phase 2 with them untouched gives the whole step bit for bit, and with changed sums
    the reference's result for the same sums: the FSDP2 path of LAMB on the GPU."""
    if backend not in fusedopt.available_backends("cuda"):
        pytest.skip(f"{backend} is not available on cuda")
    be = backends.get_backend(backend, torch.device("cuda"))
    sizes = (0, 3, 4097, 20011, 1)
    spec, call = _call("LAMB", torch.float32, n=sizes)

    whole = run_call(be, call)
    sums = torch.full((len(sizes), 2), float("nan"), dtype=torch.float64, device="cuda")
    got = run_split_call(be, call, sums)
    for a, b in zip(mutable(got), mutable(whole)):
        assert torch.equal(a, b)
    ref_sums = torch.zeros(len(sizes), 2, dtype=torch.float64, device="cuda")
    run_split_call(_ref(), call, ref_sums)
    torch.testing.assert_close(sums, ref_sums, rtol=1e-6, atol=0)
    scale = torch.tensor([4.0, 1.0], dtype=torch.float64, device="cuda")
    got = run_split_call(be, call, torch.zeros_like(sums), scale)
    want = run_split_call(_ref(), call, torch.zeros_like(sums), scale)
    assert_calls_match(got, want, f"split {backend}")


# -- 8-bit states and stochastic rounding (fusedopt/lowbit.py; csrc/cuda/lowbit.cuh) -----------
# The kernels quantize with the rules of lowbit.py: each 8-bit block of 256 is one warp's, its
# absmax a warp reduction; stochastic rounding draws each element's bits from Philox by
# (seed, step count, offset + index). Every algorithm against the reference, SR bit for bit,
# LAMB's split phases and overflow steps: tests/test_lowbit_calls.py (all fused backends). Here
# what only CUDA has: its map constants, bitwise agreement with the CPU kernels, unaligned
# tensors and many tiles per item, device tables keyed on seeds and scales, no synchronisation.

LOWBIT_SIZES = [0, 1, 255, 257, 4097, 70000]
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_kernel_maps_are_lowbits_maps():
    """No GPU needed: the map constants the CUDA kernels embed (csrc/cuda/lowbit.cuh) are
    lowbit.dynamic_map's float32 values, bit for bit (index 0 unsigned, 1 signed)."""
    import re
    header = os.path.join(_ROOT, "csrc", "cuda", "lowbit.cuh")
    if not os.path.exists(header):
        pytest.skip("the source tree (csrc/cuda/lowbit.cuh) is not here")
    text = open(header).read()
    block = text[text.index("kMapBits[2][256] = {"):]
    block = block[:block.index("\n};")]
    bits = [int(v, 16) for v in re.findall(r"0x([0-9a-fA-F]{8})u", block)]
    assert len(bits) == 512
    for signed in (False, True):
        want = [v & 0xFFFFFFFF for v in lowbit.dynamic_map(signed).view(torch.int32).tolist()]
        assert bits[256 * signed: 256 * (signed + 1)] == want, signed


# Direct backend calls with scales= and rounding= (docs/kernel-interface.md).
def _lowbit_call(algo, options, dtype=torch.float32, sizes=LOWBIT_SIZES, **kw):
    """lowbit_parity.lowbit_call on the GPU."""
    return lowbit_call(algo, options, sizes, dtype, device="cuda", **kw)


@cuda
@pytest.mark.skipif(not _ext.cpu_status()[0], reason="the compiled CPU backend is not loaded")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16-sr"])
@pytest.mark.parametrize("algo,options", [v for v in LOWBIT_VARIANTS if v[0] != "lamb"], ids=lowbit_variant_id)
def test_8bit_bitwise_equal_to_the_cpu_kernels(algo, options, dtype):
    """The CUDA and CPU kernels compute the same float32 update (test_bitwise_equal_to_the_cpu_kernels)
    and quantize it by the same rule, so their codes and scales agree to the bit too, and so do
    stochastically rounded bf16 params (LAMB's sums are added in another order: not to the bit)."""
    rounding = [(77 + i, (i << 40) + 1) for i in range(6)] if dtype == torch.bfloat16 else None
    spec, call = _lowbit_call(algo, options, dtype, sizes=(3, 4097, 20011, 5, 1, 65537), rounding=rounding,
                              counts=(1.0, 2.0, 3.0, 6.0, 7.0, 100.0))
    got = run_call(_cu(), call)
    want = run_call(backends.get_backend("cpu", torch.device("cpu")), clone_call(call, "cpu"))
    assert_lowbit_calls_match(clone_call(got, "cpu"), want, f"{algo} {options} {dtype} cuda vs cpu", exact=True)


@cuda
def test_8bit_unaligned_tensors_and_many_tiles_per_item():
    """Params, grads and codes at odd offsets (no 16-byte accesses: the masked element path, in
    the same per-thread layout), and a tensor large enough that a work item walks several tiles;
    with bf16 params stochastically rounded, and master weights."""
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    big = sms * 16 * 2048 * 3 + 300  # about three tiles per item (ops.cpp's chunk_elems)
    sizes = [257, 5000, big]
    spec, call = _lowbit_call("adam", {"amsgrad": True}, sizes=sizes)

    def shifted(t):  # a contiguous view one element past a 16-byte boundary
        return torch.cat([torch.zeros(1, dtype=t.dtype, device=t.device), t])[1:]

    odd = clone_call(call)
    odd["params"] = [shifted(p) for p in odd["params"]]
    odd["grads"] = [shifted(g) for g in odd["grads"]]
    odd["states"] = [[shifted(c) for c in slot] for slot in odd["states"]]
    assert odd["params"][0].data_ptr() % 16 != 0 and odd["states"][0][0].data_ptr() % 16 != 0
    want = run_call(_ref(), call)
    assert_lowbit_calls_match(run_call(_cu(), call), want, "aligned")
    _cu().step(**odd)
    assert_lowbit_calls_match(odd, want, "unaligned")

    for extra in ("master", "rounding"):
        spec, call = _lowbit_call("adam", {}, torch.bfloat16, sizes=sizes,
                                  rounding=[(11 + i, i << 40) for i in range(3)] if extra == "rounding" else None)
        if extra == "master":
            gen = torch.Generator().manual_seed(1)
            call["master"] = [p.float() + 1e-3 * torch.randn(p.shape, generator=gen).cuda() for p in call["params"]]
        assert_lowbit_calls_match(run_call(_cu(), call), run_call(_ref(), call), f"big {extra}")


def _exact_sgd(dtype, rounding, quantized, sizes=LOWBIT_SIZES):
    return exact_sgd_call(dtype, rounding, quantized, sizes, device="cuda")


@cuda
def test_lowbit_device_tables_are_keyed_on_seeds_and_scales():
    """The same tensors (the same tensor table) with new seeds, or with new scale tensors, are
    another device table: each call as the reference's with its own seeds and scales."""
    n = len(LOWBIT_SIZES)
    spec, call = _exact_sgd(torch.bfloat16, [(1, i << 40) for i in range(n)], True)
    out = clone_call(call)
    _cu().step(**out)  # cached now
    for change in ("seed", "scales"):
        with torch.no_grad():  # back to the call's values, in place: the same addresses
            for a, b in zip(mutable(out) + [s for slot in out["scales"] for s in slot],
                            mutable(call) + [s for slot in call["scales"] for s in slot]):
                a.copy_(b)
        if change == "seed":
            out["rounding"] = [(2, o) for _, o in out["rounding"]]
        else:
            out["scales"] = [[s.clone() for s in slot] for slot in out["scales"]]
        want = run_call(_ref(), out)
        _cu().step(**out)
        assert_lowbit_calls_match(out, want, f"new {change}", exact=True)


@cuda
def test_8bit_optimizer_one_launch_and_no_synchronisation():
    """An 8-bit AdamW with stochastically rounded bf16 params: one launch per step and no host
    synchronisation after the first step."""
    gen = torch.Generator().manual_seed(17)
    ps = [torch.randn(n, generator=gen).to("cuda", torch.bfloat16).requires_grad_(True) for n in (3, 4097, 65537)]
    opt = fusedopt.AdamW(ps, backend="cuda", state_dtype="8bit", min_8bit_size=1, stochastic_rounding=True)
    for p in ps:
        p.grad = torch.randn_like(p)
    opt.step()
    assert opt.state[ps[1]]["exp_avg"].dtype == torch.uint8
    assert count_cuda_kernels(opt.step) == 1
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            opt.step()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()
