// Lion (fusedopt/algorithms/lion.py; Chen et al. 2023). Weight decay is always decoupled (the
// preamble's p *= 1 - lr * wd); no step count.
//   c = m + (1 - beta1) * (g - m) ; p = p - lr * sign(c) ; m = m + (1 - beta2) * (g - m)
#pragma once

#include "fusedopt/common.h"

namespace fusedopt {

struct Lion : AlgorithmDefaults, contract::Lion {
  static constexpr int slots(int) { return kSlot0; }

  struct Args {
    float neg_lr, one_minus_beta1, one_minus_beta2;
  };
  FUSEDOPT_HD FUSEDOPT_INLINE static Args make(const double* h, double) {
    return Args{to_f32(-h[kLr]), to_f32(1.0 - h[kBeta1]), to_f32(1.0 - h[kBeta2])};
  }

  template <int V, class M>
  FUSEDOPT_HD FUSEDOPT_INLINE static void apply(const Args& a, float& p, float g, float& m, float&, float&) {
    const float c = fo_lerp<M>(m, g, a.one_minus_beta1);
    const float sign = (c != c) ? c : fo_sign(c);  // torch.sign: NaN stays NaN
    p = M::fma(a.neg_lr, sign, p);                 // p.add_(sign, alpha=-lr)
    m = fo_lerp<M>(m, g, a.one_minus_beta2);
  }
};

}  // namespace fusedopt
