// The CPU kernel of fusedopt::adagrad: the traversal (multi_tensor.h) instantiated for algos/adagrad.h,
// in a translation unit of its own (see step.h).
#include "fusedopt/algos/adagrad.h"
#include "multi_tensor.h"

template struct fusedopt::cpu::Step<fusedopt::Adagrad>;
