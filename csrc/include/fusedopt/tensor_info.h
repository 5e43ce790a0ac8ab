// Host-side inspection of stable-ABI tensors, shared by the CPU and CUDA ops.
//
// Note [raw shim calls]: the checks run once per tensor per step, for groups of thousands of
// tensors, so they call the C shim directly with cached dtype codes instead of going through
// torch::stable::Tensor::scalar_type(), which translates every dtype through a switch of shim
// calls.
#pragma once

#include <stdint.h>

#include <algorithm>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/tensor.h>

#include "fusedopt/dtype.h"

namespace fusedopt {
namespace host {

[[noreturn]] inline void fail(const std::string& msg) {
  STD_TORCH_CHECK(false, msg);
  throw;  // unreachable
}

struct Codes {
  int32_t f32, bf16, f16, u8, cuda, cpu, strided;
};

inline const Codes& codes() {
  static const Codes c{aoti_torch_dtype_float32(), aoti_torch_dtype_bfloat16(),
                       aoti_torch_dtype_float16(), aoti_torch_dtype_uint8(),
                       aoti_torch_device_type_cuda(), aoti_torch_device_type_cpu(),
                       aoti_torch_layout_strided()};
  return c;
}

// A gradient the step can read as its param's: strided (not sparse) and of the param's sizes.
// Checked before info(), which would fail on a sparse tensor's data pointer with a vaguer error.
inline bool grad_matches(const torch::stable::Tensor& p, const torch::stable::Tensor& g,
                         bool* sparse) {
  int32_t layout = 0;
  STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_get_layout(g.get(), &layout));
  *sparse = layout != codes().strided;
  if (*sparse) return false;
  int64_t dp = 0, dg = 0;
  STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_get_dim(p.get(), &dp));
  STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_get_dim(g.get(), &dg));
  if (dp != dg) return false;
  int64_t *sp = nullptr, *sg = nullptr;
  STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_get_sizes(p.get(), &sp));
  STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_get_sizes(g.get(), &sg));
  return std::equal(sp, sp + dp, sg);
}

inline const char* dtype_name(int32_t code) {
  const Codes& c = codes();
  if (code == c.f32) return "float32";
  if (code == c.bf16) return "bfloat16";
  if (code == c.f16) return "float16";
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

inline Info info(const torch::stable::Tensor& t) {
  AtenTensorHandle h = t.get();
  Info i{};
  STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_get_data_ptr(h, &i.data));
  STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_get_numel(h, &i.numel));
  STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_get_dtype(h, &i.dtype));
  STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_get_device_type(h, &i.device_type));
  STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_get_device_index(h, &i.device_index));
  STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_is_contiguous(h, &i.contiguous));
  return i;
}

// A non-contiguous tensor is accepted when it is dense and non-overlapping (e.g.
// channels_last) and `b` has exactly its sizes and strides: the elementwise update then walks
// both as flat arrays.
inline bool same_dense_layout(const torch::stable::Tensor& a, const torch::stable::Tensor& b) {
  int64_t da = 0, db = 0;
  STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_get_dim(a.get(), &da));
  STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_get_dim(b.get(), &db));
  if (da != db) return false;
  int64_t *sa = nullptr, *sb = nullptr, *ta = nullptr, *tb = nullptr;
  STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_get_sizes(a.get(), &sa));
  STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_get_sizes(b.get(), &sb));
  STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_get_strides(a.get(), &ta));
  STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_get_strides(b.get(), &tb));
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

// --- the arguments of one step op ----------------------------------------------------------
constexpr int kStateSlots = 3;
using TensorList = std::vector<torch::stable::Tensor>;

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// The counts: one grad per param, exactly the state slots `required` (bit k: slot k) the
// flags ask for, each with one tensor per param, and master weights for every param if any.
inline void check_counts(const std::string& name, const TensorList& params, const TensorList& grads,
                         const TensorList* const slots[kStateSlots], int required,
                         const std::optional<TensorList>& master) {
  const size_t n = params.size();
  STD_TORCH_CHECK(grads.size() == n, name, ": ", n, " params but ", grads.size(), " grads");
  for (int k = 0; k < kStateSlots; ++k) {
    const bool present = slots[k] != nullptr && !slots[k]->empty();
    const bool needed = (required >> k) & 1;
    STD_TORCH_CHECK(present == needed, name, ": state slot ", k,
                    needed ? " is required by the flags but empty" : " must be empty for these flags");
    if (present)
      STD_TORCH_CHECK(slots[k]->size() == n, name, ": state slot ", k, " has ", slots[k]->size(),
                      " tensors for ", n, " params");
  }
  if (master.has_value())
    STD_TORCH_CHECK(master->size() == n, name, ": ", master->size(), " master weights for ", n,
                    " params");
}

