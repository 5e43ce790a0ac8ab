"""Host side of the Triton backend: the interface's call to one kernel launch.

The caller has already grouped tensors by device and dtype; every call here is exactly one
kernel launch (none when the call holds no elements), whatever the number of tensors, param
groups (rows of ``hyper``) and step counts. The kernel reads the step counts and the
hyperparameters itself, so nothing here reads device memory: the step is free of host
synchronisation. ``index`` is host metadata, read only into the cached table.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import lowbit
from ..algorithms import ALGORITHMS
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

# The traversal has one variant constexpr, FLAG: every algorithm declares at most one flag.
assert all(len(spec.FLAGS) <= 1 for spec in ALGORITHMS.values())

# The slot a variant needs: with it absent the kernel would skip that part of the math.
_FLAG_SLOT = {"rmsprop": "grad_avg", "adam": "max_exp_avg_sq"}

_cache = TableCache()
_launches = 0
_maps: dict[torch.device, torch.Tensor] = {}

# A work item covers whole 8-bit quantization blocks (its block's absmax is a reduction in one program).
assert BLOCK_SIZE % lowbit.BLOCK == 0 and INTERPRETER_BLOCK_SIZE % lowbit.BLOCK == 0


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


def state_maps(device: torch.device) -> torch.Tensor:
    """The 8-bit states' maps on ``device`` (cached: the tables hold their addresses): float32
    ``[2, 512]``, row 0 the signed map, row 1 the unsigned one, each its 256 values ascending,
    then its 255 midpoints (``lowbit.midpoints``) and +inf."""
    device = torch.device(device)
    maps = _maps.get(device)
    if maps is None:
        rows = []
        for signed in (True, False):
            qmap = lowbit.dynamic_map(signed)
            rows.append(torch.cat([qmap, lowbit.midpoints(qmap), torch.tensor([float("inf")])]))
        maps = _maps[device] = torch.stack(rows).to(device)
    return maps


def _map_address(slot: str, device: torch.device) -> int:
    """The address of slot ``slot``'s map: signed or unsigned by its name (lowbit.SIGNED_STATES)."""
    lowbit.state_map(slot)  # refuses a slot without a map
    maps = state_maps(device)
    return maps[0 if slot in lowbit.SIGNED_STATES else 1].data_ptr()


def _int64(v: int) -> int:
    """``v`` mod 2**64 as a two's complement int64 (the kernel takes it back as uint64)."""
    v = int(v) & 0xFFFFFFFFFFFFFFFF
    return v - (1 << 64) if v >> 63 else v


def _lowbit_columns(spec, params, states, scales, rounding) -> list[list[int]]:
    """The table's trailing columns (Note [param rounding] in kernels.py): with ``scales``, per
    slot k = 0..2 the addresses of its scales and of its map (0 for an absent slot); with
    ``rounding``, the seeds and the element offsets."""
    n, device = len(params), params[0].device
    extra = []
    if scales is not None:
        for k in range(3):
            if k < len(spec.SLOTS) and len(states[k]):
                extra.append([t.data_ptr() for t in scales[k]])
                extra.append([_map_address(spec.SLOTS[k], device)] * n)
            else:
                extra += [[0] * n, [0] * n]
    if rounding is not None:
        extra.append([_int64(seed) for seed, _ in rounding])
        extra.append([_int64(offset) for _, offset in rounding])
    return extra


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


