"""Skip-aware schedules: an AMP-skipped optimizer step (``opt.step_skipped``) does not advance
``fusedopt.schedules`` built with ``skip_aware=True``; by default they advance on every
``scheduler.step()``, as torch's do."""
from __future__ import annotations

import io
import math

import pytest
import torch

import fusedopt

LR0 = 0.1

# name, keywords, factor(t) written out independently of fusedopt.schedules
SCHEDULES = [
    ("PiecewiseConstantLR", {"boundaries": [2, 4, 4, 7], "values": [1.0, 0.5, 0.3, 0.1, 0.01]},
     lambda t: [1.0, 0.5, 0.3, 0.1, 0.01][(t >= 2) + (t >= 4) + (t >= 4) + (t >= 7)]),
    ("ExponentialDecayLR", {"decay": 0.2}, lambda t: math.exp(-0.2 * t)),
    ("PolynomialDecayLR", {"a": 0.7, "b": 2.0}, lambda t: (2.0 * t + 1) ** -0.7),
    ("InverseSqrtLR", {}, lambda t: 1 / math.sqrt(t + 1)),
    ("LinearWarmupLR", {"warmup_steps": 4}, lambda t: min(1.0, (t + 1) / 4)),
]
IDS = [s[0] for s in SCHEDULES]

# What each optimizer step sees: "skip" (a GradScaler overflow), "amp" (a GradScaler step
# without one), "plain" (no GradScaler).
STEPS = ["skip", "plain", "skip", "skip", "amp", "plain", "skip", "amp", "amp", "skip", "plain", "plain", "skip", "amp"]


def _optimizer(tensor_lr: bool, capturable: bool = True):
    # SGD, without bias correction: the reference Adam fails on a skipped first step (it divides
    # by 1 - beta1 ** 0)
    p = torch.zeros(2, requires_grad=True)
    return fusedopt.SGD([p], lr=torch.tensor(LR0) if tensor_lr else LR0, momentum=0.9, capturable=capturable,
                        backend="reference")


def _opt_step(opt, kind: str) -> None:
    opt.param_groups[0]["params"][0].grad = torch.ones(2)
    if kind == "plain":
        opt.grad_scale = opt.found_inf = None
    else:
        opt.grad_scale, opt.found_inf = torch.ones(()), torch.full((), float(kind == "skip"))
    opt.step()
    assert float(opt.step_skipped) == float(kind == "skip")


def _lr(opt) -> float:
    return float(opt.param_groups[0]["lr"])


def _run(opt, sched, steps):
    """The lr after each scheduler step."""
    lrs = []
    for kind in steps:
        _opt_step(opt, kind)
        sched.step()
        lrs.append(_lr(opt))
    return lrs


def _expected(formula, steps, skip_aware):
    t, lrs = 0, []
    for kind in steps:
        t += not (skip_aware and kind == "skip")
        lrs.append(LR0 * formula(t))
    return lrs


@pytest.mark.parametrize("lr_kind", ["float", "float-host-skip", "tensor"])
@pytest.mark.parametrize("cls,kw,formula", SCHEDULES, ids=IDS)
def test_skipped_steps_do_not_advance_a_skip_aware_schedule(cls, kw, formula, lr_kind):
    # "float-host-skip": a CPU GradScaler flag without capturable is read on the host and the
    # optimizer reports the skip with a fresh step_skipped tensor
    opt = _optimizer(lr_kind == "tensor", capturable=lr_kind != "float-host-skip")
    lr_obj = opt.param_groups[0]["lr"]
    sched = getattr(fusedopt.schedules, cls)(opt, **kw, skip_aware=True)
    assert _lr(opt) == pytest.approx(LR0 * formula(0), rel=1e-6)
    lrs = _run(opt, sched, STEPS)
    assert lrs == pytest.approx(_expected(formula, STEPS, skip_aware=True), rel=1e-6)
    n = STEPS.count("plain") + STEPS.count("amp")
    if lr_kind == "tensor":
        assert opt.param_groups[0]["lr"] is lr_obj  # updated in place: a captured graph sees it
        assert isinstance(sched.t, torch.Tensor) and sched.t.dtype == torch.int64 and int(sched.t) == n
    else:
        assert sched.t == n and isinstance(sched.t, int)
    assert sched.last_epoch == len(STEPS)  # torch's count of scheduler steps is left as it is


@pytest.mark.parametrize("tensor_lr", [False, True])
@pytest.mark.parametrize("cls,kw,formula", SCHEDULES, ids=IDS)
def test_by_default_skipped_steps_advance_the_schedule_as_in_torch(cls, kw, formula, tensor_lr):
    opt = _optimizer(tensor_lr)
    sched = getattr(fusedopt.schedules, cls)(opt, **kw)
    assert not sched.skip_aware and not hasattr(sched, "t")
    lrs = _run(opt, sched, STEPS)
    assert lrs == pytest.approx(_expected(formula, STEPS, skip_aware=False), rel=1e-6)


def test_skip_aware_with_a_torch_optimizer_advances_at_every_step():
    p = torch.zeros(2, requires_grad=True)
    opt = torch.optim.SGD([p], lr=LR0)  # no step_skipped
    sched = fusedopt.schedules.LinearWarmupLR(opt, warmup_steps=4, skip_aware=True)
    lrs = []
    for _ in range(5):
        p.grad = torch.ones(2)
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs == pytest.approx([LR0 * min(1.0, (t + 1) / 4) for t in range(1, 6)])


