// Float32 helpers used by the per-element updates.
//
// Note [fma]: the eager reference runs ATen's CPU kernels, which fuse certain
// multiply-adds: add/sub with alpha is fma(alpha, other, self), addcmul is
// fma(value * t1, t2, self), lerp is fma(w, end - self, self) (or
// fma(w - 1, end - self, end) for w >= 0.5); mul, div and addcdiv are not
// fused. The updates make the same choices, spelled out with M::fma, so a
// fused kernel and the reference agree to the last bit in most elements
// rather than merely within a tolerance. Every other operation is a plain
// IEEE float32 operation (the builds disable FP contraction).
//
// M is a math policy: HwFma uses the FMA instruction (CUDA, and the CPU clones
// for x86-64-v3 and up); SoftFma is a correctly rounded emulation for the
// baseline x86-64 clone, so every clone computes bit-identical results.
#pragma once

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "fusedopt/macros.h"

namespace fusedopt {

struct HwFma {
  FUSEDOPT_HD FUSEDOPT_INLINE static float fma(float a, float b, float c) {
#if defined(__CUDA_ARCH__)
    return __fmaf_rn(a, b, c);
#else
    return __builtin_fmaf(a, b, c);
#endif
  }
};

struct SoftFma {
  // a * b is exact in double; the double sum is rounded to odd (TwoSum gives its
  // error exactly), and a round-to-odd value with >= 2 * 24 + 2 bits rounds to
  // float exactly as the infinitely precise result would.
  FUSEDOPT_HD FUSEDOPT_INLINE static float fma(float a, float b, float c) {
    double x = static_cast<double>(a) * static_cast<double>(b);
    double y = static_cast<double>(c);
    double s = x + y;
    double bp = s - x;
    double ap = s - bp;
    double err = (x - ap) + (y - bp);
    uint64_t bits;
    memcpy(&bits, &s, sizeof(bits));
    bool inexact = (err != 0.0) && (err == err);  // NaN error: s is inf/NaN, keep it
    bool even = (bits & 1u) == 0u;
    bool away = (err > 0.0) == (s > 0.0);  // exact value lies farther from zero than s
    uint64_t odd = away ? bits + 1u : bits - 1u;
    bits = (inexact && even) ? odd : bits;
    memcpy(&s, &bits, sizeof(s));
    return static_cast<float>(s);
  }
};

FUSEDOPT_HD FUSEDOPT_INLINE float fo_sqrt(float x) {
#if defined(__CUDA_ARCH__)
  return __fsqrt_rn(x);
#else
  // Builds use -fno-math-errno so this is a single vectorisable instruction.
  return __builtin_sqrtf(x);
#endif
}

// torch.maximum: NaN in either operand propagates.
FUSEDOPT_HD FUSEDOPT_INLINE float fo_max(float a, float b) {
  return (a != a) ? a : ((b != b) ? b : (a > b ? a : b));
}

FUSEDOPT_HD FUSEDOPT_INLINE float fo_abs(float x) {
#if defined(__CUDA_ARCH__)
  return fabsf(x);
#else
  return __builtin_fabsf(x);
#endif
}

// sign(x) with sign(0) = 0 (NaN gives 0 here; torch.sign gives NaN, which the
// Yogi update then turns into NaN anyway through the product with g * g).
FUSEDOPT_HD FUSEDOPT_INLINE float fo_sign(float x) {
  return static_cast<float>(x > 0.0f) - static_cast<float>(x < 0.0f);
}

// torch.lerp(self, end, w) with a scalar weight, as ATen computes it: the
// formula switches at |w| = 0.5 so that w = 1 returns `end` exactly.
template <class M>
FUSEDOPT_HD FUSEDOPT_INLINE float fo_lerp(float self, float end, float w) {
  // Both forms are computed and one selected (no branch: the loops must vectorise).
  float diff = end - self;
  float small = M::fma(w, diff, self);
  float large = M::fma(w - 1.0f, diff, end);
#if defined(__CUDA_ARCH__)
  return fabsf(w) < 0.5f ? small : large;
#else
  return __builtin_fabsf(w) < 0.5f ? small : large;
#endif
}

// Note [python pow]: the per-tensor scalars are computed in float64 as the reference computes
// them in Python floats, whose `x ** y` is libm's pow, `** 0.5` included. They call pow for the
// same expressions, never sqrt (pow(x, 0.5) and sqrt(x) may differ in the last bit), in the same
// order of operations (the builds do not contract float64 either), so on the CPU, which calls
// the very libm Python does, each double is the reference's to the bit before it is rounded to
// float32. CUDA's pow is within 2 ulp of it, which moves the float32 rounding of a scalar only
// when that double lies within 2 ulp of a float32 rounding boundary.
FUSEDOPT_HD FUSEDOPT_INLINE double fo_pow(double x, double y) { return ::pow(x, y); }

}  // namespace fusedopt
