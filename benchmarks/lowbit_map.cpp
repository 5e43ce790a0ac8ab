// The CPU quantizer of 8-bit states (csrc/include/fusedopt/lowbit.h, Note [arithmetic map]): an
// exhaustive check against the rule, and one-core timings of its loops.
//
//   g++ -O3 -std=c++17 -fno-math-errno -ffp-contract=off -march=x86-64-v3 -Icsrc/include benchmarks/lowbit_map.cpp -o lowbit_map
//   ./lowbit_map check        # every float32 bit pattern, both maps (minutes)
//   ./lowbit_map [n] [rounds] # timings (default 4M elements, 9 rounds)
//
// The flags are the extension's (setup.py) and -march=x86-64-v3 that of the clone the AVX2
// machines run (Note [instruction sets]); drop -march for the baseline. The timings are this
// thread's CPU time (a busy machine's other processes are not counted), the loops interleaved
// round by round, and report medians with first and third quartiles. They compare the quantizer
// with the table-based one it replaced (TableQuantizer below: a cell of the float32 bits of y,
// then two midpoints, i.e. three table reads that GCC builds from scalar loads), and the
// arithmetic DynamicMap::value with the table read map[code] it replaced. The Adam loops are
// update_loop's for 8-bit states, before (both tables) and after (both arithmetic). Caveat: here
// GCC vectorises the loop with the table read (building the gather from scalar loads), while in
// the extension's update_loop it left that loop scalar, Adam's update included; so these loops
// understate what the arithmetic map gains there.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <algorithm>
#include <random>
#include <vector>

#include "fusedopt/lowbit.h"

using namespace fusedopt;
using lowbit::DynamicMap;

// The map from its definition, independently of lowbit.h: one float64 division of two integers,
// rounded once to float32 (fusedopt/lowbit.py).
static void reference_map(bool is_signed, float out[256]) {
  double values[256];
  int count = 0;
  values[count++] = 0.0;
  values[count++] = 1.0;
  int64_t pow10 = 1;
  for (int k = 0; k < 7; ++k, pow10 *= 10) {
    const int64_t n = (is_signed ? 64 : 128) >> k;
    for (int64_t j = 0; j < n; ++j) {
      const double v = static_cast<double>(2 * n + 9 * (2 * j + 1)) / static_cast<double>(20 * n * pow10);
      values[count++] = v;
      if (is_signed) values[count++] = -v;
    }
  }
  std::sort(values, values + 256);
  for (int i = 0; i < 256; ++i) out[i] = static_cast<float>(values[i]);
}

// The quantizer that DynamicMap::code replaced (fusedopt 3e6ffbe), for the timings.
struct TableQuantizer {
  static constexpr int kCellBits = 6;
  static constexpr uint32_t kMinExp = 104;
  static constexpr int32_t kCellsPerSign = static_cast<int32_t>(((127 - kMinExp) << kCellBits) + 1);
  float mid[258];
  int32_t first[2 * kCellsPerSign];

  explicit TableQuantizer(const float value[256]) {
    for (int k = 0; k < 255; ++k) mid[k] = (value[k] + value[k + 1]) * 0.5f;
    mid[255] = mid[256] = mid[257] = INFINITY;
    auto count = [&](float y) {
      int c = 0;
      while (c < 255 && y >= mid[c]) ++c;
      return c;
    };
    const uint32_t step = 1u << (23 - kCellBits);
    for (int32_t c = 0; c < kCellsPerSign; ++c) {
      const uint32_t lo = c == 0 ? 0u : (static_cast<uint32_t>(c) + (kMinExp << kCellBits)) * step;
      const uint32_t hi = c == kCellsPerSign - 1 ? 0x7f800000u
                                                 : (static_cast<uint32_t>(c) + 1 + (kMinExp << kCellBits)) * step - 1;
      for (int sign = 0; sign < 2; ++sign) first[c + sign * kCellsPerSign] = count(sign ? -fo_u2f(hi) : fo_u2f(lo));
    }
  }
  FUSEDOPT_INLINE uint8_t code(float y) const {
    const uint32_t u = fo_f2u(y);
    int32_t c = static_cast<int32_t>((u & 0x7fffffffu) >> (23 - kCellBits)) - static_cast<int32_t>(kMinExp << kCellBits);
    c = c < 0 ? 0 : c;
    c = c > kCellsPerSign - 1 ? kCellsPerSign - 1 : c;
    const int32_t c0 = first[c + static_cast<int32_t>(u >> 31) * kCellsPerSign];
    const int32_t up = static_cast<int32_t>(y >= mid[c0]) + static_cast<int32_t>(y >= mid[c0 + 1]);
    return static_cast<uint8_t>((c0 + up) & -static_cast<int32_t>(y == y));
  }
};

