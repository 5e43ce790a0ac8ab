"""Every cache of the step path at once, against torch.optim: seeded random sequences of what a
training loop does between steps (grads new, filled in place, views of a flat buffer, missing;
zero_grad both ways; a scheduler's new lr; other options; a step count edited; a state tensor
replaced; a checkpoint reloaded; a group added; a param's storage swapped), applied alike to a
fusedopt optimizer and torch.optim's, whose params and states must agree after every step; and
the same sequences with 16-bit storage (bfloat16 params with master weights, bfloat16 states)
against the reference backend.

The step plan, the state tables (Note [cached state tables], with their owned params and grads),
the state versions and the group snapshots each have targeted tests; this one looks for what
only their combinations break."""
from __future__ import annotations

import copy
import random

import pytest
import torch

import fusedopt
from parity import TOL, assert_same_state, cuda_skip_reason


def _backends(*names):
    """(backend, device) parameters; cuda runs where there is a GPU (benchmarks/gpu_check.sh)."""
    cpu = fusedopt.available_backends("cpu")
    out = [pytest.param((b, "cpu"), id=b) for b in names if b != "cuda" and b in cpu]
    if "cuda" in names:
        out.append(pytest.param(("cuda", "cuda"), id="cuda",
                                marks=pytest.mark.skipif(bool(cuda_skip_reason()), reason=cuda_skip_reason())))
    return out


SIZES = (1, 7, 33, 130, 5, 64)

# name -> (constructor options, the group options a sequence may change, state entries it may
# replace, whether the state counts steps)
CASES = {
    "AdamW": ({"lr": 0.01, "weight_decay": 0.05}, ("lr", "weight_decay", "betas"), ("exp_avg", "exp_avg_sq"), True),
    "SGD": ({"lr": 0.05, "momentum": 0.9, "nesterov": True}, ("lr", "weight_decay", "momentum"),
            ("momentum_buffer",), False),
    "NAdam": ({"lr": 0.01, "weight_decay": 0.01}, ("lr", "betas"), ("exp_avg", "exp_avg_sq"), True),
}
EVENTS = ("fresh", "in_place", "flat", "missing", "zero_grad", "zero_grad_keep", "option", "option",
          "step_edit", "state_replace", "reload", "add_group", "swap_storage")


class Twin:
    """One side of the comparison: its params (the initial groups' and those added later) and
    optimizer."""

    def __init__(self, make, init, device):
        self.device = device
        self.ps = [p.to(device, copy=True).requires_grad_(True) for p in init]
        self.opt = make([{"params": self.ps[:3], "lr": 0.02}, {"params": self.ps[3:]}])

    def set_grads(self, grads, how):
        """``grads[i]``: the new gradient of param i, or None for none."""
        if how == "flat":  # views of one buffer, kept from step to step while "in_place" follows
            total = sum(g.numel() for g in grads if g is not None)
            dtype = next(g.dtype for g in grads if g is not None)
            flat = torch.empty(total, dtype=dtype, device=self.device)  # the views keep it alive
            at = 0
            for p, g in zip(self.ps, grads):
                if g is None:
                    p.grad = None
                    continue
                view = flat[at: at + g.numel()].view(g.shape)
                view.copy_(g)
                p.grad, at = view, at + g.numel()
            return
        for p, g in zip(self.ps, grads):
            if g is None:
                p.grad = None
            elif how == "in_place" and p.grad is not None:
                p.grad.copy_(g)
            elif how == "accumulate" and p.grad is not None:
                p.grad.add_(g)
            else:
                p.grad = g.clone()


def _event(rng: random.Random, name: str, twins, gen: torch.Generator, added: list[int]) -> str:
    """Apply one random event to both twins alike; what it did, for the failure message."""
    opts, (_, options, slots, counts) = [t.opt for t in twins], CASES[name]
    n = len(twins[0].ps)
    kind = rng.choice(EVENTS)
    if kind == "option":
        gi, key = rng.randrange(len(opts[0].param_groups)), rng.choice(options)
        value = (round(rng.uniform(0.8, 0.95), 3), round(rng.uniform(0.99, 0.999), 4)) if key == "betas" \
            else round(rng.uniform(0.001, 0.1), 4)
        for o in opts:
            o.param_groups[gi][key] = value
        return f"group {gi} {key}={value}"
    if kind == "step_edit" and counts:
        i, value, assign = rng.randrange(n), float(rng.randrange(1, 30)), rng.random() < 0.5
        for t in twins:
            st = t.opt.state.get(t.ps[i])
            if st and "step" in st:
                if assign:
                    st["step"] = torch.tensor(value)
                else:
                    st["step"].fill_(value)
        return f"param {i} step {'=' if assign else 'fill_'} {value}"
    if kind == "state_replace":
        i, slot = rng.randrange(n), rng.choice(slots)
        for t in twins:
            st = t.opt.state.get(t.ps[i])
            if st and st.get(slot) is not None:
                st[slot] = st[slot].clone() * 0.5
        return f"param {i} {slot} replaced by half of it"
    if kind == "reload":
        for o in opts:
            o.load_state_dict(copy.deepcopy(o.state_dict()))
        return "state_dict reloaded"
    if kind == "add_group" and len(added) < 2:
        init = [torch.randn(s, generator=gen).to(twins[0].ps[0].dtype) for s in (3, 40)]
        for t in twins:
            new = [p.to(t.device, copy=True).requires_grad_(True) for p in init]
            t.ps += new
            t.opt.add_param_group({"params": new, "lr": 0.03})
        added.append(len(added))
        return "group added"
    if kind == "swap_storage":
        i = rng.randrange(n)
        for t in twins:
            t.ps[i].data = t.ps[i].data.clone()
        return f"param {i} storage swapped"
    if kind == "zero_grad":
        for o in opts:
            o.zero_grad()
        return "zero_grad()"
    if kind == "zero_grad_keep":
        for o in opts:
            o.zero_grad(set_to_none=False)
        return "zero_grad(set_to_none=False)"
    return kind  # grads: applied by the caller


