// Host side of the CUDA backend: argument checks, the tensor/work tables, streams and the
// registration of the CUDA kernels of the torch.ops.fusedopt ops.
//
// Compiled by the host compiler (no device code here), against torch's stable ABI and the
// CUDA runtime API only. Per call: check every param and grad against the state table (made by
// fusedopt::state_table, which this file registers for CUDA tensors too) and the tables (steps,
// index, hyper), build the tensor table on the host (addresses, sizes, alignment, and each
// tensor's step slot and hyper row from `index`; with 8-bit states or stochastic rounding, the
// low-bit table beside it: scales, seeds, offsets), look it up in a small cache of device tables
// keyed on their contents; on a miss, build the work table too and copy them to a device buffer
// (allocated through torch, so from its caching allocator) asynchronously on torch's current
// stream from a pinned staging buffer; then ONE launch on that stream, whose blocks read their
// tensor's step count and row on the device. Nothing here waits for the device.
#include <dlfcn.h>
#include <stdint.h>
#include <string.h>

#include <cuda_runtime_api.h>

#include <algorithm>
#include <list>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <torch/csrc/stable/accelerator.h>
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>

#include "fusedopt/algos/all.h"
#include "fusedopt/algos/lookahead.h"
#include "fusedopt/tensor_info.h"
#include "launch.h"

