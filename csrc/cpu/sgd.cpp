// fusedopt::sgd on the CPU.
#include "fusedopt/algos/sgd.h"
#include "multi_tensor.h"

namespace fusedopt {
namespace cpu {
namespace {

enum { kMomentum = kNumCommonScalars, kDampening, kFirstStep, kNumScalars };
enum { kNesterov = kNumCommonFlags, kNumFlags };

void sgd(const TensorList& params, const TensorList& grads, const TensorList& momentum_buffer,
         const std::vector<double>& scalars, const std::vector<bool>& flags,
         const std::optional<Tensor>& grad_scale, const std::optional<Tensor>& found_inf,
          const std::optional<TensorList>& master) {
  // The buffer is present exactly when momentum != 0 (the Python layer decides).
  const bool has_buf = !momentum_buffer.empty();
  const TensorList* slots[kMaxSlots] = {&momentum_buffer, nullptr, nullptr};
  StepArgs st = prepare_step("sgd", params, grads, slots, has_buf ? kSlot0 : 0, scalars, kNumScalars,
                             flags, kNumFlags, grad_scale, found_inf, master);
  if (st.skip) return;
  SgdArgs a{-scalar(scalars, kLr), scalar(scalars, kMomentum), one_minus(scalars, kDampening)};
  if (!has_buf) {
    launch(st.grp, SgdUpdate<false, false, false>{a}, st.pre, st.wd_mode);
    return;
  }
  with_bool(flag(flags, kNesterov), [&](auto nesterov) {
    // first_step is a runtime scalar (1.0 on a buffer's first step); on the CPU it is
    // host memory, so it still selects a compile-time variant.
    with_bool(scalar(scalars, kFirstStep) != 0.0f, [&](auto first) {
      launch(st.grp, SgdUpdate<true, decltype(nesterov)::value, decltype(first)::value>{a}, st.pre,
             st.wd_mode);
    });
  });
}

}  // namespace
}  // namespace cpu
}  // namespace fusedopt

STABLE_TORCH_LIBRARY_IMPL(fusedopt, CPU, m) {
  m.impl("sgd", TORCH_BOX(&fusedopt::cpu::sgd));
}
