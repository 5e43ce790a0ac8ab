"""The Triton kernels: one multi-tensor traversal; per algorithm, one scalars function and one
math function.

The traversal (:func:`multi_tensor_kernel`) walks a device-resident table: every program takes
one work item ``(tensor index, chunk start)``, looks the tensor's addresses, size, step slot and
hyperparameter row up, loads its chunk of the parameter, the gradient and the active state
slots, upcasts to float32, runs the common preamble and the algorithm's math, and stores the
results, cast back to each tensor's dtype.

An algorithm is two functions, mirroring its declaration in ``fusedopt/algorithms``:

- ``_<algo>_scalars(h, t)``: from the tensor's row ``h`` of the float64 hyperparameter table
  (``HYPER`` order) and its step count ``t`` (float64), everything the update reads, computed in
  float64 (bias corrections, RAdam's rectification, Adagrad's decayed lr, ``1 - beta``, ...)
  and rounded once to float32, as the reference's Python floats are; once per program;
- ``_<algo>_math(p, g, s0, s1, s2, sc, ...)``: the float32 update of one chunk, line by line
  as ``docs/kernel-interface.md`` writes it, ``sc`` being the scalars function's tuple.

Everything that selects code (algorithm, the algorithm's FLAGS, which slots are present,
dtypes, master weights, whether grad_scale / found_inf are given) is ``tl.constexpr``: dead
branches compile away. Everything that comes from the row or from ``t`` (maximize, the weight
decay mode, SGD's first step, RAdam's branch) is a run-time value, uniform over a program: a
select (``tl.where``) or a scalar branch.

Division and square root of float32 are the IEEE round-to-nearest forms (``div_rn``,
``sqrt_rn``): Triton's ``/`` and ``sqrt`` are approximate on NVIDIA GPUs, torch's are not, and
the kernels are memory-bound, so exactness is free. float64 ``/`` and ``sqrt`` are IEEE already.

Low-bit storage (``fusedopt/lowbit.py`` is the bit-exact rule, ``docs/kernel-interface.md`` the
interface) is part of the same traversal, in the same program as the update:

- 8-bit states (``S_DTYPE`` is ``tl.uint8``): each state chunk is dequantized on load
  (``map[code] * absmax``), updated in float32 by the algorithm's math and quantized on store
  (a new absmax per 256-element block, the code by binary search over the map's midpoints).
  A program's chunk is a whole number of 256-element blocks (``BLOCK`` is a multiple of 256 and
  chunks start at multiples of ``BLOCK``), so a block's absmax is a reduction inside one program.
- Stochastic rounding of 16-bit params (``RNE_P == ROUND_STOCHASTIC``): the param is stored as
  ``lowbit.stochastic_round`` of its float32 result, with Philox4x32-10 bits keyed by the
  tensor's seed and counted by (offset + element index, the tensor's step count ``t``).

Their per-tensor data are trailing columns of the tensor's table row (``fusedopt/triton/tables.py``):
with 8-bit states, per slot k = 0..2 its scales' address and its map's address (0, 0 for an
absent slot), then, with stochastic rounding, the seed and the element offset.
"""
from __future__ import annotations

import triton
import triton.language as tl

from ..algorithms import ALGORITHMS, COMMON_HYPER
from ..lowbit import BLOCK as QBLOCK_SIZE

# Note [one declaration] (fusedopt/algorithms/contract.py): the columns of the hyperparameter rows
# are the Python declarations', as module constants the kernels read: <NAME>_<COLUMN> (a column
# of an algorithm's row, e.g. ADAM_BETA1) and COL_<COLUMN> for the common columns.
def _declarations() -> dict[str, tl.constexpr]:
    out = {f"COL_{col.upper()}": tl.constexpr(c) for c, col in enumerate(COMMON_HYPER)}
    for algo in ALGORITHMS.values():
        out.update({f"{algo.name.upper()}_{col.upper()}": tl.constexpr(c) for c, col in enumerate(algo.HYPER)})
    return out


globals().update(_declarations())

# The elements of one 8-bit quantization block (lowbit.BLOCK), each with its own absmax.
QBLOCK = tl.constexpr(QBLOCK_SIZE)
# RNE_P's values: how a param is rounded on store (Note [param rounding] at multi_tensor_kernel).
ROUND_CAST = tl.constexpr(0)         # the dtype's conversion (float32; the GPU's bf16/fp16: to nearest even)
ROUND_NEAREST = tl.constexpr(1)      # to nearest even by hand (bf16 in the interpreter, whose conversion truncates)
ROUND_STOCHASTIC = tl.constexpr(2)   # lowbit.stochastic_round


def rule(name: str):
    """The traversal's functions for algorithm ``name`` (or ``"lookahead"``): ``(scalars, math,
    reduced)``, found by name (``_<name>_scalars``, ``_<name>_math``, ``_<name>_reduced``; None
    where it has none) and handed to :func:`multi_tensor_kernel` as ``tl.constexpr``. An
    algorithm is its functions: there is no dispatch to edit."""
    found = globals()
    return found.get(f"_{name}_scalars"), found[f"_{name}_math"], found.get(f"_{name}_reduced")


@triton.jit
def _f32(x):
    """A float64 scalar rounded once to float32."""
    return x.to(tl.float32)


# Whether these kernels run in Triton's interpreter (TRITON_INTERPRET=1 when triton.jit wrapped
# them): it runs no inline assembly, and its numpy float32 arithmetic never contracts.
INTERPRETED = tl.constexpr(not isinstance(_f32, triton.runtime.JITFunction))


@triton.jit
def _pow(b, t):
    """``b ** t`` in float64 for 0 <= b < 1 and t >= 1. libdevice's pow does not run in the
    interpreter; through exp2 and log2 (both float64, on the GPU libdevice's) the relative error
    is about |t * log2(b)| ulps of float64, far below the float32 rounding that follows."""
    return tl.exp2(t * tl.log2(b))