// The map as a table (for the table reads), from its definition.
static const float* map_table(bool is_signed) {
  static float v[2][256];
  static const bool done = [] {
    reference_map(false, v[0]);
    reference_map(true, v[1]);
    return true;
  }();
  (void)done;
  return v[is_signed ? 1 : 0];
}

template <bool S>
__attribute__((noinline)) void quantize(const float* __restrict y, uint8_t* __restrict c, long n) {
  for (long i = 0; i < n; ++i) c[i] = DynamicMap<S>::code(y[i]);
}
__attribute__((noinline)) void quantize_table(const TableQuantizer& q, const float* __restrict y, uint8_t* __restrict c,
                                              long n) {
  for (long i = 0; i < n; ++i) c[i] = q.code(y[i]);
}
template <bool S>
__attribute__((noinline)) void dequantize(const uint8_t* __restrict c, float* __restrict x, float s, long n) {
  for (long i = 0; i < n; ++i) x[i] = DynamicMap<S>::value(c[i]) * s;
}
__attribute__((noinline)) void dequantize_table(const float* __restrict map, const uint8_t* __restrict c,
                                                float* __restrict x, float s, long n) {
  for (long i = 0; i < n; ++i) x[i] = map[c[i]] * s;
}

// --- the exhaustive check -------------------------------------------------------------------

template <bool S>
long check() {
  float map[256], mid[255];
  reference_map(S, map);
  long bad = 0;
  for (int c = 0; c < 256; ++c) {
    if (fo_f2u(DynamicMap<S>::value(c)) != fo_f2u(map[c])) {
      if (bad++ < 10) printf("value(%d) = %a, the map's %a\n", c, DynamicMap<S>::value(c), map[c]);
    }
  }
  for (int k = 0; k < 255; ++k) mid[k] = (map[k] + map[k + 1]) * 0.5f;
  const int zero = static_cast<int>(std::upper_bound(mid, mid + 255, 0.0f) - mid);
  if (DynamicMap<S>::kZeroCode != zero) printf("kZeroCode %d, the rule's %d\n", DynamicMap<S>::kZeroCode, zero), ++bad;
  const long kN = 1 << 20;
  std::vector<float> y(kN);
  std::vector<uint8_t> c(kN);
  for (uint64_t base = 0; base < (1ull << 32); base += kN) {
    for (long i = 0; i < kN; ++i) y[i] = fo_u2f(static_cast<uint32_t>(base + i));
    quantize<S>(y.data(), c.data(), kN);
    for (long i = 0; i < kN; ++i) {
      // the rule: #{k : y >= mid[k]}; NaN: 0
      const int rule = y[i] != y[i] ? 0 : static_cast<int>(std::upper_bound(mid, mid + 255, y[i]) - mid);
      if (c[i] != rule && bad++ < 10) printf("code(%a) = %d, the rule's %d\n", y[i], c[i], rule);
    }
  }
  printf("%s map: 256 values and all 2^32 float32 codes checked, %ld wrong\n", S ? "signed" : "unsigned", bad);
  return bad;
}

// --- timings --------------------------------------------------------------------------------

static double cpu_ns() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return ts.tv_sec * 1e9 + ts.tv_nsec;
}

