"""fusedopt.lowbit: the eager reference of 8-bit block-wise states and stochastic rounding.

Every expectation here is computed independently of the code under test: the map from the
tree's bit patterns with exact rationals, codes by brute force over the 256 values, Philox from
Random123's published known-answer vectors and a scalar big-integer implementation, and the
rounding neighbours from torch's own conversion and nextafter.
"""
from __future__ import annotations

import math
import struct
from fractions import Fraction

import numpy as np
import pytest
import torch

from fusedopt import lowbit
from fusedopt.lowbit import (BLOCK, MIN_ELEMENTS, dequantize_blockwise, dynamic_map, midpoints, philox4x32,
                             quantize_blockwise, random_bits, stochastic_round)

M32 = 0xFFFFFFFF
INF = float("inf")


# --------------------------------------------------------------------------- helpers

def f32(v: float) -> float:
    """Round a Python float to float32 (round to nearest even) and back."""
    return struct.unpack("<f", struct.pack("<f", v))[0]


def f32_bits(v: float) -> int:
    return struct.unpack("<I", struct.pack("<f", v))[0]


def f32_from_bits(b: int) -> float:
    return struct.unpack("<f", struct.pack("<I", b))[0]


def round_f32_exact(q: Fraction) -> float:
    """The float32 nearest to the rational q (ties to even), decided in exact arithmetic."""
    c = f32(float(q))
    b = f32_bits(c)
    cands = {c, f32_from_bits(b + 1), f32_from_bits(b - 1) if b & 0x7FFFFFFF else c}
    best = min(cands, key=lambda v: (abs(Fraction(v) - q), f32_bits(v) & 1))
    return best


def tree_values(signed: bool) -> list[Fraction]:
    """The map's 256 values from the dynamic tree's bit patterns (Dettmers 2016), exactly.

    Signed: [sign][k zeros][1][f fraction bits] in 8 bits; unsigned: the same without the sign.
    The pattern with no indicator bit is 0; the spare pattern (-0 signed, 0b00000001 unsigned,
    the would-be 8th decimal level) holds 1.0, as in bitsandbytes.
    """
    width = 7 if signed else 8
    out = []
    for byte in range(256):
        neg = signed and byte >> 7
        rest = byte & ((1 << width) - 1)
        k = width - rest.bit_length()              # leading zeros
        f = width - k - 1                          # fraction bits after the indicator
        if rest == 0:
            out.append(Fraction(1) if neg else Fraction(0))
            continue
        if not signed and k == 7:                  # 0b00000001: the spare code
            out.append(Fraction(1))
            continue
        j = rest & ((1 << f) - 1)
        frac = Fraction(1, 10) + Fraction(9, 10) * Fraction(2 * j + 1, 2 ** (f + 1))
        v = frac / 10**k
        out.append(-v if neg else v)
    return sorted(out)


