"""Loading of the compiled kernels (``fusedopt._C``, ``fusedopt._C_cuda``) and their fake kernels.

Importing ``fusedopt._C`` loads a library whose static initialisers register the
``torch.ops.fusedopt`` ops (schemas and CPU kernels, LibTorch stable ABI). The CUDA library
``fusedopt._C_cuda``, when built, adds CUDA kernels to the same ops; it is loaded only when
``torch.cuda.is_available()``. Nothing here raises: :func:`cpu_status` and
:func:`cuda_status` say whether the kernels are there and, if not, why.

Op schemas (``docs/kernel-interface.md``): one op per algorithm of
``fusedopt.algorithms.ALGORITHMS``, all with one schema, the ``state_table`` they take, and
``lookahead``::

    <algo>(Tensor(a!)[] params, Tensor[] grads, Tensor table, Tensor steps, Tensor index,
           Tensor hyper, bool[] flags, Tensor? grad_scale=None, Tensor? found_inf=None,
           Tensor(b!)? sums=None, int phase=0) -> ()
    state_table(Tensor[] params, Tensor[] s0, Tensor[] s1, Tensor[] s2, Tensor[]? master,
                Tensor[]? scales=None, Tensor? rounding=None, Tensor[]? grads=None) -> Tensor
    release_table(Tensor(a!) table) -> ()
    lookahead(Tensor(a!)[] params, Tensor(b!)[] slow, float alpha, Tensor(c!)[]? master=None) -> ()

``table`` is an int64 CPU tensor ``[len(params) + 1, STATE_TABLE_COLS]`` made by ``state_table``
from the state slots ``s0, s1, s2`` in the algorithm's ``SLOTS`` order (an unused or inactive one
an empty list) and the master weights; the step op updates the tensors it describes. The table
holds a reference to each param, so a step may pass an empty ``params`` (the table's own), and,
made with ``grads``, to each grad, so a step may pass both lists empty, until ``release_table``
drops them. ``steps`` (float32, 1-D) and ``hyper`` (float64, ``[rows, len(HYPER)]``) live on
the params' device, ``index`` (int64, ``[len(params), 2]``: each param's step slot and hyper row)
on the CPU; ``flags`` follow ``FLAGS``.
"""
from __future__ import annotations

import importlib
import importlib.util

import torch

from .algorithms import ALGORITHMS

# The step ops, one per algorithm (the C++ list is generated from it: csrc/include/fusedopt/algos/contract.h).
STEP_OPS = tuple(ALGORITHMS)
OPS = STEP_OPS + ("state_table", "release_table", "lookahead")
# The columns of a state table (csrc/include/fusedopt/tensor_info.h, table::kCols).
STATE_TABLE_COLS = 15

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


def _register_fakes() -> None:
    """Fake (meta) kernels: the step ops and lookahead only mutate their inputs and return
    nothing; state_table returns its table, host memory whatever the tensors' device."""
    global _fakes_registered
    if _fakes_registered:
        return
    _fakes_registered = True
    for name in OPS:
        try:
            torch.library.register_fake(f"fusedopt::{name}")(_fake_state_table if name == "state_table" else _fake)
        except RuntimeError as e:  # already registered (module reloaded)
            if "already has" not in str(e) and "already registered" not in str(e):
                raise


def _fake(*args, **kwargs):
    return None


def _fake_state_table(params, s0, s1, s2, master=None, scales=None, rounding=None, grads=None):
    return torch.empty(len(params) + 1, STATE_TABLE_COLS, dtype=torch.int64, device="cpu")


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
    return _cuda_error is None, _cuda_error or ""


def ops():
    """``torch.ops.fusedopt`` (raises if the CPU extension is not loaded)."""
    ok, why = cpu_status()
    if not ok:
        raise RuntimeError(why)
    return torch.ops.fusedopt