# --------------------------------------------------------------------------------------------
# The common preamble. Every row starts lr, weight_decay, maximize, decoupled (columns 0-3).
# --------------------------------------------------------------------------------------------

@triton.jit
def _preamble_scalars(h):
    # row: lr, weight_decay, maximize, decoupled, ...
    wd = tl.load(h + COL_WEIGHT_DECAY)
    decoupled = tl.load(h + COL_DECOUPLED)
    # decay is exactly 1 unless decoupled decay applies: p * decay is then p, bit for bit.
    decay = tl.where((wd != 0) & (decoupled != 0), 1.0 - tl.load(h + COL_LR) * wd, 1.0)
    return tl.load(h + COL_MAXIMIZE) != 0, (wd != 0) & (decoupled == 0), _f32(wd), _f32(decay)


@triton.jit
def _preamble(p, g, sc):
    """maximize and weight decay (``algorithms.base.preamble``); the gradient scale is applied
    before, by the traversal. Selects rather than branches: the same values, and fewer
    registers than the control flow costs."""
    maximize, coupled, wd, decay = sc
    g = tl.where(maximize, -g, g)
    p = p * decay
    # g.add(p, alpha=wd) is an fma in ATen (Note [fma]); wd == 0 selects g itself, as the
    # reference skips weight decay entirely (0 * inf would be NaN).
    g = tl.where(coupled, tl.fma(wd, p, g), g)
    return p, g


# --------------------------------------------------------------------------------------------
# Per algorithm, found by name (rule() below), each of one signature so that the traversal calls
# whichever it is given:
#   _<name>_scalars(h, t, cell): from the row ``h``, the step count ``t`` and the tensor's
#       counters ``cell`` (its SCALAR_STATES after the count), the tuple ``sc`` of its scalars;
#   _<name>_math(p, g, s0, s1, s2, sc, FLAG, PRESENT, PHASE): the update of float32 blocks;
#       ``s0..s2`` are the state slots in SLOTS order (an absent slot is a dummy block whose
#       result is not stored), FLAG its one FLAGS value, PRESENT the present slots as bits
#       (slot k: bit k), PHASE a reducing algorithm's traversal (0 otherwise). Returns
#       (p, s0, s1, s2), and a reducing algorithm's chunk sums of p^2 and u^2 after them;
#   _<name>_reduced(sc, h, p_sq, u_sq): a reducing algorithm's scalars for its second traversal.
# --------------------------------------------------------------------------------------------

@triton.jit
def _sgd_scalars(h, t, cell):
    return (_f32(tl.load(h + SGD_LR)), _f32(tl.load(h + SGD_MOMENTUM)), _f32(1.0 - tl.load(h + SGD_DAMPENING)),
            t == 1.0)


@triton.jit
def _sgd_math(p, g, buf, s1, s2, sc, NESTEROV: tl.constexpr, PRESENT: tl.constexpr, PHASE: tl.constexpr):
    lr, momentum, one_minus_dampening, first_step = sc
    if PRESENT & 1:  # momentum_buffer
        # A select, not a branch: 16 fewer registers on sm_90.
        buf = tl.where(first_step, g, buf * momentum + one_minus_dampening * g)
        if NESTEROV:
            g = g + momentum * buf
        else:
            g = buf
    p = p - lr * g
    return p, buf, s1, s2


@triton.jit
def _adagrad_scalars(h, t, cell):
    clr = tl.load(h + ADAGRAD_LR) / (1.0 + (t - 1.0) * tl.load(h + ADAGRAD_LR_DECAY))
    return _f32(clr), _f32(tl.load(h + ADAGRAD_EPS))


@triton.jit
def _adagrad_math(p, g, acc, s1, s2, sc, FLAG: tl.constexpr, PRESENT: tl.constexpr, PHASE: tl.constexpr):
    clr, eps = sc
    acc = acc + g * g
    p = p - tl.div_rn(clr * g, tl.sqrt_rn(acc) + eps)
    return p, acc, s1, s2


@triton.jit
def _adadelta_scalars(h, t, cell):
    rho = tl.load(h + ADADELTA_RHO)
    return _f32(tl.load(h + ADADELTA_LR)), _f32(rho), _f32(1.0 - rho), _f32(tl.load(h + ADADELTA_EPS))


@triton.jit
def _adadelta_math(p, g, sq, acc, s2, sc, FLAG: tl.constexpr, PRESENT: tl.constexpr, PHASE: tl.constexpr):
    lr, rho, one_minus_rho, eps = sc
    sq = sq * rho + one_minus_rho * g * g
    std = tl.sqrt_rn(sq + eps)
    delta = tl.div_rn(tl.sqrt_rn(acc + eps), std) * g
    acc = acc * rho + one_minus_rho * delta * delta
    p = p - lr * delta
    return p, sq, acc, s2


@triton.jit
def _rmsprop_scalars(h, t, cell):
    alpha = tl.load(h + RMSPROP_ALPHA)
    return (_f32(tl.load(h + RMSPROP_LR)), _f32(alpha), _f32(1.0 - alpha), _f32(tl.load(h + RMSPROP_EPS)),
            _f32(tl.load(h + RMSPROP_MOMENTUM)))


@triton.jit
def _rmsprop_math(p, g, sq, buf, ga, sc, CENTERED: tl.constexpr, PRESENT: tl.constexpr, PHASE: tl.constexpr):
    lr, alpha, one_minus_alpha, eps, momentum = sc
    sq = sq * alpha + one_minus_alpha * g * g
    if CENTERED:
        ga = ga + one_minus_alpha * (g - ga)
        avg = tl.sqrt_rn(sq - ga * ga) + eps
    else:
        avg = tl.sqrt_rn(sq) + eps
    if PRESENT & 2:  # momentum_buffer
        buf = buf * momentum + tl.div_rn(g, avg)
        p = p - lr * buf
    else:
        p = p - tl.div_rn(lr * g, avg)
    return p, sq, buf, ga


