// The CUDA kernels of fusedopt::adam and fusedopt::yogi: the traversal (multi_tensor.cuh)
// instantiated for algos/adam.h and algos/yogi.h.
#include "fusedopt/algos/adam.h"
#include "fusedopt/algos/yogi.h"
#include "multi_tensor.cuh"

template int fusedopt::cuda::launch_step<fusedopt::Adam>(const StepLaunch&);
template int fusedopt::cuda::launch_step<fusedopt::Yogi>(const StepLaunch&);
