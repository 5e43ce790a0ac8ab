// Adagrad (lr is the step's decayed lr: lr / (1 + (t - 1) * lr_decay)).
//   SLOTS   sum
//   SCALARS grad_scale, lr, weight_decay, eps
//   FLAGS   maximize, decoupled
//   sum = sum + g * g ;  p = p - lr * g / (sqrt(sum) + eps)
#pragma once

#include "fusedopt/common.h"

namespace fusedopt {

struct AdagradArgs {
  float neg_lr, eps;
};

struct AdagradUpdate {
  static constexpr int kSlots = kSlot0;
  AdagradArgs a;
  template <class M>
  FUSEDOPT_HD FUSEDOPT_INLINE void apply(float& p, float g, float& sum, float&, float&) const {
    sum = M::fma(g, g, sum);
    p = p + a.neg_lr * g / (fo_sqrt(sum) + a.eps);
  }
};

}  // namespace fusedopt
