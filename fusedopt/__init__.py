"""fusedopt: PyTorch optimizers whose step runs as one fused multi-tensor kernel per (device, dtype) across param groups."""
from . import schedules
from .algorithms import ALGORITHMS
from .backends import available_backends
from .clip import clip_grad_norm_
from .lookahead import Lookahead
from . import optim
from .optim import *  # noqa: F401,F403 - the optimizer classes, optim.__all__

__version__ = "0.1.0"

__all__ = [*optim.__all__, "Lookahead", "clip_grad_norm_", "schedules", "available_backends", "ALGORITHMS",
           "__version__"]
