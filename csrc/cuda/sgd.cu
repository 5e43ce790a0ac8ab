// The CUDA kernels of fusedopt::sgd: the traversal (multi_tensor.cuh) instantiated for
// algos/sgd.h. The *.cu files split the algorithms so that nvcc builds them in parallel.
#include "fusedopt/algos/sgd.h"
#include "multi_tensor.cuh"

template int fusedopt::cuda::launch_step<fusedopt::Sgd>(const StepLaunch&);
