// Host-side checks of a step op's arguments, shared by the CPU and CUDA ops: every tensor of a
// call is checked before anything is written, so a refused call leaves every tensor as it was.
//
// Note [raw shim calls]: the checks run once per tensor per step, for groups of thousands of
// tensors, so they call the C shim directly with cached dtype codes instead of going through
// torch::stable::Tensor::scalar_type(), which translates every dtype through a switch of shim
// calls.
#pragma once

#include <stdint.h>

#include <algorithm>
#include <atomic>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>

#include "fusedopt/dtype.h"

namespace fusedopt {
namespace host {

[[noreturn]] inline void fail(const std::string& msg) {
  STD_TORCH_CHECK(false, msg);
  throw;  // unreachable
}

struct Codes {
  int32_t f32, bf16, f16, f64, i64, u8, cuda, cpu, strided;
};

inline const Codes& codes() {
  static const Codes c{aoti_torch_dtype_float32(), aoti_torch_dtype_bfloat16(),
                       aoti_torch_dtype_float16(), aoti_torch_dtype_float64(),
                       aoti_torch_dtype_int64(),   aoti_torch_dtype_uint8(),
                       aoti_torch_device_type_cuda(), aoti_torch_device_type_cpu(),
                       aoti_torch_layout_strided()};
  return c;
}

// A gradient the step can read as its param's: strided (not sparse) and of the param's sizes.
// Checked before info(), which would fail on a sparse tensor's data pointer with a vaguer error.
inline bool grad_matches(AtenTensorHandle p, AtenTensorHandle g, bool* sparse) {
  int32_t layout = 0;
  STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_get_layout(g, &layout));
  *sparse = layout != codes().strided;
  if (*sparse) return false;
  int64_t dp = 0, dg = 0;
  STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_get_dim(p, &dp));
  STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_get_dim(g, &dg));
  if (dp != dg) return false;
  int64_t *sp = nullptr, *sg = nullptr;
  STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_get_sizes(p, &sp));
  STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_get_sizes(g, &sg));
  return std::equal(sp, sp + dp, sg);
}

inline const char* dtype_name(int32_t code) {
  const Codes& c = codes();
  if (code == c.f32) return "float32";
  if (code == c.bf16) return "bfloat16";
  if (code == c.f16) return "float16";
  if (code == c.f64) return "float64";
  if (code == c.i64) return "int64";
  if (code == c.u8) return "uint8";
  return "an unsupported dtype";
}

struct Info {
  void* data;
  int64_t numel;
  int32_t dtype;
  int32_t device_type;
  int32_t device_index;
  bool contiguous;
};

inline Info info(AtenTensorHandle h) {
  Info i{};
  STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_get_data_ptr(h, &i.data));
  STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_get_numel(h, &i.numel));
  STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_get_dtype(h, &i.dtype));
  STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_get_device_type(h, &i.device_type));
  STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_get_device_index(h, &i.device_index));
  STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_is_contiguous(h, &i.contiguous));
  return i;
}
inline Info info(const torch::stable::Tensor& t) { return info(t.get()); }

// A non-contiguous tensor is accepted when it is dense and non-overlapping (e.g.
// channels_last) and `b` has exactly its sizes and strides: the elementwise update then walks
// both as flat arrays.
inline bool same_dense_layout(AtenTensorHandle a, AtenTensorHandle b) {
  int64_t da = 0, db = 0;
  STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_get_dim(a, &da));
  STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_get_dim(b, &db));
  if (da != db) return false;
  int64_t *sa = nullptr, *sb = nullptr, *ta = nullptr, *tb = nullptr;
  STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_get_sizes(a, &sa));
  STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_get_sizes(b, &sb));
  STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_get_strides(a, &ta));
  STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_get_strides(b, &tb));
  std::vector<std::pair<int64_t, int64_t>> dims;  // (stride, size), size > 1 only
  for (int64_t d = 0; d < da; ++d) {
    if (sa[d] != sb[d]) return false;
    if (sa[d] != 1 && ta[d] != tb[d]) return false;
    if (sa[d] > 1) dims.emplace_back(ta[d], sa[d]);
  }
  std::sort(dims.begin(), dims.end());
  int64_t expected = 1;
  for (const auto& sd : dims) {
    if (sd.first != expected) return false;
    expected *= sd.second;
  }
  return true;
}

// --- messages, and the checks of a table ------------------------------------------------------

// "cpu" or "cuda:<index>", for messages.
inline std::string device_name(int32_t device_type, int32_t device_index) {
  if (device_type == codes().cpu) return "cpu";
  if (device_type == codes().cuda) return "cuda:" + std::to_string(device_index);
  return "another device";
}

// A tensor's sizes as "[a, b]", for messages.
inline std::string shape_of(const torch::stable::Tensor& t) {
  int64_t dim = 0;
  int64_t* sizes = nullptr;
  STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_get_dim(t.get(), &dim));
  STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_get_sizes(t.get(), &sizes));
  std::string out = "[";
  for (int64_t d = 0; d < dim; ++d) out += (d ? ", " : "") + std::to_string(sizes[d]);
  return out + "]";
}

