// Adagrad (fusedopt/algorithms/adagrad.py).
//   HYPER          lr, weight_decay, maximize, decoupled, lr_decay, eps
//   TENSOR_SCALARS clr = lr / (1 + (t - 1) * lr_decay)
//   SLOTS          sum
//   sum = sum + g * g ;  p = p - clr * g / (sqrt(sum) + eps)
#pragma once

#include "fusedopt/common.h"

namespace fusedopt {

struct Adagrad : AlgorithmDefaults, contract::Adagrad {
  static constexpr int slots(int) { return kSlot0; }

  struct Args {
    float neg_clr, eps;
  };
  FUSEDOPT_HD FUSEDOPT_INLINE static Args make(const double* h, double t) {
    const double clr = h[kLr] / (1.0 + (t - 1.0) * h[kLrDecay]);
    return Args{to_f32(-clr), to_f32(h[kEps])};
  }

  template <int V, class M>
  FUSEDOPT_HD FUSEDOPT_INLINE static void apply(const Args& a, float& p, float g, float& sum, float&,
                                                float&) {
    sum = M::fma(g, g, sum);
    p = p + a.neg_clr * g / (fo_sqrt(sum) + a.eps);
  }
};

}  // namespace fusedopt
