"""Low-bit optimizer states and params: the eager reference ("oracle") of two storage rules.

This module is the bit-exact specification that the C++ CPU, CUDA and Triton kernels are
tested against. Every rule below uses only float32 arithmetic (each operation rounded to
nearest even, no fused multiply-add) and uint32/uint64 integer arithmetic, so that it can be
written the same way in every backend. Nothing here is tuned for speed.

1. ``state_dtype="8bit"``: block-wise dynamic quantization
==========================================================

Dettmers, Lewis, Shleifer & Zettlemoyer, "8-bit Optimizers via Block-wise Quantization"
(ICLR 2022); the map is the "dynamic tree quantization" of Dettmers, "8-Bit Approximations for
Parallelism in Deep Learning" (ICLR 2016).

A state tensor with at least ``MIN_ELEMENTS`` (4096) elements is stored as

- ``codes``: uint8, the state's shape, and
- ``absmax``: float32, one per block of ``BLOCK`` (256) consecutive elements in flattened
  (row-major) order; ``ceil(n / 256)`` of them, the last block possibly partial. (An optimizer
  keeps them in ``scale_shape``: ``[rows, blocks per row]`` when rows are whole blocks, so that
  a param sharded by rows holds the scales of its own rows.)

Signed states (``SIGNED_STATES``: momentum_buffer, exp_avg, grad_avg) use
``dynamic_map(True)``, non-negative ones (``UNSIGNED_STATES``: exp_avg_sq, max_exp_avg_sq, sum,
square_avg, acc_delta, exp_inf) ``dynamic_map(False)``. Smaller tensors stay float32: quantizing them saves almost no memory,
and bitsandbytes draws the same line (its ``min_8bit_size`` default is 4096).

Per element (``b = i // 256``)::

    x      = qmap[code] * absmax[b]                      # dequantize: ONE float32 multiply
    ... float32 optimizer update of x ...
    absmax = max_i |x_i| over the block, float32          # exact; NaN if the block holds a NaN
    y      = 0 if absmax == 0 else x / absmax             # IEEE float32 division, correctly rounded
    code   = #{k in 0..254 : y >= mid[k]}                 # mid = midpoints(qmap), float32

Why block-wise: one outlier only costs the precision of its own 256 elements, and a block's
absmax is computed without a global reduction (a block fits in one warp/work item). Why a
dynamic (floating-point-like) map instead of a linear one: optimizer states span many orders
of magnitude inside a block (exp_avg_sq especially); the tree map has relative precision
roughly constant over six decades below absmax.

The map (``dynamic_map``)
-------------------------
The dynamic tree code reads a byte as: [sign bit, signed map only], then ``k`` zero bits, then
an indicator 1 bit, then ``f`` fraction bits. The value is ``+-10**-k * frac`` where ``frac`` is
the centre of the ``j``-th of ``2**f`` equal sub-intervals of ``[0.1, 1]``::

    frac(j, f) = 0.1 + 0.9 * (2*j + 1) / 2**(f + 1)     j = 0 .. 2**f - 1

so a level ``k`` holds ``n_k = 2**f`` values, and every bit spent on the exponent is taken
from the fraction. Following bitsandbytes' ``create_dynamic_map`` (the maps its 8-bit
optimizers use), exactly 7 decimal levels ``k = 0 .. 6`` are used:

- signed map: 7 bits after the sign, so ``n_k = 2**(6 - k)`` = 64, 32, 16, 8, 4, 2, 1 values
  per level and sign: 127 positive values, their 127 negatives, ``0`` and ``1``.
- unsigned map: 8 bits, so ``n_k = 2**(7 - k)`` = 128, 64, ..., 2 values per level: 254
  positive values, ``0`` and ``1`` (the tree's 8th level, the single pattern ``00000001``,
  is given to 1.0 instead).

In exact arithmetic ``value(k, j) = (2*n_k + 9*(2*j + 1)) / (20 * n_k * 10**k)``, a quotient
of two integers below 2**32; it is evaluated as ONE float64 division of those integers
(correctly rounded) and then rounded ONCE to float32. (The tests check that this equals the
correctly rounded float32 of the exact rational for all 512 entries, i.e. there is no
double-rounding case.) Codes are the indices of the SORTED table (ascending), not the tree's
bit patterns: the table is all a kernel needs, and sorted order makes the code search a binary
search. Kernels should embed the 256 float32 constants (e.g. as hex) rather than recompute them.

Consequences:

- Both maps hold exactly 256 distinct values, contain 0 and 1, and lie in [-1, 1]. Code 255
  is 1.0 in both maps; 0.0 is code 127 (signed) and code 0 (unsigned).
- The signed map CANNOT be symmetric: a set symmetric about 0 that contains 0 has an odd
  number of elements, and 256 is even. The tree's two zeros (+0 and -0) leave one spare code,
  which holds +1.0; there is no -1.0. ``qmap[0] = -qmap[254] = -float32(0.99296875)`` (the
  exact value is ``-(0.1 + 0.9 * 127/128)``), and ``qmap[i] = -qmap[254 - i]`` for
  ``i <= 127``. A block whose absmax comes from a NEGATIVE element therefore stores that
  element as ``-0.99296875 * absmax`` (relative error 0.7 %, half a top-level gap), while a
  positive maximum is exact. This is bitsandbytes' behaviour too.
- bitsandbytes builds its table with float32 ``linspace`` arithmetic, so individual entries of
  its table may differ from ours in the last bit (not verified here); ours is defined by the
  exact rational above.

Code choice (``midpoints``, tie rule)
-------------------------------------
``mid[k] = (qmap[k] + qmap[k + 1]) * 0.5`` in float32 (one rounded add, an exact halving), 255
strictly increasing values. The code is the number of midpoints ``<= y``, i.e. a binary
search with ``y >= mid[k]`` comparisons (or ``torch.searchsorted(mid, y, right=True)``). So:

- the chosen value is the nearest map value, up to the float32 rounding of the midpoints
  (``mid[k]`` may sit half an ulp off the true midpoint; the table, not the real midpoint,
  is the rule);
- a ``y`` EQUAL to a midpoint goes to the UPPER code;
- ``y`` below the whole map (``y = -1`` with the signed map) goes to code 0, above it to 255;
- ``y`` NaN fails every comparison: code 0, with either implementation.

Why this form: one comparison type (``>=``) against one table is branch-free, identical in a
binary search, a linear count and ``searchsorted``, and leaves no room for a backend to break
ties its own way; exact ties are measure-zero in practice, so upward is as good as any.

Special values: a NaN in a block makes its absmax NaN (the absmax reduction must propagate
NaN: CUDA's ``fmaxf`` and C's ``fmax`` DROP NaNs, so kernels need ``a > m || a != a``), every
``y`` of that block is NaN, every code 0, and the block dequantizes to NaN. An infinity makes
absmax inf: its own ``y`` is NaN (inf/inf) and the other ``y`` are 0, so the block dequantizes
to non-finite values (``0 * inf``). Either is a diverged optimizer; the rule only promises to be
deterministic. An all-zero block (absmax 0, including -0.0 elements) stores absmax 0 and the
code of +0.0, and dequantizes to +0.0 (-0.0 is not preserved).

Implementation notes for kernels: the division must be IEEE (nvcc without
``--use_fast_math``, ``__fdiv_rn``; in Triton ``tl.math.div_rn``, as Triton's fp32 ``/`` has
lowered to the approximate ``div.full.f32``); do not replace it by a multiply with
``1/absmax`` (different rounding); the dequantizing multiply must not be contracted into an FMA
with the update (``__fmul_rn``, ``-ffp-contract=off``).

2. ``stochastic_rounding=True``: float32 -> bf16/fp16 with a counter-based generator
====================================================================================

A 16-bit param updated in float32 is stored as one of the two neighbouring representable
values, the one above with probability proportional to the distance, so ``E[stored] = x`` and
small updates are not systematically lost to round-to-nearest.

The random numbers: Philox4x32-10
---------------------------------
Salmon, Moraes, Dror & Shaw, "Parallel Random Numbers: As Easy as 1, 2, 3" (SC 2011; the
Random123 library). Philox is a keyed bijection of a 128-bit counter: any element's bits are
computed independently of every other, so eager torch, a vectorised C++ loop, a CUDA thread or
a Triton program get the same bits whatever their tiling and ordering, with no generator
state to carry or advance. Philox4x32-10 needs only 32x32->64-bit multiplies (``mulhilo``),
xors and adds, which every backend has (``__umulhi``, ``tl.umulhi``), and it passes BigCrush.
It is what cuRAND's Philox and PyTorch's CUDA generator use.

``philox4x32(counter, key)``: 10 rounds; each round maps ``(c0, c1, c2, c3)`` with key
``(k0, k1)`` to ``(hi(M1*c2) ^ c1 ^ k0, lo(M1*c2), hi(M0*c0) ^ c3 ^ k1, lo(M0*c0))`` with
``M0 = 0xD2511F53``, ``M1 = 0xCD9E8D57``, and the key is bumped by ``(0x9E3779B9, 0xBB67AE85)``
(mod 2**32) between rounds. The result matches Random123's known-answer vectors (tests).

``random_bits(seed, step, index)`` uses, with ``seed``, ``step`` and ``index`` taken mod 2**64
(two's complement, as a C cast to uint64 does)::

    key     = (seed & 0xFFFFFFFF, seed >> 32)
    counter = (index & 0xFFFFFFFF, index >> 32, step & 0xFFFFFFFF, step >> 32)
    bits    = lane 0 of philox4x32(counter, key)

Why: the seed selects the stream (the key), and the counter enumerates (element, step) pairs
without collision for any tensor size and any number of steps. Only lane 0 is used so that an
element's bits depend on nothing but its own index: a kernel never has to share one Philox call
among 4 elements that may live in different threads/blocks (the step is memory-bound, so the
3 discarded lanes cost nothing measurable). ``step`` is the param's step count after this
step's increment (1 on the first step). Different params of one optimizer must not reuse the
same ``(seed, index)`` range: give each param a distinct ``index_offset`` (e.g. its offset in a
flat enumeration of all params) or a distinct seed.

The rounding rule (``stochastic_round``)
----------------------------------------
Let ``a = |x|``, ``lo`` the largest representable magnitude ``<= a`` (truncation toward zero)
and ``hi`` the next one up. With ``frac = (a - lo) / (hi - lo)`` in [0, 1)::

    t32 = floor(frac * 2**32)            # an integer in [0, 2**32)
    up  = bits < t32                     # unsigned 32-bit comparison
    result = sign(x) * (hi if up else lo)

so ``P(up) = t32 / 2**32``, which equals ``frac`` exactly whenever ``frac * 2**32`` is an integer.
Representable values have ``frac = 0`` and are returned unchanged (including +-0.0, whose sign is
kept). In integer form, with ``A`` the float32 bit pattern of ``a`` (sign cleared):

- bfloat16 (16 bits dropped, all finite float32 including subnormals)::

      result bits = (A >> 16) + up,   t32 = (A & 0xFFFF) << 16

  The bf16 encoding is the float32 encoding's top half and both are monotone in the magnitude,
  so +1 is the next magnitude, across binades too. This is exactly the classic trick
  ``(A + ((~bits) >> 16)) & 0xFFFF0000`` (up iff ``(bits >> 16) < (A & 0xFFFF)``), and it is
  exactly unbiased for every finite input below the overflow boundary.
- float16, normal range ``a >= 2**-14`` (``A >= 0x38800000``; 13 bits dropped)::

      result bits = min((A >> 13) - 0x1C000 + up, 0x7C00),   t32 = (A & 0x1FFF) << 19

  (``(A >> 13) - 0x1C000`` re-biases the exponent from 127 to 15.) Exactly unbiased below the
  overflow boundary.
- float16, subnormal range ``a < 2**-14``: fp16 subnormals are the integers ``N`` times 2**-24,
  so write ``a * 2**24 = N + frac`` (exact in float32: a power-of-two scaling). With ``m`` the
  24-bit significand of ``a`` (implicit bit included; ``E`` the biased exponent, ``m = A`` for
  float32 subnormals) and ``s = 126 - E`` (``125`` if ``E == 0``), ``a * 2**24 = m / 2**s`` with
  ``s >= 14``, hence::

      result bits = N + up,   N = m >> s,   t32 = (m << (32 - s)) mod 2**32  if s <= 32
                                                  m >> (s - 32)                if s > 32

  (equivalently, in float32: ``t = a * 2**24; N = floor(t); t32 = (uint32)((t - N) * 2**32)``).
  ``N + up = 1024`` is 0x0400, the smallest normal: the encoding is linear across the boundary.
  Exactly unbiased for ``a >= 2**-33`` (at most 32 fraction bits). Below that ``frac`` can have
  more bits than the 32 random bits can resolve: ``t32`` truncates it, which lowers ``P(up)``
  by less than 2**-32, a bias below 2**-56 in absolute value; ``a < 2**-56`` always becomes +-0.

Overflow: the neighbour above the largest finite value ``M`` (bf16 ``0x7F7F`` ~ 3.39e38, fp16
``0x7BFF`` = 65504) is +-inf, standing for the value ``2**(emax + 1)`` (2**128, 2**16) that
continues the float spacing; a finite ``a`` in ``(M, 2**(emax + 1))`` becomes +-inf with
probability ``(a - M) / (2**(emax + 1) - M)``, and (fp16 only) ``a >= 2**16`` becomes +-inf
always. Saturating to ``M`` would silently bias the param; an infinity shows the overflow, as
round-to-nearest would (it overflows from 65520 up for fp16). +-inf stay +-inf. NaN becomes the
canonical quiet NaN (bf16 ``0x7FC0``, fp16 ``0x7E00``; sign and payload dropped): NaNs need a
special case anyway, since adding to a NaN pattern can carry into inf or into the sign bit.
"""
from __future__ import annotations

