// NAdam (fusedopt/algorithms/nadam.py), as torch.optim.NAdam; decoupled weight decay is a column.
//   counters       t, mu_product (already multiplied by mu_t, on the device, before the kernel)
//   mu_t = beta1 * (1 - 0.5 * 0.96^(t * momentum_decay)), mu_next = mu_{t+1}
//   TENSOR_SCALARS bias_correction2 = 1 - beta2^t
//                  c_grad = -lr * (1 - mu_t) / (1 - mu_product)
//                  c_avg  = -lr * mu_next / (1 - mu_product * mu_next)
//   m = m + (1 - beta1) * (g - m) ; v = beta2 * v + (1 - beta2) * g * g
//   d = sqrt(v / bias_correction2) + eps ; p = p + c_grad * g / d ; p = p + c_avg * m / d
#pragma once

#include "fusedopt/common.h"

namespace fusedopt {

struct Nadam : AlgorithmDefaults, contract::Nadam {
  static constexpr int slots(int) { return kSlot0 | kSlot1; }

  struct Args {
    float one_minus_beta1, beta2, one_minus_beta2, eps, bias_correction2, c_grad, c_avg;
  };
  FUSEDOPT_HD FUSEDOPT_INLINE static double mu(const double* h, double t) {
    return h[kBeta1] * (1.0 - 0.5 * fo_pow(0.96, t * h[kMomentumDecay]));
  }
  FUSEDOPT_HD FUSEDOPT_INLINE static Args make(const double* h, double t, const float* scalar_states) {
    const double mu_t = mu(h, t), mu_next = mu(h, t + 1.0);
    const double mu_product = static_cast<double>(scalar_states[0]);
    return Args{to_f32(1.0 - h[kBeta1]),
                to_f32(h[kBeta2]),
                to_f32(1.0 - h[kBeta2]),
                to_f32(h[kEps]),
                to_f32(1.0 - fo_pow(h[kBeta2], t)),
                to_f32(-h[kLr] * (1.0 - mu_t) / (1.0 - mu_product)),
                to_f32((-h[kLr] * mu_next) / (1.0 - mu_product * mu_next))};
  }

  template <int V, class M>
  FUSEDOPT_HD FUSEDOPT_INLINE static void apply(const Args& a, float& p, float g, float& m, float& v, float&) {
    m = fo_lerp<M>(m, g, a.one_minus_beta1);
    v = M::fma(a.one_minus_beta2 * g, g, v * a.beta2);
    const float d = fo_sqrt(v / a.bias_correction2) + a.eps;
    p = p + a.c_grad * g / d;  // addcdiv: value * g / d, left to right
    p = p + a.c_avg * m / d;
  }
};

}  // namespace fusedopt
