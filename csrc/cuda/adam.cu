// fusedopt::adam and fusedopt::yogi kernels (the math: algos/adam.h, algos/yogi.h).
#include "fusedopt/algos/adam.h"
#include "fusedopt/algos/yogi.h"
#include "multi_tensor.cuh"

namespace fusedopt {
namespace cuda {
namespace {

// SCALARS grad_scale, lr, weight_decay, beta1, beta2, eps, step_size, bc2_sqrt
enum { kBeta1 = kNumCommonScalars, kBeta2, kEps, kStepSize, kBc2Sqrt, kNumAdamScalars };

template <bool AMSGRAD>
struct AdamOp {
  using Args = AdamArgs;
  static constexpr int kSlots = AdamUpdate<AMSGRAD>::kSlots;
  static constexpr int kNumScalars = kNumAdamScalars;
  template <class T>
  FUSEDOPT_HD FUSEDOPT_INLINE static Args args(const T* s, uint32_t&) {
    return Args{one_minus(s[kBeta1]), static_cast<float>(s[kBeta2]), one_minus(s[kBeta2]),
                static_cast<float>(s[kEps]), -static_cast<float>(s[kStepSize]),
                static_cast<float>(s[kBc2Sqrt])};
  }
  FUSEDOPT_HD FUSEDOPT_INLINE static void apply(const Args& a, uint32_t, float& p, float g, float& m,
                                                float& v, float& vmax) {
    AdamUpdate<AMSGRAD>{a}.template apply<HwFma>(p, g, m, v, vmax);
  }
};

struct YogiOp {
  using Args = YogiArgs;
  static constexpr int kSlots = YogiUpdate::kSlots;
  static constexpr int kNumScalars = kNumAdamScalars;
  template <class T>
  FUSEDOPT_HD FUSEDOPT_INLINE static Args args(const T* s, uint32_t&) {
    return Args{static_cast<float>(s[kBeta1]), one_minus(s[kBeta1]), -one_minus(s[kBeta2]),
                static_cast<float>(s[kEps]), -static_cast<float>(s[kStepSize]),
                static_cast<float>(s[kBc2Sqrt])};
  }
  FUSEDOPT_HD FUSEDOPT_INLINE static void apply(const Args& a, uint32_t, float& p, float g, float& m,
                                                float& v, float& unused) {
    YogiUpdate{a}.template apply<HwFma>(p, g, m, v, unused);
  }
};

}  // namespace

int launch_adam(const StepLaunch& l) {
  return l.variant ? launch_step<AdamOp<true>>(l) : launch_step<AdamOp<false>>(l);
}

int launch_yogi(const StepLaunch& l) { return launch_step<YogiOp>(l); }

}  // namespace cuda
}  // namespace fusedopt
