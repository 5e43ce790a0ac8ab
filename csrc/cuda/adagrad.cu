// fusedopt::adagrad, fusedopt::adadelta and fusedopt::radam kernels (the math:
// algos/adagrad.h, algos/adadelta.h, algos/radam.h).
#include "fusedopt/algos/adadelta.h"
#include "fusedopt/algos/adagrad.h"
#include "fusedopt/algos/radam.h"
#include "multi_tensor.cuh"

namespace fusedopt {
namespace cuda {
namespace {

struct AdagradOp {
  // SCALARS grad_scale, lr, weight_decay, eps (lr is the step's decayed lr)
  enum { kEps = kNumCommonScalars, kNumScalars };
  using Args = AdagradArgs;
  static constexpr int kSlots = AdagradUpdate::kSlots;
  template <class T>
  FUSEDOPT_HD FUSEDOPT_INLINE static Args args(const T* s, uint32_t&) {
    return Args{-static_cast<float>(s[kLr]), static_cast<float>(s[kEps])};
  }
  FUSEDOPT_HD FUSEDOPT_INLINE static void apply(const Args& a, uint32_t, float& p, float g,
                                                float& sum, float& y, float& z) {
    AdagradUpdate{a}.template apply<HwFma>(p, g, sum, y, z);
  }
};

struct AdadeltaOp {
  // SCALARS grad_scale, lr, weight_decay, rho, eps
  enum { kRho = kNumCommonScalars, kEps, kNumScalars };
  using Args = AdadeltaArgs;
  static constexpr int kSlots = AdadeltaUpdate::kSlots;
  template <class T>
  FUSEDOPT_HD FUSEDOPT_INLINE static Args args(const T* s, uint32_t&) {
    return Args{-static_cast<float>(s[kLr]), static_cast<float>(s[kRho]), one_minus(s[kRho]),
                static_cast<float>(s[kEps])};
  }
  FUSEDOPT_HD FUSEDOPT_INLINE static void apply(const Args& a, uint32_t, float& p, float g,
                                                float& sq, float& acc, float& z) {
    AdadeltaUpdate{a}.template apply<HwFma>(p, g, sq, acc, z);
  }
};

// RAdam: `rectify` does not change the traffic, so it is a uniform branch; with it set the
// rectified update still needs rect > 0 (device mode always passes rectify=True).
struct RadamOp {
  // SCALARS grad_scale, lr, weight_decay, beta1, beta2, eps, bias_correction1, bc2_sqrt, rect
  enum { kBeta1 = kNumCommonScalars, kBeta2, kEps, kBiasCorrection1, kBc2Sqrt, kRect, kNumScalars };
  using Args = RadamArgs;
  static constexpr int kSlots = kSlot0 | kSlot1;
  static_assert(kSlots == RadamUpdate<true>::kSlots && kSlots == RadamUpdate<false>::kSlots, "slots");
  template <class T>
  FUSEDOPT_HD FUSEDOPT_INLINE static Args args(const T* s, uint32_t& rt) {
    Args a{static_cast<float>(s[kLr]), one_minus(s[kBeta1]),       static_cast<float>(s[kBeta2]),
           one_minus(s[kBeta2]),       static_cast<float>(s[kEps]), static_cast<float>(s[kBiasCorrection1]),
           static_cast<float>(s[kBc2Sqrt]), static_cast<float>(s[kRect])};
    if (!(a.rect > 0.0f)) rt &= ~kRtRectify;
    return a;
  }
  FUSEDOPT_HD FUSEDOPT_INLINE static void apply(const Args& a, uint32_t rt, float& p, float g,
                                                float& m, float& v, float& z) {
    if (rt & kRtRectify) RadamUpdate<true>{a}.template apply<HwFma>(p, g, m, v, z);
    else RadamUpdate<false>{a}.template apply<HwFma>(p, g, m, v, z);
  }
};

}  // namespace

int launch_adagrad(const StepLaunch& l) { return launch_step<AdagradOp>(l); }
int launch_adadelta(const StepLaunch& l) { return launch_step<AdadeltaOp>(l); }
int launch_radam(const StepLaunch& l) { return launch_step<RadamOp>(l); }

}  // namespace cuda
}  // namespace fusedopt
