// RAdam (Liu et al., ICLR 2020; fusedopt/algorithms/radam.py).
//   HYPER          lr, weight_decay, maximize, decoupled, beta1, beta2, eps
//   TENSOR_SCALARS bias_correction1 = 1 - beta1^t, bc2_sqrt = sqrt(1 - beta2^t), rect (below)
//   SLOTS          exp_avg, exp_avg_sq
//   m = m + (1 - beta1) * (g - m) ; v = beta2 * v + (1 - beta2) * g * g
//   rect > 0: p = p - lr * (m / bias_correction1) * rect * bc2_sqrt / (sqrt(v) + eps)
//   else:     p = p - lr * (m / bias_correction1)
// The branch is the tensor's own: rect depends on its step count t.
#pragma once

#include "fusedopt/common.h"

namespace fusedopt {

struct Radam : AlgorithmDefaults, contract::Radam {
  enum : int { kRectified = 1, kNumVariants = 2, kTensorBit = kRectified };
  static constexpr int slots(int) { return kSlot0 | kSlot1; }

  // The variance rectification r_t at step t, or 0 where rho_t <= 5 (rectification() in
  // radam.py, expression for expression: Note [python pow]).
  FUSEDOPT_HD FUSEDOPT_INLINE static double rectification(double beta2, double t) {
    const double rho_inf = 2.0 / (1.0 - beta2) - 1.0;
    const double bc2 = 1.0 - fo_pow(beta2, t);
    const double rho_t = rho_inf - 2.0 * t * fo_pow(beta2, t) / bc2;
    if (rho_t > 5.0)
      return fo_pow((rho_t - 4.0) * (rho_t - 2.0) * rho_inf / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t),
                    0.5);
    return 0.0;
  }

  struct Args {
    float lr, one_minus_beta1, beta2, one_minus_beta2, eps, bias_correction1, bc2_sqrt, rect;
    bool rectified;  // the float64 rect > 0, as the reference tests it
  };
  FUSEDOPT_HD FUSEDOPT_INLINE static Args make(const double* h, double t) {
    const double rect = rectification(h[kBeta2], t);
    return Args{to_f32(h[kLr]),
                to_f32(1.0 - h[kBeta1]),
                to_f32(h[kBeta2]),
                to_f32(1.0 - h[kBeta2]),
                to_f32(h[kEps]),
                to_f32(1.0 - fo_pow(h[kBeta1], t)),
                to_f32(fo_pow(1.0 - fo_pow(h[kBeta2], t), 0.5)),
                to_f32(rect),
                rect > 0.0};
  }
  FUSEDOPT_HD FUSEDOPT_INLINE static int tensor_variant(const Args& a) {
    return a.rectified ? kRectified : 0;
  }

  template <int V, class M>
  FUSEDOPT_HD FUSEDOPT_INLINE static void apply(const Args& a, float& p, float g, float& m, float& v,
                                                float&) {
    m = fo_lerp<M>(m, g, a.one_minus_beta1);
    v = M::fma(a.one_minus_beta2 * g, g, v * a.beta2);
    float corrected = m / a.bias_correction1;
    if (V & kRectified) {
      float adaptive = a.bc2_sqrt / (fo_sqrt(v) + a.eps);
      p = p - corrected * a.lr * adaptive * a.rect;
    } else {
      p = p - corrected * a.lr;
    }
  }
};

}  // namespace fusedopt
