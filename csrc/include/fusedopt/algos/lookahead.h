// Lookahead slow-weight update (Zhang et al., NeurIPS 2019), every k-th step:
//   slow = slow + alpha * (p - slow) ;  p = slow
#pragma once

#include "fusedopt/math.h"

namespace fusedopt {

template <class M>
FUSEDOPT_HD FUSEDOPT_INLINE void lookahead_update(float& p, float& slow, float alpha) {
  slow = M::fma(alpha, p - slow, slow);
  p = slow;
}

}  // namespace fusedopt
