// The common preamble every algorithm runs before its update
// (docs/kernel-interface.md, "Common preamble"):
//   g = g * grad_scale tensor (optional); g = -g if maximize; g = g * grad_scale
//   (host scalar); weight decay, coupled (g += wd * p) or decoupled
//   (p *= 1 - lr * wd).
#pragma once

#include "fusedopt/math.h"

namespace fusedopt {

// Common scalar/flag positions of the interface.
enum CommonScalar : int { kGradScale = 0, kLr = 1, kWeightDecay = 2, kNumCommonScalars = 3 };
enum CommonFlag : int { kMaximize = 0, kDecoupled = 1, kNumCommonFlags = 2 };

// Weight decay mode, a compile-time parameter of every kernel.
enum WeightDecayMode : int { kWdNone = 0, kWdCoupled = 1, kWdDecoupled = 2 };

struct Preamble {
  float scale;         // grad_scale scalar, negated when maximize (negation is exact)
  float scale_tensor;  // value of the optional grad_scale tensor, 1 when absent
  float wd;            // weight_decay
  float decay;         // 1 - lr * wd, computed in double on the host

  template <int WD, class M>
  FUSEDOPT_HD FUSEDOPT_INLINE void apply(float& p, float& g) const {
    g = g * scale_tensor;  // exact when 1 (no tensor given)
    g = g * scale;
    if (WD == kWdCoupled) g = M::fma(wd, p, g);  // g.add(p, alpha=wd), see Note [fma]
    if (WD == kWdDecoupled) p = p * decay;
  }
};

// Slot masks: which state slots an instantiation reads and writes.
enum SlotBit : int { kSlot0 = 1, kSlot1 = 2, kSlot2 = 4 };

}  // namespace fusedopt
