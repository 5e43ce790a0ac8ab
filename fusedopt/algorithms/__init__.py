"""The single definition, in Python, of every algorithm's math and per-step scalars."""
from .adadelta import ADADELTA
from .adagrad import ADAGRAD
from .adam import ADAM
from .adamax import ADAMAX
from .base import COMMON_HYPER, Algorithm
from .lamb import LAMB
from .lion import LION
from .nadam import NADAM
from .radam import RADAM, rectification
from .rmsprop import RMSPROP
from .sgd import SGD
from .yogi import YOGI

ALGORITHMS = {a.name: a for a in (SGD, ADAGRAD, ADADELTA, RMSPROP, ADAM, YOGI, RADAM, ADAMAX, LION, NADAM, LAMB)}

__all__ = ["Algorithm", "COMMON_HYPER", "ALGORITHMS", "SGD", "ADAGRAD", "ADADELTA", "RMSPROP", "ADAM", "YOGI",
           "RADAM", "ADAMAX", "LION", "NADAM", "LAMB", "rectification"]
