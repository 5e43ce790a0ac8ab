"""Loading of the compiled kernels (``fusedopt._C``, ``fusedopt._C_cuda``) and their fake kernels.

Importing ``fusedopt._C`` loads a library whose static initialisers register the
``torch.ops.fusedopt`` ops (schemas and CPU kernels, LibTorch stable ABI). The CUDA library
``fusedopt._C_cuda``, when built, adds CUDA kernels to the same ops; it is loaded only when
``torch.cuda.is_available()``. Nothing here raises: :func:`cpu_status` and
:func:`cuda_status` say whether the kernels are there and, if not, why.

Op schemas (one op per algorithm; state slots in the order of ``docs/kernel-interface.md``,
an inactive slot is an empty list)::

    sgd(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] momentum_buffer, <tail>)
    adagrad(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] sum, <tail>)
    adadelta(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] square_avg, Tensor(c!)[] acc_delta, <tail>)
    rmsprop(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] square_avg,
            Tensor(c!)[] momentum_buffer, Tensor(d!)[] grad_avg, <tail>)
    adam(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avg, Tensor(c!)[] exp_avg_sq,
         Tensor(d!)[] max_exp_avg_sq, <tail>)
    yogi(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avg, Tensor(c!)[] exp_avg_sq, <tail>)
    radam(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avg, Tensor(c!)[] exp_avg_sq, <tail>)
    lookahead(Tensor(a!)[] params, Tensor(b!)[] slow, float alpha) -> ()

    <tail> = float[] scalars, bool[] flags, Tensor? grad_scale=None, Tensor? found_inf=None,
             Tensor(z!)[]? master=None) -> ()

``fusedopt._C_cuda`` adds, for every step op, the overload ``<op>.tensor``: the same schema
with ``Tensor scalars`` (float32, on the params' device) in place of ``float[] scalars``, for
device-mode steps whose scalars the host never reads.
"""
from __future__ import annotations

import importlib
import importlib.util

import torch

# Number of state slots of each step op, in the interface's SLOTS order.
STEP_OPS = {
    "sgd": 1,
    "adagrad": 1,
    "adadelta": 2,
    "rmsprop": 3,
    "adam": 3,
    "yogi": 2,
    "radam": 2,
}
OPS = tuple(STEP_OPS) + ("lookahead",)

_cpu_error: str | None = None
_cuda_error: str | None = None
_cuda_tried = False


def _load_cpu() -> str | None:
    try:
        importlib.import_module("fusedopt._C")
    except ImportError as e:
        if isinstance(e, ModuleNotFoundError) and e.name == "fusedopt._C":
            return ("the compiled extension fusedopt._C is not installed "
                    "(pure-Python install, e.g. built with FUSEDOPT_BUILD_EXT=0)")
        return f"fusedopt._C failed to load: {type(e).__name__}: {e}"
    except OSError as e:  # a broken shared library
        return f"fusedopt._C failed to load: {type(e).__name__}: {e}"
    _register_fakes()
    return None


_fakes_registered = False


def _register_fakes(names=None) -> None:
    """Fake (meta) kernels: the ops only mutate their inputs and return nothing."""
    global _fakes_registered
    if names is None:
        if _fakes_registered:
            return
        _fakes_registered = True
    for name in OPS if names is None else names:
        qualname = f"fusedopt::{name}"
        try:
            torch.library.register_fake(qualname)(_fake)
        except RuntimeError as e:  # already registered (module reloaded)
            if "already has" not in str(e) and "already registered" not in str(e):
                raise


def _fake(*args, **kwargs):
    return None


_cpu_error = _load_cpu()


def cpu_status() -> tuple[bool, str]:
    """(loaded?, why not) for the compiled CPU kernels."""
    return _cpu_error is None, _cpu_error or ""


def cuda_status() -> tuple[bool, str]:
    """(loaded?, why not) for the compiled CUDA kernels; loads them on first call."""
    global _cuda_tried, _cuda_error
    if not _cuda_tried:
        _cuda_tried = True
        if _cpu_error is not None:
            _cuda_error = _cpu_error
        elif not torch.cuda.is_available():
            _cuda_error = "torch.cuda.is_available() is False"
        else:
            # A plain shared library built by nvcc alone (no Python module init): found like
            # an extension module, loaded by torch.
            spec = importlib.util.find_spec("fusedopt._C_cuda")
            if spec is None or not spec.origin:
                _cuda_error = ("the CUDA extension fusedopt._C_cuda is not installed "
                               "(built without nvcc or with FUSEDOPT_BUILD_CUDA=0)")
            else:
                try:
                    torch.ops.load_library(spec.origin)
                except (OSError, RuntimeError) as e:
                    _cuda_error = f"fusedopt._C_cuda failed to load: {type(e).__name__}: {e}"
                else:
                    _register_fakes([f"{name}.tensor" for name in STEP_OPS])
    return _cuda_error is None, _cuda_error or ""


def ops():
    """``torch.ops.fusedopt`` (raises if the CPU extension is not loaded)."""
    ok, why = cpu_status()
    if not ok:
        raise RuntimeError(why)
    return torch.ops.fusedopt
