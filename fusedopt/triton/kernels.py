"""The Triton kernels: one multi-tensor traversal, one math function per algorithm.

The traversal (:func:`multi_tensor_kernel`) walks a device-resident table: every program takes
one work item ``(tensor index, chunk start)``, looks the tensor's addresses and size up, loads
its chunk of the parameter, the gradient and the active state slots, upcasts to float32, calls
the algorithm's math function and stores the results, cast back to each tensor's dtype.

The math functions mirror ``docs/kernel-interface.md`` line by line. Their scalars are the
interface's, except that constants such as ``1 - beta`` and ``1 - lr * wd`` are derived once
per call: on the host in double precision when the scalars are host floats (as the reference
does, so the float32 rounding matches), or at the start of every program from the scalars
tensor in device mode (capturable steps, AMP): then nothing about them is known on the host.
Everything that selects code (algorithm, variants, which slots are present, dtypes, host or
device scalars) is ``tl.constexpr``: dead branches compile away. Values that the interface
makes runtime (SGD's ``first_step``, RAdam's ``rect > 0``) are selected per element.

Division and square root are the IEEE round-to-nearest forms (``div_rn``, ``sqrt_rn``):
Triton's ``/`` and ``sqrt`` are approximate on NVIDIA GPUs, torch's are not, and the kernels
are memory-bound, so exactness is free.
"""
from __future__ import annotations

import triton
import triton.language as tl

# Algorithm ids (the ``ALGO`` constexpr of the traversal).
SGD = 0
ADAGRAD = 1
ADADELTA = 2
RMSPROP = 3
ADAM = 4
YOGI = 5
RADAM = 6
LOOKAHEAD = 7

ALGO_IDS = {"sgd": SGD, "adagrad": ADAGRAD, "adadelta": ADADELTA, "rmsprop": RMSPROP,
            "adam": ADAM, "yogi": YOGI, "radam": RADAM, "lookahead": LOOKAHEAD}


# --------------------------------------------------------------------------------------------
# Per-algorithm math. Inputs and outputs are float32 blocks; ``s0..s2`` are the state slots in
# the algorithm's SLOTS order (an absent slot is a dummy block whose result is not stored).
# Each returns (p, s0, s1, s2).
# --------------------------------------------------------------------------------------------

@triton.jit
def _sgd_math(p, g, buf, s1, s2, lr, momentum, one_minus_dampening, first_step,
              NESTEROV: tl.constexpr, HAS_BUF: tl.constexpr):
    if HAS_BUF:
        buf = tl.where(first_step != 0, g, buf * momentum + one_minus_dampening * g)
        if NESTEROV:
            g = g + momentum * buf
        else:
            g = buf
    p = p - lr * g
    return p, buf, s1, s2


@triton.jit
def _adagrad_math(p, g, acc, s1, s2, lr, eps):
    acc = acc + g * g
    p = p - tl.div_rn(lr * g, tl.sqrt_rn(acc) + eps)
    return p, acc, s1, s2


@triton.jit
def _adadelta_math(p, g, sq, acc, s2, lr, rho, one_minus_rho, eps):
    sq = sq * rho + one_minus_rho * g * g
    std = tl.sqrt_rn(sq + eps)
    delta = tl.div_rn(tl.sqrt_rn(acc + eps), std) * g
    acc = acc * rho + one_minus_rho * delta * delta
    p = p - lr * delta
    return p, sq, acc, s2


@triton.jit
def _rmsprop_math(p, g, sq, buf, ga, lr, alpha, one_minus_alpha, eps, momentum,
                  CENTERED: tl.constexpr, HAS_BUF: tl.constexpr):
    sq = sq * alpha + one_minus_alpha * g * g
    if CENTERED:
        ga = ga + one_minus_alpha * (g - ga)
        avg = tl.sqrt_rn(sq - ga * ga) + eps
    else:
        avg = tl.sqrt_rn(sq) + eps
    if HAS_BUF:
        buf = buf * momentum + tl.div_rn(g, avg)
        p = p - lr * buf
    else:
        p = p - tl.div_rn(lr * g, avg)
    return p, sq, buf, ga


