// The CPU kernel of fusedopt::adadelta: the traversal (multi_tensor.h) instantiated for algos/adadelta.h,
// in a translation unit of its own (see step.h).
#include "fusedopt/algos/adadelta.h"
#include "multi_tensor.h"

template struct fusedopt::cpu::Step<fusedopt::Adadelta>;