// Adam's update, and the loop of update_loop over one item of 8-bit states: per block of 256,
// dequantize two states, update, then the block's absmax and codes.
struct Hyper {
  float b1, b2, lr, eps, c1, c2;
};
FUSEDOPT_INLINE void adam(const Hyper& h, float& p, float g, float& m, float& v) {
  m = h.b1 * m + (1.0f - h.b1) * g;
  v = h.b2 * v + (1.0f - h.b2) * g * g;
  p = p - h.lr * (m / h.c1) / (sqrtf(v / h.c2) + h.eps);
}
__attribute__((noinline)) void adam_fp32(Hyper h0, float* __restrict p, const float* __restrict g,
                                         float* __restrict m, float* __restrict v, long n) {
  const Hyper h = h0;
  for (long i = 0; i < n; ++i) adam(h, p[i], g[i], m[i], v[i]);
}
FUSEDOPT_INLINE float absmax(const float* __restrict t, int n) {
  uint32_t mx = 0;
  for (int i = 0; i < n; ++i) {
    const uint32_t a = fo_f2u(t[i]) & 0x7fffffffu;
    mx = a > mx ? a : mx;
  }
  return fo_u2f(mx);
}
template <bool TABLE>
__attribute__((noinline)) void adam_8bit(Hyper h0, float* __restrict p, const float* __restrict g,
                                         uint8_t* __restrict cm, uint8_t* __restrict cv, float* __restrict sm,
                                         float* __restrict sv, long n, const TableQuantizer& qs,
                                         const TableQuantizer& qu) {
  const Hyper h = h0;
  const float* __restrict maps = map_table(true);
  const float* __restrict mapu = map_table(false);
  alignas(64) float t0[256], t1[256];
  for (long b = 0; b < n; b += 256) {
    const float c0 = sm[b / 256], c1 = sv[b / 256];
    const uint8_t* __restrict q0 = cm + b;
    const uint8_t* __restrict q1 = cv + b;
    for (int k = 0; k < 256; ++k) {
      float x = TABLE ? maps[q0[k]] * c0 : DynamicMap<true>::value(q0[k]) * c0;
      float y = TABLE ? mapu[q1[k]] * c1 : DynamicMap<false>::value(q1[k]) * c1;
      adam(h, p[b + k], g[b + k], x, y);
      t0[k] = x;
      t1[k] = y;
    }
    const float a0 = absmax(t0, 256), a1 = absmax(t1, 256);  // (not 0 here)
    sm[b / 256] = a0;
    sv[b / 256] = a1;
    uint8_t* __restrict o0 = cm + b;
    uint8_t* __restrict o1 = cv + b;
    if (TABLE) {
      for (int k = 0; k < 256; ++k) o0[k] = qs.code(t0[k] / a0);
      for (int k = 0; k < 256; ++k) o1[k] = qu.code(t1[k] / a1);
    } else {
      for (int k = 0; k < 256; ++k) o0[k] = DynamicMap<true>::code(t0[k] / a0);
      for (int k = 0; k < 256; ++k) o1[k] = DynamicMap<false>::code(t1[k] / a1);
    }
  }
}