// `t` is a contiguous tensor of `dtype` with `dim` dimensions on the given device (any CPU
// tensor for the CPU), of size `cols` along dimension 1 when cols >= 0: its info, or a failure
// naming `what` and saying what it must be (`expected`) and what it is.
inline Info check_table(const std::string& name, const torch::stable::Tensor& t, const char* what,
                        int32_t dtype, int64_t dim, int64_t cols, int32_t device_type,
                        int32_t device_index, const std::string& expected) {
  Info i = info(t);
  int64_t d = 0;
  STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_get_dim(t.get(), &d));
  bool ok = i.dtype == dtype && d == dim && i.contiguous && i.device_type == device_type &&
            (device_type == codes().cpu || i.device_index == device_index);
  if (ok && cols >= 0) {
    int64_t* sizes = nullptr;
    STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_get_sizes(t.get(), &sizes));
    ok = sizes[1] == cols;
  }
  if (!ok)
    fail(name + ": " + what + " must be " + expected + "; got " + dtype_name(i.dtype) + " " + shape_of(t) +
         (i.contiguous ? "" : " (not contiguous)") + " on " + device_name(i.device_type, i.device_index));
  return i;
}

// --- the state table (Note [state tables]) ----------------------------------------------
// Note [state tables]: a launch's states and master weights stay the same tensors, at the same
// addresses, for as long as the optimizer's plan lives, while the step op runs every step; a
// param may be re-pointed (`p.data = ...`) and a grad is often a new tensor every step. So
// fusedopt::state_table checks the states and master weights once, against the params, and
// describes them in an int64 CPU tensor (docs/kernel-interface.md); the step op takes that table
// instead of the state lists (saving torch's per-tensor boxing of every list, the dominant host
// cost of a call of thousands of tensors) and checks each step's params and grads against it.
// The table holds raw addresses: its owner keeps the tensors it describes alive and builds a
// new table when they change.
//
// Note [owned params]: the table also owns a reference to each param (a tensor handle of its
// own, stored in the row), so that a steady step can pass an empty params list: the op then
// checks and reads each param through its handle, which sees a param re-pointed since
// (`p.data = ...`) as the param it now is. That saves torch's boxing of the params list (about a
// quarter of the host cost of a 10,000-tensor call).
//
// Note [owned grads]: grads are often new tensors every step, and a reference kept between steps
// would keep the old ones alive, so a table owns them only when asked (state_table's `grads`):
// for grads that stay the same tensors from step to step (zero_grad(set_to_none=False), grads
// that are views of a flat buffer or of DDP's buckets). A call with both lists empty then checks
// and reads each grad through the table's handle, and passes nothing per tensor through torch's
// boxing. The caller must drop such a table as soon as the grads are other tensors.
// fusedopt::release_table drops the references; the owner calls it once, when it drops the table.
constexpr int kStateSlots = 3;
using TensorList = std::vector<torch::stable::Tensor>;

namespace table {
constexpr int64_t kCols = 15;
// "fusedopT" and the layout's version in the low byte.
constexpr int64_t kMagic = 0x667573656f705404;
// Row 0, the header.
enum Header : int64_t {
  kMagicCol = 0,
  kCount = 1,        // n, the tensors (rows 1..n)
  kParamDtype = 2,   // the params' dtype code (-1 when n == 0)
  kStateDtype = 3,   // the states' dtype code (-1 without states)
  kSlots = 4,        // bit k: state slot k is present
  kHasMaster = 5,    // 0 / 1
  kDeviceType = 6,   // the device type code of every tensor
  kDeviceIndex = 7,  // its index (-1 when n == 0)
  kRounds = 8,       // 1: the params are stored by stochastic rounding (kSeed, kOffset below)
  kOwnsGrads = 9,    // 1: the rows hold the table's own grad handles (kGrad, Note [owned grads])
};
// Row 1 + t, tensor t. Columns 0..2 are the state slots' addresses (0: inactive slot).
enum Row : int64_t {
  kMaster = 3,      // the float32 master weight's address, or 0
  kNumel = 4,       // the param's element count, shared by its states and master weight
  kLayout = 5,      // layout_signature() of the param when the table was built
  kContiguous = 6,  // 1: every state and master weight of the param is contiguous
  kAligned = 7,     // 1: every address of the row is 16-byte aligned
  kParam = 8,       // the table's own AtenTensorHandle of the param (Note [owned params]); 0 once released
  kScale0 = 9,      // 8-bit states (state dtype uint8): the float32 block scales of slots 0..2, or 0
  kSeed = 12,       // stochastic rounding: the seed (uint64 bits) and the param's element offset
  kOffset = 13,
  kGrad = 14,       // the table's own AtenTensorHandle of the grad (Note [owned grads]), or 0
};
}  // namespace table

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// A hash of what same_dense_layout() compares: the sizes, and the strides of dimensions whose
// size is not 1. Equal signatures mean a param has the layout the table's tensors were checked
// against (up to a 64-bit hash collision).
inline int64_t layout_signature(AtenTensorHandle t) {
  int64_t dim = 0;
  int64_t *sizes = nullptr, *strides = nullptr;
  STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_get_dim(t, &dim));
  STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_get_sizes(t, &sizes));
  STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_get_strides(t, &strides));
  uint64_t h = 1469598103934665603ull ^ static_cast<uint64_t>(dim);
  auto mix = [&h](int64_t v) { h = (h ^ static_cast<uint64_t>(v)) * 1099511628211ull; };
  for (int64_t d = 0; d < dim; ++d) {
    mix(sizes[d]);
    mix(sizes[d] != 1 ? strides[d] : 0);
  }
  return static_cast<int64_t>(h);
}