import math
import operator
from functools import lru_cache

import torch

__all__ = ["BLOCK", "MIN_ELEMENTS", "SIGNED_STATES", "UNSIGNED_STATES", "ABSMAX_SUFFIX", "uses_8bit", "state_map",
           "dynamic_map", "midpoints", "scale_shape", "quantize_blockwise", "dequantize_blockwise", "dequantize_state_dict",
           "philox4x32", "random_bits", "stochastic_round"]

BLOCK = 256
MIN_ELEMENTS = 4096
# Every state slot of every algorithm, by its name (torch.optim's: a name means the same state in
# every algorithm that has it): signed, or never negative (the unsigned map, twice the codes).
SIGNED_STATES = frozenset({"momentum_buffer", "exp_avg", "grad_avg"})
UNSIGNED_STATES = frozenset({"exp_avg_sq", "max_exp_avg_sq", "sum", "square_avg", "acc_delta", "exp_inf"})
# An 8-bit state ``name`` is two entries of the param's state: ``name`` (uint8 codes, the param's
# shape) and ``name + ABSMAX_SUFFIX`` (float32, one per block).
ABSMAX_SUFFIX = "_absmax"

_MASK32 = 0xFFFFFFFF
_MASK64 = 0xFFFFFFFFFFFFFFFF


