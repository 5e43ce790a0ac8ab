// Adamax (fusedopt/algorithms/adamax.py): Adam with the infinity norm, as torch.optim.Adamax.
//   TENSOR_SCALARS clr = lr / (1 - beta1^t)
//   m = m + (1 - beta1) * (g - m) ; u = max(beta2 * u, |g| + eps)
//   p = p - clr * m / u
#pragma once

#include "fusedopt/common.h"

namespace fusedopt {

struct Adamax : AlgorithmDefaults, contract::Adamax {
  static constexpr int slots(int) { return kSlot0 | kSlot1; }

  struct Args {
    float one_minus_beta1, beta2, eps, neg_clr;
  };
  FUSEDOPT_HD FUSEDOPT_INLINE static Args make(const double* h, double t) {
    return Args{to_f32(1.0 - h[kBeta1]), to_f32(h[kBeta2]), to_f32(h[kEps]),
                to_f32(-(h[kLr] / (1.0 - fo_pow(h[kBeta1], t))))};
  }

  template <int V, class M>
  FUSEDOPT_HD FUSEDOPT_INLINE static void apply(const Args& a, float& p, float g, float& m, float& u, float&) {
    m = fo_lerp<M>(m, g, a.one_minus_beta1);
    u = fo_max(u * a.beta2, fo_abs(g) + a.eps);  // torch.maximum: NaN propagates
    p = p + a.neg_clr * m / u;                    // addcdiv: value * m / u, left to right
  }
};

}  // namespace fusedopt
