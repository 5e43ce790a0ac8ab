// fusedopt::adagrad on the CPU.
#include "fusedopt/algos/adagrad.h"
#include "multi_tensor.h"

namespace fusedopt {
namespace cpu {
namespace {

enum { kEps = kNumCommonScalars, kNumScalars };
enum { kNumFlags = kNumCommonFlags };

void adagrad(const TensorList& params, const TensorList& grads, const TensorList& sum,
             const std::vector<double>& scalars, const std::vector<bool>& flags,
             const std::optional<Tensor>& grad_scale, const std::optional<Tensor>& found_inf,
          const std::optional<TensorList>& master) {
  const TensorList* slots[kMaxSlots] = {&sum, nullptr, nullptr};
  StepArgs st = prepare_step("adagrad", params, grads, slots, kSlot0, scalars, kNumScalars, flags,
                             kNumFlags, grad_scale, found_inf, master);
  if (st.skip) return;
  AdagradArgs a{-scalar(scalars, kLr), scalar(scalars, kEps)};
  launch(st.grp, AdagradUpdate{a}, st.pre, st.wd_mode);
}

}  // namespace
}  // namespace cpu
}  // namespace fusedopt

STABLE_TORCH_LIBRARY_IMPL(fusedopt, CPU, m) {
  m.impl("adagrad", TORCH_BOX(&fusedopt::cpu::adagrad));
}
