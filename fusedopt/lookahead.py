"""Lookahead: k fast steps forward, one slow step back, around any optimizer."""
from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch
from torch.optim import Optimizer

from . import backends
from ._plan import state_dtype_for
from ._grouping import bucket


class Lookahead(Optimizer):
    r"""Wrap ``optimizer`` (any fusedopt or torch.optim optimizer) with Lookahead.

    The inner optimizer updates the fast weights :math:`\theta` every step; every ``k``-th step
    the slow weights move toward them and the fast weights restart from there:

    .. math::
        \phi \leftarrow \phi + \alpha(\theta - \phi),\qquad \theta \leftarrow \phi

    The slow weights (state key ``slow_param``) are a copy of each parameter taken at its first
    step, float32 for 16-bit parameters, whatever the inner optimizer's ``state_dtype``: they
    are weights, not statistics of gradients, and the fast weights restart from them every
    ``k`` steps, so an 8-bit copy would put its quantization error into the weights themselves:
    up to 0.7% of the block's largest weight (half the dynamic map's top spacing), an error that
    does not shrink with the learning rate, so late in training, when a step moves a weight by
    far less, it would swamp the steps (as rounding to nearest in bf16 does). Where the inner optimizer keeps float32 master weights
    (``master_weights=True``), they are the fast weights: the slow step reads and writes them,
    and the 16-bit parameter receives the rounded result. The slow update is one fused multi-tensor launch per
    (device, dtype) group. ``param_groups`` is the inner optimizer's own list, so LR schedulers
    attached to the Lookahead drive the inner optimizer.

    Defaults ``k=5, alpha=0.5``. Zhang, Lucas, Hinton and Ba, "Lookahead Optimizer: k steps
    forward, 1 step back", NeurIPS 2019.
    """

    def __init__(self, optimizer: Optimizer, k: int = 5, alpha: float = 0.5):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"Lookahead wraps a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"Invalid k: {k!r} (must be an integer >= 1)")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"Invalid alpha: {alpha!r} (must be in [0, 1])")
        self.optimizer = optimizer
        self.k = k
        self.alpha = float(alpha)
        self._adopting = True
        super().__init__(optimizer.param_groups, dict(optimizer.defaults))
        self._adopting = False
        self.param_groups = optimizer.param_groups  # shared: schedulers and add_param_group reach both
        self.lookahead_steps = 0

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if getattr(self, "_adopting", False):
            return
        self.optimizer.add_param_group(param_group)

    def __repr__(self) -> str:
        return f"Lookahead(k={self.k}, alpha={self.alpha}, optimizer={self.optimizer!r})"

    def _params(self):
        return [p for g in self.param_groups for p in g["params"]]

    @torch.no_grad()
    def step(self, closure=None):
        """One inner step; every ``k``-th call also the slow-weight step."""
        for p in self._params():
            if "slow_param" not in self.state[p]:
                fast = self._master(p)
                fast = p if fast is None else fast
                self.state[p]["slow_param"] = fast.detach().to(state_dtype_for(p.dtype), copy=True)
        loss = self.optimizer.step(closure)
        self.lookahead_steps += 1
        if self.lookahead_steps % self.k == 0:
            self._sync_slow()
        return loss

    def _master(self, p):
        """The inner optimizer's float32 master weight of ``p`` (``master_param``), or None."""
        st = self.optimizer.state.get(p)
        return st.get("master_param") if st else None

    def _sync_slow(self) -> None:
        # The fast weight is the master weight where the inner optimizer keeps one: it moves to
        # the slow weight with the param, or the next inner step would start from where it was.
        for group in self.param_groups:
            name = group.get("backend", "auto")
            key = lambda p: (p.device, p.dtype, self._master(p) is not None)  # noqa: E731
            for (device, dtype, has_master), ps in bucket(group["params"], key).items():
                backend = backends.get_backend("reference" if dtype == torch.float64 and name == "auto" else name,
                                               device)
                master = [self._master(p) for p in ps] if has_master else None
                backend.lookahead(ps, [self.state[p]["slow_param"] for p in ps], self.alpha, master)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        index = {p: i for i, p in enumerate(self._params())}
        return {
            "inner": self.optimizer.state_dict(),
            "slow": {index[p]: st["slow_param"] for p, st in self.state.items() if p in index},
            "k": self.k,
            "alpha": self.alpha,
            "lookahead_steps": self.lookahead_steps,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        params = self._params()
        slow = {}
        for i, t in state_dict["slow"].items():
            if not 0 <= int(i) < len(params) or t.shape != params[int(i)].shape:
                raise ValueError(f"state_dict: slow_param {i} does not match the parameters")
            p = params[int(i)]
            slow[p] = {"slow_param": t.to(device=p.device, dtype=state_dtype_for(p.dtype), copy=True)}
        self.optimizer.load_state_dict(state_dict["inner"])
        self.param_groups = self.optimizer.param_groups
        self.state = defaultdict(dict, slow)
        self.k = int(state_dict["k"])
        self.alpha = float(state_dict["alpha"])
        self.lookahead_steps = int(state_dict["lookahead_steps"])
