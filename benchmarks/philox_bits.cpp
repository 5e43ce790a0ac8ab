// Stochastic rounding's random bits on the CPU (csrc/cpu/random_bits.h, Note [random bits by
// run]): a check of the AVX2 version against lowbit::random_bits, bit for bit, and one-core
// timings of the bits alone and of a bf16 Adam loop that rounds with them.
//
//   g++ -O3 -std=c++17 -fno-math-errno -ffp-contract=off -march=x86-64-v3 -Icsrc/include -Icsrc/cpu benchmarks/philox_bits.cpp -o philox_bits
//   ./philox_bits check        # the AVX2 runs against random_bits (seconds)
//   ./philox_bits [n] [rounds] # timings (default 1M elements, 11 rounds)
//
// The flags are the extension's (setup.py) and -march=x86-64-v3, that of the clone the AVX2
// machines run (Note [instruction sets]); the check needs an AVX2 machine. The timings are this
// thread's CPU time, the loops interleaved round by round: medians with first and third quartiles.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <algorithm>
#include <random>
#include <vector>

#include "fusedopt/dtype.h"
#include "fusedopt/lowbit.h"
#include "random_bits.h"

using namespace fusedopt;

// --- the check ------------------------------------------------------------------------------

// random_bits_run_avx2 over [index, index + n) into out + shift (an unaligned store when shift is
// not a multiple of 8), against random_bits per element; the number of wrong elements.
static long check_run(uint64_t seed, uint64_t step, uint64_t index, int64_t n, int shift) {
  std::vector<uint32_t> out(n + 16, 0xdeadbeefu);
  cpu::random_bits_run_avx2(seed, step, index, out.data() + shift, n);
  long bad = 0;
  for (int64_t k = 0; k < n; ++k) {
    const uint32_t want = lowbit::random_bits(seed, step, index + static_cast<uint64_t>(k));
    if (out[shift + k] != want && bad++ < 5) {
      printf("seed %#llx step %#llx index %#llx + %lld: %#x, random_bits %#x\n", (unsigned long long)seed,
             (unsigned long long)step, (unsigned long long)index, (long long)k, out[shift + k], want);
    }
  }
  for (int k = 0; k < shift; ++k) bad += out[k] != 0xdeadbeefu;  // nothing written outside
  for (int k = 0; k < 16 - shift; ++k) bad += out[shift + n + k] != 0xdeadbeefu;
  return bad;
}

static long check() {
  if (!__builtin_cpu_supports("avx2")) {
    printf("no AVX2 here: nothing to check\n");
    return 0;
  }
  // seeds and steps whose words are 0, all ones, or cross a carry; indices whose runs cross
  // 2^32 (the counter's high word changes mid-vector) and wrap around 2^64
  const uint64_t seeds[] = {0, 1, 7, (1ull << 63) + 5, ~0ull, 0x0123456789abcdefull};
  const uint64_t steps[] = {1, 2, 0xffffffffull, 1ull << 32, ~0ull};
  const uint64_t indices[] = {0, 1, 3, (1ull << 32) - 13, (1ull << 32) - 1, (1ull << 40) + 1, ~0ull - 20};
  const int64_t sizes[] = {0, 1, 7, 8, 9, 15, 16, 17, 255, 256, 257, 1000};
  long bad = 0, runs = 0, elements = 0;
  for (uint64_t seed : seeds) {
    for (uint64_t step : steps) {
      for (uint64_t index : indices) {
        for (int64_t n : sizes) {
          bad += check_run(seed, step, index, n, static_cast<int>(runs % 8));
          ++runs;
          elements += n;
        }
      }
    }
  }
  std::mt19937_64 gen(1);
  for (int i = 0; i < 20000; ++i, ++runs) {  // random words, runs of up to 300
    const int64_t n = static_cast<int64_t>(gen() % 301);
    bad += check_run(gen(), gen(), gen(), n, static_cast<int>(gen() % 8));
    elements += n;
  }
  printf("%ld runs, %ld elements: %ld wrong\n", runs, elements, bad);
  return bad;
}

// --- timings --------------------------------------------------------------------------------

static double cpu_ns() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return ts.tv_sec * 1e9 + ts.tv_nsec;
}

__attribute__((noinline)) void bits_portable(uint64_t seed, uint64_t step, uint64_t index, uint32_t* __restrict out,
                                             int64_t n) {
  cpu::random_bits_run(seed, step, index, out, n);
}

