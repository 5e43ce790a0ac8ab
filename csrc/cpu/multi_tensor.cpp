// Host-side checking and unpacking of a step's arguments.
//
// Note [raw shim calls]: the checks run once per tensor per step, for groups of
// thousands of tensors, so they call the C shim directly with cached dtype
// codes instead of going through torch::stable::Tensor::scalar_type(), which
// translates every dtype through a switch of shim calls.
#include "multi_tensor.h"

#include "fusedopt/tensor_info.h"

#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <array>
#include <string>

namespace fusedopt {
namespace cpu {

namespace {

using host::codes;
using host::Codes;
using host::dtype_name;
using host::fail;
using host::info;
using host::Info;
using host::same_dense_layout;


}  // namespace

Isa cpu_isa() {
  static const Isa isa = [] {
    Isa best = Isa::kBaseline;
#if FUSEDOPT_X86_CLONES
    __builtin_cpu_init();
    if (__builtin_cpu_supports("x86-64-v4")) best = Isa::kAvx512;
    else if (__builtin_cpu_supports("x86-64-v3")) best = Isa::kAvx2;
#endif
    const char* cap = getenv("FUSEDOPT_CPU_ISA");
    if (cap != nullptr) {
      Isa c = best;
      if (strcmp(cap, "baseline") == 0) c = Isa::kBaseline;
      else if (strcmp(cap, "avx2") == 0) c = Isa::kAvx2;
      else if (strcmp(cap, "avx512") == 0) c = Isa::kAvx512;
      if (static_cast<int>(c) < static_cast<int>(best)) best = c;
    }
    return best;
  }();
  return isa;
}

const char* isa_name() {
  switch (cpu_isa()) {
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    default: return "baseline";
  }
}

float read_scalar_tensor(const Tensor& t, const char* what) {
  Info i = info(t);
  STD_TORCH_CHECK(i.numel == 1 && i.dtype == codes().f32 && i.device_type == codes().cpu,
                  "fusedopt cpu: ", what, " must be a one-element float32 CPU tensor");
  return *static_cast<const float*>(i.data);
}

StepArgs prepare_step(const char* algo,
                      const TensorList& params, const TensorList& grads,
                      const TensorList* slots[kMaxSlots], int required,
                      const std::vector<double>& scalars, size_t n_scalars,
                      const std::vector<bool>& flags, size_t n_flags,
                      const std::optional<Tensor>& grad_scale,
                      const std::optional<Tensor>& found_inf,
                      const std::optional<TensorList>& master) {
  StepArgs out;
  const std::string name = std::string("fusedopt::") + algo;
  STD_TORCH_CHECK(scalars.size() == n_scalars, name, ": expected ", n_scalars,
                  " scalars, got ", scalars.size());
  STD_TORCH_CHECK(flags.size() == n_flags, name, ": expected ", n_flags, " flags, got ",
                  flags.size());
  const size_t n = params.size();
  STD_TORCH_CHECK(grads.size() == n, name, ": ", n, " params but ", grads.size(), " grads");
  for (int k = 0; k < kMaxSlots; ++k) {
    const bool present = slots[k] != nullptr && !slots[k]->empty();
    const bool needed = (required >> k) & 1;
    STD_TORCH_CHECK(present == needed, name, ": state slot ", k,
                    needed ? " is required by the flags but empty" : " must be empty for these flags");
    if (present) {
      STD_TORCH_CHECK(slots[k]->size() == n, name, ": state slot ", k, " has ",
                      slots[k]->size(), " tensors for ", n, " params");
    }
  }

  const bool has_master = master.has_value();
  if (has_master) {
    STD_TORCH_CHECK(master->size() == n, name, ": ", master->size(), " master weights for ", n,
                    " params");
  }

  // found_inf first: an overflow step writes nothing at all.
  if (found_inf.has_value() && read_scalar_tensor(*found_inf, "found_inf") != 0.0f) {
    out.skip = true;
    return out;
  }
  if (n == 0) {
    out.skip = true;
    return out;
  }

  const Codes& c = codes();
  Group& grp = out.grp;
  grp.p.resize(n);
  grp.g.resize(n);
  grp.n.resize(n);
  grp.master = has_master;
  if (has_master) grp.m.resize(n);
  for (int k = 0; k < kMaxSlots; ++k)
    if ((required >> k) & 1) grp.s[k].resize(n);

  int32_t pdtype = -1;
  int32_t sdtype = -1;
  for (size_t t = 0; t < n; ++t) {
    Info pi = info(params[t]);
    if (t == 0) {
      pdtype = pi.dtype;
      if (pdtype == c.f32) grp.pdtype = DType::kFloat;
      else if (pdtype == c.bf16) grp.pdtype = DType::kBFloat16;
      else if (pdtype == c.f16) grp.pdtype = DType::kHalf;
      else fail(name + ": params must be float32, bfloat16 or float16, got " + dtype_name(pdtype));
      if (has_master && grp.pdtype == DType::kFloat)
        fail(name + ": master weights are for bfloat16/float16 params only");
    }
    if (pi.dtype != pdtype)
      fail(name + ": all params of a call must share one dtype (param " + std::to_string(t) + ")");
    if (pi.device_type != c.cpu) fail(name + ": param " + std::to_string(t) + " is not on the CPU");
    Info gi = info(grads[t]);
    if (gi.dtype != pdtype || gi.numel != pi.numel || gi.device_type != c.cpu)
      fail(name + ": grad " + std::to_string(t) + " must be a CPU tensor of the param's dtype and shape");
    bool dense = pi.contiguous && gi.contiguous;
    grp.p[t] = pi.data;
    grp.g[t] = gi.data;
    grp.n[t] = pi.numel;
    if (has_master) {
      Info mi = info((*master)[t]);
      if (mi.dtype != c.f32 || mi.numel != pi.numel || mi.device_type != c.cpu)
        fail(name + ": master weight " + std::to_string(t) +
             " must be a float32 CPU tensor with the param's shape");
      dense = dense && mi.contiguous;
      grp.m[t] = static_cast<float*>(mi.data);
    }
    for (int k = 0; k < kMaxSlots; ++k) {
      if (!((required >> k) & 1)) continue;
      Info si = info((*slots[k])[t]);
      if (sdtype < 0) {
        sdtype = si.dtype;
        if (sdtype == c.f32) grp.sdtype = DType::kFloat;
        else if (sdtype == c.bf16) grp.sdtype = DType::kBFloat16;
        else fail(name + ": states must be float32 or bfloat16, got " + dtype_name(sdtype));
      }
      if (si.dtype != sdtype || si.numel != pi.numel || si.device_type != c.cpu)
        fail(name + ": state slot " + std::to_string(k) + " of param " + std::to_string(t) +
             " must be a CPU tensor with the param's shape and the call's one state dtype");
      dense = dense && si.contiguous;
      grp.s[k][t] = si.data;
    }
    if (!dense && pi.numel > 1) {
      bool ok = same_dense_layout(params[t], grads[t]);
      if (ok && has_master) ok = same_dense_layout(params[t], (*master)[t]);
      for (int k = 0; k < kMaxSlots && ok; ++k)
        if ((required >> k) & 1) ok = same_dense_layout(params[t], (*slots[k])[t]);
      if (!ok)
        fail(name + ": param " + std::to_string(t) +
             ", its grad and states must be contiguous or share one dense layout");
    }
  }

  const double gs = scalars[kGradScale];
  const double lr = scalars[kLr];
  const double wd = scalars[kWeightDecay];
  const bool maximize = flags[kMaximize];
  const bool decoupled = flags[kDecoupled];
  out.pre.scale = static_cast<float>(maximize ? -gs : gs);
  out.pre.scale_tensor = grad_scale.has_value() ? read_scalar_tensor(*grad_scale, "grad_scale") : 1.0f;
  out.pre.wd = static_cast<float>(wd);
  out.wd_mode = (wd == 0.0) ? kWdNone : (decoupled ? kWdDecoupled : kWdCoupled);
  // Exactly 1 unless decoupled decay is on (the loop always multiplies by it).
  out.pre.decay = out.wd_mode == kWdDecoupled ? static_cast<float>(1.0 - lr * wd) : 1.0f;
  return out;
}

}  // namespace cpu
}  // namespace fusedopt