// fusedopt::state_table (docs/kernel-interface.md) for kernels on `device_type`: every tensor
// checked (one param dtype float32/bfloat16/float16, one state dtype float32/bfloat16 over every
// present slot, float32 master weights for 16-bit params only, equal element counts, all on
// param 0's device, each param's states and master weight contiguous with it or sharing its
// dense layout), then described.
//
// Note [8-bit states in the table]: uint8 states are the codes of fusedopt/lowbit.h; `scales`
// then holds, for each present slot in order, the float32 block scales of every param
// (ceil(numel / 256) each), and the param, its states (and grads, checked at each step) must be
// contiguous: the blocks are runs of the flattened tensor. `rounding` (int64 [n, 2] on the CPU:
// seed, element offset) stores 16-bit params without master weights by stochastic rounding. A
// caller whose kernels do not take them passes `lowbit` false, which refuses them.
inline torch::stable::Tensor state_table(const TensorList& params, const TensorList* const slots[kStateSlots],
                                         const std::optional<TensorList>& master, int32_t device_type,
                                         const std::optional<TensorList>& scales = std::nullopt,
                                         const std::optional<torch::stable::Tensor>& rounding = std::nullopt,
                                         bool lowbit = false,
                                         const std::optional<TensorList>& grads = std::nullopt) {
  const std::string name = "fusedopt::state_table";
  const Codes& c = codes();
  const size_t n = params.size();
  const bool has_master = master.has_value();
  int present = 0;
  for (int k = 0; k < kStateSlots; ++k) {
    if (slots[k]->empty()) continue;
    present |= 1 << k;
    STD_TORCH_CHECK(slots[k]->size() == n, name, ": state slot ", k, " has ", slots[k]->size(),
                    " tensors for ", n, " params");
  }
  if (has_master)
    STD_TORCH_CHECK(master->size() == n, name, ": ", master->size(), " master weights for ", n, " params");
  int n_present = 0;
  for (int k = 0; k < kStateSlots; ++k) n_present += (present >> k) & 1;
  const bool quantized = scales.has_value();
  if ((quantized || rounding.has_value()) && !lowbit)
    fail(name + ": 8-bit states and stochastic rounding are not supported by the " +
         (device_type == c.cpu ? "CPU" : "CUDA") + " kernels yet");
  if (quantized)
    STD_TORCH_CHECK(scales->size() == static_cast<size_t>(n_present) * n, name, ": scales must hold the block "
                    "scales of every present state slot of every param (", n_present * n, " tensors), got ",
                    scales->size());
  const int64_t* seeds = nullptr;
  if (rounding.has_value()) {
    Info ri = check_table(name, *rounding, "rounding", c.i64, 2, 2, c.cpu, -1,
                          "a contiguous int64 CPU tensor of shape [" + std::to_string(n) + ", 2] (seed, offset)");
    STD_TORCH_CHECK(ri.numel == static_cast<int64_t>(2 * n), name, ": rounding must have one row per param");
    STD_TORCH_CHECK(!has_master, name, ": stochastic rounding is for params without master weights");
    seeds = static_cast<const int64_t*>(ri.data);
  }

  int64_t sizes[2] = {static_cast<int64_t>(n) + 1, table::kCols};
  int64_t strides[2] = {table::kCols, 1};
  AtenTensorHandle handle = nullptr;
  STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_empty_strided(2, sizes, strides, c.i64, c.cpu, 0, &handle));
  torch::stable::Tensor out(handle);
  int64_t* rows = static_cast<int64_t*>(out.data_ptr());
  std::fill(rows, rows + sizes[0] * table::kCols, int64_t{0});
  int64_t* head = rows;
  head[table::kMagicCol] = table::kMagic;
  head[table::kCount] = static_cast<int64_t>(n);
  head[table::kParamDtype] = -1;
  head[table::kStateDtype] = -1;
  head[table::kSlots] = present;
  head[table::kHasMaster] = has_master ? 1 : 0;
  head[table::kDeviceType] = device_type;
  head[table::kDeviceIndex] = -1;

  int32_t pdtype = -1, sdtype = -1, device = -1;
  auto on_device = [&](const Info& i) { return i.device_type == device_type && i.device_index == device; };
  for (size_t t = 0; t < n; ++t) {
    auto which = [t] { return std::to_string(t); };  // for messages only: no string per tensor
    Info pi = info(params[t]);
    if (t == 0) {
      pdtype = pi.dtype;
      device = pi.device_index;
      if (pdtype != c.f32 && pdtype != c.bf16 && pdtype != c.f16)
        fail(name + ": params must be float32, bfloat16 or float16, got " + dtype_name(pdtype));
      if (seeds != nullptr && pdtype == c.f32) fail(name + ": stochastic rounding is for bfloat16/float16 params");
      if (has_master && pdtype == c.f32) fail(name + ": master weights are for bfloat16/float16 params only");
      if (pi.device_type != device_type) fail(name + ": param 0 is on the wrong device type for this kernel");
    }
    if (pi.dtype != pdtype)
      fail(name + ": all params of a call must share one dtype (param " + which() + ")");
    if (!on_device(pi)) fail(name + ": param " + which() + " is not on param 0's device");
    int64_t* row = rows + (t + 1) * table::kCols;
    bool contiguous = true;
    bool vec = true;
    if (has_master) {
      Info mi = info((*master)[t]);
      if (mi.dtype != c.f32 || mi.numel != pi.numel || !on_device(mi))
        fail(name + ": master weight " + which() + " must be a float32 tensor with the param's shape on its device");
      contiguous = contiguous && mi.contiguous;
      vec = vec && aligned16(mi.data);
      row[table::kMaster] = static_cast<int64_t>(reinterpret_cast<uintptr_t>(mi.data));
    }
    for (int k = 0; k < kStateSlots; ++k) {
      if (!((present >> k) & 1)) continue;
      Info si = info((*slots[k])[t]);
      if (sdtype < 0) {
        sdtype = si.dtype;
        if (quantized ? sdtype != c.u8 : sdtype != c.f32 && sdtype != c.bf16)
          fail(name + ": states must be " + (quantized ? "uint8 codes with scales" : "float32 or bfloat16") +
               ", got " + dtype_name(sdtype));
      }
      if (si.dtype != sdtype || si.numel != pi.numel || !on_device(si))
        fail(name + ": state slot " + std::to_string(k) + " of param " + which() +
             " must be a tensor with the param's shape on its device and the call's one state dtype");
      contiguous = contiguous && si.contiguous;
      vec = vec && aligned16(si.data);
      row[k] = static_cast<int64_t>(reinterpret_cast<uintptr_t>(si.data));
    }
    if (quantized) {  // Note [8-bit states in the table]
      if (!(contiguous && pi.contiguous))
        fail(name + ": param " + which() + " and its 8-bit states must be contiguous: they must share one dense layout");
      int rank = 0;
      for (int k = 0; k < kStateSlots; ++k) {
        if (!((present >> k) & 1)) continue;
        Info ai = info((*scales)[rank++ * n + t]);
        if (ai.dtype != c.f32 || !ai.contiguous || !on_device(ai) || ai.numel != (pi.numel + 255) / 256)
          fail(name + ": the scales of state slot " + std::to_string(k) + " of param " + which() +
               " must be a contiguous float32 tensor of " + std::to_string((pi.numel + 255) / 256) +
               " elements (one per 256) on its device");
        row[table::kScale0 + k] = static_cast<int64_t>(reinterpret_cast<uintptr_t>(ai.data));
      }
    }
    if (seeds != nullptr) {
      row[table::kSeed] = seeds[2 * t];
      row[table::kOffset] = seeds[2 * t + 1];
    }
    if (!(contiguous && pi.contiguous) && pi.numel > 1) {
      bool ok = !has_master || same_dense_layout(params[t].get(), (*master)[t].get());
      for (int k = 0; k < kStateSlots && ok; ++k)
        if ((present >> k) & 1) ok = same_dense_layout(params[t].get(), (*slots[k])[t].get());
      if (!ok)
        fail(name + ": param " + which() + ", its grad and states must be contiguous or share one dense layout");
    }
    row[table::kNumel] = pi.numel;
    row[table::kLayout] = layout_signature(params[t].get());
    row[table::kContiguous] = contiguous ? 1 : 0;
    row[table::kAligned] = vec ? 1 : 0;
  }
  head[table::kParamDtype] = pdtype;
  head[table::kStateDtype] = sdtype;
  head[table::kDeviceIndex] = device;
  head[table::kRounds] = seeds != nullptr ? 1 : 0;
  if (seeds != nullptr && sdtype == c.bf16)  // not compiled (dtype.h): the reference backend serves it
    fail(name + ": stochastic rounding with bfloat16 states runs on the reference backend");
  if (grads.has_value()) {  // Note [owned grads]: each a grad its param's step can read
    STD_TORCH_CHECK(grads->size() == n, name, ": ", grads->size(), " grads for ", n, " params");
    for (size_t t = 0; t < n; ++t) {
      bool sparse = false;
      const bool fits = grad_matches(params[t].get(), (*grads)[t].get(), &sparse);
      const Info gi = fits ? info((*grads)[t]) : Info{};
      if (!fits || gi.dtype != pdtype || !on_device(gi))
        fail(name + ": grad " + std::to_string(t) + " must be a dense tensor of its param's dtype and shape on its "
             "device");
    }
  }
  // Only now that every check passed: a refused call leaves no reference behind.
  auto own = [](const torch::stable::Tensor& t) {
    AtenTensorHandle h = nullptr;
    STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_new_tensor_handle(t.get(), &h));
    return static_cast<int64_t>(reinterpret_cast<uintptr_t>(h));
  };
  for (size_t t = 0; t < n; ++t) {
    rows[(t + 1) * table::kCols + table::kParam] = own(params[t]);
    if (grads.has_value()) rows[(t + 1) * table::kCols + table::kGrad] = own((*grads)[t]);
  }
  head[table::kOwnsGrads] = grads.has_value() ? 1 : 0;
  return out;
}

