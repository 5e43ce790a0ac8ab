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
    def step(self, algo, params, grads, states, scalars, flags, grad_scale=None, found_inf=None):
        spec = algorithms.ALGORITHMS[algo]
        s, f = spec.Scalars(*scalars), spec.Flags(*flags)
        for i, (p, g) in enumerate(zip(params, grads)):
            cdt = compute_dtype(p.dtype)
            p32 = p.to(cdt, copy=True)
            g32 = g.to(cdt)
            if grad_scale is not None:
                g32 = g32 * grad_scale.to(cdt)
            st = {name: slot[i].to(cdt, copy=True) for name, slot in zip(spec.SLOTS, states) if len(slot)}
            spec.update(p32, g32, st, s, f)
            # An overflow step writes nothing: select old values on the device, no host sync.
            keep = None if found_inf is None else (found_inf != 0)
            for name, slot in zip(spec.SLOTS, states):
                if len(slot):
                    new = st[name] if keep is None else torch.where(keep, slot[i].to(cdt), st[name])
                    slot[i].copy_(new)
            p.copy_(p32 if keep is None else torch.where(keep, p.to(cdt), p32))

    @torch.no_grad()
    def lookahead(self, params, slow, alpha):
        for p, s in zip(params, slow):
            _lookahead.update(p, s, alpha)
