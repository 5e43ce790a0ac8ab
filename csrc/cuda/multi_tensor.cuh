// The CUDA multi-tensor traversal: one per language, serving every algorithm.
//
// A call's tensors are described by two tables in device memory (launch.h): one row per tensor
// (addresses, size, its step slot and hyperparameter row, whether 16-byte accesses are possible)
// and one row per work item (a chunk of one tensor). The launch has one block per work item, so a
// call of any number of tensors and param groups is ONE launch. A block walks its chunk in tiles
// of kThreads * kVec elements: each thread moves kVec consecutive elements with 16-byte loads and
// stores when the tensor is aligned and the tile is full; a tensor's last, partial tile (and an
// unaligned tensor) goes element by element, coalesced across the warp. Offsets are 64-bit
// throughout.
//
// The per-element math is the same inline function the CPU kernels run
// (csrc/include/fusedopt/algos/*.h), in float32 with the hardware FMA where the header asks
// for one; the build passes --fmad=false so nothing else is contracted (Note [fma]).
//
// Compile-time per kernel: the algorithm's call-wide variant (the flags, and which optional
// state slots exist: the memory traffic), the param and state dtypes (8-bit states: kUInt8, their
// tiles walked as Note [8-bit blocks and warps] in lowbit.cuh says), master weights, and the
// stochastic rounding of 16-bit params (ROUND: lowbit::stochastic_round with the bits of
// lowbit::random_bits(seed, t, offset + i) for element i, t the tensor's step count).
// What comes from a tensor's row or step count (maximize, the weight-decay mode, the
// algorithm's per-tensor variant bit) is uniform over a block: a branch on a block-wide value.
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

#include "fusedopt/common.h"
#include "fusedopt/dtype.h"
#include "fusedopt/lowbit.h"
#include "launch.h"
#include "lowbit.cuh"