// --- the arguments of one step op ----------------------------------------------------------

// One tensor's addresses, as every traversal needs them.
struct CheckedTensor {
  void* p = nullptr;
  const void* g = nullptr;
  float* master = nullptr;              // float32 master weights, or null
  void* s[kStateSlots] = {nullptr, nullptr, nullptr};  // null for inactive slots
  float* scale[kStateSlots] = {nullptr, nullptr, nullptr};  // 8-bit states: their block scales
  uint64_t seed = 0, offset = 0;  // stochastic rounding: the stream of element i is (seed, offset + i)
  int64_t n = 0;
  bool aligned16 = false;               // every pointer above is 16-byte aligned
};

struct CheckedCall {
  DType pd = DType::kFloat;  // params and grads
  DType sd = DType::kFloat;  // states: float32, bfloat16 or 8-bit codes (kUInt8)
  bool master = false;       // float32 master weights
  bool round = false;        // params stored by stochastic rounding
  int32_t device_index = -1;
  std::vector<CheckedTensor> tensors;
};

inline DType dtype_of(int32_t code) {
  const Codes& c = codes();
  if (code == c.bf16) return DType::kBFloat16;
  if (code == c.f16) return DType::kHalf;
  if (code == c.u8) return DType::kUInt8;
  return DType::kFloat;
}

