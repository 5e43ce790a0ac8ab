// The CPU kernel of fusedopt::radam: the traversal (multi_tensor.h) instantiated for algos/radam.h,
// in a translation unit of its own (see step.h).
#include "fusedopt/algos/radam.h"
#include "multi_tensor.h"

template struct fusedopt::cpu::Step<fusedopt::Radam>;
