// The CPU multi-tensor traversal: one per language, serving every algorithm.
//
// A group (params, grads, up to three float32 state slots) is cut into work
// items of at most kChunk elements of one tensor. The items are split into as
// many contiguous runs as there are threads, balanced by element count, and
// the whole group runs in ONE parallel region (torch's intra-op pool, so it
// follows torch.get_num_threads()). Each item runs an inner loop that the
// compiler vectorises; the loop is compiled once per instruction set and
// picked at load time (function multiversioning), so the binary runs on any
// x86-64 and uses AVX2/AVX-512 where present.
#pragma once

#include <stdint.h>

#include <algorithm>
#include <optional>
#include <vector>

#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>

#include "fusedopt/common.h"
#include "fusedopt/dtype.h"

// Note [instruction sets]: every inner loop is compiled three times: for the
// x86-64 baseline (SSE2), x86-64-v3 (AVX2, FMA, F16C) and x86-64-v4 (AVX-512),
// and picked at run time (cpu_isa()). The math is always inlined into these
// functions, so it takes their instruction set; it never uses -march=native.
// FUSEDOPT_CPU_ISA=baseline|avx2|avx512 caps the choice (for tests and timing).
#if defined(__x86_64__) && defined(__GNUC__)
#define FUSEDOPT_X86_CLONES 1
#define FUSEDOPT_TARGET_V3 __attribute__((target("arch=x86-64-v3")))
#define FUSEDOPT_TARGET_V4 __attribute__((target("arch=x86-64-v4")))
#else
#define FUSEDOPT_X86_CLONES 0
#endif

