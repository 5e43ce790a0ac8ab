// What every algorithm shares (docs/kernel-interface.md, "Common row and preamble"): the first
// four columns of a hyperparameter row, the preamble they define, the state-slot bits, and the
// shape of an algorithm descriptor.
//
// An algorithm descriptor (algos/<name>.h) is all that the CPU and CUDA traversals know of an
// algorithm. It derives from contract::<Name> (algos/contract.h, generated from the Python
// declaration, Note [one declaration]), which gives it
//   kName                      the op, fusedopt::<kName>
//   enum Hyper, kNumHyper      the row (HYPER): the common four, then its own
//   kNumFlags, enum Flag       FLAGS, as bits of a call's flags
//   enum Slot                  SLOTS, in order
// and adds the math:
//   Args, make(row, t[, s])    what the update reads of the row, of t (and of the per-tensor
//                              scalar states s, for kNumCounters > 1): TENSOR_SCALARS and
//                              constants such as 1 - beta1, each computed in float64 from the row
//                              and the step count t and rounded once to float32, as the
//                              reference's Python floats are
//   apply<V, M>(a, p, g, s0, s1, s2)   the per-element update of variant V, float32 (math.h)
// and its variants, a bit set V (kNumVariants of them) of what changes the compiled update:
//   call_variant(flags, present)  the bits uniform over a call, from the flags and from which
//                                 optional state lists are present
//   slots(V)                      the state slots variant V reads and writes
//   kTensorBit, tensor_variant(a) the one bit that is chosen per tensor from its Args (SGD's
//                                 first step, RAdam's rectified branch), 0 when there is none
//   canonical(V)                  one representative of variants that compile to the same update
// AlgorithmDefaults holds the defaults of the last four for algorithms without such choices.
#pragma once

#include <type_traits>
#include <utility>

#include "fusedopt/algos/contract.h"
#include "fusedopt/math.h"

namespace fusedopt {

// The columns every row starts with (COMMON_HYPER in fusedopt/algorithms/base.py) are
// CommonHyper of the generated contract.h.

// Slot masks: which state slots a variant reads and writes.
enum SlotBit : int { kSlot0 = 1, kSlot1 = 2, kSlot2 = 4 };

// A float64 per-tensor value rounded once to float32 (to nearest, as torch rounds a Python float
// scalar for a float32 tensor op).
FUSEDOPT_HD FUSEDOPT_INLINE float to_f32(double x) { return static_cast<float>(x); }

// The common preamble of one tensor, from its row and the call's grad_scale tensor:
//   g = g * grad_scale ; g = -g if maximize ; weight decay, coupled (g += wd * p) or decoupled
//   (p *= 1 - lr * wd). Decoupled decay is a multiply by `decay`, exactly 1 when there is no
// decay, so only coupled decay is a variant of its own (COUPLED below). No member initialisers:
// the CUDA kernel keeps one in shared memory.
struct Preamble {
  float scale;   // the grad_scale tensor's value (1 without one), negated when maximize (exact)
  float wd;      // weight_decay
  float decay;   // 1 - lr * wd in float64, rounded once; 1 unless decoupled decay is on
  bool coupled;  // weight_decay != 0 and not decoupled

  FUSEDOPT_HD FUSEDOPT_INLINE static Preamble make(const double* h, float grad_scale) {
    const bool decay_on = h[kWeightDecay] != 0.0;
    Preamble pre;
    pre.scale = h[kMaximize] != 0.0 ? -grad_scale : grad_scale;
    pre.wd = to_f32(h[kWeightDecay]);
    pre.coupled = decay_on && h[kDecoupled] == 0.0;
    pre.decay = decay_on && h[kDecoupled] != 0.0 ? to_f32(1.0 - h[kLr] * h[kWeightDecay]) : 1.0f;
    return pre;
  }

  // Changes nothing (the second traversal of a reducing algorithm).
  FUSEDOPT_HD FUSEDOPT_INLINE static Preamble identity() {
    Preamble pre;
    pre.scale = 1.0f;
    pre.wd = 0.0f;
    pre.decay = 1.0f;
    pre.coupled = false;
    return pre;
  }

  template <bool COUPLED, class M>
  FUSEDOPT_HD FUSEDOPT_INLINE void apply(float& p, float& g) const {
    g = g * scale;  // g * -s is exactly -(g * s): one multiply serves both
    if (COUPLED) g = M::fma(wd, p, g);  // g.add(p, alpha=wd), see Note [fma]
    else p = p * decay;
  }
};

// A tensor's Args from its row `h` and its counters `cell` (its step count, then the algorithm's
// per-tensor scalar states: NAdam's mu_product), as float64.
// A rule without counters (Lookahead) reads its row only.
template <class A>
FUSEDOPT_HD FUSEDOPT_INLINE typename A::Args make_args(const double* h, const float* cell) {
  if constexpr (A::kNumCounters == 0) {
    return A::make(h);
  } else if constexpr (A::kNumCounters > 1) {
    return A::make(h, static_cast<double>(cell[0]), cell + 1);
  } else {
    return A::make(h, static_cast<double>(cell[0]));
  }
}

// The defaults of an algorithm descriptor with no variants (see the top of this file); a
// descriptor redeclares what it needs, which hides these.
struct AlgorithmDefaults {
  static constexpr bool kReadsGrad = true;    // false: no gradient, no preamble (Lookahead)
  static constexpr bool kHalfStates = false;  // float16 states with float16 params (Lookahead)
  static constexpr bool kLowBit = true;       // 8-bit states and stochastic rounding (not Lookahead)
  static constexpr int kNumVariants = 1;
  static constexpr int kTensorBit = 0;
  static constexpr int call_variant(unsigned /*flags*/, int /*present*/) { return 0; }
  static constexpr int canonical(int v) { return v; }
  template <class Args>
  FUSEDOPT_HD FUSEDOPT_INLINE static int tensor_variant(const Args&) { return 0; }
};

// Calls fn(std::integral_constant<int, V>{}) for the call-wide variant v of algorithm A and
// returns true, or returns false when v is not one. Only call-wide variants in canonical form
// are instantiated (those without A's per-tensor bit: the traversals add that bit themselves).
template <class A, int V, class Fn>
FUSEDOPT_INLINE bool call_variant_if(int v, const Fn& fn) {
  if constexpr ((V & A::kTensorBit) == 0 && A::canonical(V) == V) {
    if (v == V) {
      fn(std::integral_constant<int, V>{});
      return true;
    }
  }
  return false;
}
template <class A, class Fn, int... Vs>
FUSEDOPT_INLINE bool with_call_variant(int v, const Fn& fn, std::integer_sequence<int, Vs...>) {
  return (call_variant_if<A, Vs>(v, fn) || ...);
}
template <class A, class Fn>
FUSEDOPT_INLINE bool with_call_variant(int v, const Fn& fn) {
  return with_call_variant<A>(v, fn, std::make_integer_sequence<int, A::kNumVariants>{});
}

}  // namespace fusedopt