int main(int argc, char** argv) {
  setvbuf(stdout, nullptr, _IONBF, 0);
  if (argc > 1 && strcmp(argv[1], "check") == 0) {
    const long bad = check<true>() + check<false>();
    printf(bad == 0 ? "OK\n" : "FAILED\n");
    return bad != 0;
  }
  const long n = (argc > 1 ? atol(argv[1]) : 4l << 20) / 256 * 256;
  const int rounds = argc > 2 ? atoi(argv[2]) : 9;
  float maps[256], mapu[256];
  reference_map(true, maps);
  reference_map(false, mapu);
  const TableQuantizer qs(maps), qu(mapu);
  std::mt19937 gen(1);
  std::normal_distribution<float> nd;
  std::vector<float> ys(n), yu(n), x(n), p(n), g(n), m(n, 0.0f), v(n, 0.0f);
  for (long i = 0; i < n; ++i) {  // y = x / absmax over six decades within each block
    const float scale = powf(10.0f, -6.0f * static_cast<float>(i % 256) / 255.0f);
    ys[i] = std::max(-1.0f, std::min(1.0f, nd(gen) * scale / 3.0f));
    yu[i] = fabsf(ys[i]);
    p[i] = nd(gen);
    g[i] = nd(gen) * 1e-2f;
  }
  std::vector<uint8_t> cs(n), cu(n), out(n), cm[2], cv[2];
  std::vector<float> p8[2], sm[2], sv[2];
  for (int k = 0; k < 2; ++k) {
    p8[k] = p;
    cm[k].assign(n, DynamicMap<true>::kZeroCode);
    cv[k].assign(n, DynamicMap<false>::kZeroCode);
    sm[k].assign(n / 256, 0.0f);
    sv[k].assign(n / 256, 0.0f);
  }
  quantize<true>(ys.data(), cs.data(), n);
  quantize<false>(yu.data(), cu.data(), n);
  const Hyper h{0.9f, 0.999f, 1e-3f, 1e-8f, 0.1f, 0.001f};
  const char* names[] = {"quantize, signed map: table-based (3 table reads)", "quantize, signed map: arithmetic",
                         "quantize, unsigned map: table-based (3 table reads)", "quantize, unsigned map: arithmetic",
                         "dequantize, signed map: table read", "dequantize, signed map: arithmetic",
                         "dequantize, unsigned map: table read", "dequantize, unsigned map: arithmetic",
                         "Adam, float32 states", "Adam, 8-bit states: tables (before)",
                         "Adam, 8-bit states: arithmetic (after)"};
  constexpr int kLoops = 11;
  std::vector<double> t[kLoops];
  for (int r = 0; r < rounds; ++r) {
    for (int k = 0; k < kLoops; ++k) {
      const double t0 = cpu_ns();
      switch (k) {
        case 0: quantize_table(qs, ys.data(), out.data(), n); break;
        case 1: quantize<true>(ys.data(), out.data(), n); break;
        case 2: quantize_table(qu, yu.data(), out.data(), n); break;
        case 3: quantize<false>(yu.data(), out.data(), n); break;
        case 4: dequantize_table(map_table(true), cs.data(), x.data(), 0.5f, n); break;
        case 5: dequantize<true>(cs.data(), x.data(), 0.5f, n); break;
        case 6: dequantize_table(map_table(false), cu.data(), x.data(), 0.5f, n); break;
        case 7: dequantize<false>(cu.data(), x.data(), 0.5f, n); break;
        case 8: adam_fp32(h, p.data(), g.data(), m.data(), v.data(), n); break;
        case 9:
          adam_8bit<true>(h, p8[0].data(), g.data(), cm[0].data(), cv[0].data(), sm[0].data(), sv[0].data(), n, qs, qu);
          break;
        case 10:
          adam_8bit<false>(h, p8[1].data(), g.data(), cm[1].data(), cv[1].data(), sm[1].data(), sv[1].data(), n, qs, qu);
          break;
      }
      t[k].push_back((cpu_ns() - t0) / static_cast<double>(n));
    }
  }
  const bool same = cm[0] == cm[1] && cv[0] == cv[1] && p8[0] == p8[1];
  printf("%ld elements, %d rounds; one core, ns of CPU time per element: median (first quartile-third quartile)\n",
         n, rounds);
  for (int k = 0; k < kLoops; ++k) {
    std::sort(t[k].begin(), t[k].end());
    const size_t s = t[k].size();
    printf("%-52s %5.2f (%.2f-%.2f)\n", names[k], t[k][s / 2], t[k][s / 4], t[k][(3 * s) / 4]);
  }
  printf("the two 8-bit Adam loops' params, codes: %s\n", same ? "identical" : "DIFFERENT");
  return same ? 0 : 1;
}
