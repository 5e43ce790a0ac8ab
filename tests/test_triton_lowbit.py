"""What only the Triton backend has of 8-bit states and stochastic rounding (the rules are
``fusedopt/lowbit.py``'s; the direct calls every fused backend shares, every algorithm against
the reference, are tests/test_lowbit_calls.py's):

- the quantizer, dequantizer and stochastic rounding of the kernels, alone, bit for bit against
  ``lowbit`` (small jitted kernels calling them): NaN, inf, zero and subnormal blocks, exact
  midpoints, partial blocks; special values, large seeds, steps and offsets;
- the cached launch tables, keyed on the seeds; bad scales, states and rounding refused;
- the 8-bit and stochastic-rounding variants compile for sm_90 without a GPU.

Run in Triton's interpreter on CPU tensors (``TRITON_INTERPRET=1``, set here and by conftest.py),
or, with ``TRITON_INTERPRET=0`` on a machine with a GPU, compiled on CUDA tensors (the reference
then runs on the GPU too).
"""
from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

triton = pytest.importorskip("triton", reason="triton is not installed")
import triton.language as tl  # noqa: E402

from fusedopt import backends, lowbit  # noqa: E402
from parity import clone_call, compile_for_sm90  # noqa: E402
from lowbit_parity import exact_sgd_call, lowbit_call  # noqa: E402

ft = pytest.importorskip("fusedopt.triton")
from fusedopt.triton import kernels as K  # noqa: E402
from fusedopt.triton import launcher  # noqa: E402

# The kernels run in the interpreter on CPU tensors, or compiled on CUDA tensors.
DEVICE = torch.device("cpu" if ft.INTERPRETED else "cuda")
runs = pytest.mark.skipif(not ft.INTERPRETED and not torch.cuda.is_available(),
                          reason="kernels compiled for CUDA (TRITON_INTERPRET is not 1) and no GPU")

BLOCK = ft.block_size()  # one program's chunk (4096 in the interpreter)
SIZES = (0, 1, 255, 257, 300, BLOCK + 1)


def _int64(v):
    v &= (1 << 64) - 1
    return v - (1 << 64) if v >> 63 else v


# -- the kernels' rules alone ------------------------------------------------------------------

