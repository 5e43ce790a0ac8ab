// The CPU multi-tensor traversal: one per language, serving every algorithm.
//
// A call (params, grads, up to three state slots, master weights, of any number of param groups)
// is cut into work items of at most kChunk elements of one tensor. The items are split into as
// many contiguous runs as there are threads, balanced by element count, and the whole call runs
// in ONE parallel region (torch's intra-op pool, so it follows torch.get_num_threads()). Each
// item runs an inner loop that the compiler vectorises; the loop is compiled once per
// instruction set and picked at load time (function multiversioning), so the binary runs on any
// x86-64 and uses AVX2/AVX-512 where present.
//
// Note [per-tensor plans]: a tensor's update depends on its hyperparameter row and its step
// count t: the algorithm's Args (float64 → float32 once, algos/<name>.h), the preamble, and the
// instantiation its items call (coupled weight decay or not, the algorithm's per-tensor variant
// bit). All of it is computed on the host before the parallel region, once per distinct
// (row, t) pair of the call (consecutive tensors of a param group share one), and each work item
// calls its plan's function on its plan's arguments.
#pragma once

#include <stdint.h>

#include <algorithm>
#include <optional>
#include <string>
#include <vector>

#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>

#include "fusedopt/common.h"
#include "fusedopt/dtype.h"
#include "fusedopt/lowbit.h"
#include "fusedopt/tensor_info.h"
#include "isa.h"  // Note [instruction sets]
#include "random_bits.h"
#include "step.h"

