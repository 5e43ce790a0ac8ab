// The CUDA kernels of fusedopt::adagrad, fusedopt::adadelta and fusedopt::radam: the traversal
// (multi_tensor.cuh) instantiated for algos/adagrad.h, algos/adadelta.h and algos/radam.h.
#include "fusedopt/algos/adadelta.h"
#include "fusedopt/algos/adagrad.h"
#include "fusedopt/algos/radam.h"
#include "multi_tensor.cuh"

template int fusedopt::cuda::launch_step<fusedopt::Adagrad>(const StepLaunch&);
template int fusedopt::cuda::launch_step<fusedopt::Adadelta>(const StepLaunch&);
template int fusedopt::cuda::launch_step<fusedopt::Radam>(const StepLaunch&);
