// The CPU kernels of fusedopt::adam and fusedopt::yogi: the traversal (multi_tensor.h)
// instantiated for algos/adam.h and algos/yogi.h, in a translation unit of their own (see step.h).
#include "fusedopt/algos/adam.h"
#include "fusedopt/algos/yogi.h"
#include "multi_tensor.h"

template struct fusedopt::cpu::Step<fusedopt::Adam>;
template struct fusedopt::cpu::Step<fusedopt::Yogi>;
