// The boundary between the host side of the CUDA backend (ops.cpp: argument checks, tables,
// streams, op registration; compiled by the host compiler, sees torch's stable ABI) and the
// kernels (*.cu; see CUDA and fusedopt headers only). Plain C++ on both sides.
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "fusedopt/dtype.h"

namespace fusedopt {
namespace cuda {

// One row of the address/size table, in device memory: 64 bytes.
struct TensorDesc {
  void* p;
  const void* g;
  float* master;  // float32 master weights, or null
  void* s[3];     // state slots, null when inactive
  int64_t n;      // elements (64-bit: tensors of 2^31 elements or more)
  int32_t vec;    // every pointer above is 16-byte aligned: full tiles use 16-byte accesses
  int32_t pad;
};
static_assert(sizeof(TensorDesc) == 64, "TensorDesc layout");

// One row of the work table: a chunk of one tensor, one thread block.
struct WorkItem {
  int32_t tensor;
  int32_t chunk;  // elements [chunk * chunk_elems, min(n, (chunk + 1) * chunk_elems))
};

constexpr int kThreads = 256;               // threads per block
constexpr int kVec = 8;                     // elements per thread per tile (16-byte accesses)
constexpr int64_t kTile = kThreads * kVec;  // elements per block per tile; chunks are multiples
constexpr int kMaxScalars = 9;

// Runtime flags of a step (uniform for the launch).
enum RtFlag : uint32_t {
  kRtMaximize = 1u,
  kRtDecoupled = 2u,
  kRtNesterov = 4u,  // sgd
  kRtRectify = 8u,   // radam (rect > 0 is checked as well, on the device in device mode)
};

// One step launch; the algorithm is the launcher called (launch_<algo> below).
struct StepLaunch {
  int variant;  // compile-time variant: sgd has_buf; rmsprop momentum | centered << 1; adam amsgrad
  DType pd, sd;
  bool master;
  uint32_t rt;  // RtFlag bits
  const double* host_scalars;   // interface order, or null in device mode
  const float* device_scalars;  // interface order on the device, or null in host mode
  const float* grad_scale;      // 0-dim float32 on the device, or null
  const float* found_inf;       // 0-dim float32 on the device, or null
  const TensorDesc* tensors;    // device memory
  const WorkItem* items;        // device memory
  int64_t n_items;
  int64_t chunk_elems;
  void* stream;  // cudaStream_t
};

struct LookaheadLaunch {
  DType pd, sd;
  float alpha;
  const TensorDesc* tensors;  // p and s[0] (the slow weights) used
  const WorkItem* items;
  int64_t n_items;
  int64_t chunk_elems;
  void* stream;
};

// Each returns a cudaError_t value (0 on success) for the host side to report.
int launch_sgd(const StepLaunch& l);
int launch_adagrad(const StepLaunch& l);
int launch_adadelta(const StepLaunch& l);
int launch_rmsprop(const StepLaunch& l);
int launch_adam(const StepLaunch& l);
int launch_yogi(const StepLaunch& l);
int launch_radam(const StepLaunch& l);
int launch_lookahead(const LookaheadLaunch& l);

}  // namespace cuda
}  // namespace fusedopt
