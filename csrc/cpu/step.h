// The CPU kernel of every step op: one template over the algorithm descriptor
// (csrc/include/fusedopt/algos), defined in multi_tensor.h and instantiated once per algorithm in
// a translation unit of its own that setup.py writes (Note [one translation unit per algorithm]),
// so the build compiles the algorithms in parallel; register.cpp registers every instantiation
// from the one list of algos/contract.h, and the CPU kernel of fusedopt::state_table
// and fusedopt::lookahead (multi_tensor.cpp).
#pragma once

#include <optional>
#include <vector>

#include <torch/csrc/stable/tensor.h>

namespace fusedopt {
namespace cpu {

using torch::stable::Tensor;
using TensorList = std::vector<Tensor>;

template <class A>
struct Step {
  // fusedopt::<A::kName>, the schema of algos/all.h.
  static void op(const TensorList& params, const TensorList& grads, const Tensor& table,
                 const Tensor& steps, const Tensor& index, const Tensor& hyper,
                 const std::vector<bool>& flags, const std::optional<Tensor>& grad_scale,
                 const std::optional<Tensor>& found_inf, const std::optional<Tensor>& sums, int64_t phase);
};

// fusedopt::state_table for CPU tensors (tensor_info.h, Note [state tables]).
Tensor state_table(const TensorList& params, const TensorList& s0, const TensorList& s1, const TensorList& s2,
                   const std::optional<TensorList>& master, const std::optional<TensorList>& scales,
                   const std::optional<Tensor>& rounding, const std::optional<TensorList>& grads);

// fusedopt::lookahead for CPU tensors (the rule of algos/lookahead.h).
void lookahead(const TensorList& params, const TensorList& slow, double alpha,
               const std::optional<TensorList>& master);

}  // namespace cpu
}  // namespace fusedopt
