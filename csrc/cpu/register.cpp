// The op schemas of fusedopt, the CPU kernels of its step ops, and the Python module
// `fusedopt._C`.
//
// Importing fusedopt._C loads this library; its static initialisers register the schemas below
// and the CPU kernels. The module itself is empty
// and uses only the limited Python API, so one abi3 binary serves every CPython from 3.10 on; the
// kernels use only the LibTorch stable ABI, so it serves every torch from the targeted version
// on.
//
// Schemas (docs/kernel-interface.md): one op per algorithm of the list in algos/contract.h, all with
// one schema (FUSEDOPT_STEP_SCHEMA), the state_table they take (FUSEDOPT_STATE_TABLE_SCHEMA), and
// lookahead.
#include <Python.h>

#include <string>

#include <torch/csrc/stable/library.h>

#include "fusedopt/algos/all.h"
#include "fusedopt/tensor_info.h"
#include "step.h"

STABLE_TORCH_LIBRARY(fusedopt, m) {
#define FUSEDOPT_DEF(A) m.def((std::string(fusedopt::A::kName) + FUSEDOPT_STEP_SCHEMA).c_str());
  FUSEDOPT_FOR_EACH_ALGORITHM(FUSEDOPT_DEF)
#undef FUSEDOPT_DEF
  m.def("state_table" FUSEDOPT_STATE_TABLE_SCHEMA);
  m.def("release_table" FUSEDOPT_RELEASE_TABLE_SCHEMA);
  m.def("lookahead" FUSEDOPT_LOOKAHEAD_SCHEMA);
}

STABLE_TORCH_LIBRARY_IMPL(fusedopt, CPU, m) {
#define FUSEDOPT_IMPL(A) m.impl(fusedopt::A::kName, TORCH_BOX(&fusedopt::cpu::Step<fusedopt::A>::op));
  FUSEDOPT_FOR_EACH_ALGORITHM(FUSEDOPT_IMPL)
#undef FUSEDOPT_IMPL
  m.impl("state_table", TORCH_BOX(&fusedopt::cpu::state_table));
  m.impl("lookahead", TORCH_BOX(&fusedopt::cpu::lookahead));
  // a state table is a CPU tensor whatever the device of the tensors it describes
  m.impl("release_table", TORCH_BOX(&fusedopt::host::release_table));
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
