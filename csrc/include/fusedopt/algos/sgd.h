// SGD with optional (Nesterov) momentum (fusedopt/algorithms/sgd.py).
//   HYPER          lr, weight_decay, maximize, decoupled, momentum, dampening
//   TENSOR_SCALARS first_step = (t == 1)
//   SLOTS          momentum_buffer (present when momentum != 0)
//   FLAGS          nesterov
//   if momentum_buffer present:
//       buf = g (first step) | momentum * buf + (1 - dampening) * g
//       g = g + momentum * buf if nesterov else buf
//   p = p - lr * g
#pragma once

#include "fusedopt/common.h"

namespace fusedopt {

struct Sgd : AlgorithmDefaults, contract::Sgd {
  // Whether the buffer's list is present, nesterov, and (per tensor) the buffer's first step.
  enum : int { kHasBuf = 1, kNesterov = 2, kFirst = 4, kNumVariants = 8, kTensorBit = kFirst };
  // Without a buffer, neither nesterov nor the first step changes the update.
  static constexpr int canonical(int v) { return (v & kHasBuf) ? v : 0; }
  static constexpr int call_variant(unsigned flags, int present) {
    return canonical(((present & kSlot0) ? kHasBuf : 0) | ((flags & kFlagNesterov) ? kNesterov : 0));
  }
  static constexpr int slots(int v) { return (v & kHasBuf) ? kSlot0 : 0; }

  struct Args {
    float neg_lr, momentum, one_minus_dampening;
    bool first_step;
  };
  FUSEDOPT_HD FUSEDOPT_INLINE static Args make(const double* h, double t) {
    return Args{to_f32(-h[kLr]), to_f32(h[kMomentum]), to_f32(1.0 - h[kDampening]), t == 1.0};
  }
  FUSEDOPT_HD FUSEDOPT_INLINE static int tensor_variant(const Args& a) { return a.first_step ? kFirst : 0; }

  template <int V, class M>
  FUSEDOPT_HD FUSEDOPT_INLINE static void apply(const Args& a, float& p, float g, float& buf, float&,
                                                float&) {
    if (V & kHasBuf) {
      buf = (V & kFirst) ? g : M::fma(a.one_minus_dampening, g, buf * a.momentum);
      g = (V & kNesterov) ? M::fma(a.momentum, buf, g) : buf;
    }
    p = M::fma(a.neg_lr, g, p);
  }
};

}  // namespace fusedopt