namespace fusedopt {
namespace cpu {

// Elements per work item. Big enough that per-item overhead vanishes, small
// enough that 1,000-tensor calls and single huge tensors both balance.
constexpr int64_t kChunk = 16384;
static_assert(kChunk % lowbit::kQuantBlock == 0, "an item must start on an 8-bit block");
// Below this many elements per thread, waking the pool costs more than it saves.
constexpr int64_t kMinElementsPerThread = 32768;
// Per-item fixed cost, in element equivalents, for load balancing.
constexpr int64_t kItemCost = 64;

constexpr int kMaxSlots = host::kStateSlots;

// ---------------------------------------------------------------------------
// Instruction-set dispatch.
enum class Isa : int { kBaseline = 0, kAvx2 = 1, kAvx512 = 2 };
Isa cpu_isa();           // detected once; capped by FUSEDOPT_CPU_ISA
const char* isa_name();  // of cpu_isa()

// What a work item of a low-bit call passes beside its addresses (Note [low-bit items]).
struct ItemExtras {
  float* scale[kMaxSlots];  // 8-bit states: per slot, the scale of the item's first block
  uint64_t seed, step, index;  // stochastic rounding: element i's bits are random_bits(seed, step, index + i)
};

// Note [lane sums]: a reduction the compiler may not reassociate does not vectorise, so the sums
// of a reducing algorithm go to kLanes float32 accumulators, element i of an item to lane
// i % kLanes, each lane over at most kChunk / kLanes elements; the lanes are added in order in
// float64 at the end of the item. The order is fixed, so every instruction-set clone gives the
// same sums.
constexpr int64_t kLanes = 16;

// element(i, lane0, lane1) for i in [0, n), lane k of an element i = k mod kLanes (n and the
// first i being multiples of kLanes but for the tail), or without lanes.
template <bool REDUCES, class Element>
FUSEDOPT_INLINE void for_elements(int64_t n, const Element& element, float* lane0, float* lane1) {
  if constexpr (REDUCES) {
    int64_t i = 0;
    for (; i + kLanes <= n; i += kLanes) {
      for (int64_t k = 0; k < kLanes; ++k) element(i + k, lane0[k], lane1[k]);
    }
    for (int64_t k = 0; i < n; ++i, ++k) element(i, lane0[k], lane1[k]);
  } else {
    float unused0 = 0.0f, unused1 = 0.0f;
    for (int64_t i = 0; i < n; ++i) element(i, unused0, unused1);
  }
}

// One block of an 8-bit state, quantized (fusedopt/lowbit.py): its scale is the largest |x| (the
// maximum of the bit patterns of |x|, in which NaN is above inf: a NaN propagates), and each
// code the map's code of x / scale (0 / 0 is not taken: a zero block stores the code of 0).
template <bool SIGNED>
FUSEDOPT_INLINE void quantize_block(const float* __restrict t, int64_t n, uint8_t* __restrict codes,
                                    float* __restrict scale) {
  using Map = lowbit::DynamicMap<SIGNED>;
  uint32_t m = 0;
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t a = fo_f2u(t[i]) & 0x7fffffffu;
    m = a > m ? a : m;
  }
  const float absmax = fo_u2f(m);
  *scale = absmax;
  if (absmax == 0.0f) {
    for (int64_t i = 0; i < n; ++i) codes[i] = Map::kZeroCode;
    return;
  }
  for (int64_t i = 0; i < n; ++i) codes[i] = Map::code(t[i] / absmax);
}

// out[k] = lowbit::random_bits(seed, step, index + k) for k < n, as the clone of instruction set I
// computes them (Note [random bits by run]).
template <Isa I>
FUSEDOPT_INLINE void clone_random_bits(uint64_t seed, uint64_t step, uint64_t index, uint32_t* __restrict out,
                                       int64_t n) {
#if FUSEDOPT_X86_CLONES
  if constexpr (I != Isa::kBaseline) {
    random_bits_run_avx2(seed, step, index, out, n);
  } else {
    random_bits_run(seed, step, index, out, n);
  }
#else
  random_bits_run(seed, step, index, out, n);
#endif
}

// block(b, len, bits) for the blocks [b, b + len) of lowbit::kQuantBlock elements of an item of n
// elements, with ROUND bits[k] the random bits of its element b + k (Note [random bits by run]).
template <Isa I, bool ROUND, class Block>
FUSEDOPT_INLINE void for_blocks(int64_t n, const ItemExtras& ex, const Block& block) {
  constexpr int64_t kB = lowbit::kQuantBlock;
  alignas(64) uint32_t bits[ROUND ? kB : 1];
  for (int64_t b = 0; b < n; b += kB) {
    const int64_t len = std::min(kB, n - b);
    if constexpr (ROUND) clone_random_bits<I>(ex.seed, ex.step, ex.index + static_cast<uint64_t>(b), bits, len);
    block(b, len, static_cast<const uint32_t*>(bits));
  }
}

// The inner loop of one work item: load, upcast, preamble, update, round, store.
// With MASTER the float32 master weight is the parameter the update reads and
// writes; the 16-bit param receives its rounding in the same pass, to nearest or, with ROUND,
// stochastically (Note [low-bit items]).
// An algorithm that reduces (A::kReduces, LAMB) also adds its per-element contributions to two
// float64 sums, added to sums[0], sums[1] at the end of the item (Note [reducing algorithms]);
// its second traversal (the per-tensor bit) leaves the states as the first stored them.
//
// Note [low-bit items]: with 8-bit states (SD kUInt8) an item is walked block by block (an item
// starts on a block: kChunk is a multiple of lowbit::kQuantBlock): each element's states are
// dequantized (map[code] * the block's scale, one multiply) into float32, updated, kept in a
// block buffer, and the block is quantized when its elements are done. Both the map's value and
// the code are arithmetic, lowbit::DynamicMap: a table read map[code] is a gather, which GCC 12
// does not vectorise here (no gathers in its generic tuning), and the whole element loop, the
// algorithm's update included, would run scalar. With ROUND each param element i of the item is stored as
// lowbit::stochastic_round of its float32 value, with the bits of random_bits(seed, the tensor's
// step count, offset + its index in the tensor), computed for a block of kQuantBlock elements
// before the block's element loop (Note [random bits by run]), so that an item of float states is
// walked block by block too. M: the clone's fused multiply-add; I: its instruction set.
template <class M, Isa I, class A, int V, DType PD, DType SD, bool MASTER, bool COUPLED, bool ROUND>
FUSEDOPT_INLINE void update_loop(const typename A::Args& a_, const Preamble& pre_, void* p_,
                                 const void* g_, float* master_, void* s0_, void* s1_, void* s2_,
                                 int64_t n, double* sums, const ItemExtras& ex_) {
  // Note [local copies]: the scalars are copied out of memory the stores could alias as far
  // as the compiler knows; read through the references, they defeat vectorisation.
  const typename A::Args a = a_;
  const Preamble pre = pre_;
  const ItemExtras ex = ex_;
  using PT = typename Storage<PD>::type;
  using ST = typename Storage<SD>::type;
  PT* __restrict p = static_cast<PT*>(p_);
  const PT* __restrict g = static_cast<const PT*>(g_);
  float* __restrict master = master_;
  ST* __restrict s0 = static_cast<ST*>(s0_);
  ST* __restrict s1 = static_cast<ST*>(s1_);
  ST* __restrict s2 = static_cast<ST*>(s2_);
  constexpr int kSlots = A::slots(V);
  constexpr bool kWrites = !(A::kReduces && (V & A::kTensorBit));
  // The update of element i from its states x, y, z (in, and out when kWrites); with ROUND, r is
  // its random bits.
  auto update = [&](int64_t i, uint32_t r, float& x, float& y, float& z, float& acc0,
                    float& acc1) __attribute__((always_inline)) {
    float pv = MASTER ? master[i] : load_as_float<PD>(p[i]);
    float gv = 0.0f;
    if constexpr (A::kReadsGrad) {
      gv = load_as_float<PD>(g[i]);
      pre.template apply<COUPLED, M>(pv, gv);
    }
    if constexpr (A::kReduces) {
      A::template apply<V, M>(a, pv, gv, x, y, z, acc0, acc1);
    } else {
      A::template apply<V, M>(a, pv, gv, x, y, z);
    }
    if (MASTER) master[i] = pv;
    if constexpr (ROUND) {
      p[i] = lowbit::stochastic_round<PD>(pv, r);
    } else {
      (void)r;
      p[i] = store_from_float<PD>(pv);
    }
  };
  float lane0[kLanes] = {}, lane1[kLanes] = {};
  if constexpr (SD == DType::kUInt8) {
    constexpr int64_t kB = lowbit::kQuantBlock;
    constexpr bool kSigned0 = (A::kSignedSlots & 1) != 0;
    constexpr bool kSigned1 = (A::kSignedSlots & 2) != 0;
    constexpr bool kSigned2 = (A::kSignedSlots & 4) != 0;
    using Map0 = lowbit::DynamicMap<kSigned0>;
    using Map1 = lowbit::DynamicMap<kSigned1>;
    using Map2 = lowbit::DynamicMap<kSigned2>;
    alignas(64) float t0[kB], t1[kB], t2[kB];
    for_blocks<I, ROUND>(n, ex, [&](int64_t b, int64_t len, const uint32_t* __restrict bits) __attribute__((always_inline)) {
      const int64_t blk = b / kB;
      const float c0 = (kSlots & kSlot0) ? ex.scale[0][blk] : 0.0f;
      const float c1 = (kSlots & kSlot1) ? ex.scale[1][blk] : 0.0f;
      const float c2 = (kSlots & kSlot2) ? ex.scale[2][blk] : 0.0f;
      const uint8_t* __restrict q0c = s0 + b;
      const uint8_t* __restrict q1c = s1 + b;
      const uint8_t* __restrict q2c = s2 + b;
      auto element = [&](int64_t k, float& acc0, float& acc1) __attribute__((always_inline)) {
        float x = (kSlots & kSlot0) ? Map0::value(q0c[k]) * c0 : 0.0f;
        float y = (kSlots & kSlot1) ? Map1::value(q1c[k]) * c1 : 0.0f;
        float z = (kSlots & kSlot2) ? Map2::value(q2c[k]) * c2 : 0.0f;
        update(b + k, ROUND ? bits[k] : 0u, x, y, z, acc0, acc1);
        t0[k] = x;
        t1[k] = y;
        t2[k] = z;
      };
      for_elements<A::kReduces>(len, element, lane0, lane1);
      if constexpr (kWrites) {
        if (kSlots & kSlot0) quantize_block<kSigned0>(t0, len, s0 + b, ex.scale[0] + blk);
        if (kSlots & kSlot1) quantize_block<kSigned1>(t1, len, s1 + b, ex.scale[1] + blk);
        if (kSlots & kSlot2) quantize_block<kSigned2>(t2, len, s2 + b, ex.scale[2] + blk);
      }
    });
  } else {
    auto element = [&](int64_t i, uint32_t r, float& acc0, float& acc1) __attribute__((always_inline)) {
      float x = (kSlots & kSlot0) ? load_as_float<SD>(s0[i]) : 0.0f;
      float y = (kSlots & kSlot1) ? load_as_float<SD>(s1[i]) : 0.0f;
      float z = (kSlots & kSlot2) ? load_as_float<SD>(s2[i]) : 0.0f;
      update(i, r, x, y, z, acc0, acc1);
      if constexpr (kWrites) {
        if (kSlots & kSlot0) s0[i] = store_from_float<SD>(x);
        if (kSlots & kSlot1) s1[i] = store_from_float<SD>(y);
        if (kSlots & kSlot2) s2[i] = store_from_float<SD>(z);
      }
    };
    if constexpr (ROUND) {
      // by blocks, as an item of 8-bit states: a block starts on a multiple of kLanes, so each
      // element keeps its lane (Note [lane sums])
      for_blocks<I, true>(n, ex, [&](int64_t b, int64_t len, const uint32_t* __restrict bits) __attribute__((always_inline)) {
        auto at = [&](int64_t k, float& acc0, float& acc1) __attribute__((always_inline)) {
          element(b + k, bits[k], acc0, acc1);
        };
        for_elements<A::kReduces>(len, at, lane0, lane1);
      });
    } else {
      auto at = [&](int64_t i, float& acc0, float& acc1) __attribute__((always_inline)) { element(i, 0u, acc0, acc1); };
      for_elements<A::kReduces>(n, at, lane0, lane1);
    }
  }
  if (A::kReduces && sums != nullptr) {
    for (int64_t k = 0; k < kLanes; ++k) {
      sums[0] += lane0[k];
      sums[1] += lane1[k];
    }
  }
}

#define FUSEDOPT_RANGE_PARAMS                                                                   \
  const typename A::Args &a, const Preamble &pre, void *p, const void *g, float *master, void *s0, \
      void *s1, void *s2, int64_t n, double *sums, const ItemExtras &ex
#define FUSEDOPT_RANGE_ARGS a, pre, p, g, master, s0, s1, s2, n, sums, ex
#define FUSEDOPT_LOOP_TARGS A, V, PD, SD, MASTER, COUPLED, ROUND

template <class A, int V, DType PD, DType SD, bool MASTER, bool COUPLED, bool ROUND>
__attribute__((noinline)) void update_range_baseline(FUSEDOPT_RANGE_PARAMS) {
#if FUSEDOPT_X86_CLONES
  update_loop<SoftFma, Isa::kBaseline, FUSEDOPT_LOOP_TARGS>(FUSEDOPT_RANGE_ARGS);
#else
  update_loop<HwFma, Isa::kBaseline, FUSEDOPT_LOOP_TARGS>(FUSEDOPT_RANGE_ARGS);
#endif
}

#if FUSEDOPT_X86_CLONES
template <class A, int V, DType PD, DType SD, bool MASTER, bool COUPLED, bool ROUND>
FUSEDOPT_TARGET_V3 __attribute__((noinline)) void update_range_v3(FUSEDOPT_RANGE_PARAMS) {
  update_loop<HwFma, Isa::kAvx2, FUSEDOPT_LOOP_TARGS>(FUSEDOPT_RANGE_ARGS);
}
template <class A, int V, DType PD, DType SD, bool MASTER, bool COUPLED, bool ROUND>
FUSEDOPT_TARGET_V4 __attribute__((noinline)) void update_range_v4(FUSEDOPT_RANGE_PARAMS) {
  update_loop<HwFma, Isa::kAvx512, FUSEDOPT_LOOP_TARGS>(FUSEDOPT_RANGE_ARGS);
}
#endif

template <class A>
using RangeFn = void (*)(const typename A::Args&, const Preamble&, void*, const void*, float*, void*,
                         void*, void*, int64_t, double*, const ItemExtras&);

// Note [low-bit clones]: the 8-bit and stochastic-rounding loops are compiled for the baseline
// and x86-64-v3 only (an AVX-512 machine runs the v3 clone): each clone of them costs as much
// build time as all the float ones of an algorithm. Their time is arithmetic (the 8-bit map's,
// Note [arithmetic map] in lowbit.h, and Philox's multiplies), which wider vectors would speed
// up; an AVX-512 clone is not built and has not been measured.
template <class A, int V, DType PD, DType SD, bool MASTER, bool COUPLED, bool ROUND>
RangeFn<A> pick_isa() {
#if FUSEDOPT_X86_CLONES
  constexpr bool kLowBit = SD == DType::kUInt8 || ROUND;
  switch (cpu_isa()) {
    case Isa::kAvx512:
      if constexpr (!kLowBit) return &update_range_v4<FUSEDOPT_LOOP_TARGS>;
      return &update_range_v3<FUSEDOPT_LOOP_TARGS>;
    case Isa::kAvx2: return &update_range_v3<FUSEDOPT_LOOP_TARGS>;
    default: break;
  }
#endif
  return &update_range_baseline<FUSEDOPT_LOOP_TARGS>;
}

// The instantiations one call can need: fn[tensor bit][coupled], for its call-wide variant,
// storage dtypes and master weights (a tensor's plan picks one of the four).
template <class A>
struct Kernels {
  RangeFn<A> fn[2][2];
};

template <class A>
Kernels<A> pick_kernels(const std::string& name, int variant, DType pd, DType sd, bool master, bool round) {
  Kernels<A> k{};
  const bool found = with_call_variant<A>(variant, [&](auto v) {
    with_storage<A::kHalfStates, A::kLowBit>(pd, sd, master, round, [&](auto pdc, auto sdc, auto mc, auto rc) {
      constexpr int V = decltype(v)::value;
      constexpr int VT = A::canonical(V | A::kTensorBit);
      static_assert(A::slots(VT) == A::slots(V), "a per-tensor variant must not change the slots");
      constexpr DType PD = decltype(pdc)::value, SD = decltype(sdc)::value;
      constexpr bool MASTER = decltype(mc)::value, ROUND = decltype(rc)::value;
      k.fn[0][0] = pick_isa<A, V, PD, SD, MASTER, false, ROUND>();
      k.fn[0][1] = pick_isa<A, V, PD, SD, MASTER, true, ROUND>();
      k.fn[1][0] = pick_isa<A, VT, PD, SD, MASTER, false, ROUND>();
      k.fn[1][1] = pick_isa<A, VT, PD, SD, MASTER, true, ROUND>();
    });
  });
  STD_TORCH_CHECK(found, name, ": no kernel for variant ", variant, " (a bug in its descriptor)");
  return k;
}

// ---------------------------------------------------------------------------
// Work items and the single parallel region.
struct Item {
  int64_t tensor;
  int64_t begin;
  int64_t len;
};

// The work items of `count` tensors of sizes size(t), in tensor order.
template <class Size>
std::vector<Item> make_items(size_t count, const Size& size) {
  std::vector<Item> items;
  for (size_t t = 0; t < count; ++t) {
    const int64_t n = size(t);
    for (int64_t b = 0; b < n; b += kChunk) items.push_back({static_cast<int64_t>(t), b, std::min(kChunk, n - b)});
  }
  return items;
}

// Calls body(tensor, begin, len, item index) for every item, in one parallel region whose runs
// are balanced by element count.
template <class Body>
void run_items(const std::vector<Item>& items, const Body& body) {
  if (items.empty()) return;
  int64_t total = 0;
  for (const Item& it : items) total += it.len + kItemCost;
  int64_t threads = static_cast<int64_t>(torch::stable::get_num_threads());
  int64_t runs = std::max<int64_t>(1, std::min<int64_t>(threads, total / kMinElementsPerThread));
  runs = std::min<int64_t>(runs, static_cast<int64_t>(items.size()));
  if (runs == 1) {
    for (size_t i = 0; i < items.size(); ++i) body(items[i].tensor, items[i].begin, items[i].len, i);
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
        body(it.tensor, it.begin, it.len, static_cast<size_t>(i));
      }
    }
  });
}

