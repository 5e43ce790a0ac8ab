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
  host::check_counts(name, params, grads, slots, required, master);
  const bool has_master = master.has_value();

  // found_inf first: an overflow step writes nothing at all.
  if (found_inf.has_value() && read_scalar_tensor(*found_inf, "found_inf") != 0.0f) {
    out.skip = true;
    return out;
  }
  if (n == 0) {
    out.skip = true;
    return out;
  }

  host::CheckedCall call = host::check_tensors(name, params, grads, slots, required, master, codes().cpu);
  Group& grp = out.grp;
  grp.pdtype = call.pd;
  grp.sdtype = call.sd;
  grp.master = has_master;
  grp.p.resize(n);
  grp.g.resize(n);
  grp.n.resize(n);
  if (has_master) grp.m.resize(n);
  for (int k = 0; k < kMaxSlots; ++k)
    if ((required >> k) & 1) grp.s[k].resize(n);
  for (size_t t = 0; t < n; ++t) {
    const host::CheckedTensor& d = call.tensors[t];
    grp.p[t] = d.p;
    grp.g[t] = d.g;
    grp.n[t] = d.n;
    if (has_master) grp.m[t] = d.master;
    for (int k = 0; k < kMaxSlots; ++k)
      if ((required >> k) & 1) grp.s[k][t] = d.s[k];
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
