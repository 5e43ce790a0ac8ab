"""Backend registry: one interface (``docs/kernel-interface.md``), one place that chooses.

Backends are modules ``fusedopt.backends.<name>`` defining a class ``Backend``; they are
imported lazily, so a missing compiler or Triton only makes that backend unavailable.
"""
from __future__ import annotations

import importlib
from functools import lru_cache

import torch

BACKENDS = ("reference", "triton", "cpu", "cuda")

# Which backend "auto" prefers, per device type, fastest first (as the benchmarks measured).
AUTO_ORDER = {
    "cpu": ("cpu", "reference"),
    "cuda": ("cuda", "triton", "reference"),
}


@lru_cache(maxsize=None)
def _load(name: str):
    try:
        module = importlib.import_module(f"{__name__}.{name}")
    except ImportError as e:  # the backend's toolchain is not installed
        return None, f"{type(e).__name__}: {e}"
    return module.Backend(), ""


def availability(name: str, device: torch.device) -> tuple[bool, str]:
    """(available?, why not) for backend ``name`` on ``device``."""
    backend, why = _load(name)
    if backend is None:
        return False, why
    return backend.available(device)


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """The backends that can run on ``device``."""
    device = torch.device(device)
    return [n for n in BACKENDS if availability(n, device)[0]]


def supports_lowbit(name: str) -> bool:
    """Whether backend ``name`` takes 8-bit states and stochastic rounding (its ``lowbit``)."""
    backend = _load(name)[0] if name in BACKENDS else None
    return bool(getattr(backend, "lowbit", False))


def get_backend(name: str, device: torch.device, lowbit: bool = False):
    """The backend object for ``name`` on ``device``; ``"auto"`` picks the fastest available (of
    those that take 8-bit states and stochastic rounding, with ``lowbit``)."""
    if name == "auto":
        for candidate in AUTO_ORDER.get(device.type, ("reference",)):
            if availability(candidate, device)[0] and (not lowbit or supports_lowbit(candidate)):
                return _load(candidate)[0]
        return _load("reference")[0]
    if name not in BACKENDS:
        raise ValueError(f"Invalid backend: {name!r}; choose one of 'auto', "
                         + ", ".join(repr(b) for b in BACKENDS)
                         + f" (available on {device.type}: {', '.join(available_backends(device))})")
    ok, why = availability(name, device)
    if not ok:
        raise RuntimeError(f"backend {name!r} is not available on {device}: {why}. "
                           f"Available on {device.type}: {', '.join(available_backends(device))}")
    return _load(name)[0]


def check_backend_name(name: str) -> None:
    if name != "auto" and name not in BACKENDS:
        raise ValueError(f"Invalid backend: {name!r}; choose one of 'auto', "
                         + ", ".join(repr(b) for b in BACKENDS))