def uses_8bit(numel: int, min_elements: int = MIN_ELEMENTS) -> bool:
    """Whether a state tensor of ``numel`` elements is stored quantized under ``state_dtype="8bit"``
    (``min_elements``: the optimizer's ``min_8bit_size``)."""
    return numel >= min_elements


_MAPS: dict[tuple[bool, torch.device], torch.Tensor] = {}


def state_map(name: str, device: torch.device | str | None = None) -> torch.Tensor:
    """The map of state slot ``name``: :func:`dynamic_map` signed or unsigned (cached)."""
    if name in SIGNED_STATES:
        signed = True
    elif name in UNSIGNED_STATES:
        signed = False
    else:
        raise ValueError(f"state {name!r} has no 8-bit map (neither in SIGNED_STATES nor in UNSIGNED_STATES)")
    key = (signed, torch.device(device or "cpu"))
    if key not in _MAPS:
        _MAPS[key] = dynamic_map(signed, device=key[1])
    return _MAPS[key]


# --------------------------------------------------------------------------- the dynamic map

_LEVELS = 7  # decimal levels 10**0 .. 10**-6


def _level_sizes(signed: bool) -> list[int]:
    """Values per decimal level k = 0..6 (per sign): 64..1 for the signed map, 128..2 unsigned."""
    top = 64 if signed else 128
    return [top >> k for k in range(_LEVELS)]


