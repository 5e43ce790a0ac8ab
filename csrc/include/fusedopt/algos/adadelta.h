// Adadelta.
//   SLOTS   square_avg, acc_delta
//   SCALARS grad_scale, lr, weight_decay, rho, eps
//   FLAGS   maximize, decoupled
//   sq = rho * sq + (1 - rho) * g * g
//   delta = sqrt(acc + eps) / sqrt(sq + eps) * g
//   acc = rho * acc + (1 - rho) * delta * delta ;  p = p - lr * delta
#pragma once

#include "fusedopt/common.h"

namespace fusedopt {

struct AdadeltaArgs {
  float neg_lr, rho, one_minus_rho, eps;
};

struct AdadeltaUpdate {
  static constexpr int kSlots = kSlot0 | kSlot1;
  AdadeltaArgs a;
  template <class M>
  FUSEDOPT_HD FUSEDOPT_INLINE void apply(float& p, float g, float& sq, float& acc, float&) const {
    sq = M::fma(a.one_minus_rho * g, g, sq * a.rho);
    float delta = fo_sqrt(acc + a.eps) / fo_sqrt(sq + a.eps) * g;
    acc = M::fma(a.one_minus_rho * delta, delta, acc * a.rho);
    p = M::fma(a.neg_lr, delta, p);
  }
};

}  // namespace fusedopt
