"""The eager reference backend: plain torch, one tensor at a time. The oracle of every test.

Math runs in float32 (float64 for float64 params) whatever the storage dtype. It is also the
fallback on devices no fused backend serves.
"""
from __future__ import annotations

import torch

from .. import algorithms
from ..algorithms import lookahead as _lookahead


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


class Backend:
    name = "reference"

    def available(self, device: torch.device) -> tuple[bool, str]:
        return True, ""

    @torch.no_grad()
    def step(self, algo, params, grads, states, scalars, flags, grad_scale=None, found_inf=None, master=None):
        spec = algorithms.ALGORITHMS[algo]
        if isinstance(scalars, torch.Tensor):
            # device mode: the oracle reads the scalars (a synchronisation the fused backends avoid)
            scalars = scalars.tolist()
        s, f = spec.Scalars(*scalars), spec.Flags(*flags)
        # An overflow step writes nothing: old values are selected on the device, no host sync.
        keep = None if found_inf is None else (found_inf != 0)

        def store(dst, new):
            dst.copy_(new if keep is None else torch.where(keep, dst.to(new.dtype), new))

        for i, (p, g) in enumerate(zip(params, grads)):
            cdt = compute_dtype(p.dtype)
            p32 = (master[i] if master is not None else p).to(cdt, copy=True)
            g32 = g.to(cdt)
            if grad_scale is not None:
                g32 = g32 * grad_scale.to(cdt)
            st = {name: slot[i].to(cdt, copy=True) for name, slot in zip(spec.SLOTS, states) if len(slot)}
            spec.update(p32, g32, st, s, f)
            for name, slot in zip(spec.SLOTS, states):
                if len(slot):
                    store(slot[i], st[name])
            if master is not None:
                store(master[i], p32)
                p32 = master[i]
            store(p, p32)

    @torch.no_grad()
    def lookahead(self, params, slow, alpha):
        for p, s in zip(params, slow):
            _lookahead.update(p, s, alpha)