namespace fusedopt {
namespace cuda {
namespace {

using torch::stable::Tensor;
using TensorList = std::vector<Tensor>;

using host::aligned16;
using host::codes;
using host::Codes;
using host::fail;
using host::info;
using host::Info;

void check_cuda(int err, const char* what) {
  if (err != 0) {
    fail(std::string("fusedopt cuda: ") + what + ": " +
         cudaGetErrorString(static_cast<cudaError_t>(err)));
  }
}

// --- device, stream -----------------------------------------------------------------------
// Torch's current CUDA stream. The shim function lives in libtorch_cuda, which torch has
// loaded when CUDA is available but not into the global symbol scope: look it up there.
void* current_stream(int32_t device) {
  using Fn = AOTITorchError (*)(int32_t, void**);
  static const Fn fn = []() -> Fn {
    const char* name = "aoti_torch_get_current_cuda_stream";
    for (const char* lib : {"libtorch_cuda.so", "libtorch.so"}) {
      if (void* h = dlopen(lib, RTLD_NOW | RTLD_NOLOAD)) {
        if (void* sym = dlsym(h, name)) return reinterpret_cast<Fn>(sym);
      }
    }
    return reinterpret_cast<Fn>(dlsym(RTLD_DEFAULT, name));
  }();
  STD_TORCH_CHECK(fn != nullptr,
                  "fusedopt cuda: torch's current CUDA stream is not available "
                  "(aoti_torch_get_current_cuda_stream not found: is this a CUDA build of torch?)");
  void* stream = nullptr;
  STABLE_TORCH_ERROR_CODE_CHECK(fn(device, &stream));
  return stream;
}

int multiprocessors(int32_t device) {
  static std::mutex mu;
  static std::vector<int> cache;
  std::lock_guard<std::mutex> lock(mu);
  if (device >= static_cast<int32_t>(cache.size())) cache.resize(device + 1, 0);
  if (cache[device] == 0) {
    int v = 0;
    check_cuda(cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, device),
               "cudaDeviceGetAttribute");
    cache[device] = std::max(v, 1);
  }
  return cache[device];
}

// --- tables -------------------------------------------------------------------------------
// Elements per work item: a multiple of the tile, small enough that a group fills the
// device about 16 blocks per multiprocessor deep, at most 32 tiles.
int64_t chunk_elems(int64_t total, int32_t device) {
  const int64_t target = std::max<int64_t>(1, static_cast<int64_t>(multiprocessors(device)) * 16);
  int64_t tiles = (total / target + kTile - 1) / kTile;
  tiles = std::min<int64_t>(std::max<int64_t>(tiles, 1), 32);
  return tiles * kTile;
}

// Pinned host buffers the tables are copied from. A buffer is reused once the copy out of
// it has completed (an event, polled, never waited on); a buffer copied from during CUDA
// graph capture is read again at every replay and is never reused. Never freed (freeing
// pinned memory synchronises the device).
struct Staging {
  void* host = nullptr;
  size_t cap = 0;
  cudaEvent_t done = nullptr;
  bool retired = false;
};

struct DeviceTable {
  std::vector<TensorDesc> key;  // the tensor table this device table was built from
  std::vector<LowBitDesc> lowbit_key;  // and its low-bit table (empty without one)
  int64_t chunk = 0;
  size_t hash = 0;
  std::optional<Tensor> buffer;  // tensor table, low-bit table (if any), work table, in device memory
  int64_t n_items = 0;
  void* stream = nullptr;  // the stream its memory was allocated on
  bool permanent = false;  // used on another stream or in graph capture: never evicted
  // Uploaded inside a capture: the copy is a node of that capture's graph, so the buffer holds
  // the table only once that graph has run. Only the same capture may use it.
  bool captured = false;
  unsigned long long capture_id = 0;
};

struct DeviceState {
  std::vector<Staging> staging;
  std::list<DeviceTable> tables;  // most recently used first
};

// Tables kept per device: one per launch of a step, so room for many param groups (e.g.
// layer-wise learning rates) before a step re-uploads its tables.
constexpr size_t kMaxTables = 64;

std::mutex g_mu;
std::vector<DeviceState> g_devices;

// A prefilter for the exact key comparison, eight bytes at a time (the key is 72 bytes per
// tensor, so a 10,000-tensor call hashes 720 KB per step).
size_t hash_bytes(const void* data, size_t n) {
  const unsigned char* b = static_cast<const unsigned char*>(data);
  uint64_t h = 1469598103934665603ull ^ n;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t w;
    memcpy(&w, b + i, 8);
    h = (h ^ w) * 0x9E3779B97F4A7C15ull;
    h ^= h >> 29;
  }
  for (; i < n; ++i) h = (h ^ b[i]) * 1099511628211ull;
  return static_cast<size_t>(h);
}

Staging& staging_buffer(DeviceState& ds, size_t bytes, bool capturing) {
  for (Staging& s : ds.staging) {
    if (capturing) break;  // a buffer a graph reads at every replay is a new one, see below
    if (s.retired || s.cap < bytes) continue;
    cudaError_t q = cudaEventQuery(s.done);
    if (q == cudaSuccess) return s;
    if (q == cudaErrorNotReady) {
      (void)cudaGetLastError();  // not an error: clear it
      continue;
    }
    check_cuda(q, "cudaEventQuery");
  }
  Staging s;
  s.cap = std::max<size_t>(bytes, 64 * 1024);
  // Inside graph capture, allocating pinned memory is an "unsafe" call the capture would
  // refuse; it does not touch the captured stream, so relax the capture mode for it (as
  // torch's allocator does around cudaMalloc).
  cudaStreamCaptureMode mode = cudaStreamCaptureModeRelaxed;
  if (capturing) check_cuda(cudaThreadExchangeStreamCaptureMode(&mode), "cudaThreadExchangeStreamCaptureMode");
  cudaError_t err = cudaHostAlloc(&s.host, s.cap, cudaHostAllocPortable);
  cudaError_t err2 = cudaEventCreateWithFlags(&s.done, cudaEventDisableTiming);
  if (capturing) check_cuda(cudaThreadExchangeStreamCaptureMode(&mode), "cudaThreadExchangeStreamCaptureMode");
  check_cuda(err, "cudaHostAlloc");
  check_cuda(err2, "cudaEventCreate");
  ds.staging.push_back(s);
  return ds.staging.back();
}

struct Tables {
  const TensorDesc* tensors;
  const LowBitDesc* lowbit;  // null without a low-bit table
  const WorkItem* items;
  int64_t n_items;
  int64_t chunk;
};

// The device tables for `descs` and `lowbit` (cached; `lowbit` empty or one row per tensor),
// uploaded on `stream` when new. The buffer: the tensor table, the low-bit table, the work table.
Tables device_tables(std::vector<TensorDesc>&& descs, std::vector<LowBitDesc>&& lowbit, int32_t device,
                     void* stream) {
  int64_t total = 0;
  for (const TensorDesc& d : descs) total += d.n;
  const int64_t chunk = chunk_elems(total, device);
  const size_t key_bytes = descs.size() * sizeof(TensorDesc);
  const size_t lowbit_bytes = lowbit.size() * sizeof(LowBitDesc);
  const size_t h = hash_bytes(descs.data(), key_bytes) ^ static_cast<size_t>(chunk) ^
                   (lowbit_bytes ? hash_bytes(lowbit.data(), lowbit_bytes) * 31u : 0u);

  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  unsigned long long capture_id = 0;
  check_cuda(cudaStreamGetCaptureInfo(static_cast<cudaStream_t>(stream), &capture, &capture_id),
             "cudaStreamGetCaptureInfo");
  const bool capturing = capture != cudaStreamCaptureStatusNone;

  std::lock_guard<std::mutex> lock(g_mu);
  if (device >= static_cast<int32_t>(g_devices.size())) g_devices.resize(device + 1);
  DeviceState& ds = g_devices[device];

  auto use = [&](std::list<DeviceTable>::iterator it) {
    if (it->stream != stream || capturing) it->permanent = true;
    ds.tables.splice(ds.tables.begin(), ds.tables, it);
    const DeviceTable& t = ds.tables.front();
    const char* base = static_cast<const char*>(t.buffer->data_ptr());
    const size_t lowbit_at = t.key.size() * sizeof(TensorDesc);
    const size_t items_at = lowbit_at + t.lowbit_key.size() * sizeof(LowBitDesc);
    return Tables{reinterpret_cast<const TensorDesc*>(base),
                  t.lowbit_key.empty() ? nullptr : reinterpret_cast<const LowBitDesc*>(base + lowbit_at),
                  reinterpret_cast<const WorkItem*>(base + items_at), t.n_items, t.chunk};
  };

  for (auto it = ds.tables.begin(); it != ds.tables.end(); ++it) {
    if (it->captured && !(capturing && it->capture_id == capture_id)) continue;
    if (it->hash == h && it->chunk == chunk && it->key.size() == descs.size() &&
        it->lowbit_key.size() == lowbit.size() && memcmp(it->key.data(), descs.data(), key_bytes) == 0 &&
        (lowbit_bytes == 0 || memcmp(it->lowbit_key.data(), lowbit.data(), lowbit_bytes) == 0))
      return use(it);
  }

  // Miss: the work table, one item per chunk of every non-empty tensor.
  std::vector<WorkItem> items;
  for (size_t t = 0; t < descs.size(); ++t) {
    const int64_t n_chunks = (descs[t].n + chunk - 1) / chunk;
    if (n_chunks > INT32_MAX) fail("fusedopt cuda: tensor too large for the work table");
    for (int64_t c = 0; c < n_chunks; ++c)
      items.push_back(WorkItem{static_cast<int32_t>(t), static_cast<int32_t>(c)});
  }
  if (items.size() > static_cast<size_t>(INT32_MAX))
    fail("fusedopt cuda: too many work items for one launch");
  const size_t item_bytes = items.size() * sizeof(WorkItem);
  const size_t bytes = key_bytes + lowbit_bytes + item_bytes;

  int64_t size = static_cast<int64_t>(std::max<size_t>(bytes, 1));
  int64_t stride = 1;
  AtenTensorHandle handle = nullptr;
  STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_empty_strided(1, &size, &stride, codes().u8,
                                                         codes().cuda, device, &handle));
  Tensor buffer(handle);