@lru_cache(maxsize=2)
def _dynamic_map_values(signed: bool) -> tuple[float, ...]:
    """The map's values as float64, each the correctly rounded quotient of two integers."""
    values = [0.0, 1.0]
    for k, n in enumerate(_level_sizes(signed)):
        den = 20 * n * 10**k
        for j in range(n):
            v = (2 * n + 9 * (2 * j + 1)) / den  # int / int: one correctly rounded float64 division
            values.append(v)
            if signed:
                values.append(-v)
    values.sort()
    assert len(values) == 256 and len(set(values)) == 256
    return tuple(values)


def dynamic_map(signed: bool, device: torch.device | str | None = None) -> torch.Tensor:
    """The 256 float32 values of the dynamic tree quantization map, ascending (module docstring).

    Signed: 127 negative values, 0 (code 127), 127 positive values, 1.0 (code 255); no -1.0.
    Unsigned: 0 (code 0), 254 positive values, 1.0 (code 255). Returns a new tensor each call.
    """
    return torch.tensor(_dynamic_map_values(bool(signed)), dtype=torch.float64).to(torch.float32).to(device)


def _check_map(qmap: torch.Tensor) -> None:
    if qmap.dtype != torch.float32 or qmap.dim() != 1 or qmap.numel() != 256:
        raise ValueError(f"qmap must be a 1-D float32 tensor of 256 values, got {qmap.dtype} {tuple(qmap.shape)}")


