// fusedopt::lookahead kernel: slow = slow + alpha * (p - slow); p = slow (algos/lookahead.h).
// The same tables and tiles as the step kernels: p in TensorDesc::p, the slow weights in s[0].
#include "fusedopt/algos/lookahead.h"
#include "multi_tensor.cuh"

namespace fusedopt {
namespace cuda {
namespace {

template <DType PD, DType SD>
__global__ void __launch_bounds__(kThreads)
    lookahead_kernel(const TensorDesc* tensors, const WorkItem* items, int64_t chunk, float alpha) {
  const WorkItem it = items[blockIdx.x];
  const TensorDesc* d = tensors + it.tensor;
  void* const pp = d->p;
  void* const sp = d->s[0];
  const bool vec = d->vec != 0;
  const int64_t start = static_cast<int64_t>(it.chunk) * chunk;
  const int64_t end = start + chunk < d->n ? start + chunk : d->n;
  for (int64_t base = start; base < end; base += kTile) {
    if (vec && base + kTile <= end) {
      const int64_t i = base + static_cast<int64_t>(threadIdx.x) * kVec;
      float p[kVec], s[kVec];
      load8<PD>(pp, i, p);
      load8<SD>(sp, i, s);
#pragma unroll
      for (int k = 0; k < kVec; ++k) lookahead_update<HwFma>(p[k], s[k], alpha);
      store8<SD>(sp, i, s);
      store8<PD>(pp, i, p);
    } else {
#pragma unroll 1
      for (int k = 0; k < kVec; ++k) {
        const int64_t i = base + k * kThreads + threadIdx.x;
        if (i >= end) break;
        float p = load1<PD>(pp, i), s = load1<SD>(sp, i);
        lookahead_update<HwFma>(p, s, alpha);
        store1<SD>(sp, i, s);
        store1<PD>(pp, i, p);
      }
    }
  }
}

template <DType PD, DType SD>
int launch(const LookaheadLaunch& l) {
  lookahead_kernel<PD, SD>
      <<<static_cast<unsigned>(l.n_items), kThreads, 0, static_cast<cudaStream_t>(l.stream)>>>(
          l.tensors, l.items, l.chunk_elems, l.alpha);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace

// Slow weights are float32, or the params' own 16-bit dtype (checked on the host).
int launch_lookahead(const LookaheadLaunch& l) {
  if (l.n_items == 0) return 0;
  if (l.sd == DType::kFloat) {
    switch (l.pd) {
      case DType::kBFloat16: return launch<DType::kBFloat16, DType::kFloat>(l);
      case DType::kHalf: return launch<DType::kHalf, DType::kFloat>(l);
      default: return launch<DType::kFloat, DType::kFloat>(l);
    }
  }
  return l.pd == DType::kBFloat16 ? launch<DType::kBFloat16, DType::kBFloat16>(l)
                                  : launch<DType::kHalf, DType::kHalf>(l);
}

}  // namespace cuda
}  // namespace fusedopt
