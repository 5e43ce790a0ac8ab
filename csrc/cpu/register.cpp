// The op schemas of fusedopt and the Python module `fusedopt._C`.
//
// Importing fusedopt._C loads this library; its static initialisers register
// the schemas below and the CPU kernels (one STABLE_TORCH_LIBRARY_IMPL per
// algorithm file). The module itself is empty and uses only the limited Python
// API, so one abi3 binary serves every CPython from 3.10 on; the kernels use
// only the LibTorch stable ABI, so it serves every torch from the targeted
// version on.
//
// Schemas (docs/kernel-interface.md gives the order of scalars, flags and
// slots): one op per algorithm, its state slots as separate mutable lists (an
// inactive slot is an empty list), scalars and flags as lists in interface
// order, the optional 0-dim float32 grad_scale / found_inf tensors, and the
// optional float32 master weights of 16-bit params.
#include <Python.h>

#include <torch/csrc/stable/library.h>

#define FUSEDOPT_STEP_TAIL                                                     \
  "float[] scalars, bool[] flags, Tensor? grad_scale=None, Tensor? found_inf=None, " \
  "Tensor(z!)[]? master=None) -> ()"

STABLE_TORCH_LIBRARY(fusedopt, m) {
  m.def("sgd(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] momentum_buffer, " FUSEDOPT_STEP_TAIL);
  m.def("adagrad(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] sum, " FUSEDOPT_STEP_TAIL);
  m.def("adadelta(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] square_avg, "
        "Tensor(c!)[] acc_delta, " FUSEDOPT_STEP_TAIL);
  m.def("rmsprop(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] square_avg, "
        "Tensor(c!)[] momentum_buffer, Tensor(d!)[] grad_avg, " FUSEDOPT_STEP_TAIL);
  m.def("adam(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avg, Tensor(c!)[] exp_avg_sq, "
        "Tensor(d!)[] max_exp_avg_sq, " FUSEDOPT_STEP_TAIL);
  m.def("yogi(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avg, Tensor(c!)[] exp_avg_sq, "
        FUSEDOPT_STEP_TAIL);
  m.def("radam(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avg, Tensor(c!)[] exp_avg_sq, "
        FUSEDOPT_STEP_TAIL);
  m.def("lookahead(Tensor(a!)[] params, Tensor(b!)[] slow, float alpha) -> ()");
}

extern "C" {

static struct PyModuleDef fusedopt_c_module = {
    PyModuleDef_HEAD_INIT,
    "_C",
    "fusedopt's compiled CPU kernels; importing this module registers the torch.ops.fusedopt ops.",
    -1,
    nullptr,
};

PyMODINIT_FUNC PyInit__C(void) {
  return PyModule_Create(&fusedopt_c_module);
}

}  // extern "C"