@triton.jit
def _adam_scalars(h, t, cell):
    beta1 = tl.load(h + ADAM_BETA1)
    beta2 = tl.load(h + ADAM_BETA2)
    step_size = tl.load(h + ADAM_LR) / (1.0 - _pow(beta1, t))
    bc2_sqrt = tl.sqrt(1.0 - _pow(beta2, t))
    return (_f32(1.0 - beta1), _f32(beta2), _f32(1.0 - beta2), _f32(tl.load(h + ADAM_EPS)), _f32(step_size),
            _f32(bc2_sqrt))


@triton.jit
def _adam_math(p, g, m, v, vmax, sc, AMSGRAD: tl.constexpr, PRESENT: tl.constexpr, PHASE: tl.constexpr):
    one_minus_beta1, beta2, one_minus_beta2, eps, step_size, bc2_sqrt = sc
    m = m + one_minus_beta1 * (g - m)
    v = v * beta2 + one_minus_beta2 * g * g
    if AMSGRAD:
        vmax = tl.maximum(vmax, v)
        denom = tl.div_rn(tl.sqrt_rn(vmax), bc2_sqrt) + eps
    else:
        denom = tl.div_rn(tl.sqrt_rn(v), bc2_sqrt) + eps
    p = p - tl.div_rn(step_size * m, denom)
    return p, m, v, vmax


@triton.jit
def _yogi_scalars(h, t, cell):
    beta1 = tl.load(h + YOGI_BETA1)
    beta2 = tl.load(h + YOGI_BETA2)
    step_size = tl.load(h + YOGI_LR) / (1.0 - _pow(beta1, t))
    bc2_sqrt = tl.sqrt(1.0 - _pow(beta2, t))
    return (_f32(beta1), _f32(1.0 - beta1), _f32(1.0 - beta2), _f32(tl.load(h + YOGI_EPS)), _f32(step_size),
            _f32(bc2_sqrt))


@triton.jit
def _yogi_math(p, g, m, v, s2, sc, FLAG: tl.constexpr, PRESENT: tl.constexpr, PHASE: tl.constexpr):
    beta1, one_minus_beta1, one_minus_beta2, eps, step_size, bc2_sqrt = sc
    m = m * beta1 + one_minus_beta1 * g
    g2 = g * g
    d = v - g2
    # sign(d) with sign(0) = 0 and NaN propagated, as torch.sign.
    sign = tl.where(d > 0, 1.0, tl.where(d < 0, -1.0, d * 0.0))
    v = v - one_minus_beta2 * (g2 * sign)
    p = p - tl.div_rn(step_size * m, tl.div_rn(tl.sqrt_rn(v), bc2_sqrt) + eps)
    return p, m, v, s2


@triton.jit
def _radam_scalars(h, t, cell):
    beta1 = tl.load(h + RADAM_BETA1)
    beta2 = tl.load(h + RADAM_BETA2)
    beta2_t = _pow(beta2, t)
    bc2 = 1.0 - beta2_t
    # The rectification, as algorithms.radam.rectification: 0 where rho_t <= 5 (the update
    # then takes the un-adapted branch).
    rho_inf = 2.0 / (1.0 - beta2) - 1.0
    rho_t = rho_inf - 2.0 * t * beta2_t / bc2
    rect = tl.full((), 0.0, tl.float64)
    if rho_t > 5.0:
        rect = tl.sqrt((rho_t - 4.0) * (rho_t - 2.0) * rho_inf / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t))
    return (_f32(tl.load(h + RADAM_LR)), _f32(1.0 - beta1), _f32(beta2), _f32(1.0 - beta2),
            _f32(tl.load(h + RADAM_EPS)),
            _f32(1.0 - _pow(beta1, t)), _f32(tl.sqrt(bc2)), _f32(rect))


@triton.jit
def _radam_math(p, g, m, v, s2, sc, FLAG: tl.constexpr, PRESENT: tl.constexpr, PHASE: tl.constexpr):
    lr, one_minus_beta1, beta2, one_minus_beta2, eps, bias_correction1, bc2_sqrt, rect = sc
    m = m + one_minus_beta1 * (g - m)
    v = v * beta2 + one_minus_beta2 * g * g
    corrected = tl.div_rn(m, bias_correction1)
    if rect > 0:
        adaptive = tl.div_rn(bc2_sqrt, tl.sqrt_rn(v) + eps)
        p = p - corrected * lr * adaptive * rect
    else:
        p = p - corrected * lr
    return p, m, v, s2


@triton.jit
def _adamax_scalars(h, t, cell):
    beta1 = tl.load(h + ADAMAX_BETA1)
    clr = tl.load(h + ADAMAX_LR) / (1.0 - _pow(beta1, t))
    return _f32(1.0 - beta1), _f32(tl.load(h + ADAMAX_BETA2)), _f32(tl.load(h + ADAMAX_EPS)), _f32(clr)


@triton.jit
def _adamax_math(p, g, m, u, s2, sc, FLAG: tl.constexpr, PRESENT: tl.constexpr, PHASE: tl.constexpr):
    one_minus_beta1, beta2, eps, clr = sc
    m = m + one_minus_beta1 * (g - m)
    u = tl.maximum(u * beta2, tl.abs(g) + eps, propagate_nan=tl.PropagateNan.ALL)
    p = p - tl.div_rn(clr * m, u)
    return p, m, u, s2


@triton.jit
def _lerp(a, b, w):
    """torch.lerp with a scalar weight, as ATen computes it (exact at w = 1): the product that
    decides Lion's sign must round as the reference's does."""
    return tl.where(tl.abs(w) < 0.5, tl.fma(w, b - a, a), tl.fma(w - 1.0, b - a, b))


