// fusedopt::rmsprop kernels (the math: algos/rmsprop.h). Momentum and centered each add a
// state tensor to the traffic: four compile-time variants.
#include "fusedopt/algos/rmsprop.h"
#include "multi_tensor.cuh"

namespace fusedopt {
namespace cuda {
namespace {

// SCALARS grad_scale, lr, weight_decay, alpha, eps, momentum
enum { kAlpha = kNumCommonScalars, kEps, kMomentum, kNumRmspropScalars };

template <bool HAS_MOMENTUM, bool CENTERED>
struct RmspropOp {
  using Args = RmspropArgs;
  using Update = RmspropUpdate<HAS_MOMENTUM, CENTERED>;
  static constexpr int kSlots = Update::kSlots;
  static constexpr int kNumScalars = kNumRmspropScalars;
  template <class T>
  FUSEDOPT_HD FUSEDOPT_INLINE static Args args(const T* s, uint32_t&) {
    return Args{-static_cast<float>(s[kLr]), static_cast<float>(s[kAlpha]), one_minus(s[kAlpha]),
                static_cast<float>(s[kEps]), static_cast<float>(s[kMomentum])};
  }
  FUSEDOPT_HD FUSEDOPT_INLINE static void apply(const Args& a, uint32_t, float& p, float g,
                                                float& sq, float& buf, float& ga) {
    Update{a}.template apply<HwFma>(p, g, sq, buf, ga);
  }
};

}  // namespace

int launch_rmsprop(const StepLaunch& l) {
  switch (l.variant & 3) {
    case 1: return launch_step<RmspropOp<true, false>>(l);
    case 2: return launch_step<RmspropOp<false, true>>(l);
    case 3: return launch_step<RmspropOp<true, true>>(l);
    default: return launch_step<RmspropOp<false, false>>(l);
  }
}

}  // namespace cuda
}  // namespace fusedopt
