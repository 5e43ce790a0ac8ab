// Lookahead's slow-weight update (fusedopt/lookahead.py; Zhang et al., NeurIPS 2019), every k-th
// step, as an update rule of the one traversal of each language:
//   slow = slow + alpha * (p - slow) ;  p = slow
// The slow weights are state slot 0; there is no gradient and no preamble (kReadsGrad false),
// no step counter, and a row of one column, alpha. With master weights the rule reads and
// writes the float32 master weight in place of the 16-bit param, which receives its rounding,
// as every step does. Not an algorithm of the contract: it has no op of the step schema but
// fusedopt::lookahead (docs/kernel-interface.md).
#pragma once

#include "fusedopt/common.h"

namespace fusedopt {

struct Lookahead : AlgorithmDefaults {
  static constexpr const char* kName = "lookahead";
  enum Hyper : int { kAlpha = 0, kNumHyper = 1 };
  static constexpr int kNumCounters = 0;
  static constexpr bool kReduces = false;
  static constexpr bool kReadsGrad = false;
  static constexpr bool kHalfStates = true;  // slow weights may have the float16 params' dtype
  static constexpr bool kLowBit = false;     // float slow weights, params rounded to nearest
  static constexpr int kSignedSlots = 0;
  static constexpr int slots(int) { return kSlot0; }

  struct Args {
    float alpha;
  };
  FUSEDOPT_HD FUSEDOPT_INLINE static Args make(const double* h) { return Args{to_f32(h[kAlpha])}; }

  template <int V, class M>
  FUSEDOPT_HD FUSEDOPT_INLINE static void apply(const Args& a, float& p, float, float& slow, float&, float&) {
    slow = M::fma(a.alpha, p - slow, slow);
    p = slow;
  }
};

}  // namespace fusedopt