@triton.jit
def _lion_scalars(h, t, cell):
    return (_f32(tl.load(h + LION_LR)), _f32(1.0 - tl.load(h + LION_BETA1)),
            _f32(1.0 - tl.load(h + LION_BETA2)))


@triton.jit
def _lion_math(p, g, m, s1, s2, sc, FLAG: tl.constexpr, PRESENT: tl.constexpr, PHASE: tl.constexpr):
    lr, one_minus_beta1, one_minus_beta2 = sc
    c = _lerp(m, g, one_minus_beta1)
    # sign(c) with sign(0) = 0 and NaN propagated, as torch.sign.
    p = tl.fma(-lr, tl.where(c > 0, 1.0, tl.where(c < 0, -1.0, c * 0.0)), p)
    m = _lerp(m, g, one_minus_beta2)
    return p, m, s1, s2


@triton.jit
def _nadam_mu(h, t):
    return tl.load(h + NADAM_BETA1) * (1.0 - 0.5 * _pow(0.96, t * tl.load(h + NADAM_MOMENTUM_DECAY)))


@triton.jit
def _nadam_scalars(h, t, cell):
    mu_product = tl.load(cell + 1).to(tl.float64)  # its SCALAR_STATES, after the step count
    beta1 = tl.load(h + NADAM_BETA1)
    beta2 = tl.load(h + NADAM_BETA2)
    lr = tl.load(h + NADAM_LR)
    mu = _nadam_mu(h, t)
    mu_next = _nadam_mu(h, t + 1.0)
    return (_f32(1.0 - beta1), _f32(beta2), _f32(1.0 - beta2), _f32(tl.load(h + NADAM_EPS)),
            _f32(1.0 - _pow(beta2, t)), _f32(-lr * (1.0 - mu) / (1.0 - mu_product)),
            _f32((-lr * mu_next) / (1.0 - mu_product * mu_next)))


@triton.jit
def _nadam_math(p, g, m, v, s2, sc, FLAG: tl.constexpr, PRESENT: tl.constexpr, PHASE: tl.constexpr):
    one_minus_beta1, beta2, one_minus_beta2, eps, bias_correction2, c_grad, c_avg = sc
    m = m + one_minus_beta1 * (g - m)
    v = v * beta2 + one_minus_beta2 * g * g
    d = tl.sqrt_rn(tl.div_rn(v, bias_correction2)) + eps
    p = p + tl.div_rn(c_grad * g, d)
    p = p + tl.div_rn(c_avg * m, d)
    return p, m, v, s2


@triton.jit
def _lamb_scalars(h, t, cell):
    # Note [reducing algorithms]: the last value, -lr * trust, is filled in for the second traversal
    beta1 = tl.load(h + LAMB_BETA1)
    beta2 = tl.load(h + LAMB_BETA2)
    bc = tl.load(h + LAMB_BIAS_CORRECTION) != 0
    bc1 = tl.where(bc, 1.0 - _pow(beta1, t), 1.0)
    bc2 = tl.where(bc, 1.0 - _pow(beta2, t), 1.0)
    return (_f32(1.0 - beta1), _f32(beta2), _f32(1.0 - beta2), _f32(tl.load(h + LAMB_EPS)), _f32(bc1), _f32(bc2),
            _f32(tl.load(h + LAMB_DECAY)), tl.zeros((), tl.float32))


@triton.jit
def _lamb_reduced(sc, h, p_sq, u_sq):
    """The scalars of a tensor's second traversal, from its sums of p^2 and u^2: the trust ratio
    ||p|| / ||u|| (1 when either is 0) in float64, and -lr * trust rounded once."""
    one_minus_beta1, beta2, one_minus_beta2, eps, bc1, bc2, decay, step = sc
    pn = tl.sqrt(p_sq)
    un = tl.sqrt(u_sq)
    trust = tl.where((pn > 0) & (un > 0), pn / un, 1.0)
    return (one_minus_beta1, beta2, one_minus_beta2, eps, bc1, bc2, decay, _f32(-tl.load(h + LAMB_LR) * trust))


@triton.jit
def _lamb_update(p, m, v, sc):
    one_minus_beta1, beta2, one_minus_beta2, eps, bc1, bc2, decay, step = sc
    u = tl.div_rn(tl.div_rn(m, bc1), tl.sqrt_rn(tl.div_rn(v, bc2)) + eps)
    return tl.where(decay != 0, tl.fma(decay, p, u), u)  # u.add_(p, alpha=decay)


@triton.jit
def _lamb_math(p, g, m, v, s2, sc, FLAG: tl.constexpr, PRESENT: tl.constexpr, PHASE: tl.constexpr):
    """First traversal (PHASE 1): the moments, and this chunk's sums of p^2 and u^2 (float64);
    second (PHASE 2): p = p - lr * trust * u from the stored moments."""
    one_minus_beta1, beta2, one_minus_beta2, eps, bc1, bc2, decay, step = sc
    if PHASE == 2:
        p = tl.fma(step, _lamb_update(p, m, v, sc), p)
        p_sq = tl.zeros((), tl.float64)
        u_sq = tl.zeros((), tl.float64)
    else:
        m = _lerp(m, g, one_minus_beta1)
        v = tl.fma(one_minus_beta2 * g, g, v * beta2)
        u = _lamb_update(p, m, v, sc)
        p64 = p.to(tl.float64)
        u64 = u.to(tl.float64)
        p_sq = tl.sum(p64 * p64, axis=0)
        u_sq = tl.sum(u64 * u64, axis=0)
    return p, m, v, s2, p_sq, u_sq


@triton.jit
def _lookahead_math(p, g, slow, s1, s2, sc, FLAG: tl.constexpr, PRESENT: tl.constexpr, PHASE: tl.constexpr):
    """Lookahead's slow-weight update (``fusedopt/lookahead.py``): a rule of the same traversal,
    the slow weights in slot 0, no gradient (``g`` is a dummy), ``sc`` is alpha."""
    slow = slow + sc * (p - slow)
    return slow, slow, s1, s2


