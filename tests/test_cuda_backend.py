"""The CUDA backend (``fusedopt._C_cuda``) against the eager reference.

On a GPU: every algorithm x option x param dtype x odd sizes, 1,100-tensor groups in one launch
per step, bf16 states and master weights, AMP's grad_scale / found_inf, device-mode scalars
(capturable, ``<op>.tensor``), CUDA graph capture, Lookahead, layouts, no host synchronisation
in ``step()``, and one tensor of 2**31 + 17 elements (64-bit offsets; needs ~17 GiB free).

Without a GPU (CI): the built library itself — present when the build had nvcc, exporting its
marker symbol, linked only against torch's CPU libraries, the CUDA runtime and the system's,
and registering a CUDA kernel for every op (and the ``.tensor`` overloads) when loaded into a
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
from fusedopt import _ext, algorithms, backends
from parity import (CASES, MIXED_PRECISION, MIXED_PRECISION_IDS, ODD_SIZES, REPRESENTATIVE, TOL,
                    assert_same_state, case_id, interface_problem, make_problem, run_parity)

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
NAMES = [name for name, _ in REPRESENTATIVE]


def _cuda_reason() -> str:
    if not torch.cuda.is_available():
        return "no CUDA device (torch.cuda.is_available() is False)"
    ok, why = backends.availability("cuda", torch.device("cuda"))
    return "" if ok else f"the cuda backend is not available: {why}"


_WHY_NOT = _cuda_reason()
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
print(lib.fusedopt_cuda_info().decode())
has = torch._C._dispatch_has_kernel_for_dispatch_key
for name in _ext.OPS:
    assert has(f"fusedopt::{name}", "CUDA"), name
    assert has(f"fusedopt::{name}", "CPU"), name
for name in _ext.STEP_OPS:
    schema = str(getattr(torch.ops.fusedopt, name).tensor._schema)
    assert "Tensor scalars, bool[] flags" in schema, schema
    assert has(f"fusedopt::{name}.tensor", "CUDA"), name
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


# -- GPU: parity through the optimizer classes -----------------------------------------------

@cuda
def test_available():
    backend = backends.get_backend("cuda", torch.device("cuda"))
    assert backend.name == "cuda"
    assert backend.available(torch.device("cuda")) == (True, "")
    assert "cuda" in fusedopt.available_backends("cuda")
    assert backends.get_backend("auto", torch.device("cuda")).name == "cuda"


@cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_parity_odd_sizes(case, dtype):
    name, kw = case
    run_parity("cuda", name, kw, dtype, sizes=ODD_SIZES, steps=10, device="cuda")


def _count_kernels(fn) -> int:
    """Launches of fusedopt's CUDA kernels while running fn()."""
    from torch.profiler import ProfilerActivity, profile
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return sum(1 for e in prof.events() if "step_kernel" in e.name or "lookahead_kernel" in e.name)


@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", REPRESENTATIVE, ids=case_id)
def test_parity_many_tensors(case, dtype):
    """1,100 tensors of mixed sizes in one group (far beyond a kernel-argument table)."""
    name, kw = case
    sizes = torch.randint(1, 5000, (1100,), generator=torch.Generator().manual_seed(1)).tolist()
    run_parity("cuda", name, kw, dtype, sizes=sizes, steps=5, device="cuda")


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

    assert _count_kernels(steps) == len(grads)


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
@pytest.mark.parametrize("case", REPRESENTATIVE, ids=case_id)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_device_scalars_capturable(case, dtype):
    """capturable=True: the scalars are a float32 tensor on the device, read by the kernel."""
    name, kw = case
    run_parity("cuda", name, {**kw, "capturable": True}, dtype, sizes=(3, 4097), steps=8, device="cuda")


@cuda
def test_radam_device_mode_unrectified_steps():
    """Device mode passes rectify=True with rect == 0 on early steps: the kernel must take the
    un-adapted branch there (RAdam rectifies from step 6 with the default betas)."""
    run_parity("cuda", "RAdam", {"capturable": True}, torch.float32, sizes=(5, 4097), steps=8, device="cuda")


# -- GPU: the backend interface directly -----------------------------------------------------

def _interface_problem(name, dtype, n=(3, 4097, 20011), seed=7):
    return interface_problem(name, dtype, n=n, seed=seed, device="cuda", random_states=True)


def _clone(ps, states):
    return [p.clone() for p in ps], [[t.clone() for t in slot] for slot in states]


def _flat(ps, states):
    return list(ps) + [t for slot in states for t in slot]


@cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("mode", ["host", "device"])
def test_amp_grad_scale_and_found_inf(name, dtype, mode):
    """AMP: the scale tensor multiplies g on the device; found_inf != 0 writes nothing at all."""
    ref = backends.get_backend("reference", torch.device("cuda"))
    cu = backends.get_backend("cuda", torch.device("cuda"))
    spec, ps, gs, states, scalars, flags = _interface_problem(name, dtype)
    scalars = (0.5,) + scalars[1:]  # a host scale too: both multiply into g
    args = torch.tensor(scalars, device="cuda") if mode == "device" else scalars
    scale = torch.tensor(0.25, device="cuda")
    p1, s1 = _clone(ps, states)
    p2, s2 = _clone(ps, states)
    cu.step(spec.name, p1, gs, s1, args, flags, grad_scale=scale, found_inf=torch.zeros((), device="cuda"))
    ref.step(spec.name, p2, gs, s2, args, flags, grad_scale=scale, found_inf=torch.zeros((), device="cuda"))
    rtol, atol = TOL[dtype]
    for a, b in zip(_flat(p1, s1), _flat(p2, s2)):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol)
    assert not torch.equal(p1[1], ps[1])
    p3, s3 = _clone(ps, states)
    cu.step(spec.name, p3, gs, s3, args, flags, grad_scale=scale, found_inf=torch.ones((), device="cuda"))
    for a, b in zip(_flat(p3, s3), _flat(ps, states)):
        assert torch.equal(a, b)


@cuda
@pytest.mark.skipif(not _ext.cpu_status()[0], reason="the compiled CPU backend is not loaded")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", NAMES)
def test_bitwise_equal_to_the_cpu_kernels(name, dtype):
    """Host scalars: the CUDA and CPU kernels compile the same header, in float32 with the same
    explicit FMAs and IEEE division and square root, so they agree to the bit."""
    cpu = backends.get_backend("cpu", torch.device("cpu"))
    cu = backends.get_backend("cuda", torch.device("cuda"))
    spec, ps, gs, states, scalars, flags = _interface_problem(name, dtype)
    p1, s1 = _clone(ps, states)
    p2 = [p.cpu() for p in ps]
    s2 = [[t.cpu() for t in slot] for slot in states]
    cu.step(spec.name, p1, gs, s1, scalars, flags)
    cpu.step(spec.name, p2, [g.cpu() for g in gs], s2, scalars, flags)
    for a, b in zip(_flat(p1, s1), _flat(p2, s2)):
        assert torch.equal(a.cpu(), b), (a.cpu() - b).abs().max()


@cuda
def test_sgd_first_step_is_a_runtime_scalar():
    """first_step selects the buffer copy per call from the scalar, host or device."""
    ref = backends.get_backend("reference", torch.device("cuda"))
    cu = backends.get_backend("cuda", torch.device("cuda"))
    spec, ps, gs, states, scalars, flags = _interface_problem("SGD", torch.float32)
    for first in (1.0, 0.0):
        sc = scalars[:5] + (first,)
        for as_tensor in (False, True):
            args = torch.tensor(sc, device="cuda") if as_tensor else sc
            p1, s1 = _clone(ps, states)
            p2, s2 = _clone(ps, states)
            cu.step("sgd", p1, gs, s1, args, flags)
            ref.step("sgd", p2, gs, s2, sc, flags)
            for a, b in zip(_flat(p1, s1), _flat(p2, s2)):
                torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


