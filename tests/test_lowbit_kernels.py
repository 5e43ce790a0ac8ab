"""The fused kernels of 8-bit states and stochastic rounding (the C++ CPU backend, and the CUDA
backend where a GPU is) against the reference, which quantizes and rounds by fusedopt.lowbit's
rules. (The Triton kernels: tests/test_triton_lowbit.py.)

Codes: the kernels compute the same float32 update as the reference in almost every element;
where an update differs by an ulp (Note [float32 atol] in parity.py: ATen's CPU sqrt is not
correctly rounded everywhere) and lands on the other side of a midpoint, a code differs by one.
The tests count such codes and bound them; the quantizer itself is tested bit for bit on crafted
values (exact midpoints, their neighbours, NaN, inf, zeros, subnormals) through a step that
stores its input as the state (SGD's first momentum step, Adamax's exp_inf with eps 0).
"""
from __future__ import annotations

import pytest
import torch

import fusedopt
from fusedopt.backends import get_backend
from parity import OPTIMIZERS, REPRESENTATIVE, TOL, case_id, cuda_skip_reason, run_call
from lowbit_parity import (assert_lowbit_calls_match, assert_lowbit_states_match, assert_quantizer_is_the_rule,
                           assert_stochastic_rounding_is_the_rule, exact_sgd_call, lowbit_pair, lowbit_step_both)

_CUDA = cuda_skip_reason()
# The fused backends and the device their params live on; cuda runs where a GPU is.
BACKENDS = [pytest.param(("cpu", "cpu"), id="cpu"),
            pytest.param(("cuda", "cuda"), id="cuda", marks=pytest.mark.skipif(bool(_CUDA), reason=_CUDA or "-"))]
# Odd sizes, an item boundary of the CPU traversal (16,384) crossed mid-tensor, and on the GPU
# a tensor over many thread blocks.
SIZES = {"cpu": [0, 1, 3, 255, 257, 4097, 16384 + 300], "cuda": [0, 1, 255, 257, 4097, 70000]}
# Every option of every algorithm (its grid, not crossed with the decay and maximize variants),
# and each algorithm's representative configuration (with decay).
CASES = ([(o.name, dict(core)) for o in OPTIMIZERS for core in o.grid + o.uncrossed]
         + [(name, dict(kw)) for name, kw in REPRESENTATIVE])


