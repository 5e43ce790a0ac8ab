// RMSprop, optionally centered and with momentum, eps outside the sqrt as torch
// (fusedopt/algorithms/rmsprop.py).
//   HYPER  lr, weight_decay, maximize, decoupled, alpha, eps, momentum
//   SLOTS  square_avg, momentum_buffer (present when momentum > 0), grad_avg (centered)
//   FLAGS  centered
//   sq = alpha * sq + (1 - alpha) * g * g
//   centered: ga = ga + (1 - alpha) * (g - ga) ; avg = sqrt(sq - ga * ga) + eps
//   else:     avg = sqrt(sq) + eps
//   momentum: buf = momentum * buf + g / avg ; p = p - lr * buf
//   else:     p = p - lr * g / avg
#pragma once

#include "fusedopt/common.h"

namespace fusedopt {

struct Rmsprop : AlgorithmDefaults, contract::Rmsprop {
  // Whether the momentum buffer's list is present, and centered: each adds a state tensor.
  enum : int { kHasMomentum = 1, kCentered = 2, kNumVariants = 4 };
  static constexpr int call_variant(unsigned flags, int present) {
    return ((present & kSlot1) ? kHasMomentum : 0) | ((flags & kFlagCentered) ? kCentered : 0);
  }
  static constexpr int slots(int v) {
    return kSlot0 | ((v & kHasMomentum) ? kSlot1 : 0) | ((v & kCentered) ? kSlot2 : 0);
  }

  struct Args {
    float neg_lr, alpha, one_minus_alpha, eps, momentum;
  };
  FUSEDOPT_HD FUSEDOPT_INLINE static Args make(const double* h, double) {
    return Args{to_f32(-h[kLr]), to_f32(h[kAlpha]), to_f32(1.0 - h[kAlpha]), to_f32(h[kEps]),
                to_f32(h[kMomentum])};
  }

  template <int V, class M>
  FUSEDOPT_HD FUSEDOPT_INLINE static void apply(const Args& a, float& p, float g, float& sq, float& buf,
                                                float& ga) {
    sq = M::fma(a.one_minus_alpha * g, g, sq * a.alpha);
    float avg;
    if (V & kCentered) {
      ga = fo_lerp<M>(ga, g, a.one_minus_alpha);
      avg = fo_sqrt(M::fma(-ga, ga, sq)) + a.eps;
    } else {
      avg = fo_sqrt(sq) + a.eps;
    }
    if (V & kHasMomentum) {
      buf = buf * a.momentum + g / avg;
      p = M::fma(a.neg_lr, buf, p);
    } else {
      p = p + a.neg_lr * g / avg;
    }
  }
};

}  // namespace fusedopt