// One tensor's addresses, as every traversal needs them.
struct CheckedTensor {
  void* p = nullptr;
  const void* g = nullptr;
  float* master = nullptr;              // float32 master weights, or null
  void* s[kStateSlots] = {nullptr, nullptr, nullptr};  // null for inactive slots
  int64_t n = 0;
  bool aligned16 = false;               // every pointer above is 16-byte aligned
};

struct CheckedCall {
  DType pd = DType::kFloat;  // params and grads
  DType sd = DType::kFloat;  // states: float32 or bfloat16
  int32_t device_index = -1;
  std::vector<CheckedTensor> tensors;
};

// Every tensor of a step, checked before anything is written: one param dtype
// (float32/bfloat16/float16) shared by the grads, one state dtype (float32/bfloat16), float32
// master weights for 16-bit params only, equal sizes, all on `device_type` (and on param 0's
// device index), each param's tensors contiguous or sharing one dense layout.
inline CheckedCall check_tensors(const std::string& name, const TensorList& params,
                                 const TensorList& grads, const TensorList* const slots[kStateSlots],
                                 int required, const std::optional<TensorList>& master,
                                 int32_t device_type) {
  const Codes& c = codes();
  const bool has_master = master.has_value();
  const size_t n = params.size();
  CheckedCall out;
  out.tensors.resize(n);
  int32_t pdtype = -1, sdtype = -1;
  auto on_device = [&](const Info& i) {
    return i.device_type == device_type && i.device_index == out.device_index;
  };
  for (size_t t = 0; t < n; ++t) {
    const std::string which = std::to_string(t);
    bool sparse = false;
    if (!grad_matches(params[t], grads[t], &sparse))
      fail(name + ": grad " + which +
           (sparse ? " is sparse; fusedopt needs dense gradients"
                   : " does not have its param's shape"));
    Info pi = info(params[t]);
    if (t == 0) {
      pdtype = pi.dtype;
      out.device_index = pi.device_index;
      if (pdtype == c.f32) out.pd = DType::kFloat;
      else if (pdtype == c.bf16) out.pd = DType::kBFloat16;
      else if (pdtype == c.f16) out.pd = DType::kHalf;
      else fail(name + ": params must be float32, bfloat16 or float16, got " + dtype_name(pdtype));
      if (has_master && out.pd == DType::kFloat)
        fail(name + ": master weights are for bfloat16/float16 params only");
      if (pi.device_type != device_type)
        fail(name + ": param 0 is on the wrong device type for this kernel");
    }
    if (pi.dtype != pdtype)
      fail(name + ": all params of a call must share one dtype (param " + which + ")");
    if (!on_device(pi)) fail(name + ": param " + which + " is not on param 0's device");
    Info gi = info(grads[t]);
    if (gi.dtype != pdtype || gi.numel != pi.numel || !on_device(gi))
      fail(name + ": grad " + which + " must be a tensor of the param's dtype and shape on its device");
    CheckedTensor& d = out.tensors[t];
    d.p = pi.data;
    d.g = gi.data;
    d.n = pi.numel;
    bool dense = pi.contiguous && gi.contiguous;
    bool vec = aligned16(pi.data) && aligned16(gi.data);
    if (has_master) {
      Info mi = info((*master)[t]);
      if (mi.dtype != c.f32 || mi.numel != pi.numel || !on_device(mi))
        fail(name + ": master weight " + which + " must be a float32 tensor with the param's shape on its device");
      dense = dense && mi.contiguous;
      vec = vec && aligned16(mi.data);
      d.master = static_cast<float*>(mi.data);
    }
    for (int k = 0; k < kStateSlots; ++k) {
      if (!((required >> k) & 1)) continue;
      Info si = info((*slots[k])[t]);
      if (sdtype < 0) {
        sdtype = si.dtype;
        if (sdtype == c.f32) out.sd = DType::kFloat;
        else if (sdtype == c.bf16) out.sd = DType::kBFloat16;
        else fail(name + ": states must be float32 or bfloat16, got " + dtype_name(sdtype));
      }
      if (si.dtype != sdtype || si.numel != pi.numel || !on_device(si))
        fail(name + ": state slot " + std::to_string(k) + " of param " + which +
             " must be a tensor with the param's shape on its device and the call's one state dtype");
      dense = dense && si.contiguous;
      vec = vec && aligned16(si.data);
      d.s[k] = si.data;
    }
    if (!dense && pi.numel > 1) {
      bool ok = same_dense_layout(params[t], grads[t]);
      if (ok && has_master) ok = same_dense_layout(params[t], (*master)[t]);
      for (int k = 0; k < kStateSlots && ok; ++k)
        if ((required >> k) & 1) ok = same_dense_layout(params[t], (*slots[k])[t]);
      if (!ok)
        fail(name + ": param " + which + ", its grad and states must be contiguous or share one dense layout");
    }
    d.aligned16 = vec;
  }
  return out;
}

}  // namespace host
}  // namespace fusedopt
