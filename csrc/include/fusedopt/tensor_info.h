// Host-side inspection of stable-ABI tensors, shared by the CPU and CUDA ops.
//
// Note [raw shim calls]: the checks run once per tensor per step, for groups of thousands of
// tensors, so they call the C shim directly with cached dtype codes instead of going through
// torch::stable::Tensor::scalar_type(), which translates every dtype through a switch of shim
// calls.
#pragma once

#include <stdint.h>

#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/tensor.h>

namespace fusedopt {
namespace host {

[[noreturn]] inline void fail(const std::string& msg) {
  STD_TORCH_CHECK(false, msg);
  throw;  // unreachable
}

struct Codes {
  int32_t f32, bf16, f16, u8, cuda, cpu;
};

inline const Codes& codes() {
  static const Codes c{aoti_torch_dtype_float32(), aoti_torch_dtype_bfloat16(),
                       aoti_torch_dtype_float16(), aoti_torch_dtype_uint8(),
                       aoti_torch_device_type_cuda(), aoti_torch_device_type_cpu()};
  return c;
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

}  // namespace host
}  // namespace fusedopt
