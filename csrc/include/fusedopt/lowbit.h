// The two low-bit storage rules of fusedopt/lowbit.py (its docstring is the specification, and
// its functions the oracle these are tested against bit for bit), for the CPU and CUDA kernels:
//
//   8-bit states: block-wise dynamic quantization (Dettmers et al., ICLR 2022). Per block of
//     kQuantBlock elements a float32 absmax; per element a uint8 code into a 256-value map,
//     signed (momentum-like states) or unsigned (second moments). dequantize: map[code] * absmax,
//     one float32 multiply; quantize: code = the number of float32 midpoints <= x / absmax.
//   stochastic rounding of float32 results to bfloat16 / float16, with 32 random bits per
//     element from Philox4x32-10 (Salmon et al., SC 2011) keyed by the seed, its counter the
//     element's index and the tensor's step count.
//
// The CPU kernels compute the 8-bit map's values and codes from their definition, with no table
// (DynamicMap, Note [arithmetic map]); the CUDA kernels embed the 512 values (csrc/cuda/lowbit.cuh).
// tests/test_lowbit_kernels.py checks the codes and the dequantized states of the CPU kernels
// against fusedopt/lowbit.py bit for bit, among them the codes of every map value, every midpoint
// and their float32 neighbours.
#pragma once

#include <stdint.h>

#include "fusedopt/dtype.h"
#include "fusedopt/macros.h"

namespace fusedopt {
namespace lowbit {

constexpr int kQuantBlock = 256;  // elements per absmax (lowbit.BLOCK)

// --- the maps ---------------------------------------------------------------------------------

// The dynamic map of 8-bit states as arithmetic, for the CPU kernels: its value of a code and the
// quantizer's code of a value, with no table read, so that the loops vectorise (GCC 12 builds a
// table read from scalar loads, or leaves the loop scalar: Note [low-bit items] in
// csrc/cpu/multi_tensor.h; Note [arithmetic map]). SIGNED: the signed map (momentum-like
// states), else the unsigned one (second moments).
//
// Note [arithmetic map]: the map's values of decimal level k (0..6) are
// (2n + 9(2j + 1)) / (20 n 10^k), j = 0..n-1, n = 2^(K-k), K = 6 (signed, per sign) or 7
// (unsigned). Number the magnitudes of one sign by t: t = kZeroT is 0, t = kTop is 1.0, and in
// between n + j is value j of the level of n values, so that the level of t is the top bit of t
// (n = 2^m <= t < 2^(m+1), k = K - m, j = t - n) and the numerator is 18t - 16n + 9. Numerator
// (at most 2551) and denominator (2^(K+2) 5^(k+1)) are integers exact in float32, so ONE float32
// division gives the correctly rounded value of the rational, which is the map's value
// (lowbit.py rounds the same rational once; tests check that the rounding is single). The
// signed map is qmap[127 + t] for t >= 0 and -qmap[127 + t] = qmap[127 - t]: code 127 is 0,
// 255 is 1.0 (t = 128) and there is no -1.0; the unsigned map is qmap[t - 1].
//
// The quantizer's rule, code(y) = #{k : y >= mid[k]} with mid[k] = (qmap[k] + qmap[k + 1]) * 0.5f,
// is counted on magnitudes: P(a), the number of midpoints M of the magnitudes (0, the positives,
// 1.0) with M <= a, is the position of the nearest magnitude, and the code is P(y) for the
// unsigned map (0 for y < 0), 127 + P(y) for the signed map and y >= 0. The signed map's
// negative midpoints are the positive ones negated (float32 rounding is symmetric), so y < 0 is
// at or above all of them but the -M with M < |y|, i.e. M <= |y| - 1 ulp: its code is
// 127 - min(P(|y| - 1 ulp), 127). P(a) is found from an estimate e, which is P(a) or one below:
// e = floor(a 10^k n / 0.9 + 8n/9 - 0.5) for the level k of a (found by six comparisons with
// 10^-k / 10, which lies between a level's values and the next one's; level 6 reaches down to
// 0), the position of the nearest value in real arithmetic less a half, so that the float32
// errors of the estimate (about 1e-5 positions) and the rounding of the midpoints (half an ulp)
// only choose between e and e + 1. The one comparison of a with the midpoint of the values at e
// and e + 1, computed as the rule does from the two values, decides. Those values are in the
// level of a or next to it (e from n - 1 to 2n - 1, e + 1 at most 2n), so they share the
// denominator d = 100 n 10^k (an integer exact in float32), and their numerators over d are
// integers below 2^24 as well: two divisions, no 10^k to select beyond the level's constants.
// NaN is code 0 (it fails every comparison). This was checked against the rule on every float32
// bit pattern, both maps, as compiled for the baseline and for x86-64-v3 (minutes of CPU, so not
// a test); tests/test_lowbit_kernels.py checks the midpoints, their neighbours and the values.
template <bool SIGNED>
struct DynamicMap {
  static constexpr int K = SIGNED ? 6 : 7;             // log2 of the size of level 0
  static constexpr int32_t kZeroT = SIGNED ? 0 : 1;    // the position of 0
  static constexpr int32_t kTop = SIGNED ? 128 : 256;  // the position of 1.0
  static constexpr uint8_t kZeroCode = SIGNED ? 127 : 0;  // the code of y = 0 (absmax 0)