def _check_call(spec, flags, params, grads, states, master, steps, index, hyper, grad_scale, found_inf):
    """Checks of the call's shape that cost O(1) (O(#tensors) ones run when a table is built)."""
    algo, n = spec.name, len(params)
    if len(states) != len(spec.SLOTS):
        raise ValueError(f"triton backend: {algo} takes {len(spec.SLOTS)} state slots {spec.SLOTS}, "
                         f"got {len(states)}")
    if len(flags) != len(spec.FLAGS):
        raise ValueError(f"triton backend: {algo} takes flags {spec.FLAGS}, got {tuple(flags)!r}")
    if (len(grads) != n or any(len(s) not in (0, n) for s in states)
            or (master is not None and len(master) != n)):
        raise ValueError("triton backend: grads, master and every active state slot must align with params")
    device = params[0].device
    for what, t, dtype in (("steps", steps, torch.float32), ("hyper", hyper, torch.float64),
                           ("grad_scale", grad_scale, torch.float32), ("found_inf", found_inf, torch.float32)):
        if t is None:
            continue
        if t.device != device:  # the kernel would dereference a foreign pointer
            raise ValueError(f"triton backend: {what} is on {t.device}, the params on {device}")
        if t.dtype != dtype:
            raise TypeError(f"triton backend: {what} is {t.dtype}, expected {dtype}")
    for what, t in (("grad_scale", grad_scale), ("found_inf", found_inf)):
        if t is not None and t.numel() != 1:
            raise ValueError(f"triton backend: {what} must hold one value (a 0-dim tensor), "
                             f"got shape {tuple(t.shape)}")
    if steps.dim() != 1 or not steps.is_contiguous():
        raise ValueError(f"triton backend: steps must be a contiguous 1-D tensor, got shape {tuple(steps.shape)}")
    if hyper.dim() != 2 or hyper.shape[1] != len(spec.HYPER) or not hyper.is_contiguous():
        raise ValueError(f"triton backend: {algo}'s hyper must be a contiguous [rows, {len(spec.HYPER)}] "
                         f"table {spec.HYPER}, got shape {tuple(hyper.shape)}")
    if (index.device.type != "cpu" or index.dtype != torch.int64 or tuple(index.shape) != (n, 2)
            or not index.is_contiguous()):
        raise ValueError(f"triton backend: index must be a contiguous int64 [{n}, 2] CPU tensor "
                         f"(slot in steps, row in hyper per param), got {index.dtype} "
                         f"{tuple(index.shape)} on {index.device}")


def _launch(table, name, ncol, *, p_dtype, s_dtype=tl.float32, present=(False, False, False), master=False,
            nhyper=0, flag=False, steps=None, hyper=None, grad_scale=None, found_inf=None, alpha=0.0,
            sums=None, phase=0, stochastic=False):
    """Launch the traversal with the functions of algorithm ``name`` (or ``"lookahead"``,
    whose one scalar is ``alpha``): one launch, two for a reducing algorithm (Note [reducing
    algorithms]); a split step's ``phase`` 1 makes the first and the per-tensor ``sums``, its
    ``phase`` 2 the second from them (Note [split steps]). ``s_dtype`` ``tl.uint8``: 8-bit states;
    ``stochastic``: the param stored by stochastic rounding (the table has their columns)."""
    scalars, math, reduced = kernels.rule(name)
    if phase == 1:
        sums.zero_()  # a tensor without elements has no program to write its row
    if table.n_programs == 0:
        return
    dummy = table.data  # stands for the pointers a variant never reads
    partials, phases = dummy, (0,)
    if reduced is not None:  # the sums in between on the device
        phases = ((1, 2), (1, 3), (2,))[phase]
        if phase != 2:
            partials = torch.empty(2 * table.n_programs, dtype=torch.float64, device=table.data.device)
    if stochastic:
        round_p = kernels.ROUND_STOCHASTIC
    elif INTERPRETED and p_dtype == tl.bfloat16:
        round_p = kernels.ROUND_NEAREST
    else:
        round_p = kernels.ROUND_CAST
    global _launches
    for k in phases:
        kernels.multi_tensor_kernel[(table.n_programs,)](
            table.addrs, table.meta, table.work,
            dummy if steps is None else steps,
            dummy if hyper is None else hyper,
            dummy if grad_scale is None else grad_scale,
            dummy if found_inf is None else found_inf,
            float(alpha),
            partials,
            dummy if sums is None else sums,
            SCALARS=scalars, MATH=math, REDUCED=reduced, READS_GRAD=scalars is not None,
            NCOL=ncol, NHYPER=nhyper, P_DTYPE=p_dtype, G_DTYPE=p_dtype, S_DTYPE=s_dtype,
            PRESENT=sum(1 << k for k, on in enumerate(present) if on), HAS_MASTER=bool(master),
            HAS_GRAD_SCALE=grad_scale is not None, HAS_FOUND_INF=found_inf is not None, FLAG=bool(flag),
            RNE_P=round_p.value, RNE_S=INTERPRETED and s_dtype == tl.bfloat16,
            ALIGNED=table.aligned, BLOCK=block_size(), PHASE=k, SPLIT=phase == 2, num_warps=NUM_WARPS,
        )
        _launches += 1


