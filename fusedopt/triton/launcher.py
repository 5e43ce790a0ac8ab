"""Host side of the Triton backend: positional scalars to kernel arguments, one launch per call.

The caller has already grouped tensors by device and dtype; every call here is exactly one
kernel launch (none when the call holds no elements), whatever the number of tensors.
Nothing here reads device memory: the step is free of host synchronisation.
"""
from __future__ import annotations

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


def host_scalars(algo: str, scalars, flags):
    """(a0..a6, (F0, F1)) for ``algo`` from the interface's positional host scalars and flags.

    Constants the reference computes on the host in double precision (``1 - beta``) are
    computed here too. ``kernels._device_scalars`` is the same mapping for device scalars.
    """
    s = scalars
    if algo == "sgd":
        momentum, dampening, first_step = s[3:6]
        return (momentum, 1.0 - dampening, first_step, 0.0, 0.0, 0.0, 0.0), (bool(flags[2]), False)
    if algo == "adagrad":
        return (s[3], 0.0, 0.0, 0.0, 0.0, 0.0, 0.0), (False, False)
    if algo == "adadelta":
        rho, eps = s[3:5]
        return (rho, 1.0 - rho, eps, 0.0, 0.0, 0.0, 0.0), (False, False)
    if algo == "rmsprop":
        alpha, eps, momentum = s[3:6]
        return (alpha, 1.0 - alpha, eps, momentum, 0.0, 0.0, 0.0), (bool(flags[2]), False)
    if algo == "adam":
        beta1, beta2, eps, step_size, bc2_sqrt = s[3:8]
        return (1.0 - beta1, beta2, 1.0 - beta2, eps, step_size, bc2_sqrt, 0.0), (bool(flags[2]), False)
    if algo == "yogi":
        beta1, beta2, eps, step_size, bc2_sqrt = s[3:8]
        return (beta1, 1.0 - beta1, 1.0 - beta2, eps, step_size, bc2_sqrt, 0.0), (False, False)
    if algo == "radam":
        beta1, beta2, eps, bc1, bc2_sqrt, rect = s[3:9]
        return (1.0 - beta1, beta2, 1.0 - beta2, eps, bc1, bc2_sqrt, rect), (bool(flags[2]), False)
    raise ValueError(f"triton backend: unknown algorithm {algo!r}")


def _variant_flags(algo: str, flags):
    """(F0, F1) for device mode: the compile-time variants only."""
    if algo in ("sgd", "rmsprop", "adam", "radam"):
        return bool(flags[2]), False
    return False, False


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


def _launch(table, algo_id, ncol, *, p_dtype, g_dtype, s_dtype=tl.float32, present=(False, False, False),
            master=False, device_scalars=None, host=(1.0, 0.0, 0.0), a=(0.0,) * 7, kflags=(False, False),
            maximize=False, decoupled=False, grad_scale=None, found_inf=None):
    global _launches
    if table.n_programs == 0:
        return
    dummy = table.data
    if device_scalars is not None:
        gs_host, lr, wd_arg = 1.0, 0.0, 0.0
        scale, has_wd = True, True  # unknown on the host: the kernel reads them
    else:
        gs_host, lr, wd = (float(x) for x in host)
        scale, has_wd = gs_host != 1.0, wd != 0.0
        wd_arg = (1.0 - lr * wd) if decoupled else wd
    if grad_scale is not None and grad_scale.dtype != torch.float32:
        grad_scale = grad_scale.float()
    if found_inf is not None and found_inf.dtype != torch.float32:
        found_inf = found_inf.float()
    kernels.multi_tensor_kernel[(table.n_programs,)](
        table.addrs, table.sizes, table.work,
        dummy if device_scalars is None else device_scalars,
        dummy if grad_scale is None else grad_scale,
        dummy if found_inf is None else found_inf,
        gs_host, lr, wd_arg, *(float(x) for x in a),
        ALGO=algo_id, NCOL=ncol, P_DTYPE=p_dtype, G_DTYPE=g_dtype, S_DTYPE=s_dtype,
        HAS_S0=present[0], HAS_S1=present[1], HAS_S2=present[2], HAS_MASTER=bool(master),
        DEVICE_SCALARS=device_scalars is not None,
        MAXIMIZE=bool(maximize), SCALE=scale, HAS_GRAD_SCALE=grad_scale is not None,
        HAS_FOUND_INF=found_inf is not None, WEIGHT_DECAY=has_wd, DECOUPLED=bool(decoupled),
        F0=kflags[0], F1=kflags[1],
        RNE_P=INTERPRETED and p_dtype == tl.bfloat16, RNE_G=INTERPRETED and g_dtype == tl.bfloat16,
        RNE_S=INTERPRETED and s_dtype == tl.bfloat16, ALIGNED=table.aligned,
        BLOCK=block_size(), num_warps=NUM_WARPS,
    )
    _launches += 1