// The state table of a step op: an int64 [n + 1, kCols] CPU tensor of fusedopt::state_table for
// `n` params and kernels on `device_type`; its rows.
inline const int64_t* check_state_table(const std::string& name, const torch::stable::Tensor& t, size_t n,
                                        int32_t device_type, bool owned_params, bool owned_grads) {
  const Codes& c = codes();
  const std::string what = "a state table of fusedopt::state_table (a contiguous int64 CPU tensor of shape [" +
                           std::to_string(n + 1) + ", " + std::to_string(table::kCols) + "] for " +
                           std::to_string(n) + " params)";
  Info i = check_table(name, t, "table", c.i64, 2, table::kCols, c.cpu, -1, what);
  const int64_t* rows = static_cast<const int64_t*>(i.data);
  if (i.numel < table::kCols || rows[table::kMagicCol] != table::kMagic)
    fail(name + ": table must be " + what + "; got another int64 tensor");
  if (rows[table::kCount] != static_cast<int64_t>(n) || i.numel != static_cast<int64_t>(n + 1) * table::kCols)
    fail(name + ": the state table describes " + std::to_string(rows[table::kCount]) + " tensors, for " +
         std::to_string(n) + " params");
  if (rows[table::kDeviceType] != device_type)
    fail(name + ": the state table describes tensors of another device type than this kernel's");
  if (owned_params && n > 0 && rows[table::kCols + table::kParam] == 0)
    fail(name + ": params is empty but the state table was released (fusedopt::release_table)");
  if (owned_grads && n > 0 && (rows[table::kOwnsGrads] == 0 || rows[table::kCols + table::kGrad] == 0))
    fail(name + ": params and grads are empty but the state table holds no grads (state_table's grads) or was "
         "released (fusedopt::release_table)");
  return rows;
}

// The number of tensors a state table describes, from its header, once it looks like one.
inline size_t state_table_count(const std::string& name, const torch::stable::Tensor& t) {
  Info i = info(t);
  const int64_t* rows = static_cast<const int64_t*>(i.data);
  if (i.dtype != codes().i64 || i.device_type != codes().cpu || !i.contiguous || i.numel < table::kCols ||
      rows[table::kMagicCol] != table::kMagic || rows[table::kCount] < 0)
    fail(name + ": table must be a state table of fusedopt::state_table (a contiguous int64 CPU tensor)");
  return static_cast<size_t>(rows[table::kCount]);
}

// fusedopt::release_table: drops the table's references to its params (Note [owned params]). A
// second release does nothing; the table stays usable with explicit params.
inline void release_table(const torch::stable::Tensor& t) {
  const std::string name = "fusedopt::release_table";
  const size_t n = state_table_count(name, t);
  int64_t* rows = static_cast<int64_t*>(t.data_ptr());
  if (info(t).numel != static_cast<int64_t>(n + 1) * table::kCols)
    fail(name + ": table must be a state table of fusedopt::state_table");
  for (size_t r = 1; r <= n; ++r) {
    for (int64_t col : {table::kParam, table::kGrad}) {
      int64_t& cell = rows[r * table::kCols + col];
      if (cell != 0) {
        AtenTensorHandle own = reinterpret_cast<AtenTensorHandle>(static_cast<uintptr_t>(cell));
        cell = 0;
        STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_delete_tensor_object(own));
      }
    }
  }
}

// Note [parallel checks]: the checks of a step's params and grads run once per tensor per step,
// and for the thousands of small tensors of a model each is a few shim calls that wait on cache
// misses: the tensors' metadata (TensorImpl, storage) is as scattered in memory as the tensors
// were allocated. The misses of one tensor depend on each other but not on another tensor's, so
// a call of at least kParallelChecks tensors checks them on the CPU threads of the update
// (idle until then), each its share of the tensors. That pass only asks whether every tensor
// passes: on a refusal (or an error of a shim call inside it) the checks run again in order on
// the calling thread, which fails with the message of the first tensor refused, as a call below
// that size does at once. Nothing is written either way until every check passed.
constexpr size_t kParallelChecks = 2048;

