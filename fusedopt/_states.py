"""The lazy state of an optimizer: the state slots of params seen for the first time, created
as torch.optim creates them (the algorithm's initial values, the step count where torch keeps
one eagerly), stored as the optimizer's state storage asks: contiguous views of one buffer
(Note [contiguous states]), 8-bit codes and scales (Note [8-bit states] in ``_plan.py``), float32
master weights of 16-bit params."""
from __future__ import annotations

import torch

from . import _distributed, backends, lowbit
from ._plan import _LOW_PRECISION, eight_bit, state_dtype_of
from .algorithms import Algorithm


def draw_seed() -> int:
    """A stochastic-rounding seed from torch's default generator (``torch.manual_seed`` repeats it)."""
    return int(torch.randint(0, 2 ** 62, (), dtype=torch.int64))


def check_storage_options(filled: dict, group: dict) -> None:
    """The options of how a group stores its states and params (``filled``: the group with the
    defaults); a group that turns stochastic rounding on without a seed gets one drawn."""
    sdt = filled["state_dtype"]
    if sdt not in (None, torch.float32, torch.bfloat16, "8bit"):
        raise ValueError(f"Invalid state_dtype: {sdt!r} (None, torch.float32, torch.bfloat16 or '8bit')")
    m = filled["min_8bit_size"]
    if isinstance(m, bool) or not isinstance(m, int) or m < 1:
        raise ValueError(f"Invalid min_8bit_size: {m!r} (must be an integer >= 1)")
    sr = filled["stochastic_rounding"]
    if not isinstance(sr, bool):
        raise ValueError(f"Invalid stochastic_rounding: {sr!r} (must be True or False)")
    if sr and filled["master_weights"]:
        raise ValueError("stochastic_rounding=True rounds the params themselves; with master_weights=True they "
                         "are rounded from float32 master weights already: choose one")
    seed = filled["rounding_seed"]
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 64):
        raise ValueError(f"Invalid rounding_seed: {seed!r} (an integer in [0, 2**64), or None)")
    if sr and seed is None:
        group["rounding_seed"] = draw_seed()
    name = filled["backend"]
    for what, on in (("state_dtype='8bit'", sdt == "8bit"), ("stochastic_rounding=True", sr)):
        if on and name != "auto" and not backends.supports_lowbit(name):
            able = [b for b in backends.BACKENDS if backends.supports_lowbit(b)]
            raise ValueError(f"{what} is not supported by backend={name!r} yet; use 'auto' or one of "
                             + ", ".join(repr(b) for b in able))


# Note [contiguous states]: the state slots created in one go (a plan's new params) are views
# of one buffer per (device, dtype, slot), each view starting on a 64-byte boundary (vector
# loads). Allocated one by one, thousands of small states land wherever the allocator puts
# them, e.g. scattered after a large model was freed in the same process: measured on 10,000
# x 1K AdamW, 19-30 ms per step after a large run against 18-20 ms with contiguous states.
# Params that are not contiguous, and DTensors, get their own tensors as before.
def init_states(algorithm: Algorithm, state, items) -> set[int]:
    """Create the missing state of every (param, group) of ``items`` in ``state`` (the
    optimizer's); the ids of the params one of whose slots was created."""
    fresh: set[int] = set()
    pooled: dict[tuple, list] = {}
    for p, group in items:
        st = state[p]
        quantized = eight_bit(group, p)
        sdt = state_dtype_of(group, p)
        for slot, fill in algorithm.slot_init(group).items():
            if st.get(slot) is None:
                fresh.add(id(p))
                if quantized:  # Note [8-bit states]
                    st[slot], st[slot + lowbit.ABSMAX_SUFFIX] = _distributed.quantize_state(
                        torch.full_like(p, fill, dtype=torch.float32, memory_format=torch.contiguous_format),
                        lowbit.state_map(slot, p.device), lowbit.BLOCK)
                elif p.is_contiguous() and not _distributed.is_dtensor(p):
                    pooled.setdefault((p.device, sdt, slot), []).append((st, p, fill))
                else:
                    st[slot] = torch.full_like(p, fill, dtype=sdt, memory_format=torch.preserve_format)
        if group.get("master_weights") and p.dtype in _LOW_PRECISION and "master_param" not in st:
            st["master_param"] = p.detach().to(torch.float32, copy=True)
        if algorithm.eager_state and "step" not in st:
            st["step"] = torch.zeros((), dtype=torch.float32)  # adopted by the step counters later
    for (device, sdt, slot), members in pooled.items():
        _pool(device, sdt, slot, members)
    return fresh


def _pool(device: torch.device, sdt: torch.dtype, slot: str, members: list) -> None:
    """Slot ``slot`` of every (state, param, initial value) of ``members``: views of one buffer."""
    align = 64 // sdt.itemsize
    offsets, total = [], 0
    for _, p, _ in members:
        offsets.append(total)
        total += -(-p.numel() // align) * align
    buf = torch.empty(total, dtype=sdt, device=device)
    fills = {fill for _, _, fill in members}
    if len(fills) == 1:
        buf.fill_(fills.pop())
    for (st, p, fill), at in zip(members, offsets):
        view = buf[at: at + p.numel()].view(p.shape)
        if len(fills) > 1:
            view.fill_(fill)
        st[slot] = view
