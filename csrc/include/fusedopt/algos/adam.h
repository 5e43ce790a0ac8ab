// Adam / AdamW (AdamW = decoupled weight decay, a preamble flag).
//   SLOTS   exp_avg, exp_avg_sq, max_exp_avg_sq
//   SCALARS grad_scale, lr, weight_decay, beta1, beta2, eps, step_size, bc2_sqrt
//   FLAGS   maximize, decoupled, amsgrad
//   m = m + (1 - beta1) * (g - m) ; v = beta2 * v + (1 - beta2) * g * g
//   amsgrad: vmax = max(vmax, v), used instead of v below
//   p = p - step_size * m / (sqrt(v) / bc2_sqrt + eps)
#pragma once

#include "fusedopt/common.h"

namespace fusedopt {

struct AdamArgs {
  float one_minus_beta1, beta2, one_minus_beta2, eps, neg_step_size, bc2_sqrt;
};

template <bool AMSGRAD>
struct AdamUpdate {
  static constexpr int kSlots = kSlot0 | kSlot1 | (AMSGRAD ? kSlot2 : 0);
  AdamArgs a;
  template <class M>
  FUSEDOPT_HD FUSEDOPT_INLINE void apply(float& p, float g, float& m, float& v, float& vmax) const {
    m = fo_lerp<M>(m, g, a.one_minus_beta1);
    v = M::fma(a.one_minus_beta2 * g, g, v * a.beta2);
    float vv = v;
    if (AMSGRAD) {
      vmax = fo_max(vmax, v);
      vv = vmax;
    }
    float denom = fo_sqrt(vv) / a.bc2_sqrt + a.eps;
    p = p + a.neg_step_size * m / denom;
  }
};

}  // namespace fusedopt