@triton.jit
def _adam_math(p, g, m, v, vmax, one_minus_beta1, beta2, one_minus_beta2, eps, step_size, bc2_sqrt,
               AMSGRAD: tl.constexpr):
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
def _yogi_math(p, g, m, v, s2, beta1, one_minus_beta1, one_minus_beta2, eps, step_size, bc2_sqrt):
    m = m * beta1 + one_minus_beta1 * g
    g2 = g * g
    d = v - g2
    # sign(d) with sign(0) = 0 and NaN propagated, as torch.sign.
    sign = tl.where(d > 0, 1.0, tl.where(d < 0, -1.0, d * 0.0))
    v = v - one_minus_beta2 * (g2 * sign)
    p = p - tl.div_rn(step_size * m, tl.div_rn(tl.sqrt_rn(v), bc2_sqrt) + eps)
    return p, m, v, s2


@triton.jit
def _radam_math(p, g, m, v, s2, lr, one_minus_beta1, beta2, one_minus_beta2, eps, bias_correction1,
                bc2_sqrt, rect, RECTIFY: tl.constexpr):
    m = m + one_minus_beta1 * (g - m)
    v = v * beta2 + one_minus_beta2 * g * g
    corrected = tl.div_rn(m, bias_correction1)
    if RECTIFY:
        # rect == 0 (device mode, early steps) takes the un-adapted branch.
        adaptive = tl.div_rn(bc2_sqrt, tl.sqrt_rn(v) + eps)
        p = tl.where(rect > 0, p - corrected * lr * adaptive * rect, p - corrected * lr)
    else:
        p = p - corrected * lr
    return p, m, v, s2


@triton.jit
def _lookahead_math(p, slow, alpha):
    slow = slow + alpha * (p - slow)
    return slow, slow


# --------------------------------------------------------------------------------------------
# Device-mode scalars: the interface's positional scalars read from a float32 tensor and
# turned into the kernel's (grad_scale, lr, wd, a0..a6), as launcher.host_scalars does on the
# host. Only the entries the algorithm has are read.
# --------------------------------------------------------------------------------------------