// Every param and grad of a step checked against the state table before anything is written:
// the counts, the params' dtype and device, each param's element count and layout (contiguous
// with its grad and states, or of the layout its states were checked against, with its grad
// sharing it), each grad dense and of its param's shape, dtype and device (Note [parallel
// checks]).
inline CheckedCall check_tensors(const std::string& name, const TensorList& params, const TensorList& grads,
                                 const int64_t* rows, int required, size_t n) {
  const bool owned = params.empty();  // the table's own params (Note [owned params])
  const bool owned_grads = grads.empty();  // and grads (Note [owned grads])
  CheckedCall out;
  out.tensors.resize(n);
  const int32_t pdtype = static_cast<int32_t>(rows[table::kParamDtype]);
  const int32_t device_type = static_cast<int32_t>(rows[table::kDeviceType]);
  out.device_index = static_cast<int32_t>(rows[table::kDeviceIndex]);
  out.pd = dtype_of(pdtype);
  out.sd = dtype_of(static_cast<int32_t>(rows[table::kStateDtype]));
  out.master = rows[table::kHasMaster] != 0;
  out.round = rows[table::kRounds] != 0;
  const bool quantized = out.sd == DType::kUInt8;
  auto on_device = [&](const Info& i) {
    return i.device_type == device_type && i.device_index == out.device_index;
  };
  auto param_handle = [&](size_t t) {
    return owned ? reinterpret_cast<AtenTensorHandle>(static_cast<uintptr_t>(rows[(t + 1) * table::kCols + table::kParam]))
                 : params[t].get();
  };
  auto grad_handle = [&](size_t t) {
    return owned_grads ? reinterpret_cast<AtenTensorHandle>(static_cast<uintptr_t>(rows[(t + 1) * table::kCols + table::kGrad]))
                       : grads[t].get();
  };
  // Tensor t checked, and its addresses in out.tensors[t]: true, or false when a check refuses it
  // and `report` is false; with `report`, a refusal fails the call with its message.
  auto check = [&](size_t t, bool report) -> bool {
    // message() is built only when reporting: no string per tensor
    auto refuse = [&](const auto& message) {
      if (report) fail(name + ": " + message());
      return false;
    };
    auto which = [t] { return std::to_string(t); };
    const int64_t* row = rows + (t + 1) * table::kCols;
    AtenTensorHandle ph = param_handle(t);
    AtenTensorHandle gh = grad_handle(t);
    bool sparse = false;
    if (!grad_matches(ph, gh, &sparse))
      return refuse([&] {
        return "grad " + which() +
               (sparse ? " is sparse; fusedopt needs dense gradients" : " does not have its param's shape");
      });
    Info pi = info(ph);
    if (pi.dtype != pdtype)
      return refuse([&] {
        return "param " + which() + " is " + dtype_name(pi.dtype) + " but the state table is for " +
               dtype_name(pdtype) + " params";
      });
    if (!on_device(pi))
      return refuse([&] {
        return "param " + which() + " is not on the state table's device (" +
               device_name(device_type, out.device_index) + ")";
      });
    if (pi.numel != row[table::kNumel])
      return refuse([&] {
        return "param " + which() + " has " + std::to_string(pi.numel) + " elements but its states in the " +
               "state table have " + std::to_string(row[table::kNumel]);
      });
    Info gi = info(gh);
    if (gi.dtype != pdtype || gi.numel != pi.numel || !on_device(gi))
      return refuse([&] { return "grad " + which() + " must be a tensor of the param's dtype and shape on its device"; });
    const bool contiguous = pi.contiguous && gi.contiguous && row[table::kContiguous] != 0;
    if (!contiguous && pi.numel > 1 &&
        (quantized || !(layout_signature(ph) == row[table::kLayout] && same_dense_layout(ph, gh))))
      return refuse([&] {
        return "param " + which() + ", its grad and states must be contiguous or share one dense layout" +
               (quantized ? " (contiguous, with 8-bit states)" : "");
      });
    CheckedTensor& d = out.tensors[t];
    d.p = pi.data;
    d.g = gi.data;
    d.n = pi.numel;
    d.master = reinterpret_cast<float*>(static_cast<uintptr_t>(row[table::kMaster]));
    for (int k = 0; k < kStateSlots; ++k) {
      d.s[k] = (required >> k) & 1 ? reinterpret_cast<void*>(static_cast<uintptr_t>(row[k])) : nullptr;
      d.scale[k] = reinterpret_cast<float*>(static_cast<uintptr_t>(row[table::kScale0 + k]));
    }
    d.seed = static_cast<uint64_t>(row[table::kSeed]);
    d.offset = static_cast<uint64_t>(row[table::kOffset]);
    d.aligned16 = row[table::kAligned] != 0 && aligned16(pi.data) && aligned16(gi.data);
    return true;
  };
  if (n >= kParallelChecks) {
    std::atomic<bool> passed{true};
    torch::stable::parallel_for(0, static_cast<int64_t>(n), static_cast<int64_t>(kParallelChecks / 2),
                                [&](int64_t begin, int64_t end) {
                                  try {
                                    for (int64_t t = begin; t < end && passed.load(std::memory_order_relaxed); ++t)
                                      if (!check(static_cast<size_t>(t), false)) passed = false;
                                  } catch (...) {
                                    passed = false;  // reported by the checks in order below
                                  }
                                });
    if (passed) return out;
  }
  for (size_t t = 0; t < n; ++t) check(t, true);
  return out;
}

// --- the tables of a step: steps, index, hyper; grad_scale, found_inf ------------------------

// One tensor's place in the tables: its step counter steps[step] and its row hyper[row].
struct StepTables {
  const float* steps = nullptr;    // on the params' device
  const int64_t* index = nullptr;  // host memory: (step, row) per tensor
  const double* hyper = nullptr;   // on the params' device, [rows, n_hyper]
};

