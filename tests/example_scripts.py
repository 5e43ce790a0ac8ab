"""The scripts of examples/ loaded as modules, and the thread settings they train under, for
their tests."""
from __future__ import annotations

import contextlib
import importlib.util
import os
import sys

import torch

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


@contextlib.contextmanager
def example_module(name: str):
    """``examples/<name>.py`` imported as the module ``name`` (registered in sys.modules while
    in use, as its own dataclasses need)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(EXAMPLES, name + ".py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(name, None)


@contextlib.contextmanager
def one_thread(deterministic: bool = False):
    """One torch thread (as the examples train by default), and with ``deterministic`` torch's
    deterministic kernels, so that two runs differ only by their optimizers."""
    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    if deterministic:
        torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(det)
        torch.set_num_threads(threads)