  Staging& st = staging_buffer(ds, bytes, capturing);
  memcpy(st.host, descs.data(), key_bytes);
  if (lowbit_bytes) memcpy(static_cast<char*>(st.host) + key_bytes, lowbit.data(), lowbit_bytes);
  if (item_bytes) memcpy(static_cast<char*>(st.host) + key_bytes + lowbit_bytes, items.data(), item_bytes);
  check_cuda(cudaMemcpyAsync(buffer.data_ptr(), st.host, bytes, cudaMemcpyHostToDevice,
                             static_cast<cudaStream_t>(stream)),
             "cudaMemcpyAsync");
  if (capturing) st.retired = true;
  else check_cuda(cudaEventRecord(st.done, static_cast<cudaStream_t>(stream)), "cudaEventRecord");

  DeviceTable t;
  t.key = std::move(descs);
  t.lowbit_key = std::move(lowbit);
  t.chunk = chunk;
  t.hash = h;
  t.buffer = std::move(buffer);
  t.n_items = static_cast<int64_t>(items.size());
  t.stream = stream;
  t.permanent = capturing;
  t.captured = capturing;
  t.capture_id = capturing ? capture_id : 0;
  ds.tables.push_front(std::move(t));
  // Evict the least recently used table that may be freed (its memory returns to torch's
  // caching allocator, ordered on the stream it was allocated on).
  size_t evictable = 0;
  for (const DeviceTable& x : ds.tables) evictable += x.permanent ? 0 : 1;
  if (evictable > kMaxTables) {
    for (auto it = std::prev(ds.tables.end());; --it) {
      if (!it->permanent) {
        ds.tables.erase(it);
        break;
      }
      if (it == ds.tables.begin()) break;
    }
  }
  return use(ds.tables.begin());
}

