// The CUDA kernels of fusedopt::rmsprop: the traversal (multi_tensor.cuh) instantiated for
// algos/rmsprop.h (four variants: momentum and centered each add a state tensor).
#include "fusedopt/algos/rmsprop.h"
#include "multi_tensor.cuh"

template int fusedopt::cuda::launch_step<fusedopt::Rmsprop>(const StepLaunch&);