@pytest.mark.parametrize("where", BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_8bit_step_matches_the_reference(where, case):
    """Every option of every algorithm, 8-bit states on every size (min_8bit_size=1): three steps,
    each from the same params and states: params within the float32 tolerance, scales within
    float32 rounding, codes equal but for a counted few that differ by one."""
    (backend, device), (name, kw) = where, case
    pc, pr, oc, orf = lowbit_pair(backend, name, kw, SIZES[backend], device=device,
                                  state_dtype="8bit", min_8bit_size=1)
    for step in range(3):
        lowbit_step_both(pc, pr, oc, orf, seed=10 + step)
        for a, b in zip(pc, pr):
            torch.testing.assert_close(a, b, rtol=TOL[torch.float32][0], atol=TOL[torch.float32][1])
        assert_lowbit_states_match(oc, orf, pc, pr, f"{case_id(case)} step {step}")
    assert all(oc.state[p]["step"] == 3 for p in pc if "step" in oc.state[p])


@pytest.mark.parametrize("where", BACKENDS)
@pytest.mark.parametrize("case", [("AdamW", {}), ("SGD", {"lr": 0.01, "momentum": 0.9}), ("LAMB", {})], ids=case_id)
def test_8bit_with_clipping_and_accumulation(where, case):
    """The clip coefficient and 1/k of gradient accumulation fold into the gradient scale of an
    8-bit step as of a float32 one (clipping active: the gradient norm is ~100, max 0.5)."""
    (backend, device), (name, kw) = where, case
    pc, pr, oc, orf = lowbit_pair(backend, name, {**kw, "max_grad_norm": 0.5, "accumulation_steps": 2},
                                  SIZES[backend], device=device, state_dtype="8bit", min_8bit_size=1)
    for step in range(3):
        lowbit_step_both(pc, pr, oc, orf, seed=20 + step)
        for a, b in zip(pc, pr):
            torch.testing.assert_close(a, b, rtol=TOL[torch.float32][0], atol=TOL[torch.float32][1])
        assert_lowbit_states_match(oc, orf, pc, pr, f"{case_id(case)} clipped step {step}")


@pytest.mark.parametrize("where", BACKENDS)
@pytest.mark.parametrize("name", ["Adam", "SGD", "LAMB"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("extra", [{"master_weights": True}, {"stochastic_rounding": True, "rounding_seed": 7}, {}],
                         ids=["master", "sr", "rn"])
def test_8bit_states_with_16bit_params(where, name, dtype, extra):
    backend, device = where
    kw = {"SGD": {"lr": 0.01, "momentum": 0.9}}.get(name, {})
    pc, pr, oc, orf = lowbit_pair(backend, name, kw, SIZES[backend], dtype=dtype, device=device,
                                  state_dtype="8bit", min_8bit_size=1, **extra)
    for step in range(3):
        lowbit_step_both(pc, pr, oc, orf, seed=20 + step)
        for a, b in zip(pc, pr):
            differ = int((a.detach().view(torch.int16) != b.detach().view(torch.int16)).sum())
            assert differ <= max(2, 0.002 * a.numel()), (name, extra, differ, a.numel())
            torch.testing.assert_close(a.float(), b.float(), rtol=TOL[dtype][0], atol=TOL[dtype][1])
        assert_lowbit_states_match(oc, orf, pc, pr, f"{name} {dtype} {extra} step {step}")


@pytest.mark.parametrize("where", BACKENDS)
@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_quantizer_is_the_rule_bit_for_bit(where, signed):
    assert_quantizer_is_the_rule(where[0], signed, device=where[1])


@pytest.mark.parametrize("where", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("scale", [1.0, 2.0 ** -17, 2.0 ** -22, 2.0 ** -30],
                         ids=["normal", "small", "fp16-subnormal", "below-fp16-subnormals"])
def test_stochastic_rounding_is_the_rule_bit_for_bit(where, dtype, scale):
    backend, device = where
    # (the reference's Philox on 70,000 elements takes seconds on the CPU)
    assert_stochastic_rounding_is_the_rule(backend, dtype, scale, sizes=SIZES[backend][1:], device=device)


@pytest.mark.parametrize("quantized", [False, True], ids=["float32-states", "8bit-states"])
def test_cpu_random_bits_by_run_cross_the_counters_high_word(quantized):
    """The CPU kernels compute the bits of a block of elements at a time, eight at once with AVX2
    and the rest one by one (Note [random bits by run] in csrc/cpu/random_bits.h): params whose
    element indices cross 2**32 (the counter's high word) inside a run of eight, a block and an
    item, of sizes that leave every remainder, are rounded with the reference's bits."""
    sizes = (1, 7, 8, 9, 255, 257, 4097, 16384 + 300)
    below = (0, 3, 5, 100, 200, 300, 2000, 10007)  # offset 2**32 - below: most sizes cross 2**32
    rounding = [(2 ** 63 + 5 + 7 * i, (1 << 32) - b) for i, b in enumerate(below)]
    for dtype in (torch.bfloat16, torch.float16):
        _, call = exact_sgd_call(dtype, rounding, quantized, sizes)
        got = run_call(get_backend("cpu", torch.device("cpu")), call)
        want = run_call(get_backend("reference", torch.device("cpu")), call)
        assert_lowbit_calls_match(got, want, f"{dtype} by run", exact=True)


def test_stochastic_rounding_on_the_cpu_is_unbiased():
    """Many rounding streams of one float32 update: the mean of the stored bf16 params converges
    to the float32 result (a tenth of a bf16 ulp per step would vanish to nearest)."""
    p = torch.nn.Parameter(torch.ones(1 << 16, dtype=torch.bfloat16))
    opt = fusedopt.SGD([p], lr=1.0, stochastic_rounding=True, rounding_seed=11, backend="cpu")
    delta = 2.0 ** -8 / 10  # a tenth of the bf16 ulp at 1.0 (2^-7), below
    exact = 1.0
    for _ in range(5):
        p.grad = torch.full_like(p, delta)
        opt.step()
        exact -= delta
    mean = float(p.detach().float().mean())
    assert abs(mean - exact) < 4 * 2.0 ** -8 / (1 << 8), (mean, exact)
    assert mean < 1.0


def test_8bit_needs_contiguous_params_and_falls_back():
    """A channels_last param with 8-bit states: the CPU op refuses it (blocks are runs of the
    flattened tensor) and the backend falls back to the reference, which is still exact."""
    x = torch.randn(2, 16, 16, 16).to(memory_format=torch.channels_last)
    pc = torch.nn.Parameter(x.clone())
    pr = torch.nn.Parameter(x.clone())
    oc = fusedopt.Adam([pc], state_dtype="8bit", backend="cpu")
    orf = fusedopt.Adam([pr], state_dtype="8bit", backend="reference")
    g = torch.randn_like(x)
    pc.grad, pr.grad = g.clone(), g.clone()
    oc.step()
    orf.step()
    assert torch.equal(pc, pr)
    assert torch.equal(oc.state[pc]["exp_avg"], orf.state[pr]["exp_avg"])


def test_state_table_refuses_bad_scales_naming_them():
    p = torch.zeros(300)
    codes = torch.zeros(300, dtype=torch.uint8)
    with pytest.raises(RuntimeError, match="scales of state slot 0 of param 0"):
        torch.ops.fusedopt.state_table([p], [codes], [], [], None, [torch.zeros(1)], None)
    with pytest.raises(RuntimeError, match="uint8 codes with scales"):
        torch.ops.fusedopt.state_table([p], [torch.zeros(300)], [], [], None, [torch.zeros(2)], None)
    with pytest.raises(RuntimeError, match="bfloat16/float16 params"):
        torch.ops.fusedopt.state_table([p], [], [], [], None, None, torch.zeros(1, 2, dtype=torch.int64))


def test_bf16_states_with_stochastic_rounding_fall_back_to_the_reference():
    """Not compiled (a build-time saving): the op refuses it before writing, and the reference
    takes the launch, bit for bit."""
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(5000, generator=gen).to(torch.bfloat16)
    pc, pr = torch.nn.Parameter(x.clone()), torch.nn.Parameter(x.clone())
    kw = dict(lr=1e-3, state_dtype=torch.bfloat16, stochastic_rounding=True, rounding_seed=3)
    oc, orf = fusedopt.Adam([pc], backend="cpu", **kw), fusedopt.Adam([pr], backend="reference", **kw)
    for _ in range(2):
        g = torch.randn(x.shape, generator=gen).to(torch.bfloat16)
        pc.grad, pr.grad = g.clone(), g.clone()
        oc.step()
        orf.step()
    assert torch.equal(pc.detach().view(torch.int16), pr.detach().view(torch.int16))
    assert torch.equal(oc.state[pc]["exp_avg"], orf.state[pr]["exp_avg"])
