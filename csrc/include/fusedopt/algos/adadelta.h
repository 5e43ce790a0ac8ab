// Adadelta (fusedopt/algorithms/adadelta.py).
//   HYPER  lr, weight_decay, maximize, decoupled, rho, eps
//   SLOTS  square_avg, acc_delta
//   sq = rho * sq + (1 - rho) * g * g
//   delta = sqrt(acc + eps) / sqrt(sq + eps) * g
//   acc = rho * acc + (1 - rho) * delta * delta ;  p = p - lr * delta
#pragma once

#include "fusedopt/common.h"

namespace fusedopt {

struct Adadelta : AlgorithmDefaults, contract::Adadelta {
  static constexpr int slots(int) { return kSlot0 | kSlot1; }

  struct Args {
    float neg_lr, rho, one_minus_rho, eps;
  };
  FUSEDOPT_HD FUSEDOPT_INLINE static Args make(const double* h, double) {
    return Args{to_f32(-h[kLr]), to_f32(h[kRho]), to_f32(1.0 - h[kRho]), to_f32(h[kEps])};
  }

  template <int V, class M>
  FUSEDOPT_HD FUSEDOPT_INLINE static void apply(const Args& a, float& p, float g, float& sq, float& acc,
                                                float&) {
    sq = M::fma(a.one_minus_rho * g, g, sq * a.rho);
    float delta = fo_sqrt(acc + a.eps) / fo_sqrt(sq + a.eps) * g;
    acc = M::fma(a.one_minus_rho * delta, delta, acc * a.rho);
    p = M::fma(a.neg_lr, delta, p);
  }
};

}  // namespace fusedopt
