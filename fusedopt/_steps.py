"""Step counters: one buffer per device, advanced on the device, read by the kernels."""
from __future__ import annotations

import torch


class StepArena:
    """Every step counter of one optimizer on one device, as a 0-dim float32 view of one buffer
    (and an algorithm's per-tensor scalar states, NAdam's ``mu_product``, in the slots right
    after each counter: ``docs/kernel-interface.md``).

    torch.optim keeps one 0-dim tensor per param; advancing a thousand of them costs a thousand
    tiny adds. Here the counters of any set of params advance with one ``index_add_`` on the
    buffer, on the device (an overflow step adds 0, with no host synchronisation), and the
    kernels read each tensor's count from the buffer (``docs/kernel-interface.md``).

    Where the algorithm keeps torch's ``state['step']``, that entry IS the view, so a count
    edited in place (``fill_``) is what the next step reads; a count assigned as a new tensor
    or loaded from a checkpoint is copied in when the step plan adopts it. SGD's counter, which
    torch's SGD state has no key for, stays private: it starts at 0 when the momentum buffer is
    created (the next step is then the buffer's first) and at 1 for a buffer that existed
    before this optimizer saw the param (loaded: not a first step, as in torch).

    The buffer doubles when full; the views in the states are then re-pointed to the new one.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.data = torch.zeros(0, dtype=torch.float32, device=device)
        self.views: list[torch.Tensor] = []
        # the state dict and key each view is exposed as (None: private)
        self.owners: list[tuple[dict, str] | None] = []
        self.slot: dict[int, tuple[torch.Tensor, int]] = {}  # id(param) -> (param, first slot)
        self._ones = torch.ones(0, dtype=torch.float32, device=device)

    def place(self, params: list[torch.Tensor], states: list[dict], keys: tuple[str, ...],
              fresh: set[int] = frozenset(), inits: tuple[float, ...] = ()) -> list[int]:
        """The first slots of ``params``' blocks, with their values set up in as few ops as
        possible.

        ``keys``: the state keys the block is exposed as, in order: ``("step",)``, or with the
        algorithm's per-tensor scalar states after it (NAdam: ``("step", "mu_product")``), each
        starting at its value of ``inits`` when the state has none; one that is not this arena's
        view (loaded, or assigned by hand) is copied in and replaced by the view. Empty: one
        private counter, starting at 0 for the params whose ids are in ``fresh`` (their state
        was just created) and at 1 for others new to this arena."""
        out, adopt, adopted = [], [], []
        fills: dict[float, list[int]] = {}
        width = max(1, len(keys))
        inits = tuple(inits) + (0.0,) * (len(keys) - len(inits))
        for p, st in zip(params, states):
            hit = self.slot.get(id(p))
            known = hit is not None and hit[0] is p
            k = hit[1] if known else self._new(p, width)  # new slots hold 0
            for i, (key, init) in enumerate(zip(keys, inits)):
                cur = st.get(key)
                if cur is None:
                    if known or init != 0.0:
                        fills.setdefault(init, []).append(k + i)
                elif cur is not self.views[k + i]:
                    adopt.append(k + i)
                    adopted.append(cur)
                self.owners[k + i] = (st, key)
            if not keys:
                if id(p) in fresh:
                    if known:
                        fills.setdefault(0.0, []).append(k)
                elif not known:
                    fills.setdefault(1.0, []).append(k)
            out.append(k)
        for value, ks in fills.items():
            self.data.index_fill_(0, torch.tensor(ks, device=self.device), value)
        if adopt:
            if len({t.device for t in adopted}) == 1:  # e.g. all loaded on the CPU: one copy
                values = torch.stack([t.detach().reshape(()).to(torch.float32) for t in adopted])
            else:
                values = torch.stack([t.detach().reshape(()).to(self.device, torch.float32) for t in adopted])
            self.data.index_copy_(0, torch.tensor(adopt, device=self.device), values.to(self.device))
        for k, st in zip(out, states):
            for i, key in enumerate(keys):
                st[key] = self.views[k + i]
        return out

    def _new(self, p: torch.Tensor, width: int) -> int:
        k = len(self.views)
        self._grow(k + width)
        self.views.extend(self.data[k: k + width].unbind(0))
        self.owners.extend([None] * width)
        self.slot[id(p)] = (p, k)
        return k

    def _grow(self, need: int) -> None:
        if need <= self.data.numel():
            return
        old, old_views = self.data, self.views
        n = len(old_views)
        self.data = torch.zeros(max(need, 2 * old.numel(), 64), dtype=torch.float32, device=self.device)
        self.data[:n].copy_(old[:n])
        self.views = list(self.data[:n].unbind(0)) if n else []
        for view, new, owner in zip(old_views, self.views, self.owners):
            if owner is not None and owner[0].get(owner[1]) is view:
                owner[0][owner[1]] = new

    def advance(self, index: torch.Tensor, amount) -> None:
        """Add ``amount`` (a float, or a 0-dim tensor on this device) to the given slots."""
        n = index.numel()
        if isinstance(amount, torch.Tensor):
            self.data.index_add_(0, index, amount.reshape(()).expand(n))
            return
        if self._ones.numel() < n:
            self._ones = torch.ones(max(n, 2 * self._ones.numel()), dtype=torch.float32, device=self.device)
        self.data.index_add_(0, index, self._ones[:n], alpha=amount)
