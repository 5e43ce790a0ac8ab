// Adam / AdamW (fusedopt/algorithms/adam.py; AdamW is decoupled weight decay, a column of the row).
//   HYPER          lr, weight_decay, maximize, decoupled, beta1, beta2, eps
//   TENSOR_SCALARS step_size = lr / (1 - beta1^t), bc2_sqrt = sqrt(1 - beta2^t)
//   SLOTS          exp_avg, exp_avg_sq, max_exp_avg_sq (amsgrad)
//   FLAGS          amsgrad
//   m = m + (1 - beta1) * (g - m) ; v = beta2 * v + (1 - beta2) * g * g
//   amsgrad: vmax = max(vmax, v), used instead of v below
//   p = p - step_size * m / (sqrt(v) / bc2_sqrt + eps)
#pragma once

#include "fusedopt/common.h"

namespace fusedopt {

// Adam's bias corrections in float64 (Note [python pow]), which Yogi shares.
struct AdamBiasCorrection {
  double step_size, bc2_sqrt;
  FUSEDOPT_HD FUSEDOPT_INLINE static AdamBiasCorrection make(double lr, double beta1, double beta2,
                                                             double t) {
    return AdamBiasCorrection{lr / (1.0 - fo_pow(beta1, t)), fo_pow(1.0 - fo_pow(beta2, t), 0.5)};
  }
};

struct Adam : AlgorithmDefaults, contract::Adam {
  enum : int { kAmsgrad = 1, kNumVariants = 2 };
  static constexpr int call_variant(unsigned flags, int) { return (flags & kFlagAmsgrad) ? kAmsgrad : 0; }
  static constexpr int slots(int v) { return kSlot0 | kSlot1 | ((v & kAmsgrad) ? kSlot2 : 0); }

  struct Args {
    float one_minus_beta1, beta2, one_minus_beta2, eps, neg_step_size, bc2_sqrt;
  };
  FUSEDOPT_HD FUSEDOPT_INLINE static Args make(const double* h, double t) {
    const AdamBiasCorrection bc = AdamBiasCorrection::make(h[kLr], h[kBeta1], h[kBeta2], t);
    return Args{to_f32(1.0 - h[kBeta1]), to_f32(h[kBeta2]), to_f32(1.0 - h[kBeta2]),
                to_f32(h[kEps]),         to_f32(-bc.step_size), to_f32(bc.bc2_sqrt)};
  }

  template <int V, class M>
  FUSEDOPT_HD FUSEDOPT_INLINE static void apply(const Args& a, float& p, float g, float& m, float& v,
                                                float& vmax) {
    m = fo_lerp<M>(m, g, a.one_minus_beta1);
    v = M::fma(a.one_minus_beta2 * g, g, v * a.beta2);
    float vv = v;
    if (V & kAmsgrad) {
      vmax = fo_max(vmax, v);
      vv = vmax;
    }
    float denom = fo_sqrt(vv) / a.bc2_sqrt + a.eps;
    p = p + a.neg_step_size * m / denom;
  }
};

}  // namespace fusedopt