// Calls body(tensor, begin, len, item index) for every item of `count` tensors of sizes size(t).
template <class Size, class Body>
void for_each_item(size_t count, const Size& size, const Body& body) {
  run_items(make_items(count, size), body);
}

inline size_t dtype_size(DType d) { return d == DType::kFloat ? 4 : d == DType::kUInt8 ? 1 : 2; }

// The distinct (hyper row, counters) keys of a call in first-seen order, and each tensor's
// position among them (Note [per-tensor plans]); `counters` is the algorithm's kNumCounters (the
// step count, then its per-tensor scalar states), at most 3.
struct PlanKeys {
  std::vector<int64_t> rows;
  std::vector<int64_t> slots;  // the counters of the key's first tensor: steps[slot...]
  std::vector<int32_t> of;     // per tensor
};
PlanKeys plan_keys(const host::StepTables& tables, size_t n, int counters);

// ---------------------------------------------------------------------------
// The traversal.

// What the items of a tensor run: its Args, its preamble and the instantiation for them.
template <class A>
struct Plan {
  typename A::Args args;
  Preamble pre;
  RangeFn<A> fn;
  uint64_t step;  // the step count t (stochastic rounding's counter)
};

// Runs every work item of `call` (items: make_items of its tensors) through its tensor's plan,
// by_plan[of[t]], in one parallel region; item i adds its sums to partials[2i], partials[2i+1]
// when `partials` is given (a reducing algorithm's first traversal).
template <class A>
void traverse(const host::CheckedCall& call, const std::vector<Item>& items, const std::vector<Plan<A>>& by_plan,
              const std::vector<int32_t>& of, double* partials) {
  const size_t pb = dtype_size(call.pd);
  const size_t sb = dtype_size(call.sd);
  auto at = [](const void* base, int64_t offset) -> void* {
    return base != nullptr ? static_cast<char*>(const_cast<void*>(base)) + offset : nullptr;
  };
  run_items(items, [&](int64_t t, int64_t b, int64_t len, size_t i) {
    const host::CheckedTensor& d = call.tensors[t];
    const Plan<A>& pl = by_plan[of[t]];
    const int64_t blk = b / lowbit::kQuantBlock;  // an item starts on a block (Note [low-bit items])
    const ItemExtras ex{{d.scale[0] != nullptr ? d.scale[0] + blk : nullptr,
                         d.scale[1] != nullptr ? d.scale[1] + blk : nullptr,
                         d.scale[2] != nullptr ? d.scale[2] + blk : nullptr},
                        d.seed, pl.step, d.offset + static_cast<uint64_t>(b)};
    pl.fn(pl.args, pl.pre, at(d.p, b * pb), at(d.g, b * pb), d.master != nullptr ? d.master + b : nullptr,
          at(d.s[0], b * sb), at(d.s[1], b * sb), at(d.s[2], b * sb), len,
          partials != nullptr ? partials + 2 * i : nullptr, ex);
  });
}

