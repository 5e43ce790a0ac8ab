"""The fused kernels of 8-bit states and stochastic rounding (the C++ CPU backend) against the
reference, which quantizes and rounds by fusedopt.lowbit's rules.

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
from fusedopt import lowbit
from parity import OPTIMIZERS, REPRESENTATIVE, TOL, case_id

SIZES = [0, 1, 3, 255, 257, 4097, 16384 + 300]  # an item boundary (16,384) crossed mid-tensor
# At most this fraction of the codes of a step may differ from the reference's, by one.
CODE_SLACK = 0.002
# Every option of every algorithm (its grid, not crossed with the decay and maximize variants),
# and each algorithm's representative configuration (with decay).
CASES = ([(o.name, dict(core)) for o in OPTIMIZERS for core in o.grid + o.uncrossed]
         + [(name, dict(kw)) for name, kw in REPRESENTATIVE])


def _pair(name, kw, dtype=torch.float32, sizes=SIZES, seed=0, **storage):
    gen = torch.Generator().manual_seed(seed)
    pc = [torch.nn.Parameter(torch.randn(n, generator=gen).to(dtype)) for n in sizes]
    pr = [torch.nn.Parameter(p.detach().clone()) for p in pc]
    cls = getattr(fusedopt, name)
    return pc, pr, cls(pc, **kw, **storage, backend="cpu"), cls(pr, **kw, **storage, backend="reference")


def _step_both(pc, pr, oc, orf, seed):
    """One step of each from the CPU's params and states (so each step is compared on its own;
    copied in place, so that the counters the optimizer keeps outside its state go on as well)."""
    with torch.no_grad():
        for a, b in zip(pr, pc):
            a.copy_(b)
            for key, v in oc.state[b].items():
                orf.state[a][key].copy_(v)
    gen = torch.Generator().manual_seed(seed)
    for a, b in zip(pc, pr):
        g = torch.randn(a.shape, generator=gen).to(a.dtype)
        a.grad, b.grad = g.clone(), g.clone()
    oc.step()
    orf.step()


def _compare_states(oc, orf, pc, pr, what):
    differ = total = 0
    for a, b in zip(pc, pr):
        for key, v in oc.state[a].items():
            w = orf.state[b][key]
            if v.dtype == torch.uint8:
                d = (v.int() - w.int()).abs()
                assert d.numel() == 0 or int(d.max()) <= 1, (what, key)
                differ += int((d != 0).sum())
                total += d.numel()
            elif key.endswith(lowbit.ABSMAX_SUFFIX):
                torch.testing.assert_close(v, w, rtol=1e-5, atol=0, msg=f"{what} {key}")
            else:
                torch.testing.assert_close(v, w, rtol=1e-5, atol=1e-5, msg=f"{what} {key}")
    assert differ <= CODE_SLACK * max(total, 1), (what, differ, total)
    return differ, total


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_8bit_step_matches_the_reference(case):
    """Every option of every algorithm, 8-bit states on every size (min_8bit_size=1): three steps,
    each from the same params and states: params within the float32 tolerance, scales within
    float32 rounding, codes equal but for a counted few that differ by one."""
    name, kw = case
    pc, pr, oc, orf = _pair(name, kw, state_dtype="8bit", min_8bit_size=1)
    for step in range(3):
        _step_both(pc, pr, oc, orf, seed=10 + step)
        for a, b in zip(pc, pr):
            torch.testing.assert_close(a, b, rtol=TOL[torch.float32][0], atol=TOL[torch.float32][1])
        _compare_states(oc, orf, pc, pr, f"{case_id(case)} step {step}")
    assert all(oc.state[p]["step"] == 3 for p in pc if "step" in oc.state[p])


@pytest.mark.parametrize("name", ["Adam", "SGD", "LAMB"])
@pytest.mark.parametrize("extra", [{"master_weights": True}, {"stochastic_rounding": True, "rounding_seed": 7}, {}],
                         ids=["master", "sr", "rn"])
def test_8bit_states_with_16bit_params(name, extra):
    kw = {"SGD": {"lr": 0.01, "momentum": 0.9}}.get(name, {})
    pc, pr, oc, orf = _pair(name, kw, dtype=torch.bfloat16, state_dtype="8bit", min_8bit_size=1, **extra)
    for step in range(3):
        _step_both(pc, pr, oc, orf, seed=20 + step)
        for a, b in zip(pc, pr):
            differ = int((a.detach().view(torch.int16) != b.detach().view(torch.int16)).sum())
            assert differ <= max(2, 0.002 * a.numel()), (name, extra, differ, a.numel())
            torch.testing.assert_close(a.float(), b.float(), rtol=TOL[torch.bfloat16][0], atol=TOL[torch.bfloat16][1])
        _compare_states(oc, orf, pc, pr, f"{name} {extra} step {step}")


# -- the quantizer, bit for bit ----------------------------------------------------------------

def _crafted(signed: bool) -> torch.Tensor:
    """Blocks of 256 that probe the rule: exact midpoints (absmax 1), their float32 neighbours,
    a negative maximum, NaN, inf, zeros (and -0.0), subnormals, six decades of magnitudes."""
    qmap = lowbit.dynamic_map(signed)
    mid = lowbit.midpoints(qmap)
    one = torch.ones(1)
    up = torch.nextafter(mid, torch.tensor(float("inf")))
    down = torch.nextafter(mid, torch.tensor(float("-inf")))
    blocks = [torch.cat([one, mid]), torch.cat([one, up]), torch.cat([one, down]), torch.cat([one, qmap[:-1]])]
    if signed:
        blocks.append(torch.cat([-one, -mid]))  # absmax from a negative element
    gen = torch.Generator().manual_seed(3)
    wide = torch.randn(256, generator=gen) * torch.logspace(-6, 0, 256)
    blocks.append(wide if signed else wide.abs())
    nan = wide.clone()
    nan[5] = float("nan")
    inf = wide.clone()
    inf[7] = float("inf")
    zeros = torch.zeros(256)
    if signed:
        zeros[::2] = -0.0
    tiny = torch.full((256,), 1e-40) * torch.arange(256)  # subnormals
    blocks += [nan, inf, zeros, tiny, wide[:100]]  # and a partial last block
    return torch.cat(blocks)


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_quantizer_is_the_rule_bit_for_bit(signed):
    """SGD's first momentum step stores the gradient itself as the buffer (signed map); Adamax's
    first exp_inf with eps 0 is |g| (unsigned map): the codes and scales are lowbit's, exactly."""
    x = _crafted(signed)
    p = torch.nn.Parameter(torch.zeros_like(x))
    if signed:
        opt = fusedopt.SGD([p], lr=0.0, momentum=0.5, state_dtype="8bit", min_8bit_size=1, backend="cpu")
        slot = "momentum_buffer"
    else:
        opt = fusedopt.Adamax([p], lr=0.0, eps=0.0, state_dtype="8bit", min_8bit_size=1, backend="cpu")
        slot = "exp_inf"
    p.grad = x.clone()
    opt.step()
    codes, absmax = lowbit.quantize_blockwise(x.abs() if not signed else x, lowbit.state_map(slot))
    got_codes, got_absmax = opt.state[p][slot], opt.state[p][slot + lowbit.ABSMAX_SUFFIX]
    assert torch.equal(got_codes, codes), (got_codes != codes).nonzero()[:10].flatten().tolist()
    assert torch.equal(got_absmax.isnan(), absmax.isnan())
    assert torch.equal(got_absmax.nan_to_num(), absmax.nan_to_num())