  // The magnitude at position t in [kZeroT, kTop].
  static FUSEDOPT_INLINE float magnitude(int32_t t) {
    const float tf = static_cast<float>(t);
    const uint32_t bits = fo_f2u(tf);
    const float n = fo_u2f(bits & 0xff800000u);  // the top bit of t
    const int32_t k = K + 127 - static_cast<int32_t>(bits >> 23);
    // 10^k from the bits of k (for t = kTop, k = -1 and this is a finite number not used)
    const float p10 = pick(k & 1, 10.0f, 1.0f) * pick(k & 2, 100.0f, 1.0f) * pick(k & 4, 10000.0f, 1.0f);
    const float v = (18.0f * tf - 16.0f * n + 9.0f) / (20.0f * n * p10);
    return pick(t <= kZeroT, 0.0f, pick(t >= kTop, 1.0f, v));
  }

  // qmap[code], the dequantizing map: one division (Note [arithmetic map]) and the selects of 10^k.
  static FUSEDOPT_INLINE float value(int32_t code) {
    if constexpr (SIGNED) {
      const int32_t d = code - 127;
      const float v = magnitude(d < 0 ? -d : d);
      return fo_u2f(fo_f2u(v) | (static_cast<uint32_t>(d) & 0x80000000u));  // the sign of d
    } else {
      return magnitude(code + 1);
    }
  }

  // The code of y, the rule: no branch, no table (selects), so that the CPU loops vectorise.
  static FUSEDOPT_INLINE uint8_t code(float y) {
    const uint32_t u = fo_f2u(y) & 0x7fffffffu;
    // a = |y|, less 1 ulp for y < 0 with the signed map: there P counts the M < |y|
    const float a = fo_u2f(SIGNED ? u - static_cast<uint32_t>(y < 0.0f) : u);
    // The level of a (k: 10^-k / 10 <= a, or k = 6): its size n and the common denominator
    // d = 100 n 10^k of the values at positions n - 1 .. 2n.
    float n = kSize[6], d = kDen[6];
    level<5>(a, n, d);
    // The estimate: floor(position of the nearest value in real arithmetic - 1/2), at most
    // kTop - 1 (so that e + 1 is 1.0 at most; NaN: kTop - 1 too).
    const float e0 = a * (d * (1.0f / 90.0f)) + (n * (8.0f / 9.0f) - 0.5f);
    const int32_t e = static_cast<int32_t>(pick(e0 < kTop - 1, e0, kTop - 1));  // e0 >= 0: floor
    const float ef = static_cast<float>(e);
    // The numerators over d of the values at e (n - 1 .. 2n - 1) and e + 1 (n .. 2n): below the
    // level (10n - 9, or 0), in it (5 (18t - 16n + 9)), above it (25 (4n + 9), or d: 1.0).
    const float in0 = 90.0f * ef - (80.0f * n - 45.0f);
    float num0 = pick(ef < n, 10.0f * n - 9.0f, in0);
    num0 = pick(e == kZeroT, 0.0f, num0);
    float num1 = pick(ef + 1.0f == n + n, 100.0f * n + 225.0f, in0 + 90.0f);
    num1 = pick(e == kTop - 1, d, num1);
    const float mid = (num0 / d + num1 / d) * 0.5f;  // the rule's midpoint of the two values
    const int32_t p = e + static_cast<int32_t>(a >= mid) - kZeroT;  // P
    if constexpr (SIGNED) {
      const int32_t neg = -static_cast<int32_t>(y < 0.0f);
      const int32_t c = 127 + ((p ^ neg) - neg);  // 127 - p for y < 0 (p <= 128)
      return static_cast<uint8_t>((c > 0 ? c : 0) & -static_cast<int32_t>(y == y));  // NaN: code 0
    } else {
      return static_cast<uint8_t>(p & -static_cast<int32_t>(y >= 0.0f));  // below 0 and NaN: code 0
    }
  }