// ---------------------------------------------------------------------------
// The op.
template <class A>
void Step<A>::op(const TensorList& params, const TensorList& grads, const Tensor& table,
                 const Tensor& steps, const Tensor& index, const Tensor& hyper,
                 const std::vector<bool>& flags, const std::optional<Tensor>& grad_scale,
                 const std::optional<Tensor>& found_inf, const std::optional<Tensor>& sums, int64_t phase) {
  const host::CheckedStep chk = host::check_step<A>(params, grads, table, steps, index, hyper, flags,
                                                    grad_scale, found_inf, sums, phase, host::codes().cpu);
  const std::vector<host::CheckedTensor>& tensors = chk.call.tensors;
  if (chk.phase == 1) std::fill(chk.sums, chk.sums + 2 * tensors.size(), 0.0);  // every row is written
  // An overflow step (AMP) writes nothing at all.
  if (tensors.empty() || (chk.found_inf != nullptr && *chk.found_inf != 0.0f)) return;

  const Kernels<A> kernels = pick_kernels<A>(std::string("fusedopt::") + A::kName, chk.variant,
                                             chk.call.pd, chk.call.sd, chk.call.master, chk.call.round);
  const float scale = chk.grad_scale != nullptr ? *chk.grad_scale : 1.0f;
  const PlanKeys keys = plan_keys(chk.tables, tensors.size(), A::kNumCounters);
  std::vector<Plan<A>> plans(keys.rows.size());
  for (size_t k = 0; k < plans.size(); ++k) {
    const double* h = chk.tables.hyper + keys.rows[k] * A::kNumHyper;
    Plan<A>& pl = plans[k];
    pl.args = make_args<A>(h, chk.tables.steps + keys.slots[k]);
    pl.pre = Preamble::make(h, scale);
    pl.fn = kernels.fn[A::tensor_variant(pl.args) != 0][pl.pre.coupled];
    pl.step = static_cast<uint64_t>(chk.tables.steps[keys.slots[k]]);
  }

  const std::vector<Item> items = make_items(tensors.size(), [&](size_t t) { return tensors[t].n; });
  // Note [reducing algorithms]: an algorithm with A::kReduces (LAMB) runs two traversals over the
  // same items. The first updates the states and adds each item's sums of squares of the param
  // and of the update to its own pair of partials; the sums of a tensor are added in item order
  // (the same result whatever the threads), and make the tensor's plan for the second, which
  // applies the update (the per-tensor variant A::kTensorBit, A::reduced() setting it) with an
  // identity preamble (the first traversal applied it and stored the param). A split step (Note
  // [split steps]) runs the first of them, writing the sums, or the second, reading them.
  if constexpr (A::kReduces) {
    double* sums = chk.sums;
    std::vector<double> own_sums;
    if (chk.phase != 2) {
      std::vector<double> partials(2 * items.size(), 0.0);
      traverse<A>(chk.call, items, plans, keys.of, partials.data());
      if (sums == nullptr) {
        own_sums.assign(2 * tensors.size(), 0.0);
        sums = own_sums.data();
      }
      for (size_t i = 0; i < items.size(); ++i) {
        sums[2 * items[i].tensor] += partials[2 * i];
        sums[2 * items[i].tensor + 1] += partials[2 * i + 1];
      }
      if (chk.phase == 1) return;
    }
    std::vector<Plan<A>> second(tensors.size());
    std::vector<int32_t> own(tensors.size());
    for (size_t t = 0; t < tensors.size(); ++t) {
      Plan<A>& pl = second[t];
      pl.args = A::reduced(plans[keys.of[t]].args, sums[2 * t], sums[2 * t + 1]);
      pl.pre = Preamble::identity();
      pl.fn = kernels.fn[A::tensor_variant(pl.args) != 0][0];
      pl.step = plans[keys.of[t]].step;
      own[t] = static_cast<int32_t>(t);
    }
    traverse<A>(chk.call, items, second, own, nullptr);
  } else {
    traverse<A>(chk.call, items, plans, keys.of, nullptr);
  }
}

}  // namespace cpu
}  // namespace fusedopt