def midpoints(qmap: torch.Tensor) -> torch.Tensor:
    """The 255 float32 decision thresholds ``(qmap[k] + qmap[k + 1]) * 0.5`` (rounded add, exact halving)."""
    _check_map(qmap)
    return (qmap[:-1] + qmap[1:]) * 0.5


def scale_shape(shape, block: int = BLOCK) -> tuple[int, ...]:
    """The shape an optimizer keeps the scales of an 8-bit state of ``shape`` in: ``[rows,
    blocks per row]`` when its rows (the elements per index of dim 0) are whole blocks, else
    ``[blocks]``. The same scales in the same order either way; the 2-D form lets a param
    sharded by rows (FSDP2) hold the scales of its rows, and keeps a checkpoint's shapes the same
    however its params were sharded."""
    shape = tuple(shape)
    row = math.prod(shape[1:])
    if len(shape) >= 2 and row % block == 0:
        return (shape[0], row // block)
    return (_num_blocks(math.prod(shape), block),)


def _num_blocks(n: int, block: int) -> int:
    return -(-n // block)


def _check_block(block: int) -> int:
    block = operator.index(block)
    if block <= 0:
        raise ValueError(f"block must be positive, got {block}")
    return block


def _block_absmax(flat: torch.Tensor, block: int) -> torch.Tensor:
    """max |x| per block of ``block`` elements (float32, exact), NaN if the block holds a NaN."""
    n = flat.numel()
    nb = _num_blocks(n, block)
    if nb == 0:
        return flat.new_empty(0)
    padded = torch.zeros(nb * block, dtype=flat.dtype, device=flat.device)  # |0| never raises a max
    padded[:n] = flat
    return padded.view(nb, block).abs().amax(dim=1)  # amax propagates NaN


def _codes_of(y: torch.Tensor, qmap: torch.Tensor) -> torch.Tensor:
    """code = #{k : y >= mid[k]} (int64); NaN fails every comparison and gets code 0."""
    mid = midpoints(qmap.to(y.device))
    codes = torch.searchsorted(mid, y, right=True)
    return torch.where(torch.isnan(y), torch.zeros_like(codes), codes)


def quantize_blockwise(x: torch.Tensor, qmap: torch.Tensor,
                       block: int = BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize ``x`` (converted to float32 first; a float64 input is rounded by that conversion).

    Returns ``(codes, absmax)``: uint8 codes of ``x``'s shape and the float32 absmax of each
    block of ``block`` consecutive elements in flattened order (``ceil(n / block)`` of them).
    ``y = x / absmax`` (float32 division; 0 where absmax is 0), ``code = #{k : y >= mid[k]}``.
    """
    _check_map(qmap)
    block = _check_block(block)
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {x.dtype}")
    flat = x.detach().reshape(-1).to(torch.float32)
    n = flat.numel()
    absmax = _block_absmax(flat, block)
    scale = absmax.repeat_interleave(block)[:n]
    y = torch.where(scale == 0, torch.zeros_like(flat), flat / scale)
    codes = _codes_of(y, qmap)
    return codes.to(torch.uint8).view(x.shape), absmax


def dequantize_blockwise(codes: torch.Tensor, absmax: torch.Tensor, qmap: torch.Tensor,
                         block: int = BLOCK) -> torch.Tensor:
    """``qmap[code] * absmax[i // block]`` as one float32 multiply per element; ``codes``' shape.
    ``absmax`` holds the blocks' scales in order, flat or in :func:`scale_shape`."""
    _check_map(qmap)
    block = _check_block(block)
    if codes.dtype != torch.uint8:
        raise TypeError(f"codes must be uint8, got {codes.dtype}")
    if absmax.dtype != torch.float32:
        raise TypeError(f"absmax must be a float32 tensor, got {absmax.dtype} {tuple(absmax.shape)}")
    absmax = absmax.reshape(-1)
    flat = codes.reshape(-1).long()
    n = flat.numel()
    if absmax.numel() != _num_blocks(n, block):
        raise ValueError(f"{n} codes need {_num_blocks(n, block)} absmax values, got {absmax.numel()}")
    values = qmap.to(codes.device)[flat]
    scale = absmax.repeat_interleave(block)[:n]
    return (values * scale).view(codes.shape)


# --------------------------------------------------------------------------- Philox4x32-10

PHILOX_M0 = 0xD2511F53
PHILOX_M1 = 0xCD9E8D57
PHILOX_W0 = 0x9E3779B9  # golden ratio
PHILOX_W1 = 0xBB67AE85  # sqrt(3) - 1
PHILOX_ROUNDS = 10

Lane = torch.Tensor | int


def _mulhilo32(a: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """High and low 32 bits of the 64-bit product ``a * m`` (``a`` int64 in [0, 2**32), ``m`` a uint32).

    ``m`` is split into 16-bit halves so that no int64 intermediate exceeds 2**49:
    ``a*m = t * 2**16 + (p & 0xFFFF)`` with ``p = a * (m & 0xFFFF)``, ``t = a * (m >> 16) + (p >> 16)``.
    """
    p = a * (m & 0xFFFF)
    t = a * (m >> 16) + (p >> 16)
    lo = ((t & 0xFFFF) << 16) | (p & 0xFFFF)
    return t >> 16, lo


def _lane(v: Lane, device: torch.device | None) -> torch.Tensor:
    """One 32-bit lane as an int64 tensor, taken mod 2**32."""
    if isinstance(v, torch.Tensor):
        if v.dtype != torch.int64:
            raise TypeError(f"Philox lanes must be int64 tensors or ints, got {v.dtype}")
        return v & _MASK32
    return torch.tensor(operator.index(v) & _MASK32, dtype=torch.int64, device=device)


def philox4x32(counter: tuple[Lane, Lane, Lane, Lane], key: tuple[Lane, Lane],
               rounds: int = PHILOX_ROUNDS) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Philox4x32 (10 rounds by default) of ``counter`` (4 lanes) under ``key`` (2 lanes).

    Lanes are int64 tensors (broadcast together) or ints, each taken mod 2**32; the result is 4
    int64 tensors with values in [0, 2**32), element-wise over the broadcast shape.
    """
    if len(counter) != 4 or len(key) != 2:
        raise ValueError("Philox4x32 takes 4 counter lanes and 2 key lanes")
    device = next((v.device for v in (*counter, *key) if isinstance(v, torch.Tensor)), None)
    c0, c1, c2, c3 = torch.broadcast_tensors(*(_lane(v, device) for v in counter))
    k0, k1 = (_lane(v, device) for v in key)
    for r in range(rounds):
        if r:
            k0 = (k0 + PHILOX_W0) & _MASK32
            k1 = (k1 + PHILOX_W1) & _MASK32
        hi0, lo0 = _mulhilo32(c0, PHILOX_M0)
        hi1, lo1 = _mulhilo32(c2, PHILOX_M1)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3


def random_bits(seed: int, step: int, index: torch.Tensor) -> torch.Tensor:
    """32 random bits (as int64 in [0, 2**32)) per element of the integer tensor ``index``.

    Lane 0 of Philox4x32-10 with key ``(seed lo32, seed hi32)`` and counter
    ``(index lo32, index hi32, step lo32, step hi32)``; seed, step and index taken mod 2**64.
    """
    if index.is_floating_point() or index.is_complex() or index.dtype == torch.bool:
        raise TypeError(f"index must be an integer tensor, got {index.dtype}")
    seed = operator.index(seed) & _MASK64
    step = operator.index(step) & _MASK64
    idx = index.to(torch.int64)
    counter = (idx & _MASK32, (idx >> 32) & _MASK32, step & _MASK32, step >> 32)
    return philox4x32(counter, (seed & _MASK32, seed >> 32))[0]


# --------------------------------------------------------------------------- stochastic rounding

_BF16_NAN = 0x7FC0
_FP16_NAN = 0x7E00
_FP16_INF = 0x7C00
_FP16_MIN_NORMAL_F32 = 0x38800000  # 2**-14 as float32 bits
_FP16_REBIAS = (127 - 15) << 10     # 0x1C000: float32 bits >> 13 minus this = fp16 bits


def _bf16_parts(mag: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(truncated bf16 magnitude bits, t32) of float32 magnitude bits ``mag``."""
    return mag >> 16, (mag & 0xFFFF) << 16


def _fp16_parts(mag: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(truncated fp16 magnitude bits, t32) of float32 magnitude bits ``mag`` (inf/overflow: >= 0x7C00)."""
    normal = mag >= _FP16_MIN_NORMAL_F32
    base_normal = (mag >> 13) - _FP16_REBIAS
    t32_normal = (mag & 0x1FFF) << 19
    # subnormal fp16 range: a * 2**24 = m / 2**s with s >= 14 (clamped where it does not apply)
    e = mag >> 23
    m = torch.where(e > 0, (mag & 0x7FFFFF) | 0x800000, mag & 0x7FFFFF)
    s = torch.where(e > 0, 126 - e, torch.full_like(e, 125)).clamp(min=14)
    n_sub = m >> s.clamp(max=24)                       # m < 2**24
    t32_sub = torch.where(s <= 32, (m << (32 - s).clamp(min=0)) & _MASK32, m >> (s - 32).clamp(min=0, max=24))
    return torch.where(normal, base_normal, n_sub), torch.where(normal, t32_normal, t32_sub)


def stochastic_round(x: torch.Tensor, dtype: torch.dtype, seed: int, step: int,
                     index_offset: int = 0) -> torch.Tensor:
    """Round float32 ``x`` to ``dtype`` (bfloat16 or float16) stochastically (module docstring).

    Element ``i`` of ``x`` in flattened (row-major) order uses ``random_bits(seed, step,
    index_offset + i)`` and rounds away from zero iff ``bits < floor(frac * 2**32)``.
    """
    if x.dtype != torch.float32:
        raise TypeError(f"x must be float32, got {x.dtype}")
    if dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f"dtype must be torch.bfloat16 or torch.float16, got {dtype}")
    flat = x.detach().reshape(-1)
    n = flat.numel()
    offset = operator.index(index_offset)
    index = torch.arange(n, dtype=torch.int64, device=x.device) + offset
    bits = random_bits(seed, step, index)
    a = flat.view(torch.int32).to(torch.int64) & _MASK32
    sign = a >> 31
    mag = a & 0x7FFFFFFF
    if dtype == torch.bfloat16:
        base, t32 = _bf16_parts(mag)
        out = base + (bits < t32)
        nan = _BF16_NAN
    else:
        base, t32 = _fp16_parts(mag)
        out = (base + (bits < t32)).clamp(max=_FP16_INF)
        nan = _FP16_NAN
    out = torch.where(torch.isnan(flat), torch.full_like(out, nan), out | (sign << 15))
    out = out - ((out >> 15) << 16)  # [0, 2**16) -> int16 range, two's complement
    return out.to(torch.int16).view(dtype).view(x.shape)


def dequantize_state_dict(state_dict: dict) -> dict:
    """A copy of an optimizer state dict whose 8-bit states (uint8 codes with their
    ``<name>_absmax`` scales) are float32 tensors, the scales dropped: what torch.optim (or a
    fusedopt optimizer without 8-bit states) loads. Everything else is shared, not copied.
    The states of DTensor params (a sharded state dict, FSDP2) become float32 DTensors."""
    from ._distributed import dequantize_state

    out = dict(state_dict)
    state = {}
    for key, entry in state_dict["state"].items():
        entry = dict(entry)
        for name in [k for k in entry if k + ABSMAX_SUFFIX in entry]:
            codes, absmax = entry[name], entry.pop(name + ABSMAX_SUFFIX)
            entry[name] = dequantize_state(codes, absmax, state_map(name, codes.device), BLOCK)
        state[key] = entry
    out["state"] = state
    out["param_groups"] = [{k: v for k, v in g.items() if k not in ("state_dtype", "min_8bit_size")}
                           for g in state_dict["param_groups"]]
    return out
