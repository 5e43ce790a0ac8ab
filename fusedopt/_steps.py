"""Step counters that advance with one op, whatever set of params took the step."""
from __future__ import annotations

import torch


class StepArena:
    """Every ``state['step']`` of one optimizer on one device, as a 0-dim float32 view of one
    buffer.

    torch.optim keeps one 0-dim tensor per param; advancing a thousand of them costs a thousand
    tiny adds (a foreach add of CPU scalars is about 3 µs per tensor). Here the steps of any
    set of params advance with one ``index_add_`` on the buffer, whichever params have
    gradients this step. Each ``state['step']`` stays a plain-looking 0-dim float32 tensor, so
    checkpoints are torch.optim's. The buffer doubles when full; the views in the states are
    then re-pointed to the new buffer.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.data = torch.zeros(0, dtype=torch.float32, device=device)
        self.views: list[torch.Tensor] = []
        self.owners: list[dict] = []  # the state dict that holds each view
        self.slot: dict[int, tuple[torch.Tensor, int]] = {}  # id(param) -> (param, slot)
        self._ones = torch.ones(0, dtype=torch.float32, device=device)

    def place(self, params: list[torch.Tensor], states: list[dict]) -> torch.Tensor:
        """The slots of ``params`` as an index tensor on this device. A step tensor that is not
        this arena's view (new, loaded, or on another device) has its value copied in and is
        replaced by the view."""
        out = []
        for p, st in zip(params, states):
            hit = self.slot.get(id(p))
            if hit is not None and hit[0] is p:
                k = hit[1]
                if st["step"] is not self.views[k]:
                    self._adopt(k, st)
            else:
                k = len(self.views)
                self._grow(k + 1)
                self.views.append(self.data[k])
                self.owners.append(st)
                self.slot[id(p)] = (p, k)
                self._adopt(k, st)
            out.append(k)
        index = torch.tensor(out, dtype=torch.int64)
        # non_blocking: an upload from pageable memory that does not synchronise the stream
        return index if self.device.type == "cpu" else index.to(self.device, non_blocking=True)

    def _adopt(self, k: int, st: dict) -> None:
        self.views[k].copy_(st["step"].reshape(()), non_blocking=True)
        st["step"] = self.views[k]
        self.owners[k] = st

    def _grow(self, need: int) -> None:
        if need <= self.data.numel():
            return
        old, old_views = self.data, self.views
        n = len(old_views)
        self.data = torch.zeros(max(need, 2 * old.numel(), 64), dtype=torch.float32, device=self.device)
        self.data[:n].copy_(old[:n])
        self.views = list(self.data[:n].unbind(0)) if n else []
        for view, new, st in zip(old_views, self.views, self.owners):
            if st.get("step") is view:
                st["step"] = new

    def advance(self, index: torch.Tensor, amount) -> None:
        """Add ``amount`` (a float, or a 0-dim tensor on this device) to the given slots."""
        n = index.numel()
        if isinstance(amount, torch.Tensor):
            self.data.index_add_(0, index, amount.reshape(()).expand(n))
            return
        if self._ones.numel() < n:
            self._ones = torch.ones(max(n, 2 * self._ones.numel()), dtype=torch.float32, device=self.device)
        self.data.index_add_(0, index, self._ones[:n], alpha=amount)
