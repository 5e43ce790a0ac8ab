// fusedopt::sgd kernels (the math: algos/sgd.h). Whether the momentum buffer exists changes
// the memory traffic and is compile-time; nesterov and first_step (a run-time scalar, so that
// an overflow first step can be repeated from the device) are uniform branches.
#include "fusedopt/algos/sgd.h"
#include "multi_tensor.cuh"

namespace fusedopt {
namespace cuda {
namespace {

// SCALARS grad_scale, lr, weight_decay, momentum, dampening, first_step
enum { kMomentum = kNumCommonScalars, kDampening, kFirstStep, kNumSgdScalars };

template <bool HAS_BUF>
struct SgdOp {
  using Args = SgdArgs;
  static constexpr int kSlots = HAS_BUF ? kSlot0 : 0;
  static constexpr int kNumScalars = kNumSgdScalars;
  template <class T>
  FUSEDOPT_HD FUSEDOPT_INLINE static Args args(const T* s, uint32_t& rt) {
    rt = (s[kFirstStep] != T(0)) ? (rt | kRtFirst) : (rt & ~kRtFirst);
    return Args{-static_cast<float>(s[kLr]), static_cast<float>(s[kMomentum]),
                one_minus(s[kDampening])};
  }
  FUSEDOPT_HD FUSEDOPT_INLINE static void apply(const Args& a, uint32_t rt, float& p, float g,
                                                float& buf, float& y, float& z) {
    if (!HAS_BUF) {
      SgdUpdate<false, false, false>{a}.template apply<HwFma>(p, g, buf, y, z);
    } else if (rt & kRtFirst) {
      if (rt & kRtNesterov) SgdUpdate<true, true, true>{a}.template apply<HwFma>(p, g, buf, y, z);
      else SgdUpdate<true, false, true>{a}.template apply<HwFma>(p, g, buf, y, z);
    } else {
      if (rt & kRtNesterov) SgdUpdate<true, true, false>{a}.template apply<HwFma>(p, g, buf, y, z);
      else SgdUpdate<true, false, false>{a}.template apply<HwFma>(p, g, buf, y, z);
    }
  }
};

}  // namespace

int launch_sgd(const StepLaunch& l) {
  return l.variant ? launch_step<SgdOp<true>>(l) : launch_step<SgdOp<false>>(l);
}

}  // namespace cuda
}  // namespace fusedopt
