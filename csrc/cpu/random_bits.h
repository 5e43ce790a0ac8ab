// Stochastic rounding's random bits for a run of consecutive elements, for the CPU kernels:
// lowbit::random_bits (csrc/include/fusedopt/lowbit.h, the C++ definition of the rule of
// fusedopt/lowbit.py) element by element, and the same bits computed with AVX2 for the clones
// that have it. Free of torch, so that benchmarks/philox_bits.cpp checks and times it alone.
//
// Note [random bits by run]: update_loop (multi_tensor.h) takes the bits of a block of
// lowbit::kQuantBlock elements from random_bits_run before the block's element loop, rather than
// calling random_bits per element inside it. Per element, GCC 12 vectorises Philox4x32-10 badly
// for AVX2: vpmuludq multiplies only the even 32-bit lanes into 64 bits, and the loop re-packs the
// even and odd products into eight lanes with shuffles every round (8.1 ns per element on one
// core of the 2-core AVX2 EPYC, alone or inside the update loop). Holding each word of an element
// in the low half of a 64-bit lane, four elements to a vector, one vpmuludq is one 32x32 -> 64
// bit product with nothing to re-pack, and one shift its high word: 2.5 ns per element, and a
// bf16 Adam loop with stochastic rounding goes from 8.3 to 3.8 ns per element (measurements:
// benchmarks/results/cpu-sr-philox-2026-12-03.md). GCC does not find that form in portable code
// (with 64-bit words and the multipliers as constants it builds the multiply from shifts and
// adds; with them passed in at run time, from three vpmuludq: 5.9 ns), hence the intrinsics,
// compiled for x86-64-v3 only and called from the v3 (and v4) clones. The baseline (SSE2) clone
// runs the portable loop, which costs no more in a loop of its own than inside the update loop.
#pragma once

#include <stdint.h>

#include "fusedopt/lowbit.h"
#include "fusedopt/macros.h"
#include "isa.h"

#if FUSEDOPT_X86_CLONES
#include <immintrin.h>
#endif

namespace fusedopt {
namespace cpu {

// out[k] = lowbit::random_bits(seed, step, index + k) for k in [0, n): the portable loop, in the
// instruction set of its caller.
FUSEDOPT_INLINE void random_bits_run(uint64_t seed, uint64_t step, uint64_t index, uint32_t* __restrict out,
                                     int64_t n) {
  for (int64_t k = 0; k < n; ++k) out[k] = lowbit::random_bits(seed, step, index + static_cast<uint64_t>(k));
}

#if FUSEDOPT_X86_CLONES
// The words (c0, c1, c2, c3) of Philox's counter for four elements, each word in the low half of a
// 64-bit lane. The high halves carry leftovers that nothing reads: vpmuludq multiplies the low
// halves, a product's high word is shifted down, and the result is the low halves of c0.
struct PhiloxLanes {
  __m256i c0, c1, c2, c3;
};

// One round of lowbit::random_bits on four elements, with the round's key (k0, k1) broadcast.
FUSEDOPT_TARGET_V3 FUSEDOPT_INLINE void philox_round(PhiloxLanes& s, __m256i k0, __m256i k1) {
  const __m256i p0 = _mm256_mul_epu32(s.c0, _mm256_set1_epi64x(lowbit::kPhiloxM0));
  const __m256i p1 = _mm256_mul_epu32(s.c2, _mm256_set1_epi64x(lowbit::kPhiloxM1));
  s.c0 = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(p1, 32), s.c1), k0);
  s.c2 = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(p0, 32), s.c3), k1);
  s.c1 = p1;
  s.c3 = p0;
}

// The counters of elements index .. index + 3 (index in 64-bit lanes), with the step's words.
FUSEDOPT_TARGET_V3 FUSEDOPT_INLINE PhiloxLanes philox_counters(__m256i index, __m256i step_lo, __m256i step_hi) {
  return PhiloxLanes{index, _mm256_srli_epi64(index, 32), step_lo, step_hi};
}

// random_bits_run with AVX2 (Note [random bits by run]): eight elements at a time, as two groups
// of four whose rounds interleave (a round's multiplies wait on the previous round's); the last
// n % 8 elements by lowbit::random_bits itself. Not inlined: one copy serves every instantiation
// of the update loop, and it needs no register of theirs.
FUSEDOPT_TARGET_V3 __attribute__((noinline)) inline void random_bits_run_avx2(uint64_t seed, uint64_t step,
                                                                              uint64_t index,
                                                                              uint32_t* __restrict out,
                                                                              int64_t n) {
  __m256i k0[lowbit::kPhiloxRounds], k1[lowbit::kPhiloxRounds];  // each round's key, broadcast
  uint32_t w0 = static_cast<uint32_t>(seed), w1 = static_cast<uint32_t>(seed >> 32);
  for (int r = 0; r < lowbit::kPhiloxRounds; ++r, w0 += lowbit::kPhiloxW0, w1 += lowbit::kPhiloxW1) {
    k0[r] = _mm256_set1_epi64x(w0);
    k1[r] = _mm256_set1_epi64x(w1);
  }
  const __m256i step_lo = _mm256_set1_epi64x(static_cast<uint32_t>(step));
  const __m256i step_hi = _mm256_set1_epi64x(static_cast<int64_t>(step >> 32));
  const __m256i four = _mm256_set1_epi64x(4);
  __m256i at = _mm256_add_epi64(_mm256_set1_epi64x(static_cast<int64_t>(index)), _mm256_set_epi64x(3, 2, 1, 0));
  int64_t k = 0;
  for (; k + 8 <= n; k += 8) {
    PhiloxLanes a = philox_counters(at, step_lo, step_hi);
    PhiloxLanes b = philox_counters(_mm256_add_epi64(at, four), step_lo, step_hi);
    at = _mm256_add_epi64(at, _mm256_add_epi64(four, four));
    for (int r = 0; r < lowbit::kPhiloxRounds; ++r) {
      philox_round(a, k0[r], k1[r]);
      philox_round(b, k0[r], k1[r]);
    }
    // the low halves of a.c0 and b.c0 in order: a0 a1 b0 b1 | a2 a3 b2 b3, then a0..a3 b0..b3
    const __m256 lows = _mm256_shuffle_ps(_mm256_castsi256_ps(a.c0), _mm256_castsi256_ps(b.c0), 0x88);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + k), _mm256_permute4x64_epi64(_mm256_castps_si256(lows), 0xD8));
  }
  random_bits_run(seed, step, index + static_cast<uint64_t>(k), out + k, n - k);
}
#endif

}  // namespace cpu
}  // namespace fusedopt
