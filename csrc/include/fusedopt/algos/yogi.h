// Yogi (Zaheer et al., NeurIPS 2018): additive, sign-controlled second moment
// (fusedopt/algorithms/yogi.py).
//   HYPER          lr, weight_decay, maximize, decoupled, beta1, beta2, eps
//   TENSOR_SCALARS step_size, bc2_sqrt as Adam
//   SLOTS          exp_avg, exp_avg_sq
//   m = beta1 * m + (1 - beta1) * g ; g2 = g * g
//   v = v - (1 - beta2) * sign(v - g2) * g2     (sign(0) = 0)
//   p = p - step_size * m / (sqrt(v) / bc2_sqrt + eps)
#pragma once

#include "fusedopt/algos/adam.h"

namespace fusedopt {

struct Yogi : AlgorithmDefaults, contract::Yogi {
  static constexpr int slots(int) { return kSlot0 | kSlot1; }

  struct Args {
    float beta1, one_minus_beta1, neg_one_minus_beta2, eps, neg_step_size, bc2_sqrt;
  };
  FUSEDOPT_HD FUSEDOPT_INLINE static Args make(const double* h, double t) {
    const AdamBiasCorrection bc = AdamBiasCorrection::make(h[kLr], h[kBeta1], h[kBeta2], t);
    return Args{to_f32(h[kBeta1]), to_f32(1.0 - h[kBeta1]), to_f32(-(1.0 - h[kBeta2])),
                to_f32(h[kEps]),   to_f32(-bc.step_size),   to_f32(bc.bc2_sqrt)};
  }

  template <int V, class M>
  FUSEDOPT_HD FUSEDOPT_INLINE static void apply(const Args& a, float& p, float g, float& m, float& v,
                                                float&) {
    m = M::fma(a.one_minus_beta1, g, m * a.beta1);
    float g2 = g * g;
    v = M::fma(a.neg_one_minus_beta2, g2 * fo_sign(v - g2), v);
    float denom = fo_sqrt(v) / a.bc2_sqrt + a.eps;
    p = p + a.neg_step_size * m / denom;
  }
};

}  // namespace fusedopt