// --- the step ops -------------------------------------------------------------------------
// One launch of rule A over the tensors of `call` (their step slot and row in `index`, [n, 2],
// or null for a rule without either): the tensor table, its cached device copy, the launch on
// torch's current stream. `l` comes with the rest of its fields set.
template <class A>
void launch(const host::CheckedCall& call, const int64_t* index, StepLaunch l) {
  const size_t n = call.tensors.size();
  if (n == 0) return;
  const int32_t device = call.device_index;
  std::vector<TensorDesc> descs(n);  // value-initialised: every byte of the key is set
  for (size_t t = 0; t < n; ++t) {
    const host::CheckedTensor& c = call.tensors[t];
    TensorDesc& d = descs[t];
    d.p = c.p;
    d.g = c.g;
    d.master = c.master;
    for (int k = 0; k < host::kStateSlots; ++k) d.s[k] = c.s[k];
    d.n = c.n;
    d.step = index != nullptr ? static_cast<int32_t>(index[2 * t]) : 0;  // below 2^31: checked
    d.row = index != nullptr ? static_cast<int32_t>(index[2 * t + 1]) : 0;
    d.vec = c.aligned16 ? 1 : 0;
  }
  // 8-bit states, stochastic rounding: the low-bit table (value-initialised as well).
  std::vector<LowBitDesc> lowbit;
  if (call.sd == DType::kUInt8 || call.round) {
    lowbit.resize(n);
    for (size_t t = 0; t < n; ++t) {
      const host::CheckedTensor& c = call.tensors[t];
      for (int k = 0; k < host::kStateSlots; ++k) lowbit[t].scale[k] = c.s[k] != nullptr ? c.scale[k] : nullptr;
      lowbit[t].seed = call.round ? c.seed : 0;
      lowbit[t].offset = call.round ? c.offset : 0;
    }
  }
  l.pd = call.pd;
  l.sd = call.sd;
  l.master = call.master;
  l.round = call.round;
  torch::stable::accelerator::DeviceGuard guard(device);
  void* stream = current_stream(device);
  Tables tab = device_tables(std::move(descs), std::move(lowbit), device, stream);
  l.tensors = tab.tensors;
  l.lowbit = tab.lowbit;
  l.items = tab.items;
  l.n_items = tab.n_items;
  l.chunk_elems = tab.chunk;
  l.stream = stream;
  std::optional<Tensor> partials;  // freed after the launches: torch's allocator orders it after them
  if (A::kReduces && l.split != 2) {
    int64_t size = std::max<int64_t>(2 * tab.n_items, 1), stride = 1;
    AtenTensorHandle handle = nullptr;
    STABLE_TORCH_ERROR_CODE_CHECK(
        aoti_torch_empty_strided(1, &size, &stride, codes().f64, codes().cuda, device, &handle));
    partials.emplace(handle);
    l.partials = static_cast<double*>(partials->data_ptr());
  }
  if (l.split == 1)  // every row is written: a tensor without work items (no elements) adds nothing
    check_cuda(cudaMemsetAsync(l.sums, 0, 2 * n * sizeof(double), static_cast<cudaStream_t>(stream)),
               "cudaMemsetAsync");
  check_cuda(launch_step<A>(l), (std::string("fusedopt::") + A::kName + " launch").c_str());
}