// steps: float32 1-D; hyper: float64 [rows, n_hyper]; both contiguous on the params' device;
// index: int64 [n, 2] contiguous on the CPU, every entry in range (a step slot leaves room for
// the algorithm's `n_counters` counters from it; all below 2^31, the width of the CUDA tensor
// table's fields).
inline StepTables check_tables(const std::string& name, size_t n, const torch::stable::Tensor& steps,
                               const torch::stable::Tensor& index, const torch::stable::Tensor& hyper,
                               int64_t n_hyper, int64_t n_counters, int32_t device_type, int32_t device_index) {
  const Codes& c = codes();
  const std::string where = device_name(device_type, device_index);
  Info si = check_table(name, steps, "steps", c.f32, 1, -1, device_type, device_index,
                        "a contiguous 1-D float32 tensor on the params' device (" + where + ")");
  Info hi = check_table(name, hyper, "hyper", c.f64, 2, n_hyper, device_type, device_index,
                        "a contiguous float64 tensor of shape [rows, " + std::to_string(n_hyper) +
                            "] (one row of HYPER per param group) on the params' device (" + where + ")");
  Info ii = check_table(name, index, "index", c.i64, 2, 2, c.cpu, -1,
                        "a contiguous int64 CPU tensor of shape [" + std::to_string(n) +
                            ", 2] (per param: its step slot, its hyper row)");
  if (ii.numel != static_cast<int64_t>(2 * n))
    fail(name + ": index must have one row per param: shape [" + std::to_string(n) + ", 2], got " +
         shape_of(index));
  const int64_t n_steps = si.numel;
  const int64_t rows = n_hyper > 0 ? hi.numel / n_hyper : 0;
  const int64_t limit = INT32_MAX;
  const int64_t* idx = static_cast<const int64_t*>(ii.data);
  for (size_t t = 0; t < n; ++t) {
    const int64_t step = idx[2 * t], row = idx[2 * t + 1];
    if (step < 0 || step + n_counters > n_steps || step >= limit)
      fail(name + ": index[" + std::to_string(t) + "] has step slot " + std::to_string(step) +
           ", out of range for steps of " + std::to_string(n_steps) + " elements" +
           (n_counters > 1 ? " (" + std::to_string(n_counters) + " counters per tensor)" : ""));
    if (row < 0 || row >= rows || row >= limit)
      fail(name + ": index[" + std::to_string(t) + "] has hyper row " + std::to_string(row) +
           ", out of range for hyper of " + std::to_string(rows) + " rows");
  }
  return StepTables{static_cast<const float*>(si.data), idx, static_cast<const double*>(hi.data)};
}

// The optional 0-dim float32 grad_scale / found_inf on the params' device (one element of any
// shape is accepted too, as GradScaler's found_inf is [1]): its address, or null.
inline const float* scalar_tensor(const std::string& name, const std::optional<torch::stable::Tensor>& t,
                                  const char* what, int32_t device_type, int32_t device_index) {
  if (!t.has_value()) return nullptr;
  Info i = info(*t);
  if (i.dtype != codes().f32 || i.numel != 1 || i.device_type != device_type ||
      (device_type != codes().cpu && i.device_index != device_index))
    fail(name + ": " + what + " must be a 0-dim float32 tensor on the params' device (" +
         device_name(device_type, device_index) + "); got " + dtype_name(i.dtype) + " " + shape_of(*t) +
         " on " + device_name(i.device_type, i.device_index));
  return static_cast<const float*>(i.data);
}

// The flags as bits (bit i: FLAGS[i]), once their count is checked.
inline unsigned flag_bits(const std::string& name, const std::vector<bool>& flags, int n_flags) {
  if (flags.size() != static_cast<size_t>(n_flags))
    fail(name + ": expected " + std::to_string(n_flags) + " flags (FLAGS), got " + std::to_string(flags.size()));
  unsigned bits = 0;
  for (int i = 0; i < n_flags; ++i) bits |= flags[i] ? 1u << i : 0u;
  return bits;
}

// Note [split steps]: a reducing algorithm's step (Note [reducing algorithms]) may be split in
// two calls so that the caller combines the per-tensor sums in between: phase 1 runs the first
// traversal and writes tensor i's sums of p^2 and u^2 to sums[i, 0], sums[i, 1] (every row: 0
// where nothing is added, a tensor without elements or an overflow step); phase 2 runs
// the second traversal with the sums it finds there (FSDP2: all-reduced over the ranks that hold
// the shards of each tensor). Both calls take the same arguments; phase 0 is the whole step.
// The sums: float64 [n, 2], contiguous, on the params' device; only with phase 1 or 2.
inline double* split_sums(const std::string& name, bool reduces, const std::optional<torch::stable::Tensor>& sums,
                          int64_t phase, size_t n, int32_t device_type, int32_t device_index) {
  if (phase == 0 && !sums.has_value()) return nullptr;
  STD_TORCH_CHECK(reduces, name, ": phase and sums split the step of a reducing algorithm (LAMB); this one "
                  "runs one traversal");
  STD_TORCH_CHECK(phase == 1 || phase == 2, name, ": phase must be 0 (the whole step), 1 or 2 (its two "
                  "traversals, with sums), got ", phase);
  STD_TORCH_CHECK(sums.has_value(), name, ": phase ", phase, " needs sums, a float64 [", n, ", 2] tensor");
  const std::string where = device_name(device_type, device_index);
  Info i = check_table(name, *sums, "sums", codes().f64, 2, 2, device_type, device_index,
                       "a contiguous float64 tensor of shape [" + std::to_string(n) +
                           ", 2] (per param: its sums of p^2 and u^2) on the params' device (" + where + ")");
  if (i.numel != static_cast<int64_t>(2 * n))
    fail(name + ": sums must have one row per param: shape [" + std::to_string(n) + ", 2], got " + shape_of(*sums));
  return static_cast<double*>(i.data);
}

// Everything a step op needs, checked.
struct CheckedStep {
  int variant = 0;     // the algorithm's call-wide variant (common.h)
  CheckedCall call;    // no tensors when the call has no params: nothing to do
  StepTables tables;
  const float* grad_scale = nullptr;  // on the params' device, or null
  const float* found_inf = nullptr;   // on the params' device, or null
  int phase = 0;                      // 0: the whole step; 1, 2: a split step's traversal
  double* sums = nullptr;             // a split step's per-tensor sums, [n, 2] on the params' device
};

