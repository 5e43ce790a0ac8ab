// The non-template parts of the CPU traversal: instruction-set detection, the per-call (row, t)
// keys of the plans, and the CPU kernel of fusedopt::state_table.
#include "multi_tensor.h"

#include <stdlib.h>
#include <string.h>

namespace fusedopt {
namespace cpu {

Isa cpu_isa() {
  static const Isa isa = [] {
    Isa best = Isa::kBaseline;
#if FUSEDOPT_X86_CLONES
    __builtin_cpu_init();
    if (__builtin_cpu_supports("x86-64-v4")) best = Isa::kAvx512;
    else if (__builtin_cpu_supports("x86-64-v3")) best = Isa::kAvx2;
#endif
    const char* cap = getenv("FUSEDOPT_CPU_ISA");
    if (cap != nullptr) {
      Isa c = best;
      if (strcmp(cap, "baseline") == 0) c = Isa::kBaseline;
      else if (strcmp(cap, "avx2") == 0) c = Isa::kAvx2;
      else if (strcmp(cap, "avx512") == 0) c = Isa::kAvx512;
      if (static_cast<int>(c) < static_cast<int>(best)) best = c;
    }
    return best;
  }();
  return isa;
}

const char* isa_name() {
  switch (cpu_isa()) {
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    default: return "baseline";
  }
}

// A tensor's key is its row (below 2^31, checked) and the bits of its step count. Consecutive
// tensors usually share one (a param group at one step count); other repeats (groups that
// interleave) are found in a small direct-mapped cache, and a pair the cache has lost just gets
// a second, identical plan.
PlanKeys plan_keys(const host::StepTables& tables, size_t n) {
  constexpr int kCacheBits = 8;
  struct Slot {
    uint64_t key;
    int32_t pos;
  };
  Slot cache[1 << kCacheBits];
  for (Slot& s : cache) s.key = ~uint64_t{0};  // no key: rows are below 2^31
  PlanKeys out;
  out.of.resize(n);
  uint64_t last = ~uint64_t{0};
  int32_t last_pos = -1;
  for (size_t t = 0; t < n; ++t) {
    const int64_t row = tables.index[2 * t + 1];
    const float count = tables.steps[tables.index[2 * t]];
    uint32_t bits;
    memcpy(&bits, &count, sizeof(bits));
    const uint64_t key = (static_cast<uint64_t>(row) << 32) | bits;
    if (key != last) {
      Slot& s = cache[(key * 0x9E3779B97F4A7C15ull) >> (64 - kCacheBits)];
      if (s.key != key) {
        s.key = key;
        s.pos = static_cast<int32_t>(out.rows.size());
        out.rows.push_back(row);
        out.counts.push_back(count);
      }
      last = key;
      last_pos = s.pos;
    }
    out.of[t] = last_pos;
  }
  return out;
}

Tensor state_table(const TensorList& params, const TensorList& s0, const TensorList& s1, const TensorList& s2,
                   const std::optional<TensorList>& master) {
  const TensorList* slots[kMaxSlots] = {&s0, &s1, &s2};
  return host::state_table(params, slots, master, host::codes().cpu);
}

}  // namespace cpu
}  // namespace fusedopt