def _check_new_table(params, grads, states, master):
    """Dtype checks, run when a table is (re)built, not on every step."""
    _tl_dtype(params[0], "param")
    _check_group(params, params, "params")
    _check_group(params, grads, "grads")
    s_dtype = None
    for k, slot in enumerate(states):
        for i, t in enumerate(slot):
            s_dtype = s_dtype or t.dtype
            if t.dtype not in (torch.float32, torch.bfloat16) or t.dtype != s_dtype:
                raise TypeError(f"triton backend: state slot {k} tensor {i} is {t.dtype}; the states of "
                                f"one call are all float32 or all bfloat16 ({s_dtype} seen first)")
    for i, t in enumerate(master or ()):
        if t.dtype != torch.float32:
            raise TypeError(f"triton backend: master[{i}] is {t.dtype}; master weights are float32")


def multi_tensor_step(algo, params, grads, states, scalars, flags, grad_scale=None, found_inf=None,
                      master=None):
    """One fused launch of ``algo`` over every tensor (see ``docs/kernel-interface.md``).

    ``scalars`` is a tuple of host floats, or a 1-D float32 tensor on the params' device
    (device mode: the kernel reads it; nothing is read on the host).
    """
    if not params:
        return
    n_slots = N_SLOTS.get(algo)
    if n_slots is None:
        raise ValueError(f"triton backend: unknown algorithm {algo!r}")
    if len(states) != n_slots:
        raise ValueError(f"triton backend: {algo} takes {n_slots} state slots, got {len(states)}")
    if (len(grads) != len(params) or any(len(s) not in (0, len(params)) for s in states)
            or (master is not None and len(master) != len(params))):
        raise ValueError("triton backend: grads, master and every active state slot must align with params")
    present = tuple(bool(len(s)) for s in states) + (False,) * (3 - n_slots)
    device_mode = isinstance(scalars, torch.Tensor)
    device = params[0].device
    for what, t in (("scalars", scalars if device_mode else None), ("grad_scale", grad_scale),
                    ("found_inf", found_inf)):
        if t is not None and t.device != device:  # the kernel would dereference a foreign pointer
            raise ValueError(f"triton backend: {what} is on {t.device}, the params on {device}")
    if device_mode:
        a, kflags = (0.0,) * 7, _variant_flags(algo, flags)
        if scalars.dtype != torch.float32:
            scalars = scalars.float()
    else:
        a, kflags = host_scalars(algo, scalars, flags)
    # Variants that need their slot; with the slot absent the kernel would skip the math.
    if algo == "rmsprop" and kflags[0] and not present[2]:
        raise ValueError("triton backend: rmsprop centered=True needs the grad_avg slot")
    if algo == "adam" and kflags[0] and not present[2]:
        raise ValueError("triton backend: adam amsgrad=True needs the max_exp_avg_sq slot")

    # Columns: param, grad, one per slot (empty when absent), master (empty when absent).
    columns = [params, grads, *states, master or []]
    ncol = len(columns)
    table = _cache.get(columns, ncol, block_size(), check=lambda: _check_new_table(params, grads, states, master))
    p_dt = _tl_dtype(params[0], "param")
    s_dt = next((_tl_dtype(s[0], "state") for s in states if len(s)), tl.float32)
    _launch(table, kernels.ALGO_IDS[algo], ncol, p_dtype=p_dt, g_dtype=p_dt, s_dtype=s_dt, present=present,
            master=master is not None, device_scalars=scalars if device_mode else None,
            host=None if device_mode else scalars[:3], a=a, kflags=kflags,
            maximize=flags[0], decoupled=flags[1], grad_scale=grad_scale, found_inf=found_inf)


def multi_tensor_lookahead(params, slow, alpha):
    """Lookahead's slow-weight update over every tensor in one launch:
    ``slow = slow + alpha * (p - slow); p = slow``."""
    if not params:
        return
    if len(slow) != len(params):
        raise ValueError("triton backend: slow weights must align with params")

    def check():
        _tl_dtype(params[0], "param")
        _tl_dtype(slow[0], "slow")
        _check_group(params, params, "params")
        _check_group(slow, slow, "slow")

    table = _cache.get([params, slow], 2, block_size(), check=check)
    _launch(table, kernels.LOOKAHEAD, 2, p_dtype=_tl_dtype(params[0], "param"), g_dtype=_tl_dtype(slow[0], "slow"),
            a=(float(alpha),) + (0.0,) * 6)