namespace fusedopt {
namespace cpu {

using torch::stable::Tensor;
using TensorList = std::vector<Tensor>;

// Elements per work item. Big enough that per-item overhead vanishes, small
// enough that 1,000-tensor groups and single huge tensors both balance.
constexpr int64_t kChunk = 16384;
// Below this many elements per thread, waking the pool costs more than it saves.
constexpr int64_t kMinElementsPerThread = 32768;
// Per-item fixed cost, in element equivalents, for load balancing.
constexpr int64_t kItemCost = 64;

constexpr int kMaxSlots = 3;

// The raw pointers of one group, validated.
struct Group {
  DType pdtype = DType::kFloat;  // params and grads
  DType sdtype = DType::kFloat;  // states: float32 or bfloat16
  bool master = false;           // float32 master weights (16-bit params only)
  std::vector<void*> p;
  std::vector<const void*> g;
  std::vector<float*> m;  // master weights
  std::vector<void*> s[kMaxSlots];
  std::vector<int64_t> n;
};

// ---------------------------------------------------------------------------
// Instruction-set dispatch.
enum class Isa : int { kBaseline = 0, kAvx2 = 1, kAvx512 = 2 };
Isa cpu_isa();           // detected once; capped by FUSEDOPT_CPU_ISA
const char* isa_name();  // of cpu_isa()

// The inner loop of one work item: load, upcast, preamble, update, round, store.
// With MASTER the float32 master weight is the parameter the update reads and
// writes; the 16-bit param receives its rounding in the same pass.
template <class M, class F, DType PD, DType SD, bool MASTER, int WD>
FUSEDOPT_INLINE void update_loop(const F& f_, const Preamble& pre_, void* p_, const void* g_,
                                 float* master_, void* s0_, void* s1_, void* s2_, int64_t n) {
  // Note [local copies]: the scalars are copied out of memory the stores could alias as far
  // as the compiler knows; read through the references, they defeat vectorisation.
  const F f = f_;
  const Preamble pre = pre_;
  using PT = typename Storage<PD>::type;
  using ST = typename Storage<SD>::type;
  PT* __restrict p = static_cast<PT*>(p_);
  const PT* __restrict g = static_cast<const PT*>(g_);
  float* __restrict master = master_;
  ST* __restrict s0 = static_cast<ST*>(s0_);
  ST* __restrict s1 = static_cast<ST*>(s1_);
  ST* __restrict s2 = static_cast<ST*>(s2_);
  constexpr int kSlots = F::kSlots;
  for (int64_t i = 0; i < n; ++i) {
    float pv = MASTER ? master[i] : load_as_float<PD>(p[i]);
    float gv = load_as_float<PD>(g[i]);
    float a = 0.0f, b = 0.0f, c = 0.0f;
    if (kSlots & kSlot0) a = load_as_float<SD>(s0[i]);
    if (kSlots & kSlot1) b = load_as_float<SD>(s1[i]);
    if (kSlots & kSlot2) c = load_as_float<SD>(s2[i]);
    pre.template apply<WD, M>(pv, gv);
    f.template apply<M>(pv, gv, a, b, c);
    if (MASTER) master[i] = pv;
    p[i] = store_from_float<PD>(pv);
    if (kSlots & kSlot0) s0[i] = store_from_float<SD>(a);
    if (kSlots & kSlot1) s1[i] = store_from_float<SD>(b);
    if (kSlots & kSlot2) s2[i] = store_from_float<SD>(c);
  }
}

#define FUSEDOPT_RANGE_PARAMS                                                              \
  const F &f, const Preamble &pre, void *p, const void *g, float *master, void *s0, void *s1, \
      void *s2, int64_t n
#define FUSEDOPT_RANGE_ARGS f, pre, p, g, master, s0, s1, s2, n

template <class F, DType PD, DType SD, bool MASTER, int WD>
__attribute__((noinline)) void update_range_baseline(FUSEDOPT_RANGE_PARAMS) {
#if FUSEDOPT_X86_CLONES
  update_loop<SoftFma, F, PD, SD, MASTER, WD>(FUSEDOPT_RANGE_ARGS);
#else
  update_loop<HwFma, F, PD, SD, MASTER, WD>(FUSEDOPT_RANGE_ARGS);
#endif
}

#if FUSEDOPT_X86_CLONES
template <class F, DType PD, DType SD, bool MASTER, int WD>
FUSEDOPT_TARGET_V3 __attribute__((noinline)) void update_range_v3(FUSEDOPT_RANGE_PARAMS) {
  update_loop<HwFma, F, PD, SD, MASTER, WD>(FUSEDOPT_RANGE_ARGS);
}
template <class F, DType PD, DType SD, bool MASTER, int WD>
FUSEDOPT_TARGET_V4 __attribute__((noinline)) void update_range_v4(FUSEDOPT_RANGE_PARAMS) {
  update_loop<HwFma, F, PD, SD, MASTER, WD>(FUSEDOPT_RANGE_ARGS);
}
#endif

template <class F>
using UpdateRangeFn = void (*)(const F&, const Preamble&, void*, const void*, float*, void*, void*,
                               void*, int64_t);

template <class F, DType PD, DType SD, bool MASTER, int WD>
UpdateRangeFn<F> pick_update_range() {
#if FUSEDOPT_X86_CLONES
  switch (cpu_isa()) {
    case Isa::kAvx512: return &update_range_v4<F, PD, SD, MASTER, WD>;
    case Isa::kAvx2: return &update_range_v3<F, PD, SD, MASTER, WD>;
    default: break;
  }
#endif
  return &update_range_baseline<F, PD, SD, MASTER, WD>;
}

// ---------------------------------------------------------------------------
// Work items and the single parallel region.
struct Item {
  int64_t tensor;
  int64_t begin;
  int64_t len;
};

// Calls body(tensor, begin, len) for every item of a group of sizes `n`, in
// one parallel region whose runs are balanced by element count.
template <class Body>
void for_each_item(const std::vector<int64_t>& n, const Body& body) {
  std::vector<Item> items;
  int64_t total = 0;
  for (size_t t = 0; t < n.size(); ++t) {
    for (int64_t b = 0; b < n[t]; b += kChunk) {
      int64_t len = std::min(kChunk, n[t] - b);
      items.push_back({static_cast<int64_t>(t), b, len});
      total += len + kItemCost;
    }
  }
  if (items.empty()) return;
  int64_t threads = static_cast<int64_t>(torch::stable::get_num_threads());
  int64_t runs = std::max<int64_t>(1, std::min<int64_t>(threads, total / kMinElementsPerThread));
  runs = std::min<int64_t>(runs, static_cast<int64_t>(items.size()));
  if (runs == 1) {
    for (const Item& it : items) body(it.tensor, it.begin, it.len);
    return;
  }
  // start[r] = first item of run r: the item where the running cost crosses r/runs.
  std::vector<int64_t> start(runs + 1, static_cast<int64_t>(items.size()));
  start[0] = 0;
  int64_t acc = 0;
  int64_t r = 1;
  for (size_t i = 0; i < items.size() && r < runs; ++i) {
    while (r < runs && acc >= (total * r) / runs) start[r++] = static_cast<int64_t>(i);
    acc += items[i].len + kItemCost;
  }
  torch::stable::parallel_for(0, runs, 1, [&](int64_t rb, int64_t re) {
    for (int64_t k = rb; k < re; ++k) {
      for (int64_t i = start[k]; i < start[k + 1]; ++i) {
        const Item& it = items[i];
        body(it.tensor, it.begin, it.len);
      }
    }
  });
}

inline size_t dtype_size(DType d) { return d == DType::kFloat ? 4 : 2; }

template <class F>
void run_group(const Group& grp, const F& f, const Preamble& pre, UpdateRangeFn<F> fn) {
  const size_t pb = dtype_size(grp.pdtype);
  const size_t sb = dtype_size(grp.sdtype);
  for_each_item(grp.n, [&](int64_t t, int64_t b, int64_t len) {
    void* p = static_cast<char*>(grp.p[t]) + b * pb;
    const void* g = static_cast<const char*>(grp.g[t]) + b * pb;
    float* m = grp.master ? grp.m[t] + b : nullptr;
    void* s0 = (F::kSlots & kSlot0) ? static_cast<char*>(grp.s[0][t]) + b * sb : nullptr;
    void* s1 = (F::kSlots & kSlot1) ? static_cast<char*>(grp.s[1][t]) + b * sb : nullptr;
    void* s2 = (F::kSlots & kSlot2) ? static_cast<char*>(grp.s[2][t]) + b * sb : nullptr;
    fn(f, pre, p, g, m, s0, s1, s2, len);
  });
}

// Runtime (param dtype, state dtype, master, weight decay mode) -> instantiation.
// Decoupled decay is a multiply by (1 - lr * wd), exactly 1 when there is none,
// so only coupled decay needs its own instantiation.
template <class F, DType PD, DType SD, bool MASTER>
UpdateRangeFn<F> pick_wd(bool coupled) {
  return coupled ? pick_update_range<F, PD, SD, MASTER, kWdCoupled>()
                 : pick_update_range<F, PD, SD, MASTER, kWdDecoupled>();
}

template <class F, DType SD>
UpdateRangeFn<F> pick_param(DType pd, bool master, bool coupled) {
  switch (pd) {
    case DType::kBFloat16:
      return master ? pick_wd<F, DType::kBFloat16, SD, true>(coupled)
                    : pick_wd<F, DType::kBFloat16, SD, false>(coupled);
    case DType::kHalf:
      return master ? pick_wd<F, DType::kHalf, SD, true>(coupled)
                    : pick_wd<F, DType::kHalf, SD, false>(coupled);
    default:
      return pick_wd<F, DType::kFloat, SD, false>(coupled);
  }
}

template <class F>
void launch(const Group& grp, const F& f, const Preamble& pre, int wd_mode) {
  const bool coupled = wd_mode == kWdCoupled;
  UpdateRangeFn<F> fn = grp.sdtype == DType::kBFloat16
                            ? pick_param<F, DType::kBFloat16>(grp.pdtype, grp.master, coupled)
                            : pick_param<F, DType::kFloat>(grp.pdtype, grp.master, coupled);
  run_group(grp, f, pre, fn);
}

// ---------------------------------------------------------------------------
// Argument checking and unpacking (host side, once per call).

// The step's arguments after validation. `skip` is set when found_inf != 0
// or there is nothing to do.
struct StepArgs {
  Group grp;
  Preamble pre;
  int wd_mode = kWdNone;
  bool skip = false;
};

// Reads a 0-dim float32 CPU tensor.
float read_scalar_tensor(const Tensor& t, const char* what);

// Validates params/grads/slots and fills the group. `slots[k]` is nullptr or
// empty when slot k is inactive; `required` is the mask of slots that must be
// present.
StepArgs prepare_step(const char* algo,
                      const TensorList& params, const TensorList& grads,
                      const TensorList* slots[kMaxSlots], int required,
                      const std::vector<double>& scalars, size_t n_scalars,
                      const std::vector<bool>& flags, size_t n_flags,
                      const std::optional<Tensor>& grad_scale,
                      const std::optional<Tensor>& found_inf,
                      const std::optional<TensorList>& master);

// flags[i], or false when the list is too short (prepare_step reports that).
inline bool flag(const std::vector<bool>& flags, size_t i) { return i < flags.size() && flags[i]; }
inline float scalar(const std::vector<double>& s, size_t i) {
  return i < s.size() ? static_cast<float>(s[i]) : 0.0f;
}
// 1 - x computed in double, rounded once (as torch rounds a Python float).
inline float one_minus(const std::vector<double>& s, size_t i) {
  return i < s.size() ? static_cast<float>(1.0 - s[i]) : 0.0f;
}

// Calls fn(std::integral_constant<bool, b>) for a runtime bool.
template <class Fn>
FUSEDOPT_INLINE void with_bool(bool b, const Fn& fn) {
  if (b) fn(std::true_type{});
  else fn(std::false_type{});
}

}  // namespace cpu
}  // namespace fusedopt
