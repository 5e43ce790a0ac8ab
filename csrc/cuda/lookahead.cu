// Lookahead's slow-weight update (algos/lookahead.h) is a rule of the one CUDA traversal
// (multi_tensor.cuh); its instantiation, for fusedopt::lookahead in ops.cpp.
#include "fusedopt/algos/lookahead.h"
#include "multi_tensor.cuh"

template int fusedopt::cuda::launch_step<fusedopt::Lookahead>(const fusedopt::cuda::StepLaunch&);
