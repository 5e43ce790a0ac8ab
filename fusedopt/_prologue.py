"""The step prologue: AMP's scale and inf flag, the clip coefficient and 1/k accumulation, folded
into one gradient scale per device, with no host synchronisation."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Prologue:
    """What every launch of one step multiplies its gradients by and checks before writing."""
    scale: torch.Tensor | None        # 0-dim float32: 1/amp_scale x clip coefficient x 1/k
    found_inf: torch.Tensor | None    # 0-dim float32, on a device: != 0 means skip the step
    _moved: dict = field(default_factory=dict)

    def on(self, device: torch.device) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The scale and the inf flag on ``device``, moved there once per step."""
        got = self._moved.get(device)
        if got is None:
            got = self._moved[device] = tuple(
                None if t is None else t.to(device=device, dtype=torch.float32, non_blocking=True)
                for t in (self.scale, self.found_inf))
        return got


def prologue(opt, grads: list[torch.Tensor], device: torch.device) -> Prologue | None:
    """The step's :class:`Prologue`, or None when the step is to be skipped on the host (an
    AMP overflow flag in host memory: reading it costs no synchronisation). ``grads`` are every
    gradient of the step (for the clip norm); ``device`` is where a 1/k scale is made."""
    amp_scale = getattr(opt, "grad_scale", None)   # set by GradScaler (_step_supports_amp_scaling)
    found_inf = getattr(opt, "found_inf", None)
    # A flag in host memory is read (free) unless the step is capturable: then it stays a
    # tensor, as on an accelerator, and the kernels skip the step.
    if (found_inf is not None and found_inf.device.type == "cpu"
            and not any(g.get("capturable") for g in opt.param_groups)):
        if float(found_inf) != 0:
            return None
        found_inf = None
    scale = None if amp_scale is None else torch.reciprocal(amp_scale.to(torch.float32))
    if opt.max_grad_norm is not None:
        from .clip import total_norm
        norm = total_norm(grads, 2.0)
        if scale is not None:
            norm = norm * scale.to(norm.device)
        coef = torch.clamp(opt.max_grad_norm / (norm + 1e-6), max=1.0)
        scale = coef if scale is None else scale.to(coef.device) * coef
    k = opt.accumulation_steps
    if k != 1:
        scale = (torch.full((), 1.0 / k, dtype=torch.float32, device=device) if scale is None
                 else scale * (1.0 / k))
    return Prologue(scale, found_inf)