# --------------------------------------------------------------------------------------------
# 8-bit states (lowbit.py, part 1). A slot's map is 512 float32 values: the 256 map values
# ascending, then the 255 midpoints (qmap[k] + qmap[k + 1]) * 0.5 and +inf (never read).
# --------------------------------------------------------------------------------------------

@triton.jit
def _mul_rn(a, b):
    """``a * b`` rounded once to float32 and never contracted into an FMA with the operation that
    uses it (the compiled kernels contract plain multiply-adds, Note [fma]): PTX ``mul.rn.f32``
    on the GPU (an explicit rounding mode is never contracted; libdevice's ``__nv_fmul_rn`` is
    not an option: Triton links libdevice flushing subnormals to zero), numpy's multiply in the
    interpreter."""
    if INTERPRETED:
        return a * b
    else:
        return tl.inline_asm_elementwise("mul.rn.f32 $0, $1, $2;", "=f,f,f", [a, b], dtype=tl.float32,
                                         is_pure=True, pack=1)


@triton.jit
def _dequantize(codes, absmax, qmap):
    """``qmap[code] * absmax``: one float32 multiply per element (lowbit.dequantize_blockwise)."""
    return _mul_rn(tl.load(qmap + codes.to(tl.int32)), absmax)


@triton.jit
def _quantize(x, valid, mid, BLOCK: tl.constexpr):
    """lowbit.quantize_blockwise of a chunk of ``BLOCK`` float32 values (a multiple of QBLOCK
    starting at a block boundary; ``valid``: the elements of the tensor, the others count as 0).
    Returns the uint8 codes and the ``BLOCK // QBLOCK`` block scales.

    - absmax: the maximum of |x| over each block, taken on the int32 bit patterns of |x|: for
      non-negative floats the integer order is the float order, and NaN patterns lie above
      +inf's, so a block holding a NaN gets a NaN absmax (max/fmax would drop it);
    - y = x / absmax, IEEE division (0 where absmax is 0: +0's code);
    - code = #{k : y >= mid[k]}: a branch-free binary search over the 255 midpoints, exact, the
      same count as torch.searchsorted(mid, y, right=True); a NaN y fails every comparison: 0.
    """
    NB: tl.constexpr = BLOCK // QBLOCK
    mag = tl.where(valid, x.to(tl.int32, bitcast=True) & 0x7FFFFFFF, 0)
    absmax = tl.max(tl.reshape(mag, (NB, QBLOCK)), axis=1).to(tl.float32, bitcast=True)
    scale = tl.expand_dims(absmax, 1)
    y = tl.where(scale == 0, 0.0, tl.div_rn(tl.reshape(x, (NB, QBLOCK)), tl.where(scale == 0, 1.0, scale)))
    code = tl.zeros((NB, QBLOCK), tl.int32)
    for k in tl.static_range(8):  # add 2**(7 - k) where the midpoint just below code + 2**(7 - k) is <= y
        code += tl.where(y >= tl.load(mid + code + ((128 >> k) - 1)), 128 >> k, 0)
    return tl.reshape(code, (BLOCK,)).to(tl.uint8), absmax


# --------------------------------------------------------------------------------------------
# Stochastic rounding (lowbit.py, part 2): Philox4x32-10, lane 0, and the integer rounding rule.
# --------------------------------------------------------------------------------------------

@triton.jit
def _philox_lane0(c0, c1, c2, c3, k0, k1):
    """Lane 0 of Philox4x32-10 (lowbit.philox4x32) of counter ``(c0, c1, c2, c3)`` under key
    ``(k0, k1)``, uint32: mulhilo is ``tl.umulhi`` and a wrapping uint32 multiply; the key is
    bumped after each round (before each but the first, as lowbit writes it)."""
    for _ in tl.static_range(10):
        hi0 = tl.umulhi(c0, 0xD2511F53)
        lo0 = c0 * 0xD2511F53
        hi1 = tl.umulhi(c2, 0xCD9E8D57)
        lo1 = c2 * 0xCD9E8D57
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = k0 + 0x9E3779B9
        k1 = k1 + 0xBB67AE85
    return c0


@triton.jit
def _random_bits(seed, step, index):
    """lowbit.random_bits: key (seed lo, seed hi), counter (index lo, index hi, step lo, step hi),
    from uint64 values (``index`` a block, ``seed`` and ``step`` scalars); 32 bits (uint32) per
    element of ``index``."""
    c0 = (index & 0xFFFFFFFF).to(tl.uint32)
    c1 = (index >> 32).to(tl.uint32)
    c2 = (step & 0xFFFFFFFF).to(tl.uint32)
    c3 = (step >> 32).to(tl.uint32)
    return _philox_lane0(c0, c1, c2, c3, (seed & 0xFFFFFFFF).to(tl.uint32), (seed >> 32).to(tl.uint32))


