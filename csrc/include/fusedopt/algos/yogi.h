// Yogi (Zaheer et al., NeurIPS 2018): additive, sign-controlled second moment.
//   SLOTS   exp_avg, exp_avg_sq
//   SCALARS grad_scale, lr, weight_decay, beta1, beta2, eps, step_size, bc2_sqrt
//   FLAGS   maximize, decoupled
//   m = beta1 * m + (1 - beta1) * g ; g2 = g * g
//   v = v - (1 - beta2) * sign(v - g2) * g2     (sign(0) = 0)
//   p = p - step_size * m / (sqrt(v) / bc2_sqrt + eps)
#pragma once

#include "fusedopt/common.h"

namespace fusedopt {

struct YogiArgs {
  float beta1, one_minus_beta1, neg_one_minus_beta2, eps, neg_step_size, bc2_sqrt;
};

struct YogiUpdate {
  static constexpr int kSlots = kSlot0 | kSlot1;
  YogiArgs a;
  template <class M>
  FUSEDOPT_HD FUSEDOPT_INLINE void apply(float& p, float g, float& m, float& v, float&) const {
    m = M::fma(a.one_minus_beta1, g, m * a.beta1);
    float g2 = g * g;
    v = M::fma(a.neg_one_minus_beta2, g2 * fo_sign(v - g2), v);
    float denom = fo_sqrt(v) / a.bc2_sqrt + a.eps;
    p = p + a.neg_step_size * m / denom;
  }
};

}  // namespace fusedopt