// Adam on bf16 params and float32 states, rounding the params to nearest or stochastically, as
// update_loop does: per element inside the loop (before), or per block of 256 from a run before
// the block's loop (Note [random bits by run]), portable or with AVX2.
struct Hyper {
  float b1, b2, lr, eps, c1, c2;
};
FUSEDOPT_INLINE float adam(const Hyper& h, float p, float g, float& m, float& v) {
  m = h.b1 * m + (1.0f - h.b1) * g;
  v = h.b2 * v + (1.0f - h.b2) * g * g;
  return p - h.lr * (m / h.c1) / (sqrtf(v / h.c2) + h.eps);
}
enum Rounding { kNearest, kPerElement, kRunPortable, kRunAvx2 };
template <Rounding R>
__attribute__((noinline)) void adam_bf16(Hyper h0, uint16_t* __restrict p, const uint16_t* __restrict g,
                                         float* __restrict m, float* __restrict v, int64_t n, uint64_t seed,
                                         uint64_t step, uint64_t index) {
  const Hyper h = h0;
  constexpr int64_t kB = 256;
  alignas(64) uint32_t bits[kB];
  for (int64_t b = 0; b < n; b += kB) {
    const int64_t len = std::min(kB, n - b);
    if (R == kRunPortable) bits_portable(seed, step, index + b, bits, len);
    if (R == kRunAvx2) cpu::random_bits_run_avx2(seed, step, index + b, bits, len);
    for (int64_t k = 0; k < len; ++k) {
      const int64_t i = b + k;
      const float pv = adam(h, bf16_to_float(p[i]), bf16_to_float(g[i]), m[i], v[i]);
      if (R == kNearest) p[i] = float_to_bf16(pv);
      if (R == kPerElement) p[i] = lowbit::stochastic_round<DType::kBFloat16>(pv, lowbit::random_bits(seed, step, index + i));
      if (R == kRunPortable || R == kRunAvx2) p[i] = lowbit::stochastic_round<DType::kBFloat16>(pv, bits[k]);
    }
  }
}

int main(int argc, char** argv) {
  setvbuf(stdout, nullptr, _IONBF, 0);
  if (argc > 1 && strcmp(argv[1], "check") == 0) {
    const long bad = check();
    printf(bad == 0 ? "OK\n" : "FAILED\n");
    return bad != 0;
  }
  const int64_t n = argc > 1 ? atol(argv[1]) : 1 << 20;
  const int rounds = argc > 2 ? atoi(argv[2]) : 11;
  const uint64_t seed = (1ull << 63) + 5, step = 3, index = 12345;
  std::mt19937 gen(1);
  std::normal_distribution<float> nd;
  std::vector<uint16_t> g(n), p0(n);
  for (int64_t i = 0; i < n; ++i) {
    p0[i] = float_to_bf16(nd(gen));
    g[i] = float_to_bf16(nd(gen) * 1e-2f);
  }
  std::vector<uint16_t> p[4];
  std::vector<float> m[4], v[4];
  for (int k = 0; k < 4; ++k) {
    p[k] = p0;
    m[k].assign(n, 0.0f);
    v[k].assign(n, 0.0f);
  }
  std::vector<uint32_t> bits(n);
  const Hyper h{0.9f, 0.999f, 1e-3f, 1e-8f, 0.1f, 0.001f};
  const char* names[] = {"random bits: portable loop",       "random bits: AVX2",
                         "Adam bf16, round to nearest",      "Adam bf16, SR, bits per element (before)",
                         "Adam bf16, SR, bits by run, portable", "Adam bf16, SR, bits by run, AVX2 (after)"};
  constexpr int kLoops = 6;
  std::vector<double> t[kLoops];
  for (int r = 0; r < rounds; ++r) {
    for (int k = 0; k < kLoops; ++k) {
      const double t0 = cpu_ns();
      switch (k) {
        case 0: bits_portable(seed, step, index, bits.data(), n); break;
        case 1: cpu::random_bits_run_avx2(seed, step, index, bits.data(), n); break;
        case 2: adam_bf16<kNearest>(h, p[0].data(), g.data(), m[0].data(), v[0].data(), n, seed, step, index); break;
        case 3: adam_bf16<kPerElement>(h, p[1].data(), g.data(), m[1].data(), v[1].data(), n, seed, step, index); break;
        case 4: adam_bf16<kRunPortable>(h, p[2].data(), g.data(), m[2].data(), v[2].data(), n, seed, step, index); break;
        case 5: adam_bf16<kRunAvx2>(h, p[3].data(), g.data(), m[3].data(), v[3].data(), n, seed, step, index); break;
      }
      t[k].push_back((cpu_ns() - t0) / static_cast<double>(n));
    }
  }
  const bool same = p[1] == p[2] && p[1] == p[3] && m[1] == m[3] && v[1] == v[3];
  printf("%lld elements, %d rounds; one core, ns of CPU time per element: median (first quartile-third quartile)\n",
         (long long)n, rounds);
  for (int k = 0; k < kLoops; ++k) {
    std::sort(t[k].begin(), t[k].end());
    const size_t s = t[k].size();
    printf("%-44s %5.2f (%.2f-%.2f)\n", names[k], t[k][s / 2], t[k][s / 4], t[k][(3 * s) / 4]);
  }
  printf("the three stochastically rounded Adam loops' params and states: %s\n", same ? "identical" : "DIFFERENT");
  return same ? 0 : 1;
}
