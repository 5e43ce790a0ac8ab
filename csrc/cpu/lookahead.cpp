// fusedopt::lookahead on the CPU: slow = slow + alpha * (p - slow); p = slow.
#include "fusedopt/algos/lookahead.h"
#include "multi_tensor.h"

#include <string>

namespace fusedopt {
namespace cpu {
namespace {

template <class M, DType D, DType S>
FUSEDOPT_INLINE void lookahead_loop(typename Storage<D>::type* __restrict p,
                                    typename Storage<S>::type* __restrict slow, float alpha,
                                    int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    float pv = load_as_float<D>(p[i]);
    float sv = load_as_float<S>(slow[i]);
    lookahead_update<M>(pv, sv, alpha);
    slow[i] = store_from_float<S>(sv);
    p[i] = store_from_float<D>(pv);
  }
}

#define FUSEDOPT_LOOKAHEAD_ARGS \
  typename Storage<D>::type *__restrict p, typename Storage<S>::type *__restrict slow, float alpha, int64_t n

template <DType D, DType S>
__attribute__((noinline)) void lookahead_baseline(FUSEDOPT_LOOKAHEAD_ARGS) {
#if FUSEDOPT_X86_CLONES
  lookahead_loop<SoftFma, D, S>(p, slow, alpha, n);
#else
  lookahead_loop<HwFma, D, S>(p, slow, alpha, n);
#endif
}
#if FUSEDOPT_X86_CLONES
template <DType D, DType S>
FUSEDOPT_TARGET_V3 __attribute__((noinline)) void lookahead_v3(FUSEDOPT_LOOKAHEAD_ARGS) {
  lookahead_loop<HwFma, D, S>(p, slow, alpha, n);
}
template <DType D, DType S>
FUSEDOPT_TARGET_V4 __attribute__((noinline)) void lookahead_v4(FUSEDOPT_LOOKAHEAD_ARGS) {
  lookahead_loop<HwFma, D, S>(p, slow, alpha, n);
}
#endif

template <DType D, DType S>
void run(const std::vector<void*>& p, const std::vector<void*>& s, const std::vector<int64_t>& n,
         float alpha) {
  using TP = typename Storage<D>::type;
  using TS = typename Storage<S>::type;
  void (*fn)(TP*, TS*, float, int64_t) = &lookahead_baseline<D, S>;
#if FUSEDOPT_X86_CLONES
  if (cpu_isa() == Isa::kAvx512) fn = &lookahead_v4<D, S>;
  else if (cpu_isa() == Isa::kAvx2) fn = &lookahead_v3<D, S>;
#endif
  for_each_item(n.size(), [&](size_t t) { return n[t]; }, [&](int64_t t, int64_t b, int64_t len, size_t) {
    fn(static_cast<TP*>(p[t]) + b, static_cast<TS*>(s[t]) + b, alpha, len);
  });
}

DType to_dtype(int32_t code) {
  if (code == aoti_torch_dtype_float32()) return DType::kFloat;
  if (code == aoti_torch_dtype_bfloat16()) return DType::kBFloat16;
  STD_TORCH_CHECK(code == aoti_torch_dtype_float16(),
                  "fusedopt::lookahead: params must be float32, bfloat16 or float16");
  return DType::kHalf;
}

void lookahead(const TensorList& params, const TensorList& slow, double alpha) {
  const size_t n = params.size();
  STD_TORCH_CHECK(slow.size() == n, "fusedopt::lookahead: ", n, " params but ", slow.size(),
                  " slow weights");
  if (n == 0) return;
  std::vector<void*> pp(n), sp(n);
  std::vector<int64_t> numel(n);
  int32_t pcode = 0, scode = 0;
  const int32_t cpu = aoti_torch_device_type_cpu();
  for (size_t t = 0; t < n; ++t) {
    int32_t pc = 0, sc = 0, pdev = 0, sdev = 0;
    int64_t pn = 0, sn = 0;
    bool pcont = false, scont = false;
    AtenTensorHandle ph = params[t].get(), sh = slow[t].get();
    STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_get_dtype(ph, &pc));
    STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_get_dtype(sh, &sc));
    STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_get_numel(ph, &pn));
    STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_get_numel(sh, &sn));
    STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_get_device_type(ph, &pdev));
    STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_get_device_type(sh, &sdev));
    STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_is_contiguous(ph, &pcont));
    STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_is_contiguous(sh, &scont));
    if (t == 0) {
      pcode = pc;
      scode = sc;
    }
    STD_TORCH_CHECK(pc == pcode && sc == scode, "fusedopt::lookahead: tensor ", t,
                    ": all params (and all slow weights) of a call must share one dtype");
    STD_TORCH_CHECK(pn == sn && pdev == cpu && sdev == cpu && pcont && scont,
                    "fusedopt::lookahead: param ", t,
                    " and its slow weight must be contiguous CPU tensors of one shape");
    STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_get_data_ptr(ph, &pp[t]));
    STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_get_data_ptr(sh, &sp[t]));
    numel[t] = pn;
  }
  const DType pd = to_dtype(pcode);
  const DType sd = to_dtype(scode);
  STD_TORCH_CHECK(sd == DType::kFloat || sd == pd,
                  "fusedopt::lookahead: slow weights must be float32 or the params' dtype");
  const float a = static_cast<float>(alpha);
  if (sd == DType::kFloat) {
    switch (pd) {
      case DType::kBFloat16: run<DType::kBFloat16, DType::kFloat>(pp, sp, numel, a); break;
      case DType::kHalf: run<DType::kHalf, DType::kFloat>(pp, sp, numel, a); break;
      default: run<DType::kFloat, DType::kFloat>(pp, sp, numel, a); break;
    }
  } else if (pd == DType::kBFloat16) {
    run<DType::kBFloat16, DType::kBFloat16>(pp, sp, numel, a);
  } else {
    run<DType::kHalf, DType::kHalf>(pp, sp, numel, a);
  }
}

}  // namespace
}  // namespace cpu
}  // namespace fusedopt

STABLE_TORCH_LIBRARY_IMPL(fusedopt, CPU, m) {
  m.impl("lookahead", TORCH_BOX(&fusedopt::cpu::lookahead));
}