@triton.jit
def _device_scalars(sc, ALGO: tl.constexpr, DECOUPLED: tl.constexpr):
    grad_scale = tl.load(sc + 0)
    lr = tl.load(sc + 1)
    wd = tl.load(sc + 2)
    if DECOUPLED:
        wd = 1.0 - lr * wd
    a0 = tl.load(sc + 3)  # every algorithm has at least one extra scalar
    a1 = a0 * 0.0
    a2 = a1
    a3 = a1
    a4 = a1
    a5 = a1
    a6 = a1
    if ALGO == 0:  # sgd: momentum, dampening, first_step
        a1 = 1.0 - tl.load(sc + 4)
        a2 = tl.load(sc + 5)
    elif ALGO == 2:  # adadelta: rho, eps
        a1 = 1.0 - a0
        a2 = tl.load(sc + 4)
    elif ALGO == 3:  # rmsprop: alpha, eps, momentum
        a1 = 1.0 - a0
        a2 = tl.load(sc + 4)
        a3 = tl.load(sc + 5)
    elif ALGO == 4 or ALGO == 6:  # adam: beta1, beta2, eps, step_size, bc2_sqrt; radam: ..., bc1, bc2_sqrt, rect
        beta2 = tl.load(sc + 4)
        a0 = 1.0 - a0
        a1 = beta2
        a2 = 1.0 - beta2
        a3 = tl.load(sc + 5)
        a4 = tl.load(sc + 6)
        a5 = tl.load(sc + 7)
        if ALGO == 6:
            a6 = tl.load(sc + 8)
    elif ALGO == 5:  # yogi: beta1, beta2, eps, step_size, bc2_sqrt
        a1 = 1.0 - a0
        a2 = 1.0 - tl.load(sc + 4)
        a3 = tl.load(sc + 5)
        a4 = tl.load(sc + 6)
        a5 = tl.load(sc + 7)
    return grad_scale, lr, wd, a0, a1, a2, a3, a4, a5, a6


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
def _chunk(row, offs, mask, other, amp_scale, grad_scale, lr, wd, a0, a1, a2, a3, a4, a5, a6,
           ALGO: tl.constexpr, NCOL: tl.constexpr,
           P_DTYPE: tl.constexpr, G_DTYPE: tl.constexpr, S_DTYPE: tl.constexpr,
           HAS_S0: tl.constexpr, HAS_S1: tl.constexpr, HAS_S2: tl.constexpr, HAS_MASTER: tl.constexpr,
           DEVICE_SCALARS: tl.constexpr, HAS_GRAD_SCALE: tl.constexpr, MAXIMIZE: tl.constexpr,
           SCALE: tl.constexpr, WEIGHT_DECAY: tl.constexpr, DECOUPLED: tl.constexpr, F0: tl.constexpr, F1: tl.constexpr,
           RNE_P: tl.constexpr, RNE_G: tl.constexpr, RNE_S: tl.constexpr, ALIGNED: tl.constexpr):
    """Load one chunk of every tensor of one row, update it, store it (``mask`` None: a full
    chunk)."""
    # Addresses are 16-byte aligned when the table says so: then, with the chunk start a
    # multiple of BLOCK and a full chunk's mask, the compiler emits 16-byte vector accesses.
    p_ptr = tl.load(row).to(tl.pointer_type(P_DTYPE))
    g_ptr = tl.load(row + 1).to(tl.pointer_type(G_DTYPE))
    if ALIGNED:
        p_ptr = tl.multiple_of(p_ptr, 16)
        g_ptr = tl.multiple_of(g_ptr, 16)
    if HAS_MASTER:
        # float32 master weights: read and updated in place of the 16-bit param, which only
        # receives the rounded result.
        m_ptr = tl.load(row + (NCOL - 1)).to(tl.pointer_type(tl.float32))
        if ALIGNED:
            m_ptr = tl.multiple_of(m_ptr, 16)
        p = tl.load(m_ptr + offs, mask=mask, other=other)
    else:
        p = tl.load(p_ptr + offs, mask=mask, other=other).to(tl.float32)

    if ALGO == 7:  # LOOKAHEAD: column 1 is the slow weights
        slow = tl.load(g_ptr + offs, mask=mask, other=other).to(tl.float32)
        p, slow = _lookahead_math(p, slow, a0)
        tl.store(g_ptr + offs, _rne_bf16(slow) if RNE_G else slow.to(G_DTYPE), mask=mask)
    else:
        g = tl.load(g_ptr + offs, mask=mask, other=other).to(tl.float32)
        # Common preamble, in the reference's order.
        if HAS_GRAD_SCALE:
            g = g * amp_scale
        if MAXIMIZE:
            g = -g
        if SCALE:
            g = g * grad_scale
        if WEIGHT_DECAY:
            if DECOUPLED:
                p = p * wd
            elif DEVICE_SCALARS:
                g = tl.where(wd != 0, g + wd * p, g)  # the reference skips wd == 0 entirely
            else:
                g = g + wd * p

        # An absent slot is a dummy block (never stored), so every math function has one shape.
        s0 = p
        s1 = p
        s2 = p
        if HAS_S0:
            s0_ptr = tl.load(row + 2).to(tl.pointer_type(S_DTYPE))
            if ALIGNED:
                s0_ptr = tl.multiple_of(s0_ptr, 16)
            s0 = tl.load(s0_ptr + offs, mask=mask, other=other).to(tl.float32)
        if HAS_S1:
            s1_ptr = tl.load(row + 3).to(tl.pointer_type(S_DTYPE))
            if ALIGNED:
                s1_ptr = tl.multiple_of(s1_ptr, 16)
            s1 = tl.load(s1_ptr + offs, mask=mask, other=other).to(tl.float32)
        if HAS_S2:
            s2_ptr = tl.load(row + 4).to(tl.pointer_type(S_DTYPE))
            if ALIGNED:
                s2_ptr = tl.multiple_of(s2_ptr, 16)
            s2 = tl.load(s2_ptr + offs, mask=mask, other=other).to(tl.float32)

        if ALGO == 0:
            p, s0, s1, s2 = _sgd_math(p, g, s0, s1, s2, lr, a0, a1, a2, F0, HAS_S0)
        elif ALGO == 1:
            p, s0, s1, s2 = _adagrad_math(p, g, s0, s1, s2, lr, a0)
        elif ALGO == 2:
            p, s0, s1, s2 = _adadelta_math(p, g, s0, s1, s2, lr, a0, a1, a2)
        elif ALGO == 3:
            p, s0, s1, s2 = _rmsprop_math(p, g, s0, s1, s2, lr, a0, a1, a2, a3, F0, HAS_S1)
        elif ALGO == 4:
            p, s0, s1, s2 = _adam_math(p, g, s0, s1, s2, a0, a1, a2, a3, a4, a5, F0)
        elif ALGO == 5:
            p, s0, s1, s2 = _yogi_math(p, g, s0, s1, s2, a0, a1, a2, a3, a4, a5)
        elif ALGO == 6:
            p, s0, s1, s2 = _radam_math(p, g, s0, s1, s2, lr, a0, a1, a2, a3, a4, a5, a6, F0)

        if HAS_S0:
            tl.store(s0_ptr + offs, _rne_bf16(s0) if RNE_S else s0.to(S_DTYPE), mask=mask)
        if HAS_S1:
            tl.store(s1_ptr + offs, _rne_bf16(s1) if RNE_S else s1.to(S_DTYPE), mask=mask)
        if HAS_S2:
            tl.store(s2_ptr + offs, _rne_bf16(s2) if RNE_S else s2.to(S_DTYPE), mask=mask)
    if HAS_MASTER:
        tl.store(m_ptr + offs, p, mask=mask)
    tl.store(p_ptr + offs, _rne_bf16(p) if RNE_P else p.to(P_DTYPE), mask=mask)