def _run_sequences(name, make_ours, make_oracle, device, steps, compare, dtype=torch.float32):
    """Seeded sequences of events, each followed by a step of both optimizers and ``compare``."""
    for seed in (0, 1):
        rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
        init = [torch.randn(s, generator=gen).to(dtype) for s in SIZES]
        twins = (Twin(make_ours, init, device), Twin(make_oracle, init, device))
        added: list[int] = []
        done = []
        for step in range(steps):
            what = _event(rng, name, twins, gen, added)
            how = what if what in ("fresh", "in_place", "flat", "missing") else \
                "accumulate" if what == "zero_grad(set_to_none=False)" else rng.choice(("fresh", "in_place"))
            n = len(twins[0].ps)
            missing = {i for i in range(n) if rng.random() < 0.3} if how == "missing" else set()
            grads = [None if i in missing else torch.randn(twins[0].ps[i].shape, generator=gen).to(device, dtype)
                     for i in range(n)]
            for t in twins:
                t.set_grads(grads, "fresh" if how == "missing" else how)
            for t in twins:
                t.opt.step()
            done.append(f"{what} / grads {how}")
            compare(twins, f"{name} seed {seed} after: " + "; ".join(done[-4:]))


def _steps(backend: str) -> int:
    return 12 if backend == "triton" else 30  # the interpreter is slow


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("backend_device", _backends("reference", "cpu", "triton", "cuda"))
def test_random_sequences_of_changes_between_steps_match_torch(name, backend_device):
    backend, device = backend_device
    kwargs = CASES[name][0]

    def compare(twins, what):
        ours, theirs = twins
        assert_same_state(ours.ps, ours.opt, theirs.ps, theirs.opt, TOL[torch.float32], what=f"[{backend}] {what}")

    _run_sequences(name, lambda groups: getattr(fusedopt, name)(groups, backend=backend, **kwargs),
                   lambda groups: getattr(torch.optim, name)(groups, foreach=False, **kwargs),
                   device, _steps(backend), compare)


# bfloat16 params with float32 master weights, and float32 params with bfloat16 states: against
# the reference backend (itself checked against torch.optim), params and each state within the
# tolerance of their own dtype
STORAGE = {"bf16-master": (torch.bfloat16, {"master_weights": True}),
           "bf16-states": (torch.float32, {"state_dtype": torch.bfloat16})}


@pytest.mark.parametrize("storage", sorted(STORAGE))
@pytest.mark.parametrize("backend_device", _backends("cpu", "triton", "cuda"))
def test_random_sequences_with_16bit_storage_match_the_reference(storage, backend_device):
    backend, device = backend_device
    dtype, extra = STORAGE[storage]
    kwargs = {**CASES["AdamW"][0], **extra}

    def compare(twins, what):
        ours, ref = twins
        for i, (a, b) in enumerate(zip(ours.ps, ref.ps)):
            torch.testing.assert_close(a.detach(), b.detach(), rtol=TOL[dtype][0], atol=TOL[dtype][1],
                                       msg=lambda m: f"[{backend}] {storage} {what} param {i}: {m}")
            sa, sb = ours.opt.state[a], ref.opt.state[b]
            assert set(sa) == set(sb), f"[{backend}] {storage} {what} param {i}: {sorted(sa)} != {sorted(sb)}"
            for key, x in sa.items():
                tol = TOL[x.dtype]
                torch.testing.assert_close(x, sb[key], rtol=tol[0], atol=tol[1],
                                           msg=lambda m: f"[{backend}] {storage} {what} param {i} {key!r}: {m}")

    _run_sequences("AdamW", lambda groups: fusedopt.AdamW(groups, backend=backend, **kwargs),
                   lambda groups: fusedopt.AdamW(groups, backend="reference", **kwargs),
                   device, _steps(backend), compare, dtype)