 private:
  // c ? a : b as masks: GCC does not if-convert float selects whose operands it could sink into
  // a branch (they may trap as far as it knows), and the loops would not vectorise.
  static FUSEDOPT_INLINE float pick(bool c, float a, float b) {
    const uint32_t m = 0u - static_cast<uint32_t>(c);
    return fo_u2f((fo_f2u(a) & m) | (fo_f2u(b) & ~m));
  }
  static constexpr float size(int k) { return static_cast<float>(1 << (K - k)); }
  static constexpr float pow10(int k) { return k == 0 ? 1.0f : 10.0f * pow10(k - 1); }
  // Level k (0..6) holds a >= kBound[k] (k < 6), down to the next bound, and its size and
  // common denominator (exact: 2^(K+2+k) 5^(k+2), below 2^24 times a power of two).
  static constexpr float kBound[6] = {0.1f, 0.01f, 0.001f, 1e-4f, 1e-5f, 1e-6f};
  static constexpr float kSize[7] = {size(0), size(1), size(2), size(3), size(4), size(5), size(6)};
  static constexpr float kDen[7] = {100.0f * size(0) * pow10(0), 100.0f * size(1) * pow10(1),
                                    100.0f * size(2) * pow10(2), 100.0f * size(3) * pow10(3),
                                    100.0f * size(4) * pow10(4), 100.0f * size(5) * pow10(5),
                                    100.0f * size(6) * pow10(6)};
  // n and d of the level of a: levels k..0 replace those of the levels below
  template <int k>
  static FUSEDOPT_INLINE void level(float a, float& n, float& d) {
    const bool in = a >= kBound[k];
    n = pick(in, kSize[k], n);
    d = pick(in, kDen[k], d);
    if constexpr (k > 0) level<k - 1>(a, n, d);
  }
};

// --- Philox4x32-10 and stochastic rounding ---------------------------------------------------

// Philox4x32-10's constants: the round multipliers and the key's increments (Weyl sequence).
constexpr int kPhiloxRounds = 10;
constexpr uint32_t kPhiloxM0 = 0xD2511F53u, kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u, kPhiloxW1 = 0xBB67AE85u;

// Lane 0 of Philox4x32-10 with key (seed lo, seed hi) and counter (index lo, index hi, step lo,
// step hi): lowbit.random_bits. The one definition in C++: the CPU kernels' vector version
// (csrc/cpu/random_bits.h) is tested against it bit for bit.
FUSEDOPT_HD FUSEDOPT_INLINE uint32_t random_bits(uint64_t seed, uint64_t step, uint64_t index) {
  uint32_t c0 = static_cast<uint32_t>(index), c1 = static_cast<uint32_t>(index >> 32);
  uint32_t c2 = static_cast<uint32_t>(step), c3 = static_cast<uint32_t>(step >> 32);
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int r = 0; r < kPhiloxRounds; ++r) {
    const uint64_t p0 = static_cast<uint64_t>(kPhiloxM0) * c0;
    const uint64_t p1 = static_cast<uint64_t>(kPhiloxM1) * c2;
    const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c1 ^ k0;
    const uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c3 ^ k1;
    c1 = static_cast<uint32_t>(p1);
    c3 = static_cast<uint32_t>(p0);
    c0 = n0;
    c2 = n2;
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
  return c0;
}

// float32 x rounded to bfloat16 / float16 bits, up (away from zero) iff bits < floor(frac * 2^32)
// (lowbit.stochastic_round: exactly unbiased; overflow rounds to inf with the probability that
// continues the float spacing; NaN becomes the canonical quiet NaN).
template <DType D>
FUSEDOPT_HD FUSEDOPT_INLINE uint16_t stochastic_round(float x, uint32_t bits);

template <>
FUSEDOPT_HD FUSEDOPT_INLINE uint16_t stochastic_round<DType::kBFloat16>(float x, uint32_t bits) {
  const uint32_t a = fo_f2u(x);
  const uint32_t mag = a & 0x7fffffffu;
  const uint32_t up = bits < ((mag & 0xffffu) << 16) ? 1u : 0u;
  const uint32_t out = ((mag >> 16) + up) | ((a >> 16) & 0x8000u);
  return static_cast<uint16_t>(x != x ? 0x7fc0u : out);
}

template <>
FUSEDOPT_HD FUSEDOPT_INLINE uint16_t stochastic_round<DType::kHalf>(float x, uint32_t bits) {
  const uint32_t a = fo_f2u(x);
  const uint32_t mag = a & 0x7fffffffu;
  // normal float16 range (a >= 2^-14): 13 bits dropped, the exponent re-biased
  const uint32_t base_normal = (mag >> 13) - 0x1C000u;
  const uint32_t t_normal = (mag & 0x1fffu) << 19;
  // subnormal range: a * 2^24 = m / 2^s, s >= 14
  const uint32_t e = mag >> 23;
  const uint32_t m = e > 0 ? ((mag & 0x7fffffu) | 0x800000u) : (mag & 0x7fffffu);
  // (e <= 112 where it applies; clamped so that every lane computes something defined)
  const uint32_t s0 = e > 0 ? 126u - (e < 126u ? e : 126u) : 125u;
  const uint32_t s = s0 > 14u ? s0 : 14u;
  const uint32_t base_sub = m >> (s < 24u ? s : 24u);
  const uint32_t t_sub = s <= 32u ? static_cast<uint32_t>(static_cast<uint64_t>(m) << (32u - s))
                                  : m >> (s - 32u < 24u ? s - 32u : 24u);
  const bool normal = mag >= 0x38800000u;
  const uint32_t base = normal ? base_normal : base_sub;
  const uint32_t up = bits < (normal ? t_normal : t_sub) ? 1u : 0u;
  const uint32_t r = base + up;
  const uint32_t out = (r < 0x7c00u ? r : 0x7c00u) | ((a >> 16) & 0x8000u);
  return static_cast<uint16_t>(x != x ? 0x7e00u : out);
}

}  // namespace lowbit
}  // namespace fusedopt