@triton.jit
def multi_tensor_kernel(
    addrs,           # int64 [n_tensors, NCOL]: param, grad (Lookahead: slow), each slot, master
    sizes,           # int64 [n_tensors]: elements per tensor
    work,            # int64 [n_programs, 2]: (tensor index, chunk start)
    scalars_ptr,     # float32 [len(SCALARS)], read when DEVICE_SCALARS
    grad_scale_ptr,  # float32 0-dim, read when HAS_GRAD_SCALE
    found_inf_ptr,   # float32 0-dim, read when HAS_FOUND_INF: != 0 means write nothing
    grad_scale, lr, wd,  # host mode; wd is 1 - lr * weight_decay when DECOUPLED
    a0, a1, a2, a3, a4, a5, a6,  # host mode: the algorithm's scalars (launcher.host_scalars)
    ALGO: tl.constexpr, NCOL: tl.constexpr,
    P_DTYPE: tl.constexpr, G_DTYPE: tl.constexpr, S_DTYPE: tl.constexpr,
    HAS_S0: tl.constexpr, HAS_S1: tl.constexpr, HAS_S2: tl.constexpr, HAS_MASTER: tl.constexpr,
    DEVICE_SCALARS: tl.constexpr,
    MAXIMIZE: tl.constexpr, SCALE: tl.constexpr, HAS_GRAD_SCALE: tl.constexpr,
    HAS_FOUND_INF: tl.constexpr, WEIGHT_DECAY: tl.constexpr, DECOUPLED: tl.constexpr,
    F0: tl.constexpr, F1: tl.constexpr,
    RNE_P: tl.constexpr, RNE_G: tl.constexpr, RNE_S: tl.constexpr,  # bf16 stores rounded by hand
    ALIGNED: tl.constexpr,  # every address of the table is 16-byte aligned
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    tensor = tl.load(work + 2 * pid)
    # 64-bit offsets: start and n are int64, so tensors of 2**31 elements or more are fine.
    start = tl.multiple_of(tl.load(work + 2 * pid + 1), BLOCK)
    n = tl.load(sizes + tensor)
    if HAS_FOUND_INF:
        # An overflowed step writes nothing: the tensor counts as empty, so nothing is read either.
        n = tl.where(tl.load(found_inf_ptr) == 0, n, 0)
    row = addrs + tensor * NCOL
    if ALGO != 7:
        if DEVICE_SCALARS:
            grad_scale, lr, wd, a0, a1, a2, a3, a4, a5, a6 = _device_scalars(scalars_ptr, ALGO, DECOUPLED)
    amp_scale = tl.load(grad_scale_ptr) if HAS_GRAD_SCALE else grad_scale
    offs = start + tl.arange(0, BLOCK)
    # A full chunk goes unmasked, so its accesses vectorise (16 bytes when ALIGNED); only a
    # tensor's last chunk takes the masked path. (Two paths that differ only in the mask would
    # be merged by the compiler into one masked path.)
    if start + BLOCK <= n:
        _chunk(row, offs, None, None, amp_scale, grad_scale, lr, wd, a0, a1, a2, a3, a4, a5, a6,
               ALGO, NCOL, P_DTYPE, G_DTYPE, S_DTYPE, HAS_S0, HAS_S1, HAS_S2, HAS_MASTER, DEVICE_SCALARS,
               HAS_GRAD_SCALE, MAXIMIZE, SCALE, WEIGHT_DECAY, DECOUPLED, F0, F1, RNE_P, RNE_G, RNE_S, ALIGNED)
    else:
        _chunk(row, offs, offs < n, 0.0, amp_scale, grad_scale, lr, wd, a0, a1, a2, a3, a4, a5, a6,
               ALGO, NCOL, P_DTYPE, G_DTYPE, S_DTYPE, HAS_S0, HAS_S1, HAS_S2, HAS_MASTER, DEVICE_SCALARS,
               HAS_GRAD_SCALE, MAXIMIZE, SCALE, WEIGHT_DECAY, DECOUPLED, F0, F1, RNE_P, RNE_G, RNE_S, ALIGNED)
