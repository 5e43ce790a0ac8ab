"""What is measured: algorithm cases and the implementations that run them.

An implementation turns a list of parameters into an optimizer; the harness then only calls
``step()``. Implementations are fusedopt's backends (whatever
:func:`fusedopt.available_backends` reports for the device), torch.optim's for-loop
(``foreach=False``), foreach (``foreach=True``) and fused (``fused=True``, where torch has it
for that device and dtype, found by trying) paths, and apex's and DeepSpeed's fused Adam when
they can be imported.
"""
from __future__ import annotations

import importlib.util
import inspect
import os
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable

import torch

import fusedopt


@dataclass(frozen=True)
class Case:
    """One algorithm configuration: fusedopt's class, torch's class (None: no torch
    counterpart), shared keyword arguments, and the number of states it keeps per element."""
    name: str
    fusedopt_cls: str
    torch_cls: str | None
    kwargs: dict = field(default_factory=dict)
    n_states: int = 0
    adam_like: str | None = None  # "adam" / "adamw": apex and DeepSpeed implement these


CASES = {c.name: c for c in (
    Case("sgd", "SGD", "SGD", dict(lr=1e-3), 0),
    Case("sgd-momentum", "SGD", "SGD", dict(lr=1e-3, momentum=0.9), 1),
    Case("adagrad", "Adagrad", "Adagrad", dict(lr=1e-2), 1),
    Case("adadelta", "Adadelta", "Adadelta", dict(lr=1.0), 2),
    Case("rmsprop", "RMSprop", "RMSprop", dict(lr=1e-2), 1),
    Case("adam", "Adam", "Adam", dict(lr=1e-3), 2, adam_like="adam"),
    Case("adam-amsgrad", "Adam", "Adam", dict(lr=1e-3, amsgrad=True), 3),
    Case("adamw", "AdamW", "AdamW", dict(lr=1e-3, weight_decay=1e-2), 2, adam_like="adamw"),
    Case("yogi", "Yogi", None, dict(lr=1e-2), 2),
    Case("radam", "RAdam", "RAdam", dict(lr=1e-3), 2),
    Case("adamax", "Adamax", "Adamax", dict(lr=2e-3), 2),
    Case("lion", "Lion", None, dict(lr=1e-4, weight_decay=1e-1), 1),
    Case("nadam", "NAdam", "NAdam", dict(lr=2e-3), 2),
    Case("lamb", "LAMB", None, dict(lr=1e-3), 2),
)}

TORCH_IMPLS = ("torch-forloop", "torch-foreach", "torch-fused")


class Skip(Exception):
    """This implementation does not run this case; the message says why (goes in the report)."""


@dataclass
class Impl:
    """A named way to build an optimizer. ``make(params, case, master)`` returns the optimizer
    or raises :class:`Skip`."""
    name: str
    kind: str           # "fusedopt", "torch", "apex", "deepspeed"
    make: Callable[..., Any]
    backend: str | None = None  # fusedopt backend name


def first_param(params) -> torch.Tensor:
    """The first tensor of ``params``, a list of tensors or of param groups."""
    return params[0]["params"][0] if isinstance(params[0], dict) else params[0]


# -- fusedopt ------------------------------------------------------------------------------
def _fusedopt_maker(backend: str):
    def make(params, case: Case, master: bool, **storage):
        cls = getattr(fusedopt, case.fusedopt_cls)
        kw = dict(case.kwargs, backend=backend, **storage)
        if not master:
            return cls(params, **kw)
        try:
            return cls(params, master_weights=True, **kw)
        except TypeError as e:  # this version of fusedopt has no master_weights option
            if "master_weights" not in str(e):
                raise
            raise Skip(f"fusedopt.{case.fusedopt_cls} has no master_weights option") from None
    return make


def triton_interpreted(device: torch.device) -> bool:
    return device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"


# -- torch ---------------------------------------------------------------------------------
@lru_cache(maxsize=None)
def torch_fused_supported(cls_name: str, device_type: str, dtype: torch.dtype) -> tuple[bool, str]:
    """Whether ``torch.optim.<cls_name>(fused=True)`` steps on this device and dtype (tried on
    a tiny tensor: torch's support differs by version, device and dtype)."""
    cls = getattr(torch.optim, cls_name)
    if "fused" not in inspect.signature(cls).parameters:
        return False, f"torch.optim.{cls_name} has no fused implementation"
    try:
        p = torch.zeros(4, dtype=dtype, device=device_type, requires_grad=True)
        p.grad = torch.zeros_like(p)
        cls([p], lr=1e-3, fused=True).step()
    except Exception as e:  # noqa: BLE001 - any failure means "not supported here"
        return False, f"torch.optim.{cls_name}(fused=True) fails on {device_type}/{dtype}: " \
                      f"{str(e).splitlines()[0][:120]}"
    return True, ""


