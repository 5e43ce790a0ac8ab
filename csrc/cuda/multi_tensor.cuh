// The CUDA multi-tensor traversal: one per language, serving every algorithm.
//
// A call's tensors are described by two tables in device memory (launch.h): one row per
// tensor (addresses, size, whether 16-byte accesses are possible) and one row per work item
// (a chunk of one tensor). The launch has one block per work item, so a group of any number
// of tensors is ONE launch. A block walks its chunk in tiles of kThreads * kVec elements:
// each thread moves kVec consecutive elements with 16-byte loads and stores when the tensor
// is aligned and the tile is full; a tensor's last, partial tile (and an unaligned tensor)
// goes element by element, coalesced across the warp. Offsets are 64-bit throughout.
//
// The per-element math is the same inline function the CPU kernels run
// (csrc/include/fusedopt/algos/*.h), in float32 with the hardware FMA where the header asks
// for one; the build passes --fmad=false so nothing else is contracted (Note [fma]).
//
// Compile-time per kernel: the algorithm variant whose memory traffic differs (which state
// slots exist), the param and state dtypes, and master weights. Uniform run-time choices
// (maximize, weight-decay mode, nesterov, SGD's first step, RAdam's rectification, host or
// device scalars) are branches on launch-wide values.
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

#include "fusedopt/common.h"
#include "fusedopt/dtype.h"
#include "launch.h"

