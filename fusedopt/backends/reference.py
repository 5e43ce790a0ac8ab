"""The eager reference backend: plain torch, one tensor at a time. The oracle of every test.

Math runs in float32 (float64 for float64 params) whatever the storage dtype; the per-tensor
scalars come from :meth:`Algorithm.scalars`, in float64, as the kernels compute them. It is
also the fallback on devices no fused backend serves.
"""
from __future__ import annotations

import torch

from .. import algorithms, lowbit
from ..algorithms import lookahead as _lookahead


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def load_states(spec, states, scales, i, cdt) -> dict[str, torch.Tensor]:
    """Tensor ``i``'s active states in the compute dtype (8-bit ones dequantized)."""
    if scales is None:
        return {name: slot[i].to(cdt, copy=True) for name, slot in zip(spec.SLOTS, states) if len(slot)}
    return {name: lowbit.dequantize_blockwise(slot[i], scales[k][i], lowbit.state_map(name, slot[i].device)).to(cdt)
            for k, (name, slot) in enumerate(zip(spec.SLOTS, states)) if len(slot)}


class Backend:
    name = "reference"
    checks_tensors = False
    lowbit = True  # step() takes scales= and rounding=

    def available(self, device: torch.device) -> tuple[bool, str]:
        return True, ""

    @torch.no_grad()
    def step(self, algo, flags, params, grads, states, master, steps, index, hyper,
             grad_scale=None, found_inf=None, sums=None, phase=0, scales=None, rounding=None):
        """``scales``: per slot, the float32 block scales of 8-bit states (``states`` then hold
        their uint8 codes; ``fusedopt.lowbit``): dequantized before the update, quantized after.
        ``rounding``: per tensor, (seed, element offset) of stochastic rounding of 16-bit params
        (``lowbit.stochastic_round`` with the tensor's step count)."""
        if not params:
            return
        spec = algorithms.ALGORITHMS[algo]
        if (phase or sums is not None) and (not spec.REDUCES or phase not in (1, 2) or sums is None
                                            or tuple(sums.shape) != (len(params), 2) or sums.dtype != torch.float64):
            raise ValueError(f"reference backend: phase {phase!r} with sums "
                             f"{None if sums is None else tuple(sums.shape)}: phase 1 or 2 of a reducing "
                             f"algorithm's split step needs float64 sums of shape [{len(params)}, 2]")
        if phase == 1:
            sums.zero_()  # every row is written: 0 where nothing is added (an overflow step)
        # The oracle reads the inf flag, the step counts and the table on the host (a
        # synchronisation on an accelerator, which the fused backends avoid).
        if found_inf is not None and float(found_inf) != 0:
            return  # an overflow step writes nothing (its counters were not advanced either)
        f = spec.Flags(*flags)
        counts, rows, where = steps.tolist(), hyper.tolist(), index.tolist()
        for i, (p, g) in enumerate(zip(params, grads)):
            k, row = where[i]
            s = spec.scalars(rows[row], counts[k], counts[k + 1: k + 1 + len(spec.SCALAR_STATES)])
            cdt = compute_dtype(p.dtype)
            p32 = (master[i] if master is not None else p).to(cdt, copy=True)
            g32 = g.to(cdt)
            if grad_scale is not None:
                g32 = g32 * grad_scale.to(cdt)
            st = load_states(spec, states, scales, i, cdt)

            def store(with_states=True):
                for j, (name, slot) in enumerate(zip(spec.SLOTS, states)):
                    if not len(slot) or not with_states:
                        continue
                    if scales is None:
                        slot[i].copy_(st[name])
                    else:
                        codes, absmax = lowbit.quantize_blockwise(st[name], lowbit.state_map(name, p.device))
                        slot[i].copy_(codes)
                        scales[j][i].copy_(absmax)
                if master is not None:
                    master[i].copy_(p32)
                if rounding is not None and p.dtype in (torch.bfloat16, torch.float16):
                    seed, offset = rounding[i]
                    p.copy_(lowbit.stochastic_round(p32.float(), p.dtype, seed, int(counts[k]), offset))
                else:
                    p.copy_(p32)

            if spec.REDUCES:  # two traversals, everything stored in between (as the kernels do)
                if phase != 2:
                    tensor_sums = spec.reduce(p32, g32, st, s, f)
                    store()
                    if phase == 1:  # Note [split steps]: the caller combines the sums
                        sums[i] = torch.tensor(tensor_sums, dtype=torch.float64)
                        continue
                else:
                    tensor_sums = sums[i].tolist()
                p32 = (master[i] if master is not None else p).to(cdt, copy=True)
                st = load_states(spec, states, scales, i, cdt)
                spec.apply_reduced(p32, st, s, f, *tensor_sums)
                store(with_states=False)  # the second traversal leaves the states as the first stored them
            else:
                spec.update(p32, g32, st, s, f)
                store()

    @torch.no_grad()
    def lookahead(self, params, slow, alpha, master=None):
        for i, (p, s) in enumerate(zip(params, slow)):
            _lookahead.update(p, s, alpha, None if master is None else master[i])