def _torch_maker(variant: str):
    def make(params, case: Case, master: bool):
        if case.torch_cls is None:
            raise Skip(f"torch.optim has no {case.fusedopt_cls}")
        if master:
            raise Skip("torch.optim has no master-weights option")
        cls = getattr(torch.optim, case.torch_cls)
        kw = dict(case.kwargs)
        if variant == "fused":
            p0 = first_param(params)
            ok, why = torch_fused_supported(case.torch_cls, p0.device.type, p0.dtype)
            if not ok:
                raise Skip(why)
            kw["fused"] = True
        else:
            kw["foreach"] = variant == "foreach"
        return cls(params, **kw)
    return make


# -- apex and DeepSpeed ----------------------------------------------------------------------
def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _adam_kwargs(case: Case) -> dict:
    if case.adam_like is None:
        raise Skip("implements Adam/AdamW only (no amsgrad)")
    return dict(lr=case.kwargs["lr"], weight_decay=case.kwargs.get("weight_decay", 0.0))


def _apex_make(params, case: Case, master: bool):
    from apex.optimizers import FusedAdam
    kw = _adam_kwargs(case)
    kw["adam_w_mode"] = case.adam_like == "adamw"
    if master:
        if "master_weights" not in inspect.signature(FusedAdam).parameters:
            raise Skip("this apex FusedAdam has no master_weights option")
        kw.update(master_weights=True, capturable=True)  # apex: master weights need capturable
    return FusedAdam(params, **kw)


def _deepspeed_make(params, case: Case, master: bool):
    kw = _adam_kwargs(case)
    if master:
        raise Skip("DeepSpeed's FusedAdam keeps no master weights (its engine does)")
    if first_param(params).device.type == "cpu":
        from deepspeed.ops.adam import DeepSpeedCPUAdam
        return DeepSpeedCPUAdam(params, adamw_mode=case.adam_like == "adamw", **kw)
    from deepspeed.ops.adam import FusedAdam
    return FusedAdam(params, adam_w_mode=case.adam_like == "adamw", **kw)


# -- the list --------------------------------------------------------------------------------
def implementations(device: torch.device, include_reference: bool = False,
                    include_interpreted: bool = False) -> tuple[list[Impl], list[str]]:
    """Every implementation that can run on ``device``, and notes on the ones left out."""
    notes = []
    impls = []
    for name in fusedopt.available_backends(device):
        if name == "reference" and not include_reference:
            notes.append("fusedopt backend 'reference' (the eager per-tensor oracle) is left out; "
                         "name it in --backends or pass --include-reference to time it")
            continue
        if name == "triton" and triton_interpreted(device) and not include_interpreted:
            notes.append("fusedopt backend 'triton' runs in Triton's interpreter on the CPU "
                         "(a correctness tool, not a fast path) and is left out unless named in --backends")
            continue
        impls.append(Impl(f"fusedopt-{name}", "fusedopt", _fusedopt_maker(name), backend=name))
    for variant in ("forloop", "foreach", "fused"):
        impls.append(Impl(f"torch-{variant}", "torch", _torch_maker(variant)))
    if _importable("apex.optimizers") and device.type == "cuda":
        impls.append(Impl("apex-fused", "apex", _apex_make))
    elif device.type == "cuda":
        notes.append("apex is not importable: no apex.optimizers.FusedAdam rows")
    if _importable("deepspeed"):
        impls.append(Impl("deepspeed-cpu" if device.type == "cpu" else "deepspeed-fused",
                          "deepspeed", _deepspeed_make))
    else:
        notes.append("DeepSpeed is not importable: no DeepSpeed Adam rows")
    return impls, notes


def select(impls: list[Impl], wanted: list[str] | None, device: torch.device) -> list[Impl]:
    """Filter by ``--backends`` names: a fusedopt backend (``cpu``, ``triton``, ...), or
    ``fusedopt-<backend>``, ``torch`` (all three torch paths), ``torch-forloop``,
    ``torch-foreach``, ``torch-fused``, ``apex``, ``deepspeed``."""
    if not wanted:
        return impls
    avail = fusedopt.available_backends(device)
    chosen = []
    for w in wanted:
        w = w.strip()
        matches = [i for i in impls if w in (i.name, i.kind, i.backend)]
        if not matches:
            backend = w.removeprefix("fusedopt-")
            if backend in avail:  # left out by default (reference, interpreted triton) but named
                matches = [Impl(f"fusedopt-{backend}", "fusedopt", _fusedopt_maker(backend), backend=backend)]
            elif backend in fusedopt.backends.BACKENDS:
                why = fusedopt.backends.availability(backend, device)[1]
                raise SystemExit(f"fusedopt-bench: backend {backend!r} is not available on {device}: {why}. "
                                 f"Available: {', '.join(avail)}")
            else:
                names = sorted({i.name for i in impls} | {"torch", "apex", "deepspeed"}
                               | set(fusedopt.backends.BACKENDS))
                raise SystemExit(f"fusedopt-bench: unknown or unavailable implementation {w!r}; "
                                 f"choose from {', '.join(names)}")
        for m in matches:
            if m.name not in {c.name for c in chosen}:
                chosen.append(m)
    return chosen
