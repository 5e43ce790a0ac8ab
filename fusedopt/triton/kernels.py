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
"""
from __future__ import annotations

import triton
import triton.language as tl

from ..algorithms import ALGORITHMS, COMMON_HYPER

# Note [one declaration] (fusedopt/algorithms/contract.py): the columns of the hyperparameter rows
# are the Python declarations', as module constants the kernels read: <NAME>_<COLUMN> (a column
# of an algorithm's row, e.g. ADAM_BETA1) and COL_<COLUMN> for the common columns.
def _declarations() -> dict[str, tl.constexpr]:
    out = {f"COL_{col.upper()}": tl.constexpr(c) for c, col in enumerate(COMMON_HYPER)}
    for algo in ALGORITHMS.values():
        out.update({f"{algo.name.upper()}_{col.upper()}": tl.constexpr(c) for c, col in enumerate(algo.HYPER)})
    return out


globals().update(_declarations())


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
def _slot(row, COL: tl.constexpr, offs, mask, other, S_DTYPE: tl.constexpr, ALIGNED: tl.constexpr):
    """The pointer to a state slot's chunk (column COL of the tensor's row) and its values."""
    ptr = tl.load(row + COL).to(tl.pointer_type(S_DTYPE))
    if ALIGNED:
        ptr = tl.multiple_of(ptr, 16)
    return ptr, tl.load(ptr + offs, mask=mask, other=other).to(tl.float32)


@triton.jit
def _chunk(row, pre, sc, grad_scale_ptr, offs, mask, other, MATH: tl.constexpr, READS_GRAD: tl.constexpr,
           REDUCES: tl.constexpr, NCOL: tl.constexpr, P_DTYPE: tl.constexpr, G_DTYPE: tl.constexpr,
           S_DTYPE: tl.constexpr, PRESENT: tl.constexpr, HAS_MASTER: tl.constexpr,
           HAS_GRAD_SCALE: tl.constexpr, FLAG: tl.constexpr,
           RNE_P: tl.constexpr, RNE_S: tl.constexpr, ALIGNED: tl.constexpr, PHASE: tl.constexpr):
    """Load one chunk of every tensor of one table row, update it with ``MATH``, store it
    (``mask`` None: a full chunk). ``pre`` and ``sc`` are the preamble's and the algorithm's
    scalars (Lookahead: ``sc`` is alpha, and there is no gradient and no preamble). Returns the
    chunk's two sums of a reducing algorithm (0 otherwise)."""
    p_sq = tl.zeros((), tl.float64)
    u_sq = tl.zeros((), tl.float64)
    # Addresses are 16-byte aligned when the table says so: then, with the chunk start a
    # multiple of BLOCK and a full chunk's mask, the compiler emits 16-byte vector accesses.
    p_ptr = tl.load(row).to(tl.pointer_type(P_DTYPE))
    if ALIGNED:
        p_ptr = tl.multiple_of(p_ptr, 16)
    if HAS_MASTER:
        # float32 master weights: read and updated in place of the 16-bit param, which only
        # receives the rounded result.
        m_ptr = tl.load(row + (NCOL - 1)).to(tl.pointer_type(tl.float32))
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
        s0_ptr, s0 = _slot(row, 2, offs, mask, other, S_DTYPE, ALIGNED)
    if PRESENT & 2:
        s1_ptr, s1 = _slot(row, 3, offs, mask, other, S_DTYPE, ALIGNED)
    if PRESENT & 4:
        s2_ptr, s2 = _slot(row, 4, offs, mask, other, S_DTYPE, ALIGNED)

    if REDUCES:
        p, s0, s1, s2, p_sq, u_sq = MATH(p, g, s0, s1, s2, sc, FLAG, PRESENT, PHASE)
    else:
        p, s0, s1, s2 = MATH(p, g, s0, s1, s2, sc, FLAG, PRESENT, PHASE)

    if PHASE != 2:  # the second traversal leaves the states as the first stored them
        if PRESENT & 1:
            tl.store(s0_ptr + offs, _rne_bf16(s0) if RNE_S else s0.to(S_DTYPE), mask=mask)
        if PRESENT & 2:
            tl.store(s1_ptr + offs, _rne_bf16(s1) if RNE_S else s1.to(S_DTYPE), mask=mask)
        if PRESENT & 4:
            tl.store(s2_ptr + offs, _rne_bf16(s2) if RNE_S else s2.to(S_DTYPE), mask=mask)
    if HAS_MASTER:
        tl.store(m_ptr + offs, p, mask=mask)
    tl.store(p_ptr + offs, _rne_bf16(p) if RNE_P else p.to(P_DTYPE), mask=mask)
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
    addrs,           # int64 [n_tensors, NCOL]: param, grad, each slot, master
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
    P_DTYPE: tl.constexpr, G_DTYPE: tl.constexpr, S_DTYPE: tl.constexpr,
    PRESENT: tl.constexpr,  # the present state slots, as bits (slot k: bit k)
    HAS_MASTER: tl.constexpr, HAS_GRAD_SCALE: tl.constexpr, HAS_FOUND_INF: tl.constexpr,
    FLAG: tl.constexpr,  # the algorithm's compile-time variant (its FLAGS hold at most one)
    RNE_P: tl.constexpr, RNE_S: tl.constexpr,  # bf16 stores rounded by hand
    ALIGNED: tl.constexpr,  # every address of the table is 16-byte aligned
    BLOCK: tl.constexpr,
    PHASE: tl.constexpr,  # 0, or a reducing algorithm's traversal: 1 (reduce) or 2 (apply), or 3:
                          # a split step's per-tensor sums of the partials
    SPLIT: tl.constexpr,  # PHASE 2 of a split step: the sums are read from ``sums``
):
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
            p_sq, u_sq = _chunk(row, pre, sc, grad_scale_ptr, offs, None, None, MATH, READS_GRAD, REDUCED is not None,
                                NCOL, P_DTYPE, G_DTYPE, S_DTYPE, PRESENT, HAS_MASTER, HAS_GRAD_SCALE, FLAG, RNE_P,
                                RNE_S, ALIGNED, PHASE)
        else:
            p_sq, u_sq = _chunk(row, pre, sc, grad_scale_ptr, offs, offs < n, 0.0, MATH, READS_GRAD,
                                REDUCED is not None, NCOL, P_DTYPE, G_DTYPE, S_DTYPE, PRESENT, HAS_MASTER,
                                HAS_GRAD_SCALE, FLAG, RNE_P, RNE_S, ALIGNED, PHASE)
        if PHASE == 1:
            tl.store(partials + 2 * pid, p_sq)
            tl.store(partials + 2 * pid + 1, u_sq)
