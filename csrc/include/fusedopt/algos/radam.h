// RAdam (Liu et al., ICLR 2020). The rectification term is a per-step scalar
// computed on the host; `rectify` (with rect > 0) says which branch this step takes.
//   SLOTS   exp_avg, exp_avg_sq
//   SCALARS grad_scale, lr, weight_decay, beta1, beta2, eps, bias_correction1, bc2_sqrt, rect
//   FLAGS   maximize, decoupled, rectify
//   m = m + (1 - beta1) * (g - m) ; v = beta2 * v + (1 - beta2) * g * g
//   rectify: p = p - lr * (m / bias_correction1) * rect * bc2_sqrt / (sqrt(v) + eps)
//   else:    p = p - lr * (m / bias_correction1)
#pragma once

#include "fusedopt/common.h"

namespace fusedopt {

struct RadamArgs {
  float lr, one_minus_beta1, beta2, one_minus_beta2, eps, bias_correction1, bc2_sqrt, rect;
};

template <bool RECTIFY>
struct RadamUpdate {
  static constexpr int kSlots = kSlot0 | kSlot1;
  RadamArgs a;
  template <class M>
  FUSEDOPT_HD FUSEDOPT_INLINE void apply(float& p, float g, float& m, float& v, float&) const {
    m = fo_lerp<M>(m, g, a.one_minus_beta1);
    v = M::fma(a.one_minus_beta2 * g, g, v * a.beta2);
    float corrected = m / a.bias_correction1;
    if (RECTIFY) {
      float adaptive = a.bc2_sqrt / (fo_sqrt(v) + a.eps);
      p = p - corrected * a.lr * adaptive * a.rect;
    } else {
      p = p - corrected * a.lr;
    }
  }
};

}  // namespace fusedopt