@cuda
def test_unaligned_tensors_take_the_element_path():
    """Views at odd offsets cannot use 16-byte accesses; results are the same."""
    ref = backends.get_backend("reference", torch.device("cuda"))
    cu = backends.get_backend("cuda", torch.device("cuda"))
    spec, ps, gs, states, scalars, flags = _interface_problem("Adam", torch.float32, n=(5000, 9000))
    p1, s1 = _clone(ps, states)
    p1 = [torch.cat([torch.zeros(1, device="cuda"), p])[1:] for p in p1]  # 4-byte offset
    p2, s2 = _clone(ps, states)
    cu.step("adam", p1, gs, s1, scalars, flags)
    ref.step("adam", p2, gs, s2, scalars, flags)
    assert p1[0].data_ptr() % 16 != 0
    for a, b in zip(_flat(p1, s1), _flat(p2, s2)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


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


# -- GPU: Lookahead ----------------------------------------------------------------------------

@cuda
@pytest.mark.parametrize("pdtype,sdtype", [(torch.float32, torch.float32), (torch.bfloat16, torch.float32),
                                           (torch.float16, torch.float32), (torch.bfloat16, torch.bfloat16),
                                           (torch.float16, torch.float16)], ids=str)
def test_lookahead(pdtype, sdtype):
    gen = torch.Generator().manual_seed(11)
    sizes = ODD_SIZES + [3000] * 5
    ps = [torch.randn(n, generator=gen).to("cuda", pdtype) for n in sizes]
    slow = [torch.randn(n, generator=gen).to("cuda", sdtype) for n in sizes]
    p1, s1 = [p.clone() for p in ps], [s.clone() for s in slow]
    p2, s2 = [p.clone() for p in ps], [s.clone() for s in slow]
    assert _count_kernels(lambda: backends.get_backend("cuda", torch.device("cuda")).lookahead(p1, s1, 0.5)) == 1
    backends.get_backend("reference", torch.device("cuda")).lookahead(p2, s2, 0.5)
    rtol, atol = TOL[pdtype]
    for a, b in zip(p1 + s1, p2 + s2):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


# -- GPU: no host synchronisation, CUDA graphs -------------------------------------------------

@cuda
@pytest.mark.parametrize("options", [{}, {"master_weights": True}], ids=["host", "master"])
def test_step_never_synchronises(options):
    """The optimizer's step (host scalars), a table rebuild, and backend calls with device
    scalars, an AMP scale and an inf flag, and Lookahead: no host synchronisation anywhere."""
    dtype = torch.bfloat16 if options.get("master_weights") else torch.float32
    gen = torch.Generator().manual_seed(13)
    ps = [torch.randn(n, generator=gen).to("cuda", dtype).requires_grad_(True) for n in (3, 4097, 65537)]
    opt = fusedopt.AdamW(ps, backend="cuda", **options)
    for p in ps:
        p.grad = torch.randn_like(p)
    opt.step()  # creates the state, builds the table
    cu = backends.get_backend("cuda", torch.device("cuda"))
    spec, qs, gs, states, scalars, flags = _interface_problem("Adam", dtype)
    device_scalars = torch.tensor(scalars, device="cuda")
    scale, found_inf = torch.tensor(0.5, device="cuda"), torch.tensor(0.0, device="cuda")
    slow = [q.float() for q in qs]
    cu.step(spec.name, qs, gs, states, device_scalars, flags, grad_scale=scale, found_inf=found_inf)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            opt.step()
        ps[0].grad = torch.randn_like(ps[0])  # a new address: a new table is uploaded, no sync
        opt.step()
        cu.step(spec.name, qs, gs, states, device_scalars, flags, grad_scale=scale, found_inf=found_inf)
        cu.lookahead(qs, slow, 0.5)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()


@cuda
@pytest.mark.parametrize("name", ["AdamW", "RAdam", "SGD"])
def test_capturable_amp_step_never_synchronises_and_matches_host_mode(name):
    """Device mode through the optimizer (capturable, a tensor lr on the GPU, an AMP scale and
    inf flag on the GPU): per-step scalars are built on the device (floats as fills, not
    host-to-device copies), steps advance on the device, and nothing synchronises; the result
    equals the host-scalar optimizer's."""
    kw = {"momentum": 0.9} if name == "SGD" else {}
    gen = torch.Generator().manual_seed(41)
    init = [torch.randn(n, generator=gen) for n in (3, 4097, 65537)]
    grads = [[torch.randn(n, generator=gen) for n in (3, 4097, 65537)] for _ in range(4)]
    ps = [p.cuda().requires_grad_(True) for p in init]
    opt = getattr(fusedopt, name)(ps, lr=torch.tensor(0.01, device="cuda"), capturable=True,
                                  backend="cuda", **kw)
    opt.grad_scale = torch.tensor(4.0, device="cuda")
    opt.found_inf = torch.zeros((), device="cuda")
    ref_ps = [p.cuda().requires_grad_(True) for p in init]
    ref = getattr(fusedopt, name)(ref_ps, lr=0.01, backend="cuda", **kw)
    for t, gs in enumerate(grads):
        for p, q, g in zip(ps, ref_ps, gs):
            p.grad = (g * 4.0).cuda()
            q.grad = g.cuda()
        torch.cuda.synchronize()
        if t > 0:  # the first step creates the state and uploads the step buffer's index
            torch.cuda.set_sync_debug_mode("error")
        try:
            opt.step()
        finally:
            torch.cuda.set_sync_debug_mode(0)
        ref.step()
    torch.cuda.synchronize()
    assert_same_state(ps, opt, ref_ps, ref, (1e-5, 1e-6), what=f"{name} capturable")


@cuda
@pytest.mark.parametrize("warm", [True, False], ids=["cached-table", "table-built-in-capture"])
def test_cuda_graph_capture_and_replay(warm):
    """The op captured in a CUDA graph (device scalars, AMP tensors) replays like eager calls:
    with its table cached before capture (used from the capture stream), and with the table
    built and uploaded inside the capture."""
    cu = backends.get_backend("cuda", torch.device("cuda"))
    n = (3, 4097, 65537, 1000 + (0 if warm else 7))  # a size of its own: a cold table
    spec, ps, gs, states, scalars, flags = _interface_problem("Adam", torch.float32, n=n, seed=23)
    args = torch.tensor(scalars, device="cuda")
    scale, found_inf = torch.tensor(0.5, device="cuda"), torch.zeros((), device="cuda")
    eager_p, eager_s = _clone(ps, states)
    for _ in range(4 if warm else 3):
        cu.step("adam", eager_p, gs, eager_s, args, flags, grad_scale=scale, found_inf=found_inf)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    if warm:
        with torch.cuda.stream(side):
            cu.step("adam", ps, gs, states, args, flags, grad_scale=scale, found_inf=found_inf)
        torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        cu.step("adam", ps, gs, states, args, flags, grad_scale=scale, found_inf=found_inf)
    for _ in range(3):
        graph.replay()
    torch.cuda.synchronize()
    for a, b in zip(_flat(ps, states), _flat(eager_p, eager_s)):
        assert torch.equal(a, b)
    found_inf.fill_(1.0)  # the flag is read at replay time
    before = [t.clone() for t in _flat(ps, states)]
    graph.replay()
    torch.cuda.synchronize()
    for a, b in zip(_flat(ps, states), before):
        assert torch.equal(a, b)


@cuda
def test_table_built_in_capture_is_not_used_outside_it():
    """A table first built inside a capture is uploaded by the graph, at replay: an eager call
    with the same tensors before any replay (or after an abandoned capture) must upload its
    own, not read the captured buffer."""
    cu = backends.get_backend("cuda", torch.device("cuda"))
    n = (3, 4097, 1013)  # sizes of its own: no table of an earlier test can match
    spec, ps, gs, states, scalars, flags = _interface_problem("Adam", torch.float32, n=n, seed=29)
    args = torch.tensor(scalars, device="cuda")
    eager_p, eager_s = _clone(ps, states)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=side):
        cu.step("adam", ps, gs, states, args, flags)
    torch.cuda.synchronize()
    cu.step("adam", ps, gs, states, args, flags)  # eager, the graph not replayed yet
    graph.replay()
    for _ in range(2):
        cu.step("adam", eager_p, gs, eager_s, args, flags)
    torch.cuda.synchronize()
    for a, b in zip(_flat(ps, states), _flat(eager_p, eager_s)):
        assert torch.equal(a, b)


