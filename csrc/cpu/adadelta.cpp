// fusedopt::adadelta on the CPU.
#include "fusedopt/algos/adadelta.h"
#include "multi_tensor.h"

namespace fusedopt {
namespace cpu {
namespace {

enum { kRho = kNumCommonScalars, kEps, kNumScalars };
enum { kNumFlags = kNumCommonFlags };

void adadelta(const TensorList& params, const TensorList& grads, const TensorList& square_avg,
              const TensorList& acc_delta, const std::vector<double>& scalars,
              const std::vector<bool>& flags, const std::optional<Tensor>& grad_scale,
              const std::optional<Tensor>& found_inf,
          const std::optional<TensorList>& master) {
  const TensorList* slots[kMaxSlots] = {&square_avg, &acc_delta, nullptr};
  StepArgs st = prepare_step("adadelta", params, grads, slots, kSlot0 | kSlot1, scalars, kNumScalars,
                             flags, kNumFlags, grad_scale, found_inf, master);
  if (st.skip) return;
  AdadeltaArgs a{-scalar(scalars, kLr), scalar(scalars, kRho), one_minus(scalars, kRho),
                 scalar(scalars, kEps)};
  launch(st.grp, AdadeltaUpdate{a}, st.pre, st.wd_mode);
}

}  // namespace
}  // namespace cpu
}  // namespace fusedopt

STABLE_TORCH_LIBRARY_IMPL(fusedopt, CPU, m) {
  m.impl("adadelta", TORCH_BOX(&fusedopt::cpu::adadelta));
}
