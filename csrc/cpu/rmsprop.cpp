// fusedopt::rmsprop on the CPU.
#include "fusedopt/algos/rmsprop.h"
#include "multi_tensor.h"

namespace fusedopt {
namespace cpu {
namespace {

enum { kAlpha = kNumCommonScalars, kEps, kMomentum, kNumScalars };
enum { kCentered = kNumCommonFlags, kNumFlags };

void rmsprop(const TensorList& params, const TensorList& grads, const TensorList& square_avg,
             const TensorList& momentum_buffer, const TensorList& grad_avg,
             const std::vector<double>& scalars, const std::vector<bool>& flags,
             const std::optional<Tensor>& grad_scale, const std::optional<Tensor>& found_inf,
          const std::optional<TensorList>& master) {
  const bool has_momentum = !momentum_buffer.empty();
  const bool centered = flag(flags, kCentered);
  const TensorList* slots[kMaxSlots] = {&square_avg, &momentum_buffer, &grad_avg};
  const int required = kSlot0 | (has_momentum ? kSlot1 : 0) | (centered ? kSlot2 : 0);
  StepArgs st = prepare_step("rmsprop", params, grads, slots, required, scalars, kNumScalars, flags,
                             kNumFlags, grad_scale, found_inf, master);
  if (st.skip) return;
  RmspropArgs a{-scalar(scalars, kLr), scalar(scalars, kAlpha), one_minus(scalars, kAlpha),
                scalar(scalars, kEps), scalar(scalars, kMomentum)};
  with_bool(has_momentum, [&](auto mom) {
    with_bool(centered, [&](auto cen) {
      launch(st.grp, RmspropUpdate<decltype(mom)::value, decltype(cen)::value>{a}, st.pre,
             st.wd_mode);
    });
  });
}

}  // namespace
}  // namespace cpu
}  // namespace fusedopt

STABLE_TORCH_LIBRARY_IMPL(fusedopt, CPU, m) {
  m.impl("rmsprop", TORCH_BOX(&fusedopt::cpu::rmsprop));
}