// fusedopt::<A::kName>, the schema of algos/all.h.
// The tensor table's rows come from the params and grads of the call and the state table (Note
// [state tables] in tensor_info.h), checked against each other.
template <class A>
void step(const TensorList& params, const TensorList& grads, const Tensor& table, const Tensor& steps,
          const Tensor& index, const Tensor& hyper, const std::vector<bool>& flags,
          const std::optional<Tensor>& grad_scale, const std::optional<Tensor>& found_inf,
          const std::optional<Tensor>& sums, int64_t phase) {
  const host::CheckedStep chk = host::check_step<A>(params, grads, table, steps, index, hyper, flags,
                                                    grad_scale, found_inf, sums, phase, codes().cuda);
  StepLaunch l{};
  l.variant = chk.variant;
  l.steps = chk.tables.steps;
  l.hyper = chk.tables.hyper;
  l.grad_scale = chk.grad_scale;
  l.found_inf = chk.found_inf;
  l.sums = chk.sums;
  l.split = chk.phase;
  launch<A>(chk.call, chk.tables.index, l);
}

// fusedopt::lookahead: the rule of algos/lookahead.h on the same traversal, its row (alpha)
// passed by value.
void lookahead(const TensorList& params, const TensorList& slow, double alpha,
               const std::optional<TensorList>& master) {
  StepLaunch l{};
  l.inline_row[Lookahead::kAlpha] = alpha;
  launch<Lookahead>(host::check_lookahead(params, slow, master, codes().cuda), nullptr, l);
}

// fusedopt::state_table for CUDA tensors: the table itself is host memory. 8-bit states (with
// their scales) and stochastic rounding (with its seeds) are taken: the kernels have them
// (lowbit.cuh, multi_tensor.cuh).
Tensor state_table(const TensorList& params, const TensorList& s0, const TensorList& s1, const TensorList& s2,
                   const std::optional<TensorList>& master, const std::optional<TensorList>& scales,
                   const std::optional<Tensor>& rounding, const std::optional<TensorList>& grads) {
  const TensorList* slots[host::kStateSlots] = {&s0, &s1, &s2};
  return host::state_table(params, slots, master, codes().cuda, scales, rounding, /*lowbit=*/true, grads);
}

}  // namespace
}  // namespace cuda
}  // namespace fusedopt

STABLE_TORCH_LIBRARY_IMPL(fusedopt, CUDA, m) {
#define FUSEDOPT_IMPL(A) m.impl(fusedopt::A::kName, TORCH_BOX(&fusedopt::cuda::step<fusedopt::A>));
  FUSEDOPT_FOR_EACH_ALGORITHM(FUSEDOPT_IMPL)
#undef FUSEDOPT_IMPL
  m.impl("state_table", TORCH_BOX(&fusedopt::cuda::state_table));
  m.impl("lookahead", TORCH_BOX(&fusedopt::cuda::lookahead));
}

#define FUSEDOPT_STR2(x) #x
#define FUSEDOPT_STR(x) FUSEDOPT_STR2(x)

// What this library is, for tools and tests that inspect the built file (`nm -D`, ctypes):
// the one exported symbol besides the registrations' static initialisers.
extern "C" __attribute__((visibility("default"))) const char* fusedopt_cuda_info() {
  static const std::string info = [] {
    std::string s = "fusedopt CUDA kernels:";
#define FUSEDOPT_NAME(A) s += std::string(" ") + fusedopt::A::kName;
    FUSEDOPT_FOR_EACH_ALGORITHM(FUSEDOPT_NAME)
#undef FUSEDOPT_NAME
    return s + " lookahead; per-tensor step counts and hyperparameter rows; 8-bit states; stochastic rounding; "
               "nvcc " FUSEDOPT_STR(__CUDACC_VER_MAJOR__) "." FUSEDOPT_STR(__CUDACC_VER_MINOR__);
  }();
  return info.c_str();
}