// The checks of one call of fusedopt::<A::kName> (docs/kernel-interface.md) whose kernels run on
// `device_type`, in the order of its arguments; a failure writes nothing. The state slots the
// variant reads must be exactly those of the table (a call without params has none to read).
template <class A>
CheckedStep check_step(const TensorList& params, const TensorList& grads, const torch::stable::Tensor& table,
                       const torch::stable::Tensor& steps, const torch::stable::Tensor& index,
                       const torch::stable::Tensor& hyper, const std::vector<bool>& flags,
                       const std::optional<torch::stable::Tensor>& grad_scale,
                       const std::optional<torch::stable::Tensor>& found_inf,
                       const std::optional<torch::stable::Tensor>& sums, int64_t phase, int32_t device_type) {
  const std::string name = std::string("fusedopt::") + A::kName;
  // An empty params list with grads: the table's own params (Note [owned params]); both lists
  // empty: its own params and grads (Note [owned grads]).
  const bool owned_grads = params.empty() && grads.empty();
  const bool owned = params.empty() && (!grads.empty() || owned_grads);
  const size_t n = owned_grads ? state_table_count(name, table) : owned ? grads.size() : params.size();
  STD_TORCH_CHECK(owned_grads || grads.size() == n, name, ": ", n, " params but ", grads.size(), " grads");
  const int64_t* rows = check_state_table(name, table, n, device_type, owned, owned_grads);
  const int present = static_cast<int>(rows[table::kSlots]);
  CheckedStep out;
  out.variant = A::call_variant(flag_bits(name, flags, A::kNumFlags), present);
  if (n == 0) return out;
  const int required = A::slots(out.variant);
  for (int k = 0; k < kStateSlots; ++k) {
    const bool needed = (required >> k) & 1;
    STD_TORCH_CHECK(((present >> k) & 1) == needed, name, ": state slot ", k,
                    needed ? " is required by the flags but the state table has none"
                           : " must be empty for these flags but the state table has it");
  }
  out.call = check_tensors(name, params, grads, rows, required, n);
  const int32_t device = out.call.device_index;
  out.tables = check_tables(name, n, steps, index, hyper, A::kNumHyper, A::kNumCounters, device_type, device);
  out.grad_scale = scalar_tensor(name, grad_scale, "grad_scale", device_type, device);
  out.found_inf = scalar_tensor(name, found_inf, "found_inf", device_type, device);
  out.sums = split_sums(name, A::kReduces, sums, phase, n, device_type, device);
  out.phase = static_cast<int>(phase);
  return out;
}

// The checks of one call of fusedopt::lookahead whose kernels run on `device_type`: the params
// share one dtype (float32, bfloat16 or float16) and one device; each slow weight has its
// param's element count on that device, all float32 or all of the params' dtype; the optional
// master weights are float32, for 16-bit params with float32 slow weights. All contiguous. The
// call's tensors: p, master, s[0] = the slow weights, no grad.
inline CheckedCall check_lookahead(const TensorList& params, const TensorList& slow,
                                   const std::optional<TensorList>& master, int32_t device_type) {
  const std::string name = "fusedopt::lookahead";
  const Codes& c = codes();
  const size_t n = params.size();
  STD_TORCH_CHECK(slow.size() == n, name, ": ", n, " params but ", slow.size(), " slow weights");
  STD_TORCH_CHECK(!master.has_value() || master->size() == n, name, ": ", n, " params but ", master->size(),
                  " master weights");
  CheckedCall out;
  out.tensors.resize(n);
  if (n == 0) return out;
  int32_t pcode = 0, scode = 0;
  for (size_t t = 0; t < n; ++t) {
    const Info pi = info(params[t]), si = info(slow[t]);
    if (t == 0) {
      pcode = pi.dtype;
      scode = si.dtype;
      out.device_index = pi.device_index;
      STD_TORCH_CHECK(pcode == c.f32 || pcode == c.bf16 || pcode == c.f16, name,
                      ": params must be float32, bfloat16 or float16, got ", dtype_name(pcode));
      STD_TORCH_CHECK(scode == c.f32 || scode == pcode, name,
                      ": slow weights must be float32 or the params' dtype, got ", dtype_name(scode));
      STD_TORCH_CHECK(!master.has_value() || (pcode != c.f32 && scode == c.f32), name,
                      ": master weights go with 16-bit params and float32 slow weights");
    }
    STD_TORCH_CHECK(pi.dtype == pcode && si.dtype == scode, name, ": tensor ", t,
                    ": all params (and all slow weights) of a call must share one dtype");
    auto here = [&](const Info& i) {
      return i.device_type == device_type && i.device_index == out.device_index && i.contiguous;
    };
    STD_TORCH_CHECK(pi.numel == si.numel && here(pi) && here(si), name, ": param ", t,
                    " and its slow weight must be contiguous tensors of one shape on ",
                    device_name(device_type, out.device_index));
    CheckedTensor& d = out.tensors[t];
    d.p = pi.data;
    d.s[0] = si.data;
    d.n = pi.numel;
    d.aligned16 = aligned16(pi.data) && aligned16(si.data);
    if (master.has_value()) {
      const Info mi = info((*master)[t]);
      STD_TORCH_CHECK(mi.dtype == c.f32 && mi.numel == pi.numel && here(mi), name, ": master weight ", t,
                      " must be a contiguous float32 tensor of its param's shape on ",
                      device_name(device_type, out.device_index));
      d.master = static_cast<float*>(mi.data);
      d.aligned16 = d.aligned16 && aligned16(mi.data);
    }
  }
  out.pd = dtype_of(pcode);
  out.sd = dtype_of(scode);
  out.master = master.has_value();
  return out;
}

}  // namespace host
}  // namespace fusedopt
