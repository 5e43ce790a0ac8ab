// The CPU kernel of fusedopt::rmsprop: the traversal (multi_tensor.h) instantiated for algos/rmsprop.h,
// in a translation unit of its own (see step.h).
#include "fusedopt/algos/rmsprop.h"
#include "multi_tensor.h"

template struct fusedopt::cpu::Step<fusedopt::Rmsprop>;
