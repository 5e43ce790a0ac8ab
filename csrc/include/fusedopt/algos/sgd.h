// SGD with optional (Nesterov) momentum.
//   SLOTS   momentum_buffer
//   SCALARS grad_scale, lr, weight_decay, momentum, dampening
//   FLAGS   maximize, decoupled, nesterov, first_step
//   if momentum buffer present:
//       buf = g (first step) | momentum * buf + (1 - dampening) * g
//       g = g + momentum * buf if nesterov else buf
//   p = p - lr * g
#pragma once

#include "fusedopt/common.h"

namespace fusedopt {

struct SgdArgs {
  float neg_lr, momentum, one_minus_dampening;
};

template <bool HAS_BUF, bool NESTEROV, bool FIRST>
struct SgdUpdate {
  static constexpr int kSlots = HAS_BUF ? kSlot0 : 0;
  SgdArgs a;
  template <class M>
  FUSEDOPT_HD FUSEDOPT_INLINE void apply(float& p, float g, float& buf, float&, float&) const {
    if (HAS_BUF) {
      buf = FIRST ? g : M::fma(a.one_minus_dampening, g, buf * a.momentum);
      g = NESTEROV ? M::fma(a.momentum, buf, g) : buf;
    }
    p = M::fma(a.neg_lr, g, p);
  }
};

}  // namespace fusedopt
