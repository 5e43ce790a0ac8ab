"""Host side of the Triton backend: positional scalars to kernel arguments, one launch per call.

The caller has already grouped tensors by device and dtype; every call here is exactly one
kernel launch (none when the call holds no elements), whatever the number of tensors.
Nothing here reads device memory: the step is free of host synchronisation.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from . import kernels
from .tables import TableCache

# True when the kernels run in Triton's interpreter (decided when triton.jit wrapped them,
# i.e. by TRITON_INTERPRET at import time); they then run on CPU tensors only.
INTERPRETED = not isinstance(kernels.multi_tensor_kernel, triton.runtime.JITFunction)

# One program per chunk of BLOCK elements of one tensor. On the GPU, 2048 float32 elements
# over 4 warps is 16 per thread: four 16-byte loads in flight per stream, enough to saturate
# HBM while keeping the tail of small tensors cheap. The interpreter pays per program, not
# per element, so it gets larger chunks.
BLOCK_SIZE = 2048
NUM_WARPS = 4
INTERPRETER_BLOCK_SIZE = 4096

_TL_DTYPES = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}

# Positional slots per algorithm (docs/kernel-interface.md).
N_SLOTS = {"sgd": 1, "adagrad": 1, "adadelta": 2, "rmsprop": 3, "adam": 3, "yogi": 2, "radam": 2}

_cache = TableCache()
_launches = 0


def launch_count() -> int:
    """Kernel launches made by this backend since import (or the last reset)."""
    return _launches


def reset_launch_count() -> None:
    global _launches
    _launches = 0


def table_cache() -> TableCache:
    return _cache


def block_size() -> int:
    return INTERPRETER_BLOCK_SIZE if INTERPRETED else BLOCK_SIZE


def _kernel_scalars(algo: str, scalars, flags, present):
    """(a0..a6, F0, F1) for ``algo`` from the interface's positional scalars and flags.

    Constants the reference computes on the host (``1 - beta``) are computed here too.
    """
    s = scalars
    if algo == "sgd":
        momentum, dampening = s[3], s[4]
        nesterov, first_step = flags[2], flags[3]
        return (momentum, 1.0 - dampening, 0.0, 0.0, 0.0, 0.0, 0.0), (bool(nesterov), bool(first_step))
    if algo == "adagrad":
        return (s[3], 0.0, 0.0, 0.0, 0.0, 0.0, 0.0), (False, False)
    if algo == "adadelta":
        rho, eps = s[3], s[4]
        return (rho, 1.0 - rho, eps, 0.0, 0.0, 0.0, 0.0), (False, False)
    if algo == "rmsprop":
        alpha, eps, momentum = s[3], s[4], s[5]
        centered = bool(flags[2])
        if centered and not present[2]:
            raise ValueError("triton backend: rmsprop centered=True needs the grad_avg slot")
        return (alpha, 1.0 - alpha, eps, momentum, 0.0, 0.0, 0.0), (centered, False)
    if algo == "adam":
        beta1, beta2, eps, step_size, bc2_sqrt = s[3:8]
        amsgrad = bool(flags[2])
        if amsgrad and not present[2]:
            raise ValueError("triton backend: adam amsgrad=True needs the max_exp_avg_sq slot")
        return (1.0 - beta1, beta2, 1.0 - beta2, eps, step_size, bc2_sqrt, 0.0), (amsgrad, False)
    if algo == "yogi":
        beta1, beta2, eps, step_size, bc2_sqrt = s[3:8]
        return (beta1, 1.0 - beta1, 1.0 - beta2, eps, step_size, bc2_sqrt, 0.0), (False, False)
    if algo == "radam":
        beta1, beta2, eps, bc1, bc2_sqrt, rect = s[3:9]
        return (1.0 - beta1, beta2, 1.0 - beta2, eps, bc1, bc2_sqrt, rect), (bool(flags[2]), False)
    raise ValueError(f"triton backend: unknown algorithm {algo!r}")


def _tl_dtype(t: torch.Tensor, what: str):
    try:
        return _TL_DTYPES[t.dtype]
    except KeyError:
        raise TypeError(f"triton backend: {what} dtype {t.dtype} is not supported "
                        "(float32, bfloat16, float16)") from None


def _check_group(params, others, what):
    dtype = params[0].dtype
    for i, t in enumerate(others):
        if t.dtype != dtype:
            raise TypeError(f"triton backend: {what}[{i}] is {t.dtype}, expected {dtype} like its param")


def _launch(table, p_dtype, g_dtype, ncol, present, algo_id, common, kscalars, kflags,
            maximize, decoupled, grad_scale, found_inf):
    global _launches
    if table.n_programs == 0:
        return
    gs_host, lr, wd = common
    has_wd = wd != 0.0
    wd_arg = (1.0 - lr * wd) if decoupled else wd
    dummy = table.data
    if grad_scale is not None and grad_scale.dtype != torch.float32:
        grad_scale = grad_scale.float()
    if found_inf is not None and found_inf.dtype != torch.float32:
        found_inf = found_inf.float()
    kernels.multi_tensor_kernel[(table.n_programs,)](
        table.addrs, table.sizes, table.work,
        dummy if grad_scale is None else grad_scale,
        dummy if found_inf is None else found_inf,
        float(gs_host), float(lr), float(wd_arg), *(float(a) for a in kscalars),
        ALGO=algo_id, NCOL=ncol, P_DTYPE=p_dtype, G_DTYPE=g_dtype,
        HAS_S0=present[0], HAS_S1=present[1], HAS_S2=present[2],
        MAXIMIZE=bool(maximize), SCALE=float(gs_host) != 1.0, HAS_GRAD_SCALE=grad_scale is not None,
        HAS_FOUND_INF=found_inf is not None, WEIGHT_DECAY=has_wd, DECOUPLED=bool(decoupled),
        F0=kflags[0], F1=kflags[1],
        BLOCK=block_size(), num_warps=NUM_WARPS,
    )
    _launches += 1


def multi_tensor_step(algo, params, grads, states, scalars, flags, grad_scale=None, found_inf=None):
    """One fused launch of ``algo`` over every tensor (see ``docs/kernel-interface.md``)."""
    if not params:
        return
    n_slots = N_SLOTS.get(algo)
    if n_slots is None:
        raise ValueError(f"triton backend: unknown algorithm {algo!r}")
    if len(states) != n_slots:
        raise ValueError(f"triton backend: {algo} takes {n_slots} state slots, got {len(states)}")
    if len(grads) != len(params) or any(len(s) not in (0, len(params)) for s in states):
        raise ValueError("triton backend: grads and every active state slot must align with params")
    present = tuple(bool(len(s)) for s in states) + (False,) * (3 - n_slots)
    kscalars, kflags = _kernel_scalars(algo, scalars, flags, present)
    columns = [params, grads, *states]
    ncol = 2 + n_slots
    cache = _cache
    builds = cache.builds
    table = cache.get(columns, ncol, block_size())
    if cache.builds != builds:  # a new table: check dtypes once, not every step
        p_dt = _tl_dtype(params[0], "param")
        _check_group(params, params, "params")
        _check_group(params, grads, "grads")
        for k, slot in enumerate(states):
            for i, t in enumerate(slot):
                if t.dtype != torch.float32:
                    raise TypeError(f"triton backend: state slot {k} tensor {i} is {t.dtype}; states are float32")
    p_dt = _tl_dtype(params[0], "param")
    _launch(table, p_dt, p_dt, ncol, present, kernels.ALGO_IDS[algo], scalars[:3], kscalars, kflags,
            flags[0], flags[1], grad_scale, found_inf)


def multi_tensor_lookahead(params, slow, alpha):
    """Lookahead's slow-weight update over every tensor in one launch:
    ``slow = slow + alpha * (p - slow); p = slow``."""
    if not params:
        return
    if len(slow) != len(params):
        raise ValueError("triton backend: slow weights must align with params")
    cache = _cache
    builds = cache.builds
    table = cache.get([params, slow], 2, block_size())
    if cache.builds != builds:
        _check_group(params, params, "params")
        _check_group(slow, slow, "slow")
    _launch(table, _tl_dtype(params[0], "param"), _tl_dtype(slow[0], "slow"), 2, (False, False, False),
            kernels.LOOKAHEAD, (1.0, 0.0, 0.0), (float(alpha), 0, 0, 0, 0, 0, 0), (False, False),
            False, False, None, None)