@triton.jit
def _stochastic_round(x, bits, P_DTYPE: tl.constexpr):
    """lowbit.stochastic_round of float32 ``x`` to ``P_DTYPE`` (bfloat16 or float16) with the
    random ``bits`` (uint32): the magnitude truncated to the 16-bit format, plus one (the next
    magnitude, across binades; inf above the largest finite value) iff ``bits < t32``, the
    dropped fraction scaled to 32 bits; NaN becomes the canonical quiet NaN, the sign is kept."""
    a = x.to(tl.uint32, bitcast=True)
    mag = a & 0x7FFFFFFF
    if P_DTYPE == tl.bfloat16:
        base = mag >> 16
        t32 = (mag & 0xFFFF) << 16
        out = base + (bits < t32).to(tl.uint32)
        nan = 0x7FC0
    else:
        # normal fp16 range (a >= 2**-14): 13 bits dropped, the exponent re-biased from 127 to 15
        normal = mag >= 0x38800000
        base_n = (mag >> 13) - 0x1C000
        t32_n = (mag & 0x1FFF) << 19
        # subnormal fp16 range: a * 2**24 = m / 2**s, m the 24-bit significand, s >= 14 (the
        # shifts clamped where this branch is not taken)
        e = (mag >> 23).to(tl.int32)
        m = tl.where(e > 0, (mag & 0x7FFFFF) | 0x800000, mag)
        s = tl.maximum(tl.where(e > 0, 126 - e, 125), 14)
        base_s = m >> tl.minimum(s, 31).to(tl.uint32)
        t32_s = tl.where(s <= 32, m << (32 - tl.minimum(s, 32)).to(tl.uint32),
                         m >> tl.minimum(s - 32, 31).to(tl.uint32))
        base = tl.where(normal, base_n, base_s)
        t32 = tl.where(normal, t32_n, t32_s)
        out = tl.minimum(base + (bits < t32).to(tl.uint32), 0x7C00)  # overflow: inf
        nan = 0x7E00
    out = tl.where(x != x, nan, out | ((a >> 31) << 15))
    return out.to(tl.uint16).to(P_DTYPE, bitcast=True)


# --------------------------------------------------------------------------------------------
# The one traversal.
# --------------------------------------------------------------------------------------------