@pytest.fixture(scope="module")
def jitted():
    """Small kernels calling the traversal's quantizer, dequantizer and stochastic rounding."""

    @triton.jit
    def quantize(x_ptr, codes_ptr, absmax_ptr, mid_ptr, n, BLOCK: tl.constexpr):
        start = tl.program_id(0) * BLOCK
        offs = start + tl.arange(0, BLOCK)
        valid = offs < n
        x = tl.load(x_ptr + offs, mask=valid, other=float("nan"))  # past n: must count as 0
        codes, absmax = K._quantize(x, valid, mid_ptr, BLOCK)
        tl.store(codes_ptr + offs, codes, mask=valid)
        blocks = start // 256 + tl.arange(0, BLOCK // 256)
        tl.store(absmax_ptr + blocks, absmax, mask=blocks * 256 < n)

    @triton.jit
    def dequantize(codes_ptr, absmax_ptr, map_ptr, out_ptr, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        valid = offs < n
        codes = tl.load(codes_ptr + offs, mask=valid, other=0)
        x = K._dequantize(codes, tl.load(absmax_ptr + offs // 256, mask=valid, other=0.0), map_ptr)
        tl.store(out_ptr + offs, x, mask=valid)

    @triton.jit
    def round16(x_ptr, out_ptr, seed, step, offset, n, P_DTYPE: tl.constexpr, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        valid = offs < n
        x = tl.load(x_ptr + offs, mask=valid, other=0.0)
        index = (offset.to(tl.int64) + offs).to(tl.uint64, bitcast=True)
        bits = K._random_bits(seed.to(tl.int64).to(tl.uint64, bitcast=True),
                              step.to(tl.int64).to(tl.uint64, bitcast=True), index)
        tl.store(out_ptr + offs, K._stochastic_round(x, bits, P_DTYPE), mask=valid)

    return quantize, dequantize, round16


def _quantizer_inputs(qmap):
    """Blocks of 256: wide-range values, zeros, signed zeros, a NaN, +-inf, the exact midpoints
    (with 1.0: absmax 1, so y is each midpoint), their float32 neighbours, the map's own values
    scaled, a negative maximum, subnormals; then a partial block."""
    gen = torch.Generator().manual_seed(3)

    def rnd():
        return torch.randn(256, generator=gen) * torch.exp(3 * torch.randn(256, generator=gen))

    mids = lowbit.midpoints(qmap)
    exact = torch.cat([mids, torch.ones(1)])
    nan, inf = rnd(), rnd()
    nan[17] = float("nan")
    inf[200] = float("inf")
    ninf = rnd()
    ninf[0] = -float("inf")
    neg = rnd().abs()
    neg[5] = -2 * float(neg.max())
    signed_zeros = torch.where(torch.rand(256, generator=gen) < 0.5, -0.0, 0.0)
    blocks = [rnd(), torch.zeros(256), signed_zeros, nan, inf, ninf, exact,
              torch.cat([torch.nextafter(mids, torch.tensor(-2.0)), torch.ones(1)]),
              torch.cat([torch.nextafter(mids, torch.tensor(2.0)), torch.ones(1)]),
              qmap * 3.0, neg, rnd() * 1e-40, torch.full((256,), 1e-45), rnd()[:100]]
    return torch.cat(blocks).float()


@runs
@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # numpy on the NaN and inf blocks
@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
@pytest.mark.parametrize("block", [256, 1024, 4096])
def test_quantizer_is_lowbits_bit_for_bit(jitted, signed, block):
    """Codes and block absmax of the kernels' quantizer equal lowbit.quantize_blockwise's, bit for
    bit (NaN absmax where the block holds a NaN); dequantizing codes equals
    lowbit.dequantize_blockwise's, including NaN and inf scales. Work items of 1, 4 and 16 blocks."""
    quantize, dequantize, _ = jitted
    qmap = lowbit.dynamic_map(signed)
    maps = launcher.state_maps(DEVICE)[0 if signed else 1]
    assert torch.equal(maps[:256].cpu(), qmap) and torch.equal(maps[256:511].cpu(), lowbit.midpoints(qmap))
    x = _quantizer_inputs(qmap)
    n = x.numel()
    codes = torch.empty(n, dtype=torch.uint8, device=DEVICE)
    absmax = torch.empty(-(-n // 256), device=DEVICE)
    quantize[(triton.cdiv(n, block),)](x.to(DEVICE), codes, absmax, maps[256:], n, BLOCK=block)
    codes, absmax = codes.cpu(), absmax.cpu()
    want_codes, want_absmax = lowbit.quantize_blockwise(x, qmap)
    torch.testing.assert_close(absmax, want_absmax, rtol=0, atol=0, equal_nan=True)
    assert torch.equal(absmax.isnan(), want_absmax.isnan()) and want_absmax.isnan().any()
    assert torch.equal(codes, want_codes)
    assert torch.equal(codes[6 * 256: 7 * 256].long(), torch.arange(1, 257).clamp(max=255))  # ties go up

    # dequantize lowbit's codes with scales of every kind (NaN, inf, 0, subnormal)
    scales = want_absmax.clone()
    scales[:4] = torch.tensor([float("nan"), float("inf"), 0.0, 1e-40])
    out = torch.empty(n, device=DEVICE)
    dequantize[(triton.cdiv(n, block),)](want_codes.to(DEVICE), scales.to(DEVICE), maps, out, n, BLOCK=block)
    torch.testing.assert_close(out.cpu(), lowbit.dequantize_blockwise(want_codes, scales, qmap), rtol=0, atol=0,
                               equal_nan=True)


_SR_SPECIALS = [0.0, -0.0, float("inf"), -float("inf"), float("nan"), 65504.0, 65519.0, 65520.0, 65535.9, 65536.0,
                1e5, -7e4, 3.3895e38, 3.39e38, -3.4e38, 2 ** -14, 2 ** -14 * 0.999, 2 ** -24, 2 ** -25, 2 ** -33,
                2 ** -40, 2 ** -56, 2 ** -60, 1e-40, -1e-42, 1e-45, 5.9e-8, -6e-5, 1.0, -1.0 - 2 ** -20]


@runs
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
def test_stochastic_rounding_is_lowbits_bit_for_bit(jitted, dtype):
    """The kernels' Philox4x32-10 bits and rounding equal lowbit.stochastic_round's, bit for
    bit: normal, subnormal, overflowing, infinite and NaN inputs; 64-bit seeds, steps and offsets
    (their high words in use)."""
    _, _, round16 = jitted
    gen = torch.Generator().manual_seed(0)
    x = torch.cat([torch.tensor(_SR_SPECIALS),
                   torch.randn(3000, generator=gen) * torch.exp(8 * torch.randn(3000, generator=gen))]).float()
    tl_dtype = tl.bfloat16 if dtype == torch.bfloat16 else tl.float16
    for seed, step, offset in ((1234, 1, 0), (2 ** 63 + 5, 2 ** 33 + 7, 3 << 40), (2 ** 64 - 1, 7, 2 ** 32 - 100)):
        out = torch.empty(x.shape, dtype=dtype, device=DEVICE)
        round16[(triton.cdiv(x.numel(), 1024),)](x.to(DEVICE), out, _int64(seed), _int64(step), _int64(offset),
                                                 x.numel(), tl_dtype, BLOCK=1024)
        want = lowbit.stochastic_round(x, dtype, seed, step, offset)
        assert torch.equal(out.cpu().view(torch.int16), want.view(torch.int16)), (seed, step, offset)


# -- direct backend calls ----------------------------------------------------------------------

def _call(algo, options, dtype=torch.float32, sizes=SIZES, **kw):
    """lowbit_parity.lowbit_call on the Triton device."""
    return lowbit_call(algo, options, sizes, dtype, device=DEVICE, **kw)


@runs
def test_tables_cached_and_keyed_on_seeds():
    """A steady call builds no new table; a new seed (a table value, not an address) does."""
    rounding = [(1, 0), (1, 1 << 40)]
    spec, call = exact_sgd_call(torch.bfloat16, rounding, True, (300, 5), device=DEVICE)
    tri = backends.get_backend("triton", DEVICE)
    out = clone_call(call)
    tri.step(**out)
    builds = ft.table_cache().builds
    tri.step(**out)
    assert ft.table_cache().builds == builds
    tri.step(**dict(out, rounding=[(2, o) for _, o in rounding]))
    assert ft.table_cache().builds == builds + 1


@runs
def test_rejections():
    tri = backends.get_backend("triton", DEVICE)
    spec, call = _call("adam", {}, sizes=(300, 5))
    bad = clone_call(call)
    bad["scales"][0][1] = torch.zeros(2, device=DEVICE)  # 5 elements: one block
    with pytest.raises(ValueError, match="scales"):
        tri.step(**bad)
    bad = clone_call(call)
    bad["scales"] = bad["scales"][:1]
    with pytest.raises(ValueError, match="scales"):
        tri.step(**bad)
    bad = clone_call(call)
    bad["states"][1] = [t.float() for t in bad["states"][1]]
    with pytest.raises(TypeError, match="uint8"):
        tri.step(**bad)
    with pytest.raises(ValueError, match="rounding"):
        tri.step(**dict(clone_call(call), rounding=[(1, 0)]))


# -- the compiled kernel, without a GPU --------------------------------------------------------

_AOT_SCRIPT = r'''
import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from fusedopt.triton import kernels as K

fn = K.multi_tensor_kernel


def algo(name):
    scalars, math, reduced = K.rule(name)
    return dict(SCALARS=scalars, MATH=math, REDUCED=reduced, READS_GRAD=scalars is not None)


SR = K.ROUND_STOCHASTIC.value
base = dict(algo("adam"), NCOL=6, NHYPER=7, P_DTYPE=tl.bfloat16, G_DTYPE=tl.bfloat16, S_DTYPE=tl.uint8,
            PRESENT=3, HAS_MASTER=False, HAS_GRAD_SCALE=True, HAS_FOUND_INF=True, FLAG=False, RNE_P=False,
            RNE_S=False, ALIGNED=True, BLOCK=2048, PHASE=0, SPLIT=False)
variants = [  # NCOL: param, grad, slots, master, 6 with 8-bit states, 2 with stochastic rounding
    dict(NCOL=6 + 6 + 2, RNE_P=SR),                                               # Adam, 8-bit, SR
    dict(algo("sgd"), NCOL=4 + 2, NHYPER=6, PRESENT=0, S_DTYPE=tl.float32, P_DTYPE=tl.float16,
         G_DTYPE=tl.float16, RNE_P=SR),                                            # SGD, SR only
    dict(algo("sgd"), NCOL=4 + 6 + 2, NHYPER=6, PRESENT=1, RNE_P=SR),            # SGD, 8-bit, SR
]
pointers = dict(addrs="*i64", meta="*i64", work="*i64", steps="*fp32", hyper="*fp64",
                grad_scale_ptr="*fp32", found_inf_ptr="*fp32", alpha="fp32", partials="*fp64", sums="*fp64")
for v in variants:
    cx = dict(base, **v)
    sig = {name: "constexpr" if name in cx else pointers[name] for name in fn.arg_names}
    k = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=cx), target=GPUTarget("cuda", 90, 32),
                       options={"num_warps": 4})
    ptx = k.asm["ptx"]
    assert "ld.global.v4" in ptx and "st.global.v4" in ptx, ("no 16-byte accesses", v)
    for approx in ("div.full", "div.approx", "sqrt.approx", "rsqrt.approx"):
        assert approx not in ptx, (approx, v)
    if cx["S_DTYPE"] == tl.uint8:  # the dequantizing multiply is its own instruction, never an fma
        assert "mul.rn.f32" in ptx and "div.rn.f32" in ptx, ("dequantize, quantize", v)
    if cx["RNE_P"] == SR:  # Philox's mulhilo
        assert "mul.hi.u32" in ptx and "mul.lo.s32" in ptx, ("philox", v)
    print("ok", cx["MATH"].__name__, cx["S_DTYPE"], cx["RNE_P"])
'''


def test_8bit_and_stochastic_rounding_compile_for_sm90(tmp_path):
    """Adam and SGD with 8-bit states and/or stochastic rounding compile for an H100 (sm_90) here,
    without a GPU: 16-byte vector accesses on full chunks, IEEE division, the dequantizing
    multiply as ``mul.rn.f32`` (not contracted into an fma with the update), Philox's
    ``mul.hi.u32``."""
    out = compile_for_sm90(_AOT_SCRIPT, tmp_path)
    assert sum(line.startswith("ok ") for line in out.splitlines()) == 3, out
