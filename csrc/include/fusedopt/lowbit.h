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
// The maps are built here from their definition (one float64 division of two integers, rounded
// once to float32), as fusedopt/lowbit.py builds them; tests/test_lowbit_kernels.py checks that
// the two agree on all 512 values.
#pragma once

#include <stdint.h>

#include <algorithm>

#include "fusedopt/dtype.h"
#include "fusedopt/macros.h"

namespace fusedopt {
namespace lowbit {

constexpr int kQuantBlock = 256;  // elements per absmax (lowbit.BLOCK)

// --- the maps ---------------------------------------------------------------------------------

// The 256 values of the dynamic map, ascending (signed: 127 negatives, 0, 127 positives, 1.0;
// unsigned: 0, 254 positives, 1.0): the value of decimal level k (0..6) and index j among its n
// values is (2n + 9(2j + 1)) / (20 n 10^k), n = 64 >> k (signed, per sign) or 128 >> k.
inline void dynamic_map(bool is_signed, float out[256]) {
  double values[256];
  int count = 0;
  values[count++] = 0.0;
  values[count++] = 1.0;
  int64_t pow10 = 1;
  for (int k = 0; k < 7; ++k, pow10 *= 10) {
    const int64_t n = (is_signed ? 64 : 128) >> k;
    const double den = static_cast<double>(20 * n * pow10);  // exact: below 2^53
    for (int64_t j = 0; j < n; ++j) {
      const double v = static_cast<double>(2 * n + 9 * (2 * j + 1)) / den;
      values[count++] = v;
      if (is_signed) values[count++] = -v;
    }
  }
  std::sort(values, values + 256);
  for (int i = 0; i < 256; ++i) out[i] = static_cast<float>(values[i]);
}

// The CPU quantizer of one map: code(y) = #{k : y >= mid[k]} through a table of cells of y, so
// that a code costs three table reads and no search. A cell is the values of y that share their
// sign, float32 exponent and top kCellBits mantissa bits (exponents below kMinExp share the
// lowest cell, exponents above 0 the highest: y is in [-1, 1]); `first[cell]` counts the
// midpoints <= the cell's smallest y, and no cell holds more than kMaxInCell midpoints above
// that (checked when the table is built), so the code is first + the comparisons of y with the
// next kMaxInCell midpoints. NaN is code 0.
struct Quantizer {
  static constexpr int kCellBits = 6;
  static constexpr int kMaxInCell = 2;
  static constexpr uint32_t kMinExp = 104;  // 2^-23: below every nonzero midpoint's magnitude
  static constexpr int32_t kCellsPerSign = static_cast<int32_t>(((127 - kMinExp) << kCellBits) + 1);

  float value[256];
  float mid[256 + kMaxInCell];  // the 255 midpoints, then +inf
  int32_t first[2 * kCellsPerSign];
  uint8_t zero_code;  // the code of y = 0 (a block whose absmax is 0)

  explicit Quantizer(bool is_signed);

  // The code of y: no branch (selects and two gathers), so that the CPU loops vectorise.
  FUSEDOPT_INLINE uint8_t code(float y) const {
    const uint32_t u = fo_f2u(y);
    int32_t c = static_cast<int32_t>((u & 0x7fffffffu) >> (23 - kCellBits)) - static_cast<int32_t>(kMinExp << kCellBits);
    c = c < 0 ? 0 : c;
    c = c > kCellsPerSign - 1 ? kCellsPerSign - 1 : c;
    const int32_t c0 = first[c + static_cast<int32_t>(u >> 31) * kCellsPerSign];
    static_assert(kMaxInCell == 2, "code() compares y with two midpoints");
    const int32_t up = static_cast<int32_t>(y >= mid[c0]) + static_cast<int32_t>(y >= mid[c0 + 1]);
    const int32_t is_number = -static_cast<int32_t>(y == y);  // NaN: code 0
    return static_cast<uint8_t>((c0 + up) & is_number);
  }
};

// The two quantizers, built once.
const Quantizer& quantizer(bool is_signed);

// --- Philox4x32-10 and stochastic rounding ---------------------------------------------------

// Lane 0 of Philox4x32-10 with key (seed lo, seed hi) and counter (index lo, index hi, step lo,
// step hi): lowbit.random_bits.
FUSEDOPT_HD FUSEDOPT_INLINE uint32_t random_bits(uint64_t seed, uint64_t step, uint64_t index) {
  uint32_t c0 = static_cast<uint32_t>(index), c1 = static_cast<uint32_t>(index >> 32);
  uint32_t c2 = static_cast<uint32_t>(step), c3 = static_cast<uint32_t>(step >> 32);
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int r = 0; r < 10; ++r) {
    const uint64_t p0 = static_cast<uint64_t>(0xD2511F53u) * c0;
    const uint64_t p1 = static_cast<uint64_t>(0xCD9E8D57u) * c2;
    const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c1 ^ k0;
    const uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c3 ^ k1;
    c1 = static_cast<uint32_t>(p1);
    c3 = static_cast<uint32_t>(p0);
    c0 = n0;
    c2 = n2;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
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