def ref_absmax(flat: np.ndarray, block: int) -> np.ndarray:
    n = flat.size
    nb = -(-n // block)
    return np.array([np.abs(flat[b * block:(b + 1) * block]).max() for b in range(nb)], dtype=np.float32)


def ref_y(flat: np.ndarray, block: int) -> np.ndarray:
    """y = x / absmax as float32 (numpy float32 division is IEEE), 0 where absmax is 0."""
    am = np.repeat(ref_absmax(flat, block), block)[:flat.size]
    with np.errstate(divide="ignore", invalid="ignore"):
        y = (flat.astype(np.float32) / am).astype(np.float32)
    return np.where(am == 0, np.float32(0), y)


def brute_nearest(y: np.ndarray, qmap: np.ndarray) -> np.ndarray:
    """Index of the nearest map value by brute force in float64 (exact for these operands), ties up."""
    d = np.abs(y.astype(np.float64)[:, None] - qmap.astype(np.float64)[None, :])
    return 255 - np.argmin(d[:, ::-1], axis=1)


def brute_rule(y: np.ndarray, qmap: np.ndarray) -> np.ndarray:
    """#{k : y >= mid32[k]} with the midpoints rounded in numpy float32, dense comparisons."""
    q = qmap.astype(np.float32)
    mid = ((q[:-1] + q[1:]) * np.float32(0.5)).astype(np.float32)
    return (y[:, None] >= mid[None, :]).sum(axis=1)


def philox_ref(ctr, key, rounds=10):
    """Scalar Philox4x32 with Python big integers (full 64-bit products)."""
    c = [v & M32 for v in ctr]
    k = [v & M32 for v in key]
    for r in range(rounds):
        if r:
            k = [(k[0] + 0x9E3779B9) & M32, (k[1] + 0xBB67AE85) & M32]
        p0 = 0xD2511F53 * c[0]
        p1 = 0xCD9E8D57 * c[2]
        c = [((p1 >> 32) ^ c[1] ^ k[0]) & M32, p1 & M32, ((p0 >> 32) ^ c[3] ^ k[1]) & M32, p0 & M32]
    return c


def neighbours(x: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The representable values of ``dtype`` just below and above x (equal when x is representable).

    From torch's round-to-nearest conversion and nextafter, independently of the code under test.
    """
    c = x.to(dtype)
    c32 = c.float()
    up = torch.nextafter(c, torch.full_like(c, INF))
    down = torch.nextafter(c, torch.full_like(c, -INF))
    lo = torch.where(c32 <= x, c, down)
    hi = torch.where(c32 >= x, c, up)
    return lo, hi


def bits16(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int16).to(torch.int32) & 0xFFFF


def spread(n: int, lo_exp: float, hi_exp: float, gen: torch.Generator) -> torch.Tensor:
    """float32 values with random signs and log-uniform magnitudes 2**[lo_exp, hi_exp)."""
    e = torch.rand(n, generator=gen, dtype=torch.float64) * (hi_exp - lo_exp) + lo_exp
    m = torch.rand(n, generator=gen, dtype=torch.float64) + 1.0
    s = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0).double()
    return (s * m * torch.pow(2.0, e)).to(torch.float32)


# --------------------------------------------------------------------------- the map

@pytest.mark.parametrize("signed", [True, False])
def test_map_properties(signed):
    q = dynamic_map(signed)
    assert q.dtype == torch.float32 and q.shape == (256,)
    assert torch.all(q[1:] > q[:-1])                       # sorted, distinct
    assert q.min() >= -1 and q.max() == 1
    assert (q == 0).sum() == 1 and (q == 1).sum() == 1
    if signed:
        assert q[127] == 0 and q[255] == 1
        assert not (q == -1).any()                         # the extra value is +1, there is no -1
        assert torch.equal(q[:127], -q[128:255].flip(0))  # symmetric except the spare +1
        assert (q < 0).sum() == 127 and (q > 0).sum() == 128
    else:
        assert q[0] == 0 and q[255] == 1
        assert (q >= 0).all()


@pytest.mark.parametrize("signed", [True, False])
def test_map_equals_correctly_rounded_tree(signed):
    """Every entry is the exact tree value rounded once to float32 (no double-rounding case)."""
    want = [round_f32_exact(v) for v in tree_values(signed)]
    assert dynamic_map(signed).tolist() == want


def test_map_hand_values():
    s = dynamic_map(True).tolist()
    assert s[127] == 0.0 and s[255] == 1.0
    assert s[128] == f32(0.55e-6)                     # 10**-6 level: one value, the centre of [0.1, 1]
    assert s[129] == f32(0.1e-5 + 0.9e-5 / 4)         # 10**-5 level, 2 values: 3.25e-6, 7.75e-6
    assert s[130] == f32(0.1e-5 + 0.9e-5 * 3 / 4)
    assert s[191] == f32(0.1 + 0.9 / 128)             # first of the 64 values of the 10**0 level
    assert s[254] == f32(0.1 + 0.9 * 127 / 128)       # 0.99296875
    assert s[0] == -s[254]
    u = dynamic_map(False).tolist()
    assert u[0] == 0.0 and u[255] == 1.0
    assert u[1] == f32(0.1e-6 + 0.9e-6 / 4)           # 3.25e-7
    assert u[2] == f32(0.1e-6 + 0.9e-6 * 3 / 4)       # 7.75e-7
    assert u[3] == f32(0.1e-5 + 0.9e-5 / 8)           # 2.125e-6
    assert u[127] == 0.103515625                      # 53/512: first of the 128 values at 10**0
    assert u[254] == f32(0.1 + 0.9 * 255 / 256)


def test_midpoints_are_float32_half_sums():
    for signed in (True, False):
        q = dynamic_map(signed)
        qn = q.numpy()
        want = (qn[:-1] + qn[1:]) * np.float32(0.5)
        mid = midpoints(q)
        assert mid.dtype == torch.float32 and mid.shape == (255,)
        assert np.array_equal(mid.numpy(), want)
        assert torch.all(mid[1:] > mid[:-1])
        assert torch.all((mid > q[:-1]) & (mid < q[1:]))


def test_constants():
    assert BLOCK == 256 and MIN_ELEMENTS == 4096
    assert lowbit.uses_8bit(4096) and not lowbit.uses_8bit(4095)


# --------------------------------------------------------------------------- quantization

@pytest.mark.parametrize("signed", [True, False])
def test_map_values_times_absmax_round_trip(signed):
    gen = torch.Generator().manual_seed(1)
    q = dynamic_map(signed)
    nb = 40
    codes = torch.randint(0, 256, (nb, BLOCK), generator=gen)
    codes[:, 17] = 255                                           # |value| 1.0 sets the absmax
    scales = torch.pow(2.0, torch.rand(nb, generator=gen) * 60 - 30) * (1 + torch.rand(nb, generator=gen))
    scales = scales.to(torch.float32)
    x = q[codes] * scales[:, None]
    c, a = quantize_blockwise(x.view(-1), q)
    assert torch.equal(a, scales)
    assert torch.equal(c.long(), codes.view(-1))
    back = dequantize_blockwise(c, a, q)
    assert torch.equal(back, x.view(-1))


@pytest.mark.parametrize("signed", [True, False])
def test_code_is_nearest_value(signed):
    gen = torch.Generator().manual_seed(2)
    q = dynamic_map(signed)
    n = 64 * BLOCK + 100
    x = spread(n, -30, 10, gen)
    if not signed:
        x = x.abs()
    x[5] = 0.0
    codes, absmax = quantize_blockwise(x, q)
    flat = x.numpy()
    assert np.array_equal(absmax.numpy(), ref_absmax(flat, BLOCK))
    y = ref_y(flat, BLOCK)
    got = codes.numpy().astype(np.int64)
    # the documented rule, by dense comparison against the float32 midpoint table
    assert np.array_equal(got, brute_rule(y, q.numpy()))
    # the nearest value in exact arithmetic; it may differ only where y lies between the exact
    # midpoint and its float32 rounding, and then by one code
    near = brute_nearest(y, q.numpy())
    qd = q.numpy().astype(np.float64)
    exact_mid = (qd[:-1] + qd[1:]) / 2
    mid32 = midpoints(q).numpy().astype(np.float64)
    differ = np.nonzero(got != near)[0]
    for i in differ:
        k = min(got[i], near[i])
        assert abs(got[i] - near[i]) == 1
        assert min(exact_mid[k], mid32[k]) <= y[i] <= max(exact_mid[k], mid32[k])
    assert len(differ) <= n // 1000


@pytest.mark.parametrize("signed", [True, False])
def test_ties_go_to_the_upper_code(signed):
    q = dynamic_map(signed)
    mid = midpoints(q)
    below = torch.nextafter(mid, torch.full_like(mid, -INF))
    for values, want in ((mid, torch.arange(1, 256)), (below, torch.arange(0, 255))):
        x = torch.zeros(BLOCK)
        x[0] = 1.0                                             # absmax 1: y == x exactly
        x[1:] = values
        codes, absmax = quantize_blockwise(x, q)
        assert absmax.tolist() == [1.0]
        assert codes[0] == 255
        assert torch.equal(codes[1:].long(), want)


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("scale", [3.0, 0.7, 1e-5])
def test_y_is_an_ieee_division(signed, scale):
    """Near every midpoint (a few ulps either side of mid * absmax): y = x / absmax, correctly rounded."""
    q = dynamic_map(signed)
    mid = midpoints(q).numpy()
    a = np.float32(scale)
    centre = (mid * a).astype(np.float32).view(np.int32)
    cand = (centre[:, None] + np.arange(-3, 4, dtype=np.int32)[None, :]).reshape(-1).view(np.float32)
    cand = cand[np.abs(cand) <= a]
    x = np.concatenate([[a], cand]).astype(np.float32)     # a: the block's absmax
    nb = -(-x.size // BLOCK)
    x = np.concatenate([x.reshape(-1), np.zeros(nb * BLOCK - x.size, np.float32)])
    x[::BLOCK] = a                                          # every block has absmax a
    codes, absmax = quantize_blockwise(torch.from_numpy(x), q)
    assert (absmax.numpy() == a).all()
    y = (x / a).astype(np.float32)
    assert np.array_equal(codes.numpy().astype(np.int64), brute_rule(y, q.numpy()))


@pytest.mark.parametrize("signed", [True, False])
def test_error_bound(signed):
    gen = torch.Generator().manual_seed(3)
    q = dynamic_map(signed)
    x = spread(50 * BLOCK + 33, -20, 20, gen)
    if not signed:
        x = x.abs()
    codes, absmax = quantize_blockwise(x, q)
    back = dequantize_blockwise(codes, absmax, q)
    qd = q.double()
    gaps = qd[1:] - qd[:-1]
    half = torch.zeros(256, dtype=torch.float64)
    half[:-1] = gaps / 2
    half[1:] = torch.maximum(half[1:], gaps / 2)               # the larger neighbouring half gap
    a = absmax.double().repeat_interleave(BLOCK)[:x.numel()]
    err = (x.double() - back.double()).abs()
    bound = half[codes.long()] * a + 4 * 2.0**-24 * a         # + float32 rounding of / and *
    assert torch.all(err <= bound)
    if signed:   # a negative block maximum lands on qmap[0]: the documented 0.7 % worst case
        neg_max = torch.tensor([-3.0] + [1.0] * 9)
        c, a1 = quantize_blockwise(neg_max, q)
        assert c[0] == 0 and dequantize_blockwise(c, a1, q)[0] == q[0] * 3.0


def test_partial_last_block_and_shapes():
    gen = torch.Generator().manual_seed(4)
    q = dynamic_map(True)
    x = torch.randn(3, 5, 53, generator=gen)                  # 795 elements: 3 blocks + 27
    x.view(-1)[-3] = -40.0                                   # the last block's absmax
    codes, absmax = quantize_blockwise(x, q)
    assert codes.shape == x.shape and codes.dtype == torch.uint8
    assert absmax.shape == (4,) and absmax.dtype == torch.float32
    flat = x.reshape(-1)
    for b in range(4):
        assert absmax[b] == flat[b * BLOCK:(b + 1) * BLOCK].abs().max()
    assert absmax[3] == 40.0
    assert codes.view(-1)[-3] == 0                           # y = -1 -> the lowest code
    back = dequantize_blockwise(codes, absmax, q)
    assert back.shape == x.shape and back.dtype == torch.float32
    y = ref_y(flat.numpy(), BLOCK)
    assert np.array_equal(codes.view(-1).numpy().astype(np.int64), brute_rule(y, q.numpy()))
    # flattened row-major order also for a non-contiguous view
    xt = x.transpose(0, 2)
    ct, at = quantize_blockwise(xt, q)
    c2, a2 = quantize_blockwise(xt.contiguous(), q)
    assert torch.equal(ct, c2) and torch.equal(at, a2)


def test_other_block_size():
    q = dynamic_map(False)
    x = torch.arange(1, 101, dtype=torch.float32)
    codes, absmax = quantize_blockwise(x, q, block=64)
    assert absmax.tolist() == [64.0, 100.0]
    assert codes[63] == 255 and codes[99] == 255
    assert dequantize_blockwise(codes, absmax, q, block=64).shape == (100,)


def test_scale_shape_and_per_row_scales():
    """Rows of whole blocks keep their scales per row: the same scales in the same order, which
    dequantize as the flat ones do; other shapes keep them flat."""
    assert lowbit.scale_shape((7, 512)) == (7, 2) and lowbit.scale_shape((3, 2, 128)) == (3, 1)
    assert lowbit.scale_shape((512, 7)) == (14,) and lowbit.scale_shape((4096,)) == (16,)
    assert lowbit.scale_shape((0, 256)) == (0, 1) and lowbit.scale_shape(()) == (1,)
    assert lowbit.scale_shape((5, 100), block=50) == (5, 2)
    x = torch.randn(7, 512, generator=torch.Generator().manual_seed(3))
    q = dynamic_map(True)
    codes, absmax = quantize_blockwise(x, q)
    assert absmax.shape == (14,)
    rows = absmax.view(lowbit.scale_shape(x.shape))
    assert torch.equal(rows, x.abs().view(7, 2, 256).amax(dim=2))
    assert torch.equal(dequantize_blockwise(codes, rows, q), dequantize_blockwise(codes, absmax, q))
    with pytest.raises(ValueError, match="absmax"):
        dequantize_blockwise(codes, rows[:, :1], q)


def test_zero_block():
    for signed, zero_code in ((True, 127), (False, 0)):
        q = dynamic_map(signed)
        x = torch.ones(3 * BLOCK)
        x[BLOCK:2 * BLOCK] = 0.0
        x[BLOCK + 7] = -0.0
        codes, absmax = quantize_blockwise(x, q)
        assert absmax.tolist() == [1.0, 0.0, 1.0]
        assert (codes[BLOCK:2 * BLOCK] == zero_code).all()
        back = dequantize_blockwise(codes, absmax, q)
        assert (back[BLOCK:2 * BLOCK] == 0).all() and not torch.signbit(back[BLOCK:2 * BLOCK]).any()
        assert (back[:BLOCK] == 1).all()


def test_one_element_and_scalar():
    q = dynamic_map(True)
    codes, absmax = quantize_blockwise(torch.tensor([-3.5]), q)
    assert codes.tolist() == [0] and absmax.tolist() == [3.5]
    assert dequantize_blockwise(codes, absmax, q).tolist() == [f32(q[0].item() * 3.5)]
    codes, absmax = quantize_blockwise(torch.tensor(2.0), q)
    assert codes.shape == () and codes.item() == 255 and absmax.tolist() == [2.0]
    assert dequantize_blockwise(codes, absmax, q).item() == 2.0


def test_empty_tensor():
    q = dynamic_map(False)
    codes, absmax = quantize_blockwise(torch.empty(0, 5), q)
    assert codes.shape == (0, 5) and codes.dtype == torch.uint8
    assert absmax.shape == (0,) and absmax.dtype == torch.float32
    back = dequantize_blockwise(codes, absmax, q)
    assert back.shape == (0, 5) and back.dtype == torch.float32


def test_nan_and_inf_blocks():
    q = dynamic_map(True)
    x = torch.linspace(-1, 1, 3 * BLOCK)
    x[10] = float("nan")
    x[BLOCK + 3] = INF
    codes, absmax = quantize_blockwise(x, q)
    assert math.isnan(absmax[0]) and absmax[1] == INF and absmax[2] == x[2 * BLOCK:].abs().max()
    assert (codes[:BLOCK] == 0).all()                        # NaN y fails every y >= mid
    assert codes[BLOCK + 3] == 0                             # inf / inf = NaN
    back = dequantize_blockwise(codes, absmax, q)
    assert torch.isnan(back[:BLOCK]).all()
    assert not torch.isfinite(back[BLOCK:2 * BLOCK]).any()
    clean, _ = quantize_blockwise(x[2 * BLOCK:], q)
    assert torch.equal(codes[2 * BLOCK:], clean)             # other blocks unaffected


def test_dequantize_checks():
    q = dynamic_map(True)
    codes, absmax = quantize_blockwise(torch.randn(300), q)
    with pytest.raises(ValueError):
        dequantize_blockwise(codes, absmax[:1], q)
    with pytest.raises(TypeError):
        dequantize_blockwise(codes.long(), absmax, q)
    with pytest.raises(ValueError):
        quantize_blockwise(torch.randn(10), q.double())


# --------------------------------------------------------------------------- Philox

KAT = [  # Random123 kat_vectors, philox4x32 10 rounds: counter, key, expected
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((M32, M32, M32, M32), (M32, M32), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


KAT7 = [  # the same file's 7-round lines: they pin the key schedule's round count too
    ((0, 0, 0, 0), (0, 0), (0x5F6FB709, 0x0D893F64, 0x4F121F81, 0x4F730A48)),
    ((M32, M32, M32, M32), (M32, M32), (0x5207DDC2, 0x45165E59, 0x4D8EE751, 0x8C52F662)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0x4DFCCABA, 0x190A87F0, 0xC47362BA, 0xB6B5242A)),
]


@pytest.mark.parametrize("rounds,ctr,key,want", [(10, *v) for v in KAT] + [(7, *v) for v in KAT7])
def test_philox_known_answers(rounds, ctr, key, want):
    out = philox4x32(tuple(torch.tensor([c]) for c in ctr), key, rounds=rounds)
    assert [int(o) for o in out] == list(want)
    assert philox_ref(ctr, key, rounds) == list(want)         # the scalar reference used below


def test_philox_vectorised_matches_scalar():
    gen = torch.Generator().manual_seed(5)
    n = 300
    ctr = [torch.randint(0, 2**32, (n,), generator=gen, dtype=torch.int64) for _ in range(4)]
    ctr[0][:4] = torch.tensor([0, M32, 1, 2**31])
    key = (0xDEADBEEF, 0x01234567)
    out = philox4x32(tuple(ctr), key)
    for i in range(0, n, 7):
        assert [int(o[i]) for o in out] == philox_ref([int(c[i]) for c in ctr], key)
    # broadcasting: tensor keys and scalar counter lanes
    k0 = torch.tensor([[1], [2]])
    out = philox4x32((torch.arange(3), 0, 5, 0), (k0, 9))
    assert out[0].shape == (2, 3)
    assert int(out[2][1, 2]) == philox_ref([2, 0, 5, 0], [2, 9])[2]


def test_random_bits_layout_and_determinism():
    seed, step = 0x1234_5678_9ABC_DEF0, 2**33 + 7
    idx = torch.tensor([0, 1, 2**32 + 5, 2**40 + 3])
    got = random_bits(seed, step, idx)
    assert torch.equal(got, random_bits(seed, step, idx.clone()))
    for i, v in zip(idx.tolist(), got.tolist()):
        ctr = [v_ & M32 for v_ in (i, i >> 32, step, step >> 32)]
        assert v == philox_ref(ctr, [seed & M32, seed >> 32])[0]
    # negative seeds and steps are taken mod 2**64
    assert torch.equal(random_bits(-1, -2, idx), random_bits(2**64 - 1, 2**64 - 2, idx))
    assert torch.equal(random_bits(seed, step, idx.to(torch.int32)[:2]), got[:2])
    with pytest.raises(TypeError):
        random_bits(seed, step, idx.float())


def test_random_bits_vary_with_seed_step_index():
    idx = torch.arange(4096)
    base = random_bits(7, 3, idx)
    assert base.min() >= 0 and base.max() < 2**32
    assert base.unique().numel() >= 4090
    for other in (random_bits(8, 3, idx), random_bits(7 + 2**32, 3, idx), random_bits(7, 4, idx),
                  random_bits(7, 3 + 2**32, idx), random_bits(7, 3, idx + 1), random_bits(7, 3, idx + 2**32)):
        assert (other == base).sum() <= 2
    # roughly uniform: every bit set about half the time (5 standard errors of 4096 draws)
    for b in range(32):
        ones = ((base >> b) & 1).sum().item()
        assert abs(ones - 2048) < 5 * 32


# --------------------------------------------------------------------------- stochastic rounding

DTYPES = [torch.bfloat16, torch.float16]
EMAX = {torch.bfloat16: 128, torch.float16: 16}   # 2**EMAX: the value +-inf stands for


def expected_round(x: torch.Tensor, dtype: torch.dtype, bits: torch.Tensor) -> list[float]:
    """The rule in exact rational arithmetic: up iff bits < floor(2**32 * frac)."""
    lo, hi = neighbours(x, dtype)
    out = []
    for xv, lv, hv, r in zip(x.tolist(), lo.float().tolist(), hi.float().tolist(), bits.tolist()):
        if lv == hv or math.isnan(xv):
            out.append(lv)
            continue
        small, big = sorted((abs(lv), abs(hv)))
        big_q = Fraction(2**EMAX[dtype]) if big == INF else Fraction(big)
        frac = (Fraction(abs(xv)) - Fraction(small)) / (big_q - Fraction(small))
        t32 = math.floor(frac * 2**32)
        out.append(math.copysign(big if r < t32 else small, xv))
    return out


@pytest.mark.parametrize("dtype", DTYPES)
def test_result_is_a_neighbour_and_follows_the_rule(dtype):
    gen = torch.Generator().manual_seed(6)
    if dtype == torch.float16:
        x = torch.cat([spread(3000, -60, 17, gen), spread(1000, -26, -13, gen)])   # subnormals, overflow
    else:
        x = torch.cat([spread(3000, -149, 128, gen), spread(500, -135, -120, gen)])
    x = x[torch.isfinite(x)]
    lo, hi = neighbours(x, dtype)
    for seed, step, off in ((0, 1, 0), (12345, 77, 10**6)):
        r = stochastic_round(x, dtype, seed, step, index_offset=off)
        assert r.dtype == dtype and r.shape == x.shape
        assert torch.all((bits16(r) == bits16(lo)) | (bits16(r) == bits16(hi)))
        bits = random_bits(seed, step, torch.arange(x.numel()) + off)
        assert r.float().tolist() == expected_round(x, dtype, bits)
    # some draws go each way
    r = stochastic_round(x, dtype, 3, 1).float()
    strict = lo.float() != hi.float()
    assert (r[strict] == lo.float()[strict]).any() and (r[strict] == hi.float()[strict]).any()


def _index_with_bits(seed: int, step: int, lo: int, hi: int, low_zero_bits: int = 0) -> tuple[int, int]:
    """The first index below 4096 whose random bits lie in [lo, hi) (and end in zeros), and the bits."""
    bits = random_bits(seed, step, torch.arange(4096))
    ok = (bits >= lo) & (bits < hi) & (bits & ((1 << low_zero_bits) - 1) == 0)
    i = int(torch.nonzero(ok)[0])
    return i, int(bits[i])


def _round_one(v: float, dtype: torch.dtype, seed: int, step: int, index: int) -> int:
    return int(bits16(stochastic_round(torch.tensor([v]), dtype, seed, step, index_offset=index))[0])


def test_threshold_comparison_is_strict_and_exact():
    """up iff bits < t32, checked where t32 is made equal to the element's own random bits."""
    seed, step = 21, 4
    # fp16, s = 32: x = m * 2**-56 with m in [2**23, 2**24) has N = 0 and t32 = m exactly
    i, r = _index_with_bits(seed, step, 2**23, 2**24)
    assert _round_one(r * 2.0**-56, torch.float16, seed, step, i) == 0x0000         # bits == t32: down
    assert _round_one((r + 1) * 2.0**-56, torch.float16, seed, step, i) == 0x0001   # bits < t32: up
    assert _round_one(-(r + 1) * 2.0**-56, torch.float16, seed, step, i) == 0x8001
    # fp16, s = 33: t32 = m >> 1 truncates the 33rd fraction bit
    i, r = _index_with_bits(seed, step, 2**22, 2**23)
    assert _round_one((2 * r + 1) * 2.0**-57, torch.float16, seed, step, i) == 0x0000
    assert _round_one((2 * r + 2) * 2.0**-57, torch.float16, seed, step, i) == 0x0001
    # fp16 normal range: t32 = (A & 0x1FFF) << 19, so up iff (bits >> 19) < (A & 0x1FFF)
    i, r = _index_with_bits(seed, step, 2**19, 2**32)
    one = f32_bits(1.0)
    assert _round_one(f32_from_bits(one + (r >> 19)), torch.float16, seed, step, i) == 0x3C00
    assert _round_one(f32_from_bits(one + (r >> 19) + 1), torch.float16, seed, step, i) == 0x3C01
    # bf16: t32 = (A & 0xFFFF) << 16, so up iff (bits >> 16) < (A & 0xFFFF)
    i, r = _index_with_bits(seed, step, 2**16, 2**32)
    assert _round_one(f32_from_bits(one + (r >> 16)), torch.bfloat16, seed, step, i) == 0x3F80
    assert _round_one(f32_from_bits(one + (r >> 16) + 1), torch.bfloat16, seed, step, i) == 0x3F81
    # bf16 with t32 == bits exactly: an element whose bits have 16 low zero bits (seed 2 has one
    # below index 4096; the search itself is part of the test)
    i, r = _index_with_bits(2, step, 1, 2**32, low_zero_bits=16)
    assert _round_one(f32_from_bits(one + (r >> 16)), torch.bfloat16, 2, step, i) == 0x3F80
    assert _round_one(f32_from_bits(one + (r >> 16) + 1), torch.bfloat16, 2, step, i) == 0x3F81


def test_bf16_rule_is_the_classic_bit_trick():
    gen = torch.Generator().manual_seed(7)
    x = spread(5000, -149, 127, gen)
    bits = random_bits(99, 5, torch.arange(x.numel()))
    a = x.view(torch.int32).to(torch.int64) & M32
    trick = (a + ((~bits & M32) >> 16)) & 0xFFFF0000          # add ~bits' high half, truncate
    want = torch.tensor([f32_from_bits(v) for v in trick.tolist()])
    assert torch.equal(stochastic_round(x, torch.bfloat16, 99, 5).float(), want)


@pytest.mark.parametrize("dtype", DTYPES)
def test_representable_values_unchanged(dtype):
    gen = torch.Generator().manual_seed(8)
    x = (torch.randn(2000, generator=gen) * 10).to(dtype)
    info = torch.finfo(dtype)
    extra = torch.tensor([0.0, -0.0, info.max, -info.max, info.tiny, info.smallest_normal / 4,
                          2.0**-133 if dtype == torch.bfloat16 else 2.0**-24, 1.0, -2.0], dtype=dtype)
    x = torch.cat([x, extra])
    for seed in (0, 1, 2**40 + 3):
        r = stochastic_round(x.float(), dtype, seed, 9)
        assert torch.equal(bits16(r), bits16(x))


@pytest.mark.parametrize("dtype", DTYPES)
def test_unbiased(dtype):
    """The mean over 4096 draws (512 seeds x 8 element indices) converges to x."""
    if dtype == torch.float16:
        vals = [1.0 + 1 / 3, -3.14159, 1e-3, 2.5e-6, 3e-8, -7e-5, 65510.0, 0.1]
    else:
        vals = [1.0 + 1 / 3, -3.14159, 1e-3, 2.5e-20, 1e-40, -7e-5, 3e38, 0.1]
    x = torch.tensor(vals, dtype=torch.float32)
    reps = 8
    xr = x.repeat(reps)
    ups = torch.zeros(len(vals), dtype=torch.float64)
    total = torch.zeros(len(vals), dtype=torch.float64)
    lo, hi = neighbours(x, dtype)
    small = torch.minimum(lo.float().abs(), hi.float().abs()).double()
    big = torch.maximum(lo.float().abs(), hi.float().abs()).double()
    seeds = 512
    for seed in range(seeds):
        r = stochastic_round(xr, dtype, seed, 1).double().abs().view(reps, -1)
        ups += (r == big).sum(0)
        total += torch.where(torch.isinf(r), 0.0, r).sum(0)
    n = seeds * reps
    p = (x.double().abs() - small) / (big.clamp(max=2.0**EMAX[dtype]) - small)
    se = torch.sqrt(n * p * (1 - p))
    assert torch.all((ups - n * p).abs() <= 5 * se + 1)
    assert torch.all((p > 0.05) & (p < 0.95))                # the test values are not near-degenerate
    finite = ~torch.isinf(hi.float())
    mean = total[finite] / n
    mean_se = (big - small)[finite] * torch.sqrt(p * (1 - p))[finite] / math.sqrt(n)
    assert torch.all((mean - x.double().abs()[finite]).abs() <= 5 * mean_se)


@pytest.mark.parametrize("dtype", DTYPES)
def test_specials(dtype):
    x = torch.tensor([float("nan"), -float("nan"), INF, -INF, 0.0, -0.0])
    r = stochastic_round(x, dtype, 4, 2)
    assert torch.isnan(r[:2]).all()
    assert bits16(r[:2]).tolist() == [0x7FC0 if dtype == torch.bfloat16 else 0x7E00] * 2
    assert r[2].item() == INF and r[3].item() == -INF
    assert bits16(r[4:]).tolist() == [0x0000, 0x8000]


def test_fp16_subnormals_and_tiny():
    sub = 2.0**-24
    x = torch.tensor([0.3 * sub, -0.7 * sub, 2.5 * sub, 1023.5 * sub, 2.0**-14 - 2.0**-30, 2.0**-40, -2.0**-60,
                      1e-45], dtype=torch.float32)
    lo, hi = neighbours(x, torch.float16)
    seen_hi = torch.zeros(x.numel(), dtype=torch.bool)
    for seed in range(64):
        r = stochastic_round(x, torch.float16, seed, 1)
        assert torch.all((bits16(r) == bits16(lo)) | (bits16(r) == bits16(hi)))
        seen_hi |= bits16(r) == bits16(hi)
        # below 2**-56 the probability is under 2**-32: always zero, sign kept
        assert bits16(r[6:]).tolist() == [0x8000, 0x0000]
    assert seen_hi[:5].all()
    # 1023.5 * 2**-24 rounds up to 1024 * 2**-24 = 2**-14, the smallest normal (bits 0x0400)
    assert bits16(hi)[3] == 0x0400 and bits16(hi)[4] == 0x0400


@pytest.mark.parametrize("dtype", DTYPES)
def test_overflow_goes_to_inf(dtype):
    info = torch.finfo(dtype)
    top = info.max
    ulp_top = 2.0**EMAX[dtype] - top                         # the gap up to the virtual 2**emax
    x = torch.tensor([top + ulp_top / 2, -(top + ulp_top / 4)], dtype=torch.float32)
    if dtype == torch.float16:
        x = torch.cat([x, torch.tensor([70000.0, -1e30, 65536.0])])
    draws = [stochastic_round(x, dtype, s, 1).float() for s in range(256)]
    r = torch.stack(draws)
    assert torch.all((r[:, 0] == top) | (r[:, 0] == INF))
    assert torch.all((r[:, 1] == -top) | (r[:, 1] == -INF))
    assert (r[:, 0] == INF).any() and (r[:, 0] == top).any()
    if dtype == torch.float16:
        assert (r[:, 2] == INF).all() and (r[:, 3] == -INF).all() and (r[:, 4] == INF).all()
    # exactly half way to the virtual 2**emax: P(inf) = 1/2, i.e. bits < 2**31
    bits = random_bits(0, 1, torch.arange(x.numel()))
    assert (stochastic_round(x, dtype, 0, 1)[0].item() == INF) == (bits[0].item() < 2**31)


def test_index_offset_and_shape():
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(6, 50, generator=gen)
    for dtype in DTYPES:
        full = stochastic_round(x, dtype, 11, 3)
        assert full.shape == (6, 50)
        part = stochastic_round(x.reshape(-1)[70:].contiguous(), dtype, 11, 3, index_offset=70)
        assert torch.equal(bits16(part), bits16(full.reshape(-1)[70:]))
        xt = x.t()                                            # flattened order of the view
        assert torch.equal(bits16(stochastic_round(xt, dtype, 11, 3)),
                           bits16(stochastic_round(xt.contiguous(), dtype, 11, 3)))
        assert not torch.equal(bits16(stochastic_round(x, dtype, 11, 4)), bits16(full))
        assert not torch.equal(bits16(stochastic_round(x, dtype, 12, 3)), bits16(full))


def test_stochastic_round_checks():
    with pytest.raises(TypeError):
        stochastic_round(torch.ones(3, dtype=torch.float64), torch.bfloat16, 0, 1)
    with pytest.raises(ValueError):
        stochastic_round(torch.ones(3), torch.float32, 0, 1)
    assert stochastic_round(torch.ones(0, 2), torch.float16, 0, 1).shape == (0, 2)