# -- GPU: 64-bit offsets -----------------------------------------------------------------------

HUGE = 2 ** 31 + 17


@cuda
@pytest.mark.skipif(os.environ.get("FUSEDOPT_SKIP_HUGE") == "1", reason="FUSEDOPT_SKIP_HUGE=1")
def test_huge_tensor_of_2_31_plus_17_elements():
    """HUGE MEMORY (~17 GiB): one bfloat16 Adam group of 2**31 + 17 elements (param, grad, two
    bf16 states), beside a small tensor, compared with the same update on a small copy."""
    need = HUGE * 2 * 4 + (2 << 30)
    if torch.cuda.mem_get_info()[0] < need:
        pytest.skip(f"needs {need / 2 ** 30:.1f} GiB of free GPU memory")
    cu = backends.get_backend("cuda", torch.device("cuda"))
    spec = algorithms.ALGORITHMS["adam"]
    group = dict(spec.defaults, lr=0.01, weight_decay=0.1)
    scalars, flags = spec.step_args(group, 1.0)
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
    cu.step("adam", [small_p, p], [small_g, g], [[small_m, m], [small_v, v], []], tuple(scalars), tuple(flags))
    ref_p, ref_m, ref_v = pat_p.clone(), torch.zeros_like(pat_p), torch.zeros_like(pat_p)
    cu.step("adam", [ref_p], [pat_g], [[ref_m], [ref_v], []], tuple(scalars), tuple(flags))
    del g
    for lo in (0, 2 ** 31 - 4099 * 2, 2 ** 31 - 3, HUGE - 4099 * 3):
        hi = min(lo + 4099 * 3, HUGE)
        idx = torch.arange(lo, hi, device="cuda") % 4099
        for big, small in ((p, ref_p), (m, ref_m), (v, ref_v)):
            assert torch.equal(big[lo:hi], small[idx]), f"elements {lo}..{hi}"
    assert torch.equal(small_p, ref_p[:5])
