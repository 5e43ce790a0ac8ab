// fusedopt::adam and fusedopt::yogi on the CPU (the Adam family's first-moment
// and bias-correction scalars share one layout).
#include "fusedopt/algos/adam.h"
#include "fusedopt/algos/yogi.h"
#include "multi_tensor.h"

namespace fusedopt {
namespace cpu {
namespace {

enum { kBeta1 = kNumCommonScalars, kBeta2, kEps, kStepSize, kBc2Sqrt, kNumScalars };
enum { kAmsgrad = kNumCommonFlags, kNumAdamFlags };
enum { kNumYogiFlags = kNumCommonFlags };

void adam(const TensorList& params, const TensorList& grads, const TensorList& exp_avg,
          const TensorList& exp_avg_sq, const TensorList& max_exp_avg_sq,
          const std::vector<double>& scalars, const std::vector<bool>& flags,
          const std::optional<Tensor>& grad_scale, const std::optional<Tensor>& found_inf,
          const std::optional<TensorList>& master) {
  const bool amsgrad = flag(flags, kAmsgrad);
  const TensorList* slots[kMaxSlots] = {&exp_avg, &exp_avg_sq, &max_exp_avg_sq};
  StepArgs st = prepare_step("adam", params, grads, slots, kSlot0 | kSlot1 | (amsgrad ? kSlot2 : 0),
                             scalars, kNumScalars, flags, kNumAdamFlags, grad_scale, found_inf, master);
  if (st.skip) return;
  AdamArgs a{one_minus(scalars, kBeta1), scalar(scalars, kBeta2), one_minus(scalars, kBeta2),
             scalar(scalars, kEps), -scalar(scalars, kStepSize), scalar(scalars, kBc2Sqrt)};
  with_bool(amsgrad, [&](auto ams) {
    launch(st.grp, AdamUpdate<decltype(ams)::value>{a}, st.pre, st.wd_mode);
  });
}

void yogi(const TensorList& params, const TensorList& grads, const TensorList& exp_avg,
          const TensorList& exp_avg_sq, const std::vector<double>& scalars,
          const std::vector<bool>& flags, const std::optional<Tensor>& grad_scale,
          const std::optional<Tensor>& found_inf,
          const std::optional<TensorList>& master) {
  const TensorList* slots[kMaxSlots] = {&exp_avg, &exp_avg_sq, nullptr};
  StepArgs st = prepare_step("yogi", params, grads, slots, kSlot0 | kSlot1, scalars, kNumScalars,
                             flags, kNumYogiFlags, grad_scale, found_inf, master);
  if (st.skip) return;
  YogiArgs a{scalar(scalars, kBeta1), one_minus(scalars, kBeta1), -one_minus(scalars, kBeta2),
             scalar(scalars, kEps), -scalar(scalars, kStepSize), scalar(scalars, kBc2Sqrt)};
  launch(st.grp, YogiUpdate{a}, st.pre, st.wd_mode);
}

}  // namespace
}  // namespace cpu
}  // namespace fusedopt

STABLE_TORCH_LIBRARY_IMPL(fusedopt, CPU, m) {
  m.impl("adam", TORCH_BOX(&fusedopt::cpu::adam));
  m.impl("yogi", TORCH_BOX(&fusedopt::cpu::yogi));
}