@pytest.mark.parametrize("cls,kw,formula", SCHEDULES, ids=IDS)
def test_tensor_lr_scheduler_step_reads_nothing_on_the_host(cls, kw, formula, monkeypatch):
    opt = _optimizer(True)
    sched = getattr(fusedopt.schedules, cls)(opt, **kw, skip_aware=True)
    lr_obj = opt.param_groups[0]["lr"]
    for kind in ("skip", "amp", "skip", "plain"):
        _opt_step(opt, kind)
        with monkeypatch.context() as m:
            for read in ("__bool__", "__float__", "__int__", "__index__", "item", "tolist"):
                m.setattr(torch.Tensor, read, _no_host_read(read))
            sched.step()
    assert opt.param_groups[0]["lr"] is lr_obj
    assert _lr(opt) == pytest.approx(LR0 * formula(2), rel=1e-6)


def _no_host_read(name):
    def read(*args, **kwargs):
        raise AssertionError(f"Tensor.{name} called during scheduler.step()")
    return read


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("cls,kw,formula", SCHEDULES, ids=IDS)
def test_tensor_lr_scheduler_step_does_not_synchronise_on_cuda(cls, kw, formula):
    p = torch.zeros(2, device="cuda", requires_grad=True)
    opt = fusedopt.SGD([p], lr=torch.tensor(LR0, device="cuda"), momentum=0.9, capturable=True, backend="reference")
    sched = getattr(fusedopt.schedules, cls)(opt, **kw, skip_aware=True)
    lr_obj = opt.param_groups[0]["lr"]
    for skip in (1.0, 0.0, 1.0, 0.0):
        p.grad = torch.ones(2, device="cuda")
        opt.grad_scale = torch.ones((), device="cuda")
        opt.found_inf = torch.full((), skip, device="cuda")
        opt.step()
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            sched.step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert opt.param_groups[0]["lr"] is lr_obj
    assert float(lr_obj) == pytest.approx(LR0 * formula(2), rel=1e-6)
    assert sched.t.device.type == "cuda"


@pytest.mark.parametrize("saved_lr,loaded_lr", [("float", "float"), ("tensor", "tensor"),
                                                ("tensor", "float"), ("float", "tensor")])
@pytest.mark.parametrize("cls,kw,formula", SCHEDULES, ids=IDS)
def test_state_dict_round_trip_mid_schedule_continues_identically(cls, kw, formula, saved_lr, loaded_lr):
    make = getattr(fusedopt.schedules, cls)
    opt = _optimizer(saved_lr == "tensor")
    sched = make(opt, **kw, skip_aware=True)
    _run(opt, sched, STEPS[:6])
    buf = io.BytesIO()
    torch.save(sched.state_dict(), buf)
    saved_t = int(sched.state_dict()["t"])

    opt2 = _optimizer(loaded_lr == "tensor")
    sched2 = make(opt2, **kw, skip_aware=True)
    buf.seek(0)
    sched2.load_state_dict(torch.load(buf))
    assert isinstance(sched2.t, torch.Tensor) == (loaded_lr == "tensor")  # the count follows the lr
    state = sched.state_dict()
    rest = STEPS[6:]
    got, want = _run(opt2, sched2, rest), _run(opt, sched, rest)
    assert got == pytest.approx(want, rel=1e-6)
    assert got == pytest.approx(_expected(formula, STEPS, True)[6:], rel=1e-6)
    assert saved_t == sum(k != "skip" for k in STEPS[:6])
    assert int(state["t"]) == saved_t  # a state taken earlier keeps the count it saw


def test_state_dict_without_a_count_resumes_at_last_epoch():
    opt = _optimizer(False)
    sched = fusedopt.schedules.InverseSqrtLR(opt)
    _run(opt, sched, STEPS[:3])
    state = sched.state_dict()
    del state["skip_aware"]  # as saved before skip_aware existed
    opt2 = _optimizer(True)
    sched2 = fusedopt.schedules.InverseSqrtLR(opt2, skip_aware=True)
    sched2.load_state_dict(state)
    assert int(sched2.t) == 3
    _opt_step(opt2, "amp")
    sched2.step()
    assert _lr(opt2) == pytest.approx(LR0 / math.sqrt(5))


def test_skip_aware_schedules_compose_with_sequential_lr():
    opt = _optimizer(True)
    seq = torch.optim.lr_scheduler.SequentialLR(
        opt, [fusedopt.schedules.LinearWarmupLR(opt, warmup_steps=3, skip_aware=True),
              fusedopt.schedules.InverseSqrtLR(opt, skip_aware=True)], milestones=[3])
    lrs = [_lr(opt)]
    for kind in ("skip", "amp", "plain", "skip", "amp"):
        _opt_step(opt, kind)
        seq.step()
        lrs.append(_lr(opt))
    # the milestone counts scheduler steps; each phase counts its non-skipped steps from 0
    assert lrs == pytest.approx([LR0 / 3, LR0 / 3, 2 * LR0 / 3, LR0, LR0, LR0 / math.sqrt(2)])


def test_skip_aware_is_validated():
    with pytest.raises(ValueError, match="skip_aware"):
        fusedopt.schedules.InverseSqrtLR(_optimizer(False), skip_aware=1)
    p, q = torch.zeros(2, requires_grad=True), torch.zeros(2, requires_grad=True)
    opt = fusedopt.SGD([{"params": [p], "lr": torch.tensor(LR0)}, {"params": [q], "lr": LR0}],
                       capturable=True, backend="reference")
    with pytest.raises(ValueError, match="every param group's lr"):
        fusedopt.schedules.InverseSqrtLR(opt, skip_aware=True)
    fusedopt.schedules.InverseSqrtLR(opt)  # by default a mix is fine, as before
