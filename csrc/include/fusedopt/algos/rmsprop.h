// RMSprop, optionally centered and with momentum (eps outside the sqrt, as torch).
//   SLOTS   square_avg, momentum_buffer, grad_avg
//   SCALARS grad_scale, lr, weight_decay, alpha, eps, momentum
//   FLAGS   maximize, decoupled, centered
//   sq = alpha * sq + (1 - alpha) * g * g
//   centered: ga = ga + (1 - alpha) * (g - ga) ; avg = sqrt(sq - ga * ga) + eps
//   else:     avg = sqrt(sq) + eps
//   momentum: buf = momentum * buf + g / avg ; p = p - lr * buf
//   else:     p = p - lr * g / avg
#pragma once

#include "fusedopt/common.h"

namespace fusedopt {

struct RmspropArgs {
  float neg_lr, alpha, one_minus_alpha, eps, momentum;
};

template <bool HAS_MOMENTUM, bool CENTERED>
struct RmspropUpdate {
  static constexpr int kSlots = kSlot0 | (HAS_MOMENTUM ? kSlot1 : 0) | (CENTERED ? kSlot2 : 0);
  RmspropArgs a;
  template <class M>
  FUSEDOPT_HD FUSEDOPT_INLINE void apply(float& p, float g, float& sq, float& buf, float& ga) const {
    sq = M::fma(a.one_minus_alpha * g, g, sq * a.alpha);
    float avg;
    if (CENTERED) {
      ga = fo_lerp<M>(ga, g, a.one_minus_alpha);
      avg = fo_sqrt(M::fma(-ga, ga, sq)) + a.eps;
    } else {
      avg = fo_sqrt(sq) + a.eps;
    }
    if (HAS_MOMENTUM) {
      buf = buf * a.momentum + g / avg;
      p = M::fma(a.neg_lr, buf, p);
    } else {
      p = p + a.neg_lr * g / avg;
    }
  }
};

}  // namespace fusedopt