def _check_split(spec, params, sums, phase):
    """A split step (Note [split steps] in csrc/include/fusedopt/tensor_info.h): ``phase`` 1 or 2
    of a reducing algorithm, with its float64 [n, 2] ``sums`` on the params' device."""
    if not phase and sums is None:
        return
    if not spec.REDUCES:
        raise ValueError(f"triton backend: phase and sums split the step of a reducing algorithm (LAMB); "
                         f"{spec.name} runs one traversal")
    if phase not in (1, 2):
        raise ValueError(f"triton backend: phase must be 0 (the whole step), 1 or 2, got {phase!r}")
    n = len(params)
    if (sums is None or sums.dtype != torch.float64 or tuple(sums.shape) != (n, 2) or not sums.is_contiguous()
            or sums.device != params[0].device):
        got = "None" if sums is None else f"{sums.dtype} {tuple(sums.shape)} on {sums.device}"
        raise ValueError(f"triton backend: phase {phase} needs sums, a contiguous float64 [{n}, 2] tensor on "
                         f"{params[0].device}; got {got}")


def _check_new_table(params, grads, states, master, scales=None):
    """Dtype checks, run when a table is (re)built, not on every step; 8-bit states' scales."""
    _tl_dtype(params[0], "param")
    _check_group(params, params, "params")
    _check_group(params, grads, "grads")
    s_dtype = None
    for k, slot in enumerate(states):
        for i, t in enumerate(slot):
            s_dtype = s_dtype or t.dtype
            if scales is not None:
                if t.dtype != torch.uint8:
                    raise TypeError(f"triton backend: state slot {k} tensor {i} is {t.dtype}; with scales "
                                    "the states are uint8 codes")
                s = scales[k][i]
                want = -(-params[i].numel() // lowbit.BLOCK)
                if (s.dtype != torch.float32 or s.numel() != want or not s.is_contiguous()
                        or s.device != params[i].device):
                    raise ValueError(f"triton backend: scales[{k}][{i}] must be a contiguous float32 tensor of "
                                     f"{want} values on {params[i].device}, got {s.dtype} {tuple(s.shape)} "
                                     f"on {s.device}")
            elif t.dtype not in (torch.float32, torch.bfloat16) or t.dtype != s_dtype:
                raise TypeError(f"triton backend: state slot {k} tensor {i} is {t.dtype}; the states of "
                                f"one call are all float32 or all bfloat16 ({s_dtype} seen first)")
    for i, t in enumerate(master or ()):
        if t.dtype != torch.float32:
            raise TypeError(f"triton backend: master[{i}] is {t.dtype}; master weights are float32")


def _check_lowbit(spec, params, states, scales, rounding):
    """The O(1) checks of ``scales`` and ``rounding`` (their tensors are checked with the table)."""
    n = len(params)
    if scales is not None:
        if len(scales) != len(spec.SLOTS) or any(len(sc) != len(st) for sc, st in zip(scales, states)):
            raise ValueError(f"triton backend: scales must hold one list per slot of {spec.SLOTS}, aligned with "
                             "its states (empty for an inactive slot)")
    if rounding is not None and len(rounding) != n:
        raise ValueError(f"triton backend: rounding must hold one (seed, offset) per param, got {len(rounding)} "
                         f"for {n}")


def multi_tensor_step(algo, flags, params, grads, states, master, steps, index, hyper, grad_scale=None,
                      found_inf=None, sums=None, phase=0, scales=None, rounding=None):
    """One fused launch of ``algo`` over every tensor of the call, whatever their param groups
    and step counts (``backend.step`` of ``docs/kernel-interface.md``).

    ``scales``: per slot, the float32 block scales of 8-bit states (``states`` then hold uint8
    codes), dequantized before the update and quantized after it in the same program.
    ``rounding``: per param, ``(seed, offset)`` of stochastic rounding; it applies to bfloat16 and
    float16 params."""
    if not params:
        return
    spec = ALGORITHMS.get(algo)
    if spec is None:
        raise ValueError(f"triton backend: unknown algorithm {algo!r}")
    _check_split(spec, params, sums, phase)
    _check_call(spec, flags, params, grads, states, master, steps, index, hyper, grad_scale, found_inf)
    _check_lowbit(spec, params, states, scales, rounding)
    if scales is not None and not any(len(s) for s in states):
        scales = None  # no state to quantize (SGD without momentum)
    if rounding is not None and params[0].dtype not in (torch.bfloat16, torch.float16):
        rounding = None  # float32 params are stored as they are, as the reference does
    present = tuple(bool(len(s)) for s in states) + (False,) * (3 - len(states))
    flag = bool(flags[0]) if flags else False
    if flag and algo in _FLAG_SLOT and not present[spec.SLOTS.index(_FLAG_SLOT[algo])]:
        raise ValueError(f"triton backend: {algo} {spec.FLAGS[0]}=True needs the {_FLAG_SLOT[algo]} slot")

    # Columns: param, grad, one per slot (empty when absent), master (empty when absent), then
    # those of 8-bit states and stochastic rounding (Note [param rounding] in kernels.py).
    columns = [params, grads, *states, master or []]
    extra = _lowbit_columns(spec, params, states, scales, rounding)
    ncol = len(columns) + len(extra)
    # a step slot leaves room for the tensor's scalar states after its count
    table = _cache.get(columns, ncol, block_size(), index, (steps.numel() - len(spec.SCALAR_STATES), hyper.shape[0]),
                       check=lambda: _check_new_table(params, grads, states, master, scales), extra=extra)
    p_dt = _tl_dtype(params[0], "param")
    if scales is not None:
        s_dt = tl.uint8
    else:
        s_dt = next((_tl_dtype(s[0], "state") for s in states if len(s)), tl.float32)
    _launch(table, algo, ncol, p_dtype=p_dt, s_dtype=s_dt, present=present, master=master is not None,
            nhyper=len(spec.HYPER), flag=flag, steps=steps, hyper=hyper, grad_scale=grad_scale,
            found_inf=found_inf, sums=sums, phase=phase, stochastic=rounding is not None)


def multi_tensor_lookahead(params, slow, alpha, master=None):
    """Lookahead's slow-weight update over every tensor in one launch:
    ``slow = slow + alpha * (p - slow); p = slow`` (with ``master``, the float32 master weights
    of 16-bit params, in place of ``p``, which receives the rounded result)."""
    if not params:
        return
    if len(slow) != len(params) or (master is not None and len(master) != len(params)):
        raise ValueError("triton backend: slow weights and master weights must align with params")

    def check():
        p_dtype = _tl_dtype(params[0], "param")
        s_dtype = _tl_dtype(slow[0], "slow")
        _check_group(params, params, "params")
        _check_group(slow, slow, "slow")
        if s_dtype != tl.float32 and s_dtype != p_dtype:
            raise TypeError(f"triton backend: slow weights must be float32 or the params' dtype, got {slow[0].dtype}")
        if master is not None:
            if p_dtype == tl.float32 or s_dtype != tl.float32:
                raise TypeError("triton backend: master weights go with 16-bit params and float32 slow weights")
            for i, t in enumerate(master):
                if t.dtype != torch.float32:
                    raise TypeError(f"triton backend: master[{i}] is {t.dtype}; master weights are float32")

    # the step's columns: param, grad (none), the slow weights as slot 0, master
    columns = [params, [], slow, master or []]
    table = _cache.get(columns, len(columns), block_size(), check=check)
    _launch(table, "lookahead", len(columns), p_dtype=_tl_dtype(params[0], "param"),
            s_dtype=_tl_dtype(slow[0], "slow"), present=(True, False, False), master=master is not None,
            alpha=alpha)
