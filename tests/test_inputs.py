"""Inputs as torch.optim takes them: named parameters, and every bad input torch.optim refuses
is refused with the same exception type (checked systematically, hyperparameter by
hyperparameter, against torch.optim itself)."""
from __future__ import annotations

import inspect

import pytest
import torch

import fusedopt
from parity import TORCH_NAMES as NAMES

BACKEND = "reference"  # validation and checkpoints do not depend on the backend

BAD_VALUES = [-1.0, float("nan"), torch.tensor([0.1, 0.2]), torch.tensor(-1.0), "x", None, 1.5, 2, True]
BAD_BETAS = [(0.9, torch.tensor(0.99)), (1.0, 0.9), (0.9,), (-0.1, 0.9), (0.9, 1.0), torch.tensor(0.5),
             torch.tensor([0.9]), 0.9]
SKIP = ("self", "params", "foreach", "differentiable", "fused", "capturable", "maximize", "decoupled_weight_decay",
        "amsgrad", "nesterov", "centered")


def _outcome(make):
    try:
        make()
    except Exception as e:  # noqa: BLE001 - the type is what is compared
        return type(e)
    return None


def _bad_inputs():
    for name in NAMES:
        for arg in inspect.signature(getattr(torch.optim, name).__init__).parameters:
            if arg in SKIP:
                continue
            for value in BAD_BETAS if arg == "betas" else BAD_VALUES:
                yield pytest.param(name, arg, value, id=f"{name}-{arg}={value!r}")


@pytest.mark.parametrize("name,arg,value", list(_bad_inputs()))
def test_bad_hyperparameters_are_refused_as_torch_refuses_them(name, arg, value):
    kw = {arg: value}
    if name == "SGD" and arg != "lr":
        kw["lr"] = 0.1
    theirs = _outcome(lambda: getattr(torch.optim, name)([torch.zeros(3, requires_grad=True)], **kw))
    ours = _outcome(lambda: getattr(fusedopt, name)([torch.zeros(3, requires_grad=True)], backend=BACKEND, **kw))
    if theirs is not None:
        assert ours is theirs, f"torch.optim.{name}({arg}={value!r}) raises {theirs.__name__}, fusedopt {ours}"
    # where torch accepts, fusedopt may refuse more (README "Inputs"), never a different way round


def test_refused_hyperparameters_name_the_argument_and_a_multi_element_lr_says_so():
    with pytest.raises(ValueError, match="lr.*one element"):
        fusedopt.Adam([torch.zeros(3, requires_grad=True)], lr=torch.tensor([0.1, 0.2]))
    with pytest.raises(ValueError, match="betas.*both"):
        fusedopt.Adam([torch.zeros(3, requires_grad=True)], betas=(0.9, torch.tensor(0.99)))
    with pytest.raises(RuntimeError, match="momentum"):
        fusedopt.SGD([torch.zeros(3, requires_grad=True)], lr=0.1, momentum=torch.tensor([0.1, 0.2]))


def _named_model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2))


def _train(model, opt, steps=3):
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        opt.zero_grad()
        model(torch.randn(5, 4, generator=gen)).square().mean().backward()
        opt.step()


@pytest.mark.parametrize("grouped", [False, True], ids=["named_parameters", "groups-of-named"])
@pytest.mark.parametrize("name", ["AdamW", "SGD"])
def test_named_parameters_as_torch_optim(name, grouped):
    """Construction from ``named_parameters()`` or groups of named params, ``param_names`` in
    the groups and in ``state_dict()``, and checkpoints both ways with torch.optim."""
    kw = {"lr": 0.05, "momentum": 0.9} if name == "SGD" else {"lr": 0.05}

    def groups(model):
        named = list(model.named_parameters())
        if not grouped:
            return named
        return [{"params": named[:2]}, {"params": named[2:], "lr": 0.01}]

    ours_model, theirs_model = _named_model(), _named_model()
    ours = getattr(fusedopt, name)(groups(ours_model), backend=BACKEND, **kw)
    theirs = getattr(torch.optim, name)(groups(theirs_model), **kw)
    assert [g["param_names"] for g in ours.param_groups] == [g["param_names"] for g in theirs.param_groups]
    _train(ours_model, ours)
    _train(theirs_model, theirs)
    sd_ours, sd_theirs = ours.state_dict(), theirs.state_dict()
    assert [g["param_names"] for g in sd_ours["param_groups"]] == [g["param_names"] for g in sd_theirs["param_groups"]]
    for a, b in zip(ours_model.parameters(), theirs_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # both ways: each loads the other's checkpoint (named into named and into unnamed) and continues alike
    for target_model, target, source in ((ours_model, ours, sd_theirs), (theirs_model, theirs, sd_ours)):
        target.load_state_dict(source)
    unnamed = getattr(fusedopt, name)(list(_named_model().parameters()) if not grouped else
                                      [{"params": list(_named_model().parameters())[:2]},
                                       {"params": list(_named_model().parameters())[2:], "lr": 0.01}],
                                      backend=BACKEND, **kw)
    unnamed.load_state_dict(sd_theirs)
    assert [g["param_names"] for g in unnamed.param_groups] == [g["param_names"] for g in sd_theirs["param_groups"]]
    _train(ours_model, ours)
    _train(theirs_model, theirs)
    for a, b in zip(ours_model.parameters(), theirs_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("make", [
    lambda C, a, b: C([("a", a), b]),
    lambda C, a, b: C([{"params": [("a", a)]}, {"params": [b]}]),
], ids=["mixed-in-a-group", "mixed-across-groups"])
def test_mixing_named_and_unnamed_params_is_refused_as_torch_refuses_it(make):
    a, b = torch.zeros(2, requires_grad=True), torch.zeros(3, requires_grad=True)
    with pytest.raises(ValueError) as theirs:
        make(torch.optim.AdamW, a, b)
    with pytest.raises(ValueError) as ours:
        make(lambda *x: fusedopt.AdamW(*x, backend=BACKEND), a, b)
    assert str(ours.value) == str(theirs.value)
