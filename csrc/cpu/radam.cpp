// fusedopt::radam on the CPU.
#include "fusedopt/algos/radam.h"
#include "multi_tensor.h"

namespace fusedopt {
namespace cpu {
namespace {

enum { kBeta1 = kNumCommonScalars, kBeta2, kEps, kBiasCorrection1, kBc2Sqrt, kRect, kNumScalars };
enum { kRectify = kNumCommonFlags, kNumFlags };

void radam(const TensorList& params, const TensorList& grads, const TensorList& exp_avg,
           const TensorList& exp_avg_sq, const std::vector<double>& scalars,
           const std::vector<bool>& flags, const std::optional<Tensor>& grad_scale,
           const std::optional<Tensor>& found_inf,
          const std::optional<TensorList>& master) {
  const TensorList* slots[kMaxSlots] = {&exp_avg, &exp_avg_sq, nullptr};
  StepArgs st = prepare_step("radam", params, grads, slots, kSlot0 | kSlot1, scalars, kNumScalars,
                             flags, kNumFlags, grad_scale, found_inf, master);
  if (st.skip) return;
  RadamArgs a{scalar(scalars, kLr),   one_minus(scalars, kBeta1),       scalar(scalars, kBeta2),
              one_minus(scalars, kBeta2), scalar(scalars, kEps), scalar(scalars, kBiasCorrection1),
              scalar(scalars, kBc2Sqrt), scalar(scalars, kRect)};
  // As the reference: the rectified branch needs rect > 0 as well.
  const bool rectify = flag(flags, kRectify) && scalar(scalars, kRect) > 0.0f;
  with_bool(rectify, [&](auto r) {
    launch(st.grp, RadamUpdate<decltype(r)::value>{a}, st.pre, st.wd_mode);
  });
}

}  // namespace
}  // namespace cpu
}  // namespace fusedopt

STABLE_TORCH_LIBRARY_IMPL(fusedopt, CPU, m) {
  m.impl("radam", TORCH_BOX(&fusedopt::cpu::radam));
}