namespace fusedopt {
namespace cuda {

// Run-time bits derived from the scalars (host mode: on the host; device mode: in the kernel).
enum : uint32_t { kRtCoupled = 16u, kRtFirst = 32u };

// The common preamble's arguments from the scalars in interface order. T is double for host
// scalars (as the CPU kernels round them) and float for device scalars.
template <class T>
FUSEDOPT_HD FUSEDOPT_INLINE Preamble make_preamble(const T* s, uint32_t& rt) {
  const T gs = s[kGradScale], lr = s[kLr], wd = s[kWeightDecay];
  Preamble pre;
  pre.scale = static_cast<float>((rt & kRtMaximize) ? -gs : gs);
  pre.scale_tensor = 1.0f;
  pre.wd = static_cast<float>(wd);
  pre.decay = 1.0f;  // exactly 1 unless decoupled decay is on (the update always multiplies)
  rt &= ~kRtCoupled;
  if (wd != T(0)) {
    if (rt & kRtDecoupled) pre.decay = static_cast<float>(T(1) - lr * wd);
    else rt |= kRtCoupled;
  }
  return pre;
}

template <class Args>
struct StepParams {
  Args a;         // host mode: the algorithm's arguments
  Preamble pre;   // host mode: the preamble's
  uint32_t rt;    // RtFlag bits (host mode: with the derived bits)
  const float* dev_scalars;
  const float* grad_scale;
  const float* found_inf;
  const TensorDesc* tensors;
  const WorkItem* items;
  int64_t chunk;
};

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

template <DType D>
__device__ FUSEDOPT_INLINE float load1(const void* base, int64_t i) {
  return load_as_float<D>(static_cast<const typename Storage<D>::type*>(base)[i]);
}
template <DType D>
__device__ FUSEDOPT_INLINE void store1(void* base, int64_t i, float v) {
  static_cast<typename Storage<D>::type*>(base)[i] = store_from_float<D>(v);
}

// --- the step kernel ----------------------------------------------------------------------
// Op: Args, kSlots, args<T>(scalars, rt) and apply(a, rt, p, g, s0, s1, s2) (see the *.cu).
template <class Op, DType PD, DType SD, bool MASTER>
__global__ void __launch_bounds__(kThreads) step_kernel(const StepParams<typename Op::Args> kp) {
  // An overflow step (AMP) writes nothing at all.
  if (kp.found_inf != nullptr && *kp.found_inf != 0.0f) return;
  typename Op::Args a = kp.a;
  Preamble pre = kp.pre;
  uint32_t rt = kp.rt;
  if (kp.dev_scalars != nullptr) {  // device mode: nothing about the scalars is known on the host
    float s[kMaxScalars];
#pragma unroll
    for (int k = 0; k < kMaxScalars; ++k) s[k] = k < Op::kNumScalars ? __ldg(kp.dev_scalars + k) : 0.0f;
    pre = make_preamble<float>(s, rt);
    a = Op::template args<float>(s, rt);
  }
  if (kp.grad_scale != nullptr) pre.scale_tensor = __ldg(kp.grad_scale);

  const WorkItem it = kp.items[blockIdx.x];
  const TensorDesc* d = kp.tensors + it.tensor;
  void* const pp = d->p;
  const void* const gp = d->g;
  float* const mp = d->master;
  void* const s0 = d->s[0];
  void* const s1 = d->s[1];
  void* const s2 = d->s[2];
  const bool vec = d->vec != 0;
  const int64_t start = static_cast<int64_t>(it.chunk) * kp.chunk;
  const int64_t end = start + kp.chunk < d->n ? start + kp.chunk : d->n;
  constexpr int kSlots = Op::kSlots;

  auto update = [&](float& p, float& g, float& x, float& y, float& z) {
    if (rt & kRtCoupled) pre.template apply<kWdCoupled, HwFma>(p, g);
    else pre.template apply<kWdDecoupled, HwFma>(p, g);
    Op::apply(a, rt, p, g, x, y, z);
  };

  for (int64_t base = start; base < end; base += kTile) {
    if (vec && base + kTile <= end) {
      const int64_t i = base + static_cast<int64_t>(threadIdx.x) * kVec;
      float p[kVec], g[kVec], x[kVec] = {}, y[kVec] = {}, z[kVec] = {};
      if (MASTER) load8<DType::kFloat>(mp, i, p);
      else load8<PD>(pp, i, p);
      load8_ro<PD>(gp, i, g);
      if (kSlots & kSlot0) load8<SD>(s0, i, x);
      if (kSlots & kSlot1) load8<SD>(s1, i, y);
      if (kSlots & kSlot2) load8<SD>(s2, i, z);
#pragma unroll
      for (int k = 0; k < kVec; ++k) update(p[k], g[k], x[k], y[k], z[k]);
      if (MASTER) store8<DType::kFloat>(mp, i, p);
      store8<PD>(pp, i, p);
      if (kSlots & kSlot0) store8<SD>(s0, i, x);
      if (kSlots & kSlot1) store8<SD>(s1, i, y);
      if (kSlots & kSlot2) store8<SD>(s2, i, z);
    } else {
#pragma unroll 1
      for (int k = 0; k < kVec; ++k) {
        const int64_t i = base + k * kThreads + threadIdx.x;
        if (i >= end) break;
        float p = MASTER ? mp[i] : load1<PD>(pp, i);
        float g = load1<PD>(gp, i);
        float x = 0.0f, y = 0.0f, z = 0.0f;
        if (kSlots & kSlot0) x = load1<SD>(s0, i);
        if (kSlots & kSlot1) y = load1<SD>(s1, i);
        if (kSlots & kSlot2) z = load1<SD>(s2, i);
        update(p, g, x, y, z);
        if (MASTER) mp[i] = p;
        store1<PD>(pp, i, p);
        if (kSlots & kSlot0) store1<SD>(s0, i, x);
        if (kSlots & kSlot1) store1<SD>(s1, i, y);
        if (kSlots & kSlot2) store1<SD>(s2, i, z);
      }
    }
  }
}

template <class Op, DType PD, DType SD, bool MASTER>
int launch_one(const StepLaunch& l) {
  StepParams<typename Op::Args> kp{};
  kp.rt = l.rt;
  if (l.host_scalars != nullptr) {
    kp.pre = make_preamble<double>(l.host_scalars, kp.rt);
    kp.a = Op::template args<double>(l.host_scalars, kp.rt);
  }
  kp.dev_scalars = l.device_scalars;
  kp.grad_scale = l.grad_scale;
  kp.found_inf = l.found_inf;
  kp.tensors = l.tensors;
  kp.items = l.items;
  kp.chunk = l.chunk_elems;
  step_kernel<Op, PD, SD, MASTER>
      <<<static_cast<unsigned>(l.n_items), kThreads, 0, static_cast<cudaStream_t>(l.stream)>>>(kp);
  return static_cast<int>(cudaGetLastError());
}

// The one dtype-dispatch point: (param dtype, state dtype, master) -> instantiation.
// Master weights exist for 16-bit params only (checked on the host).
template <class Op, DType SD>
int launch_param(const StepLaunch& l) {
  switch (l.pd) {
    case DType::kBFloat16:
      return l.master ? launch_one<Op, DType::kBFloat16, SD, true>(l)
                      : launch_one<Op, DType::kBFloat16, SD, false>(l);
    case DType::kHalf:
      return l.master ? launch_one<Op, DType::kHalf, SD, true>(l)
                      : launch_one<Op, DType::kHalf, SD, false>(l);
    default:
      return launch_one<Op, DType::kFloat, SD, false>(l);
  }
}

template <class Op>
int launch_step(const StepLaunch& l) {
  if (l.n_items == 0) return 0;
  return l.sd == DType::kBFloat16 ? launch_param<Op, DType::kBFloat16>(l)
                                  : launch_param<Op, DType::kFloat>(l);
}

// 1 - x, rounded once in T (double for host scalars, as the CPU kernels do).
template <class T>
FUSEDOPT_HD FUSEDOPT_INLINE float one_minus(T x) {
  return static_cast<float>(T(1) - x);
}

}  // namespace cuda
}  // namespace fusedopt
