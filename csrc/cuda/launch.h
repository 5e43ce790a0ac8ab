// The boundary between the host side of the CUDA backend (ops.cpp: argument checks, tables,
// streams, op registration; compiled by the host compiler, sees torch's stable ABI) and the
// kernels (*.cu; see CUDA and fusedopt headers only). Plain C++ on both sides.
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "fusedopt/dtype.h"

namespace fusedopt {
namespace cuda {

// One row of the tensor table, in device memory: 72 bytes. The host caches device tables keyed
// on these bytes, so every byte is set (pad included).
struct TensorDesc {
  void* p;
  const void* g;
  float* master;  // float32 master weights, or null
  void* s[3];     // state slots, null when inactive
  int64_t n;      // elements (64-bit: tensors of 2^31 elements or more)
  int32_t step;   // its step counter: steps[step]
  int32_t row;    // its hyperparameter row: hyper[row]
  int32_t vec;    // every pointer above is 16-byte aligned: full tiles use 16-byte accesses
  int32_t pad;
};
static_assert(sizeof(TensorDesc) == 72, "TensorDesc layout");

// One row of the low-bit table, in device memory beside the tensor table (row t: tensor t), in
// a call with 8-bit states or stochastic rounding only: 40 bytes, every byte set (the cache keys
// on them too).
struct LowBitDesc {
  float* scale[3];  // 8-bit states (lowbit.cuh): each slot's float32 block scales, null when inactive
  uint64_t seed;    // stochastic rounding: param element i is stored with the bits of
  uint64_t offset;  // lowbit::random_bits(seed, its step count, offset + i)
};
static_assert(sizeof(LowBitDesc) == 40, "LowBitDesc layout");

// One row of the work table: a chunk of one tensor, one thread block.
struct WorkItem {
  int32_t tensor;
  int32_t chunk;  // elements [chunk * chunk_elems, min(n, (chunk + 1) * chunk_elems))
};

constexpr int kThreads = 256;               // threads per block
constexpr int kVec = 8;                     // elements per thread per tile (16-byte accesses)
constexpr int64_t kTile = kThreads * kVec;  // elements per block per tile; chunks are multiples

// The row of a rule passed by value (StepLaunch::hyper null): Lookahead's alpha.
constexpr int kInlineRow = 1;

// One launch of algorithm A, or of another rule of the traversal (Lookahead), launch_step<A> below.
struct StepLaunch {
  int variant;  // A's call-wide variant (fusedopt/common.h)
  DType pd, sd;  // sd kUInt8: 8-bit states (`lowbit` holds their scales)
  bool master;
  bool round;   // 16-bit params stored by stochastic rounding (`lowbit` holds the seeds)
  const float* steps;         // the step counters, on the device
  const double* hyper;        // the rows, [rows, A::kNumHyper], on the device; or null:
  double inline_row[kInlineRow];  // every tensor's row, passed by value
  const float* grad_scale;    // 0-dim float32 on the device, or null
  const float* found_inf;     // 0-dim float32 on the device, or null
  const TensorDesc* tensors;  // device memory
  const WorkItem* items;      // device memory
  const LowBitDesc* lowbit;   // device memory, parallel to `tensors`, with 8-bit states or `round` (else null)
  int64_t n_items;
  int64_t chunk_elems;
  void* stream;  // cudaStream_t
  double* partials;  // a reducing algorithm's sums, 2 per item, device memory (else null)
  double* sums;      // a split step's per-tensor sums, 2 per tensor, device memory (else null)
  int split;         // a split step's traversal, 1 or 2 (Note [split steps]); 0: the whole step
};

// Returns a cudaError_t value (0 on success) for the host side to report. Defined in
// multi_tensor.cuh and instantiated for every algorithm of algos/contract.h by the translation
// units setup.py writes (Note [one translation unit per algorithm]), and for Lookahead in
// lookahead.cu.
template <class A>
int launch_step(const StepLaunch& l);

}  // namespace cuda
}  // namespace fusedopt