namespace fusedopt {
namespace cuda {

// The kernel's arguments (by value).
struct StepParams {
  const TensorDesc* tensors;
  const WorkItem* items;
  const LowBitDesc* lowbit;  // 8-bit states' scales, stochastic rounding's seeds (or null)
  int64_t chunk;
  const float* steps;
  const double* hyper;  // null: every tensor's row is inline_row
  double inline_row[kInlineRow];
  const float* grad_scale;
  const float* found_inf;
  double* partials;  // Note [reducing algorithms] (csrc/cpu/multi_tensor.h): 2 per item
  double* sums;      // Note [split steps] (tensor_info.h): 2 per tensor, or null
  int phase;         // 0, or a reducing algorithm's traversal: 1 (reduce) or 2 (apply), or 3: the
                     // per-tensor sums of the partials, for a split step
};

// The sums of tensor d's items, added in the order of its items (the same result whatever ran
// first); `first` is the index of its first item.
__device__ FUSEDOPT_INLINE void tensor_sums(const StepParams& kp, const TensorDesc* d, int64_t first, double& p_sq,
                                            double& u_sq) {
  const int64_t count = (d->n + kp.chunk - 1) / kp.chunk;
  p_sq = 0.0;
  u_sq = 0.0;
  for (int64_t k = 0; k < count; ++k) {
    p_sq += kp.partials[2 * (first + k)];
    u_sq += kp.partials[2 * (first + k) + 1];
  }
}

// --- 16-byte and scalar accesses ----------------------------------------------------------
// The addresses come from a table in memory, so the compiler cannot tell they are global and
// would emit generic 16-byte accesses: say so (LDG.E.128 / STG.E.128 in the SASS).
__device__ FUSEDOPT_INLINE uint4 ld_global_128(const void* ptr) {
  uint4 r;
  asm volatile("ld.global.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
               : "l"(ptr));
  return r;
}
// Read-only data (the gradients): the non-coherent path.
__device__ FUSEDOPT_INLINE uint4 ld_global_nc_128(const void* ptr) {
  uint4 r;
  asm volatile("ld.global.nc.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
               : "l"(ptr));
  return r;
}
__device__ FUSEDOPT_INLINE void st_global_128(void* ptr, uint4 v) {
  asm volatile("st.global.v4.u32 [%0], {%1, %2, %3, %4};" ::"l"(ptr), "r"(v.x), "r"(v.y), "r"(v.z),
               "r"(v.w)
               : "memory");
}

template <DType D>
__device__ FUSEDOPT_INLINE void unpack8(const uint4 (&w)[D == DType::kFloat ? 2 : 1], float (&v)[kVec]) {
  if constexpr (D == DType::kFloat) {
    v[0] = __uint_as_float(w[0].x); v[1] = __uint_as_float(w[0].y);
    v[2] = __uint_as_float(w[0].z); v[3] = __uint_as_float(w[0].w);
    v[4] = __uint_as_float(w[1].x); v[5] = __uint_as_float(w[1].y);
    v[6] = __uint_as_float(w[1].z); v[7] = __uint_as_float(w[1].w);
  } else {
    const uint32_t u[4] = {w[0].x, w[0].y, w[0].z, w[0].w};
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      v[2 * j] = load_as_float<D>(static_cast<uint16_t>(u[j] & 0xffffu));
      v[2 * j + 1] = load_as_float<D>(static_cast<uint16_t>(u[j] >> 16));
    }
  }
}

template <DType D>
__device__ FUSEDOPT_INLINE void load8(const void* base, int64_t i, float (&v)[kVec]) {
  using T = typename Storage<D>::type;
  const uint4* q = reinterpret_cast<const uint4*>(static_cast<const T*>(base) + i);
  uint4 w[D == DType::kFloat ? 2 : 1];
#pragma unroll
  for (int k = 0; k < (D == DType::kFloat ? 2 : 1); ++k) w[k] = ld_global_128(q + k);
  unpack8<D>(w, v);
}

// Gradients are only read: the read-only data path.
template <DType D>
__device__ FUSEDOPT_INLINE void load8_ro(const void* base, int64_t i, float (&v)[kVec]) {
  using T = typename Storage<D>::type;
  const uint4* q = reinterpret_cast<const uint4*>(static_cast<const T*>(base) + i);
  uint4 w[D == DType::kFloat ? 2 : 1];
#pragma unroll
  for (int k = 0; k < (D == DType::kFloat ? 2 : 1); ++k) w[k] = ld_global_nc_128(q + k);
  unpack8<D>(w, v);
}

template <DType D>
__device__ FUSEDOPT_INLINE void store8(void* base, int64_t i, const float (&v)[kVec]) {
  using T = typename Storage<D>::type;
  uint4* q = reinterpret_cast<uint4*>(static_cast<T*>(base) + i);
  if constexpr (D == DType::kFloat) {
    st_global_128(q, make_uint4(__float_as_uint(v[0]), __float_as_uint(v[1]), __float_as_uint(v[2]),
                                __float_as_uint(v[3])));
    st_global_128(q + 1, make_uint4(__float_as_uint(v[4]), __float_as_uint(v[5]),
                                    __float_as_uint(v[6]), __float_as_uint(v[7])));
  } else {
    uint32_t u[4];
#pragma unroll
    for (int j = 0; j < 4; ++j)
      u[j] = static_cast<uint32_t>(store_from_float<D>(v[2 * j])) |
             (static_cast<uint32_t>(store_from_float<D>(v[2 * j + 1])) << 16);
    st_global_128(q, make_uint4(u[0], u[1], u[2], u[3]));
  }
}

// A 16-bit param's eight elements i .. i + 7 stored by stochastic rounding (ROUND): element j's
// bits are random_bits(seed, t, offset + j).
template <DType D>
__device__ FUSEDOPT_INLINE void store8_round(void* base, int64_t i, const float (&v)[kVec], uint64_t seed,
                                             uint64_t t, uint64_t offset) {
  static_assert(D != DType::kFloat, "stochastic rounding is for 16-bit params");
  const uint64_t at = offset + static_cast<uint64_t>(i);
  uint32_t h[kVec];
#pragma unroll
  for (int j = 0; j < kVec; ++j) h[j] = lowbit::stochastic_round<D>(v[j], lowbit::random_bits(seed, t, at + j));
  uint32_t u[4];
#pragma unroll
  for (int j = 0; j < 4; ++j) u[j] = h[2 * j] | (h[2 * j + 1] << 16);
  st_global_128(reinterpret_cast<uint4*>(static_cast<uint16_t*>(base) + i), make_uint4(u[0], u[1], u[2], u[3]));
}
template <DType D>
__device__ FUSEDOPT_INLINE void store1_round(void* base, int64_t i, float v, uint64_t seed, uint64_t t,
                                             uint64_t offset) {
  static_cast<uint16_t*>(base)[i] =
      lowbit::stochastic_round<D>(v, lowbit::random_bits(seed, t, offset + static_cast<uint64_t>(i)));
}

template <DType D>
__device__ FUSEDOPT_INLINE float load1(const void* base, int64_t i) {
  return load_as_float<D>(static_cast<const typename Storage<D>::type*>(base)[i]);
}
template <DType D>
__device__ FUSEDOPT_INLINE void store1(void* base, int64_t i, float v) {
  static_cast<typename Storage<D>::type*>(base)[i] = store_from_float<D>(v);
}

// --- the step kernel ----------------------------------------------------------------------
// Note [per-block scalars]: thread 0 of each block reads its tensor's step count and row and
// derives the per-tensor scalars in float64 (A::make, Preamble::make: the very functions the
// CPU kernels call), and the block reads them from shared memory; the float64 work is once per
// work item, not once per thread.
//
// A reducing algorithm's second traversal (its per-tensor bit) leaves the states as the first
// stored them (for 8-bit states that matters: quantizing the dequantized codes again may move
// them), as the CPU's kWrites.
template <class A, int V, DType PD, DType SD, bool MASTER, bool ROUND>
__global__ void __launch_bounds__(kThreads) step_kernel(const StepParams kp) {
  // An overflow step (AMP) writes nothing at all.
  if (kp.found_inf != nullptr && *kp.found_inf != 0.0f) return;
  using Args = typename A::Args;
  constexpr int VT = A::canonical(V | A::kTensorBit);  // V with the per-tensor bit
  constexpr int kSlots = A::slots(V);
  static_assert(A::slots(VT) == kSlots, "a per-tensor variant must not change the memory traffic");
  constexpr bool kQuantized = SD == DType::kUInt8;
  static_assert(!ROUND || (PD != DType::kFloat && !MASTER), "stochastic rounding: 16-bit params, no master weights");

  const WorkItem it = kp.items[blockIdx.x];
  const TensorDesc* d = kp.tensors + it.tensor;
  if constexpr (A::kReduces) {
    if (kp.phase == 3) {  // a split step's sums: the first item of each tensor writes its tensor's
      if (threadIdx.x == 0 && it.chunk == 0) {
        double p_sq, u_sq;
        tensor_sums(kp, d, blockIdx.x, p_sq, u_sq);
        kp.sums[2 * static_cast<int64_t>(it.tensor)] = p_sq;
        kp.sums[2 * static_cast<int64_t>(it.tensor) + 1] = u_sq;
      }
      return;
    }
  }
  __shared__ Args shared_args;
  __shared__ Preamble shared_pre;
  __shared__ int shared_tensor_variant;
  __shared__ uint64_t shared_t;  // the step count, stochastic rounding's counter
  if (threadIdx.x == 0) {
    const double* h = kp.hyper != nullptr ? kp.hyper + static_cast<int64_t>(d->row) * A::kNumHyper : kp.inline_row;
    Args args = make_args<A>(h, A::kNumCounters > 0 ? kp.steps + d->step : nullptr);
    Preamble pre = Preamble::identity();  // a rule without gradient (Lookahead) has none
    if constexpr (A::kReadsGrad) pre = Preamble::make(h, kp.grad_scale != nullptr ? *kp.grad_scale : 1.0f);
    if constexpr (A::kReduces) {
      if (kp.phase == 2) {
        double p_sq, u_sq;
        if (kp.sums != nullptr) {  // a split step's second call: the sums the caller combined
          p_sq = kp.sums[2 * static_cast<int64_t>(it.tensor)];
          u_sq = kp.sums[2 * static_cast<int64_t>(it.tensor) + 1];
        } else {
          tensor_sums(kp, d, static_cast<int64_t>(blockIdx.x) - it.chunk, p_sq, u_sq);
        }
        args = A::reduced(args, p_sq, u_sq);
        pre = Preamble::identity();  // the first traversal applied it
      }
    }
    shared_args = args;
    shared_pre = pre;
    shared_tensor_variant = A::tensor_variant(args);
    if constexpr (ROUND) {
      static_assert(A::kNumCounters > 0, "stochastic rounding needs the step count");
      shared_t = static_cast<uint64_t>(kp.steps[d->step]);  // as the CPU's plan (Note [low-bit items])
    }
  }
  if constexpr (kQuantized) {  // the maps and midpoints of the slots' signs (lowbit.cuh), one entry per thread
    constexpr int kNeedMaps = ((kSlots & A::kSignedSlots) != 0 ? 2 : 0) | ((kSlots & ~A::kSignedSlots) != 0 ? 1 : 0);
    load_maps(block_maps(), kNeedMaps, static_cast<int>(threadIdx.x));
  }
  __syncthreads();
  const Args a = shared_args;
  const Preamble pre = shared_pre;
  const bool tensor_bit = A::kTensorBit != 0 && shared_tensor_variant != 0;
  const bool writes_states = !(A::kReduces && tensor_bit);

  void* const pp = d->p;
  const void* const gp = d->g;
  float* const mp = d->master;
  void* const s0 = d->s[0];
  void* const s1 = d->s[1];
  void* const s2 = d->s[2];
  const bool vec = d->vec != 0;
  const int64_t start = static_cast<int64_t>(it.chunk) * kp.chunk;
  const int64_t end = start + kp.chunk < d->n ? start + kp.chunk : d->n;
  uint64_t seed = 0, offset = 0, count = 0;  // stochastic rounding: the tensor's seed, offset, step count
  if constexpr (ROUND) {
    seed = kp.lowbit[it.tensor].seed;
    offset = kp.lowbit[it.tensor].offset;
    count = shared_t;
  }

  double p_sq = 0.0, u_sq = 0.0;  // a reducing algorithm's sums (this thread's share)
  auto update = [&](float& p, float& g, float& x, float& y, float& z) {
    if constexpr (A::kReadsGrad) {
      if (pre.coupled) pre.template apply<true, HwFma>(p, g);
      else pre.template apply<false, HwFma>(p, g);
    }
    if constexpr (A::kReduces) {
      if (tensor_bit) A::template apply<VT, HwFma>(a, p, g, x, y, z, p_sq, u_sq);
      else A::template apply<V, HwFma>(a, p, g, x, y, z, p_sq, u_sq);
    } else {
      if (tensor_bit) A::template apply<VT, HwFma>(a, p, g, x, y, z);
      else A::template apply<V, HwFma>(a, p, g, x, y, z);
    }
  };
  // The param's stores: eight elements from i (16-byte aligned), or one.
  auto store_p8 = [&](int64_t i, const float (&p)[kVec]) {
    if constexpr (MASTER) store8<DType::kFloat>(mp, i, p);
    if constexpr (ROUND) store8_round<PD>(pp, i, p, seed, count, offset);
    else store8<PD>(pp, i, p);
  };
  auto store_p1 = [&](int64_t i, float p) {
    if constexpr (MASTER) mp[i] = p;
    if constexpr (ROUND) store1_round<PD>(pp, i, p, seed, count, offset);
    else store1<PD>(pp, i, p);
  };

  if constexpr (kQuantized) {
    // Note [8-bit blocks and warps] (lowbit.cuh): thread k holds elements i0 .. i0 + 7 of every
    // tile, i0 = base + 8k, and its warp the 8-bit block i0 / 256; past `end` nothing is read,
    // updated or written.
    const QuantMaps& qmaps = block_maps();
    float* const scale0 = (kSlots & kSlot0) ? kp.lowbit[it.tensor].scale[0] : nullptr;
    float* const scale1 = (kSlots & kSlot1) ? kp.lowbit[it.tensor].scale[1] : nullptr;
    float* const scale2 = (kSlots & kSlot2) ? kp.lowbit[it.tensor].scale[2] : nullptr;
    const float* const map0 = qmaps.map[(A::kSignedSlots >> 0) & 1];
    const float* const map1 = qmaps.map[(A::kSignedSlots >> 1) & 1];
    const float* const map2 = qmaps.map[(A::kSignedSlots >> 2) & 1];
    const float* const mid0 = qmaps.mid[(A::kSignedSlots >> 0) & 1];
    const float* const mid1 = qmaps.mid[(A::kSignedSlots >> 1) & 1];
    const float* const mid2 = qmaps.mid[(A::kSignedSlots >> 2) & 1];
    uint8_t* const c0p = static_cast<uint8_t*>(s0);
    uint8_t* const c1p = static_cast<uint8_t*>(s1);
    uint8_t* const c2p = static_cast<uint8_t*>(s2);
#pragma unroll 1
    for (int64_t base = start; base < end; base += kTile) {
      const int64_t i0 = base + static_cast<int64_t>(threadIdx.x) * kVec;
      const int64_t left = end - i0;
      const int valid = left >= kVec ? kVec : left > 0 ? static_cast<int>(left) : 0;
      const bool full = vec && base + kTile <= end;  // every element of the tile, 16-byte accesses
      const int64_t blk = i0 >> 8;  // i0 / lowbit::kQuantBlock (i0 >= 0)
      float p[kVec] = {}, g[kVec] = {}, x[kVec] = {}, y[kVec] = {}, z[kVec] = {};
      uint32_t c0[kVec] = {}, c1[kVec] = {}, c2[kVec] = {};
      if (full) {
        if (MASTER) load8<DType::kFloat>(mp, i0, p);
        else load8<PD>(pp, i0, p);
        if (A::kReadsGrad) load8_ro<PD>(gp, i0, g);
      } else {
#pragma unroll
        for (int k = 0; k < kVec; ++k) {
          if (k < valid) {
            p[k] = MASTER ? mp[i0 + k] : load1<PD>(pp, i0 + k);
            if (A::kReadsGrad) g[k] = load1<PD>(gp, i0 + k);
          }
        }
      }
      if (kSlots & kSlot0) load_codes(c0p, i0, valid, full, c0);
      if (kSlots & kSlot1) load_codes(c1p, i0, valid, full, c1);
      if (kSlots & kSlot2) load_codes(c2p, i0, valid, full, c2);
      // dequantize: one float32 multiply (not contracted: --fmad=false, and __fmul_rn)
      const float f0 = (kSlots & kSlot0) && valid > 0 ? scale0[blk] : 0.0f;
      const float f1 = (kSlots & kSlot1) && valid > 0 ? scale1[blk] : 0.0f;
      const float f2 = (kSlots & kSlot2) && valid > 0 ? scale2[blk] : 0.0f;
#pragma unroll
      for (int k = 0; k < kVec; ++k) {
        if (kSlots & kSlot0) x[k] = __fmul_rn(map0[c0[k]], f0);
        if (kSlots & kSlot1) y[k] = __fmul_rn(map1[c1[k]], f1);
        if (kSlots & kSlot2) z[k] = __fmul_rn(map2[c2[k]], f2);
      }
#pragma unroll
      for (int k = 0; k < kVec; ++k)
        if (k < valid) update(p[k], g[k], x[k], y[k], z[k]);
      if (full) {
        store_p8(i0, p);
      } else {
#pragma unroll
        for (int k = 0; k < kVec; ++k)
          if (k < valid) store_p1(i0 + k, p[k]);
      }
      // quantize: the whole warp (one block) in step; uniform over the block
      if (writes_states) {
        if (kSlots & kSlot0) quantize_block(x, valid, full, mid0, c0p, i0, scale0, blk);
        if (kSlots & kSlot1) quantize_block(y, valid, full, mid1, c1p, i0, scale1, blk);
        if (kSlots & kSlot2) quantize_block(z, valid, full, mid2, c2p, i0, scale2, blk);
      }
    }
  } else {
    for (int64_t base = start; base < end; base += kTile) {
      if (vec && base + kTile <= end) {
        const int64_t i = base + static_cast<int64_t>(threadIdx.x) * kVec;
        float p[kVec], g[kVec] = {}, x[kVec] = {}, y[kVec] = {}, z[kVec] = {};
        if (MASTER) load8<DType::kFloat>(mp, i, p);
        else load8<PD>(pp, i, p);
        if (A::kReadsGrad) load8_ro<PD>(gp, i, g);
        if (kSlots & kSlot0) load8<SD>(s0, i, x);
        if (kSlots & kSlot1) load8<SD>(s1, i, y);
        if (kSlots & kSlot2) load8<SD>(s2, i, z);
#pragma unroll
        for (int k = 0; k < kVec; ++k) update(p[k], g[k], x[k], y[k], z[k]);
        store_p8(i, p);
        if (writes_states) {
          if (kSlots & kSlot0) store8<SD>(s0, i, x);
          if (kSlots & kSlot1) store8<SD>(s1, i, y);
          if (kSlots & kSlot2) store8<SD>(s2, i, z);
        }
      } else {
#pragma unroll 1
        for (int k = 0; k < kVec; ++k) {
          const int64_t i = base + k * kThreads + threadIdx.x;
          if (i >= end) break;
          float p = MASTER ? mp[i] : load1<PD>(pp, i);
          float g = A::kReadsGrad ? load1<PD>(gp, i) : 0.0f;
          float x = 0.0f, y = 0.0f, z = 0.0f;
          if (kSlots & kSlot0) x = load1<SD>(s0, i);
          if (kSlots & kSlot1) y = load1<SD>(s1, i);
          if (kSlots & kSlot2) z = load1<SD>(s2, i);
          update(p, g, x, y, z);
          store_p1(i, p);
          if (writes_states) {
            if (kSlots & kSlot0) store1<SD>(s0, i, x);
            if (kSlots & kSlot1) store1<SD>(s1, i, y);
            if (kSlots & kSlot2) store1<SD>(s2, i, z);
          }
        }
      }
    }
  }
  if constexpr (A::kReduces) {
    if (kp.phase == 1) {  // the block's sums, tree-reduced in shared memory, one pair per item
      __shared__ double sums[2][kThreads];
      sums[0][threadIdx.x] = p_sq;
      sums[1][threadIdx.x] = u_sq;
      __syncthreads();
      for (int s = kThreads / 2; s > 0; s >>= 1) {
        if (static_cast<int>(threadIdx.x) < s) {
          sums[0][threadIdx.x] += sums[0][threadIdx.x + s];
          sums[1][threadIdx.x] += sums[1][threadIdx.x + s];
        }
        __syncthreads();
      }
      if (threadIdx.x == 0) {
        kp.partials[2 * static_cast<int64_t>(blockIdx.x)] = sums[0][0];
        kp.partials[2 * static_cast<int64_t>(blockIdx.x) + 1] = sums[1][0];
      }
    }
  }
}

template <class A, int V, DType PD, DType SD, bool MASTER, bool ROUND>
int launch_one(const StepLaunch& l) {
  StepParams kp{l.tensors, l.items, l.lowbit, l.chunk_elems, l.steps, l.hyper, {}, l.grad_scale, l.found_inf,
                l.partials, nullptr, 0};
  for (int k = 0; k < kInlineRow; ++k) kp.inline_row[k] = l.inline_row[k];
  // Note [reducing algorithms]: two launches on one stream, the sums in between in device memory;
  // a split step (Note [split steps]) makes the first, then the per-tensor sums (phase 3), or the
  // second, from the sums given.
  int phases[2] = {0, -1};
  if (A::kReduces) {
    phases[0] = l.split == 2 ? 2 : 1;
    phases[1] = l.split == 0 ? 2 : l.split == 1 ? 3 : -1;
    kp.sums = l.split != 0 ? l.sums : nullptr;
  }
  for (int phase : phases) {
    if (phase < 0) break;
    kp.phase = phase;
    step_kernel<A, V, PD, SD, MASTER, ROUND>
        <<<static_cast<unsigned>(l.n_items), kThreads, 0, static_cast<cudaStream_t>(l.stream)>>>(kp);
    const int err = static_cast<int>(cudaGetLastError());
    if (err != 0) return err;
  }
  return 0;
}

// Runtime (call-wide variant, param dtype, state dtype, master, stochastic rounding) ->
// instantiation. 8-bit states and stochastic rounding only for a rule that has them (A::kLowBit;
// not Lookahead), and then only with their table (the host builds it for such a call).
template <class A>
int launch_step(const StepLaunch& l) {
  if (l.n_items == 0) return 0;
  int err = static_cast<int>(cudaErrorInvalidValue);  // stays so for a variant A does not have
  if ((l.sd == DType::kUInt8 || l.round) && (!A::kLowBit || l.lowbit == nullptr)) return err;
  with_call_variant<A>(l.variant, [&](auto v) {
    with_storage<A::kHalfStates, A::kLowBit>(l.pd, l.sd, l.master, l.round, [&](auto pdc, auto sdc, auto mc, auto rc) {
      constexpr int V = decltype(v)::value;
      constexpr DType SD = decltype(sdc)::value;
      // 8-bit states come with a state slot (a variant without one has no state dtype)
      if constexpr (SD != DType::kUInt8 || A::slots(V) != 0)
        err = launch_one<A, V, decltype(pdc)::value, SD, decltype(mc)::value, decltype(rc)::value>(l);
    });
  });
  return err;
}

}  // namespace cuda
}  // namespace fusedopt