@triton.jit
def _rne_bf16(x):
    """float32 -> bfloat16 rounded to nearest even by hand, for the interpreter, whose
    conversion truncates (a bias toward zero on every step). The GPU's conversion rounds to
    nearest even already; the kernels use it there."""
    bits = x.to(tl.uint32, bitcast=True)
    bits = bits + (0x7FFF + ((bits >> 16) & 1))
    r = (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
    return tl.where(x != x, x.to(tl.bfloat16), r)  # NaN stays NaN


@triton.jit
def _slot(row, k: tl.constexpr, offs, mask, other, S_DTYPE: tl.constexpr, QCOL: tl.constexpr,
          ALIGNED: tl.constexpr):
    """The pointer to state slot ``k``'s chunk (column 2 + k of the tensor's row) and its values
    in float32; 8-bit states (``S_DTYPE`` uint8) dequantized with the slot's scales and map
    (columns ``QCOL + 2k``, ``QCOL + 2k + 1``)."""
    ptr = tl.load(row + 2 + k).to(tl.pointer_type(S_DTYPE))
    if ALIGNED:
        ptr = tl.multiple_of(ptr, 16)
    x = tl.load(ptr + offs, mask=mask, other=other)
    if S_DTYPE == tl.uint8:
        scales = tl.load(row + QCOL + 2 * k).to(tl.pointer_type(tl.float32))
        qmap = tl.load(row + QCOL + 2 * k + 1).to(tl.pointer_type(tl.float32))
        x = _dequantize(x, tl.load(scales + offs // QBLOCK, mask=mask, other=other), qmap)
    return ptr, x.to(tl.float32)


@triton.jit
def _store_slot(row, k: tl.constexpr, ptr, x, offs, mask, start, n, S_DTYPE: tl.constexpr, QCOL: tl.constexpr,
                RNE_S: tl.constexpr, BLOCK: tl.constexpr):
    """Store state slot ``k``'s chunk ``x``: rounded to ``S_DTYPE``, or (8-bit states) quantized,
    its codes and the scales of the chunk's blocks of the tensor's ``n`` elements."""
    if S_DTYPE == tl.uint8:
        codes, absmax = _quantize(x, offs < n, tl.load(row + QCOL + 2 * k + 1).to(tl.pointer_type(tl.float32)) + 256,
                                  BLOCK)
        tl.store(ptr + offs, codes, mask=mask)
        blocks = start // QBLOCK + tl.arange(0, BLOCK // QBLOCK)
        scales = tl.load(row + QCOL + 2 * k).to(tl.pointer_type(tl.float32))
        tl.store(scales + blocks, absmax, mask=blocks * QBLOCK < n)
    else:
        tl.store(ptr + offs, _rne_bf16(x) if RNE_S else x.to(S_DTYPE), mask=mask)


@triton.jit
def _chunk(row, pre, sc, t, grad_scale_ptr, start, n, offs, mask, other, MATH: tl.constexpr,
           READS_GRAD: tl.constexpr, REDUCES: tl.constexpr, NCOL: tl.constexpr, P_DTYPE: tl.constexpr,
           G_DTYPE: tl.constexpr, S_DTYPE: tl.constexpr, PRESENT: tl.constexpr, HAS_MASTER: tl.constexpr,
           HAS_GRAD_SCALE: tl.constexpr, FLAG: tl.constexpr,
           RNE_P: tl.constexpr, RNE_S: tl.constexpr, ALIGNED: tl.constexpr, BLOCK: tl.constexpr,
           PHASE: tl.constexpr):
    """Load one chunk of every tensor of one table row, update it with ``MATH``, store it
    (``mask`` None: a full chunk). ``pre`` and ``sc`` are the preamble's and the algorithm's
    scalars (Lookahead: ``sc`` is alpha, and there is no gradient and no preamble), ``t`` the
    tensor's step count (stochastic rounding's counter), ``start`` and ``n`` the chunk's start and
    the tensor's elements. Returns the chunk's two sums of a reducing algorithm (0 otherwise)."""
    p_sq = tl.zeros((), tl.float64)
    u_sq = tl.zeros((), tl.float64)
    # The row's trailing columns (Note [param rounding]): with stochastic rounding the seed and
    # the offset last, before them with 8-bit states the scales and map of slots 0..2, and before
    # them the master weight.
    SR: tl.constexpr = RNE_P == ROUND_STOCHASTIC
    QCOL: tl.constexpr = NCOL - 6 - 2 * SR
    MCOL: tl.constexpr = NCOL - 1 - 6 * (S_DTYPE == tl.uint8) - 2 * SR
    # Addresses are 16-byte aligned when the table says so: then, with the chunk start a
    # multiple of BLOCK and a full chunk's mask, the compiler emits 16-byte vector accesses.
    p_ptr = tl.load(row).to(tl.pointer_type(P_DTYPE))
    if ALIGNED:
        p_ptr = tl.multiple_of(p_ptr, 16)
    if HAS_MASTER:
        # float32 master weights: read and updated in place of the 16-bit param, which only
        # receives the rounded result.
        m_ptr = tl.load(row + MCOL).to(tl.pointer_type(tl.float32))
        if ALIGNED:
            m_ptr = tl.multiple_of(m_ptr, 16)
        p = tl.load(m_ptr + offs, mask=mask, other=other)
    else:
        p = tl.load(p_ptr + offs, mask=mask, other=other).to(tl.float32)

    if READS_GRAD:
        g_ptr = tl.load(row + 1).to(tl.pointer_type(G_DTYPE))
        if ALIGNED:
            g_ptr = tl.multiple_of(g_ptr, 16)
        g = tl.load(g_ptr + offs, mask=mask, other=other).to(tl.float32)
        if HAS_GRAD_SCALE:
            g = g * tl.load(grad_scale_ptr)
        if PHASE != 2:  # a reducing algorithm's second traversal: the first applied it
            p, g = _preamble(p, g, pre)
    else:
        g = p  # a rule without gradient (Lookahead): a dummy block

    # An absent slot is a dummy block (never stored), so every math function has one shape.
    s0 = p
    s1 = p
    s2 = p
    if PRESENT & 1:
        s0_ptr, s0 = _slot(row, 0, offs, mask, other, S_DTYPE, QCOL, ALIGNED)
    if PRESENT & 2:
        s1_ptr, s1 = _slot(row, 1, offs, mask, other, S_DTYPE, QCOL, ALIGNED)
    if PRESENT & 4:
        s2_ptr, s2 = _slot(row, 2, offs, mask, other, S_DTYPE, QCOL, ALIGNED)

    if REDUCES:
        p, s0, s1, s2, p_sq, u_sq = MATH(p, g, s0, s1, s2, sc, FLAG, PRESENT, PHASE)
    else:
        p, s0, s1, s2 = MATH(p, g, s0, s1, s2, sc, FLAG, PRESENT, PHASE)

    if PHASE != 2:  # the second traversal leaves the states as the first stored them
        if PRESENT & 1:
            _store_slot(row, 0, s0_ptr, s0, offs, mask, start, n, S_DTYPE, QCOL, RNE_S, BLOCK)
        if PRESENT & 2:
            _store_slot(row, 1, s1_ptr, s1, offs, mask, start, n, S_DTYPE, QCOL, RNE_S, BLOCK)
        if PRESENT & 4:
            _store_slot(row, 2, s2_ptr, s2, offs, mask, start, n, S_DTYPE, QCOL, RNE_S, BLOCK)
    if HAS_MASTER:
        tl.store(m_ptr + offs, p, mask=mask)
    if SR:
        # element i of the tensor: random_bits(seed, t, offset + i); both of a reducing
        # algorithm's traversals store the param, with the same bits
        seed = tl.load(row + (NCOL - 2)).to(tl.uint64, bitcast=True)
        index = (tl.load(row + (NCOL - 1)) + offs).to(tl.uint64, bitcast=True)
        bits = _random_bits(seed, t.to(tl.uint64), index)
        tl.store(p_ptr + offs, _stochastic_round(p, bits, P_DTYPE), mask=mask)
    elif RNE_P == ROUND_NEAREST:
        tl.store(p_ptr + offs, _rne_bf16(p), mask=mask)
    else:
        tl.store(p_ptr + offs, p.to(P_DTYPE), mask=mask)
    return p_sq, u_sq


@triton.jit
def _tensor_sums(partials, first, count):
    """A tensor's sums of a reducing algorithm: its ``count`` programs' partials from program
    ``first`` on, added in program order (the same result whatever ran first)."""
    p_sq = tl.zeros((), tl.float64)
    u_sq = tl.zeros((), tl.float64)
    for k in range(0, count):
        p_sq += tl.load(partials + 2 * (first + k))
        u_sq += tl.load(partials + 2 * (first + k) + 1)
    return p_sq, u_sq


@triton.jit
def multi_tensor_kernel(
    addrs,           # int64 [n_tensors, NCOL]: param, grad, each slot, master, [8-bit states: scales and
                     # map of slots 0..2], [stochastic rounding: seed, offset] (Note [param rounding])
    meta,            # int64 [n_tensors, 3]: elements, slot in ``steps``, row in ``hyper``
    work,            # int64 [n_programs, 2]: (tensor index, chunk start)
    steps,           # float32 [*]: every step counter (t after this step's increment)
    hyper,           # float64 [rows, NHYPER]: one row of hyperparameters per param group
    grad_scale_ptr,  # float32 0-dim, read when HAS_GRAD_SCALE: g = g * grad_scale
    found_inf_ptr,   # float32 0-dim, read when HAS_FOUND_INF: != 0 means write nothing
    alpha,           # Lookahead's interpolation factor
    partials,        # float64 [n_programs, 2]: a reducing algorithm's sums, per program
    sums,            # float64 [n_tensors, 2]: a split step's sums, per tensor (Note [split steps])
    SCALARS: tl.constexpr, MATH: tl.constexpr, REDUCED: tl.constexpr,  # the algorithm: rule(name)
    READS_GRAD: tl.constexpr,  # False: a rule without gradient nor preamble (Lookahead)
    NCOL: tl.constexpr, NHYPER: tl.constexpr,
    P_DTYPE: tl.constexpr, G_DTYPE: tl.constexpr,
    S_DTYPE: tl.constexpr,  # the states' dtype; tl.uint8: 8-bit codes with block scales (lowbit.py)
    PRESENT: tl.constexpr,  # the present state slots, as bits (slot k: bit k)
    HAS_MASTER: tl.constexpr, HAS_GRAD_SCALE: tl.constexpr, HAS_FOUND_INF: tl.constexpr,
    FLAG: tl.constexpr,  # the algorithm's compile-time variant (its FLAGS hold at most one)
    RNE_P: tl.constexpr,  # how the param is rounded on store: ROUND_CAST, ROUND_NEAREST, ROUND_STOCHASTIC
    RNE_S: tl.constexpr,  # bf16 states rounded to nearest even by hand (the interpreter)
    ALIGNED: tl.constexpr,  # every address of the table is 16-byte aligned
    BLOCK: tl.constexpr,
    PHASE: tl.constexpr,  # 0, or a reducing algorithm's traversal: 1 (reduce) or 2 (apply), or 3:
                          # a split step's per-tensor sums of the partials
    SPLIT: tl.constexpr,  # PHASE 2 of a split step: the sums are read from ``sums``
):
    """One work item: chunk ``start`` of table row ``tensor``.

    Note [param rounding]: ``RNE_P`` says how the float32 result is stored to the param:
    ``ROUND_CAST`` (False) the dtype's conversion, ``ROUND_NEAREST`` (True) to nearest even by
    hand (bfloat16 in the interpreter, whose conversion truncates), ``ROUND_STOCHASTIC`` (a
    16-bit param, ``lowbit.stochastic_round``): its seed and element offset are the last two
    columns of the tensor's row, and its step count ``t`` the Philox counter's step.
    With 8-bit states (``S_DTYPE`` uint8) the six columns before those hold, per slot k = 0..2,
    the address of its float32 block scales and of its 512-value map (``map`` then midpoints;
    the signed or unsigned map chosen on the host from the slot's name, lowbit.SIGNED_STATES),
    and the master weight's column comes before them. Both options are told by constexprs the
    kernel already takes (the states' dtype, the param's rounding) and by data in the table, so
    the kernel's arguments stay those every variant is compiled with.
    """
    pid = tl.program_id(0).to(tl.int64)
    tensor = tl.load(work + 2 * pid)
    # 64-bit offsets: start and n are int64, so tensors of 2**31 elements or more are fine.
    start = tl.multiple_of(tl.load(work + 2 * pid + 1), BLOCK)
    info = meta + 3 * tensor
    n = tl.load(info)
    if HAS_FOUND_INF:
        # An overflowed step writes nothing: the tensor counts as empty, so nothing is read either.
        n = tl.where(tl.load(found_inf_ptr) == 0, n, 0)
    if PHASE == 3:
        # Note [split steps] (csrc/include/fusedopt/tensor_info.h): the first program of each
        # tensor writes its tensor's sums.
        first = start == 0
        p_sq, u_sq = _tensor_sums(partials, pid, tl.where(first, tl.cdiv(n, BLOCK), 0))
        tl.store(sums + 2 * tensor, p_sq, mask=first)
        tl.store(sums + 2 * tensor + 1, u_sq, mask=first)
    else:
        row = addrs + tensor * NCOL
        if not READS_GRAD:  # Lookahead: no preamble, alpha is its one scalar
            pre = None
            sc = alpha
            t = tl.zeros((), tl.float64)
        else:
            # The tensor's step count (after this step's increment) and its group's row: every
            # scalar of the update derives from them, once per program, before the chunk's loads
            # (its float64 temporaries are dead by the time the chunk occupies registers).
            cell = steps + tl.load(info + 1)  # the step count, then the algorithm's scalar states
            t = tl.load(cell).to(tl.float64)
            h = hyper + tl.load(info + 2) * NHYPER
            pre = _preamble_scalars(h)
            sc = SCALARS(h, t, cell)
            if PHASE == 2:
                # Note [reducing algorithms]: the tensor's sums, added in the order of its programs
                # (the same result whatever ran first), make its scalars for the second traversal.
                if SPLIT:  # Note [split steps]: the sums the caller combined
                    p_sq = tl.load(sums + 2 * tensor)
                    u_sq = tl.load(sums + 2 * tensor + 1)
                else:
                    p_sq, u_sq = _tensor_sums(partials, pid - start // BLOCK, tl.cdiv(n, BLOCK))
                sc = REDUCED(sc, h, p_sq, u_sq)
        offs = start + tl.arange(0, BLOCK)
        # A full chunk goes unmasked, so its accesses vectorise (16 bytes when ALIGNED); only a
        # tensor's last chunk takes the masked path. (Two paths that differ only in the mask would
        # be merged by the compiler into one masked path.)
        if start + BLOCK <= n:
            p_sq, u_sq = _chunk(row, pre, sc, t, grad_scale_ptr, start, n, offs, None, None, MATH, READS_GRAD,
                                REDUCED is not None, NCOL, P_DTYPE, G_DTYPE, S_DTYPE, PRESENT, HAS_MASTER,
                                HAS_GRAD_SCALE, FLAG, RNE_P, RNE_S, ALIGNED, BLOCK, PHASE)
        else:
            p_sq, u_sq = _chunk(row, pre, sc, t, grad_scale_ptr, start, n, offs, offs < n, 0.0, MATH, READS_GRAD,
                                REDUCED is not None, NCOL, P_DTYPE, G_DTYPE, S_DTYPE, PRESENT, HAS_MASTER,
                                HAS_GRAD_SCALE, FLAG, RNE_P, RNE_S, ALIGNED, BLOCK, PHASE)
        if PHASE == 1:
            tl.store(partials + 2 * pid, p_sq)
            tl.store(partials + 2 * pid + 1, u_sq)
