// LAMB (fusedopt/algorithms/lamb.py; You et al. 2020): two traversals (kReduces, Note [reducing
// algorithms] in csrc/cpu/multi_tensor.h). The hyper row's common weight-decay column is 0: the
// decay is `decay`, inside the update.
//   TENSOR_SCALARS bc1 = 1 - beta1^t, bc2 = 1 - beta2^t (1 and 1 without bias_correction)
//   first:  m = m + (1 - beta1) * (g - m) ; v = beta2 * v + (1 - beta2) * g * g
//           u = (m / bc1) / (sqrt(v / bc2) + eps) + decay * p ; sums += (p * p, u * u)
//   then:   trust = sqrt(sum p^2) / sqrt(sum u^2) (1 when either is 0), per tensor
//   second: u as above from the stored m, v and p ; p = p - lr * trust * u
#pragma once

#include "fusedopt/common.h"

namespace fusedopt {

struct Lamb : AlgorithmDefaults, contract::Lamb {
  // kReduces (contract.h): the second traversal is the per-tensor variant bit: its Args carry the tensor's step.
  enum : int { kApply = 1, kNumVariants = 2, kTensorBit = kApply };
  static constexpr int slots(int) { return kSlot0 | kSlot1; }

  struct Args {
    float one_minus_beta1, beta2, one_minus_beta2, eps, bc1, bc2, decay;
    float step;  // -lr * trust, in the second traversal
    double lr;
    bool apply;
  };
  FUSEDOPT_HD FUSEDOPT_INLINE static Args make(const double* h, double t) {
    const bool bc = h[kBiasCorrection] != 0.0;
    return Args{to_f32(1.0 - h[kBeta1]),
                to_f32(h[kBeta2]),
                to_f32(1.0 - h[kBeta2]),
                to_f32(h[kEps]),
                bc ? to_f32(1.0 - fo_pow(h[kBeta1], t)) : 1.0f,
                bc ? to_f32(1.0 - fo_pow(h[kBeta2], t)) : 1.0f,
                to_f32(h[kDecay]),
                0.0f,
                h[kLr],
                false};
  }
  // The Args of a tensor's second traversal, from its sums of p^2 and u^2.
  FUSEDOPT_HD FUSEDOPT_INLINE static Args reduced(Args a, double p_sq, double u_sq) {
    const double pn = fo_pow(p_sq, 0.5), un = fo_pow(u_sq, 0.5);
    const double trust = (pn > 0.0 && un > 0.0) ? pn / un : 1.0;
    a.step = to_f32(-a.lr * trust);
    a.apply = true;
    return a;
  }
  FUSEDOPT_HD FUSEDOPT_INLINE static int tensor_variant(const Args& a) { return a.apply ? kApply : 0; }

  template <class M>
  FUSEDOPT_HD FUSEDOPT_INLINE static float update(const Args& a, float p, float m, float v) {
    const float u = (m / a.bc1) / (fo_sqrt(v / a.bc2) + a.eps);
    return a.decay != 0.0f ? M::fma(a.decay, p, u) : u;  // u.add_(p, alpha=decay)
  }

  template <int V, class M, class Acc>
  FUSEDOPT_HD FUSEDOPT_INLINE static void apply(const Args& a, float& p, float g, float& m, float& v, float&,
                                                Acc& p_sq, Acc& u_sq) {
    if (V & kApply) {
      p = M::fma(a.step, update<M>(a, p, m, v), p);  // p.add_(u, alpha=-lr * trust)
    } else {
      m = fo_lerp<M>(m, g, a.one_minus_beta1);
      v = M::fma(a.one_minus_beta2 * g, g, v * a.beta2);
      const float u = update<M>(a, p, m, v);
      p_sq += static_cast<Acc>(p) * static_cast<Acc>(p);  // float64 on CUDA, float32 lanes on the CPU
      u_sq += static_cast<Acc>(u) * static_cast<Acc>(u);
    }
  }
};

}  // namespace fusedopt
