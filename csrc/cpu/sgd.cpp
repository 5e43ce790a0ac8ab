// The CPU kernel of fusedopt::sgd: the traversal (multi_tensor.h) instantiated for algos/sgd.h,
// in a translation unit of its own (see step.h).
#include "fusedopt/algos/sgd.h"
#include "multi_tensor.h"

template struct fusedopt::cpu::Step<fusedopt::Sgd>;