# -- stochastic rounding ----------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("offset_scale", [1.0, 1e-5, 1e-9], ids=["normal", "small", "fp16-subnormal"])
def test_stochastic_rounding_is_the_rule_bit_for_bit(dtype, offset_scale):
    """Plain SGD (p - lr * g, the same float32 value in both) on several params of two groups
    and odd sizes: the stored 16-bit params are the reference's bit for bit, over three steps."""
    sizes = [1, 3, 257, 16384 + 300]
    gen = torch.Generator().manual_seed(4)
    pc = [torch.nn.Parameter((torch.randn(n, generator=gen) * offset_scale).to(dtype)) for n in sizes]
    pr = [torch.nn.Parameter(p.detach().clone()) for p in pc]

    def make(params, backend):
        groups = [{"params": params[:2], "lr": 1e-3 * offset_scale}, {"params": params[2:], "lr": 3e-4 * offset_scale}]
        return fusedopt.SGD(groups, lr=1.0, stochastic_rounding=True, rounding_seed=2 ** 63 + 5, backend=backend)

    oc, orf = make(pc, "cpu"), make(pr, "reference")
    for step in range(3):
        g = [torch.randn(p.shape, generator=gen).to(dtype) for p in pc]
        for a, b, gi in zip(pc, pr, g):
            a.grad, b.grad = gi.clone(), gi.clone()
        oc.step()
        orf.step()
        for a, b in zip(pc, pr):
            assert torch.equal(a.detach().view(torch.int16), b.detach().view(torch.int16)), (dtype, step)


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
