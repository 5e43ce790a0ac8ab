// The non-template parts of the CPU traversal: instruction-set detection, the per-call (row, t)
// keys of the plans, and the CPU kernels of fusedopt::state_table and fusedopt::lookahead.
#include "multi_tensor.h"

#include "fusedopt/algos/lookahead.h"

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

// A tensor's key is its row (below 2^31, checked) and the bits of its counters (the step count,
// then the algorithm's scalar states). Consecutive tensors usually share one (a param group at
// one step count); other repeats (groups that interleave) are found in a small direct-mapped
// cache, and a key the cache has lost just gets a second, identical plan.
PlanKeys plan_keys(const host::StepTables& tables, size_t n, int counters) {
  constexpr int kCacheBits = 8;
  struct Key {
    uint64_t a, b;  // row and step count; up to two scalar states
    bool operator==(const Key& o) const { return a == o.a && b == o.b; }
  };
  struct Slot {
    Key key;
    int32_t pos;
  };
  const Key none{~uint64_t{0}, ~uint64_t{0}};  // no key: rows are below 2^31
  Slot cache[1 << kCacheBits];
  for (Slot& s : cache) s.key = none;
  PlanKeys out;
  out.of.resize(n);
  Key last = none;
  int32_t last_pos = -1;
  auto bits = [](float x) {
    uint32_t b;
    memcpy(&b, &x, sizeof(b));
    return static_cast<uint64_t>(b);
  };
  for (size_t t = 0; t < n; ++t) {
    const int64_t row = tables.index[2 * t + 1];
    const float* cell = tables.steps + tables.index[2 * t];
    Key key{(static_cast<uint64_t>(row) << 32) | bits(cell[0]), 0};
    if (counters > 1) key.b = bits(cell[1]) | (counters > 2 ? bits(cell[2]) << 32 : 0);
    if (!(key == last)) {
      Slot& s = cache[((key.a ^ (key.b * 0xC2B2AE3D27D4EB4Full)) * 0x9E3779B97F4A7C15ull) >> (64 - kCacheBits)];
      if (!(s.key == key)) {
        s.key = key;
        s.pos = static_cast<int32_t>(out.rows.size());
        out.rows.push_back(row);
        out.slots.push_back(tables.index[2 * t]);
      }
      last = key;
      last_pos = s.pos;
    }
    out.of[t] = last_pos;
  }
  return out;
}

Tensor state_table(const TensorList& params, const TensorList& s0, const TensorList& s1, const TensorList& s2,
                   const std::optional<TensorList>& master, const std::optional<TensorList>& scales,
                   const std::optional<Tensor>& rounding, const std::optional<TensorList>& grads) {
  const TensorList* slots[kMaxSlots] = {&s0, &s1, &s2};
  return host::state_table(params, slots, master, host::codes().cpu, scales, rounding, /*lowbit=*/true, grads);
}

// Lookahead's slow-weight update: the rule of algos/lookahead.h on the one traversal, one plan
// for every tensor (its row is alpha).
void lookahead(const TensorList& params, const TensorList& slow, double alpha,
               const std::optional<TensorList>& master) {
  const host::CheckedCall call = host::check_lookahead(params, slow, master, host::codes().cpu);
  if (call.tensors.empty()) return;
  const Kernels<Lookahead> kernels =
      pick_kernels<Lookahead>("fusedopt::lookahead", 0, call.pd, call.sd, call.master, false);
  const double row[Lookahead::kNumHyper] = {alpha};
  const std::vector<Plan<Lookahead>> plans = {
      Plan<Lookahead>{Lookahead::make(row), Preamble::identity(), kernels.fn[0][0], 0}};
  const std::vector<Item> items = make_items(call.tensors.size(), [&](size_t t) { return call.tensors[t].n; });
  traverse<Lookahead>(call, items, plans, std::vector<int32_t>(call.tensors.size(), 0), nullptr);
}

}  // namespace cpu
}  // namespace fusedopt
