"""fusedopt: PyTorch optimizers whose step runs as one fused multi-tensor kernel per (device, dtype) across param groups."""
from . import schedules
from .algorithms import ALGORITHMS
from .backends import available_backends
from .clip import clip_grad_norm_
from .lookahead import Lookahead
from .optim import LAMB, SGD, Adadelta, Adagrad, Adam, Adamax, AdamW, Lion, NAdam, RAdam, RMSprop, Yogi

__version__ = "0.1.0"

__all__ = ["SGD", "Adagrad", "Adadelta", "RMSprop", "Adam", "AdamW", "Yogi", "RAdam", "Adamax", "Lion", "NAdam", "LAMB",
           "Lookahead", "clip_grad_norm_", "schedules", "available_backends", "ALGORITHMS", "__version__"]
