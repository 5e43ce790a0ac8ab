// Storage types and float32 conversions.
//
// Params and grads are float32, bfloat16 or float16; states float32 or bfloat16, or 8-bit codes
// (kUInt8, with their block scales: fusedopt/lowbit.h). All
// math is float32: load, upcast, compute, round to nearest even on store. The
// conversions are written with integer and float operations only (no
// branches), so the CPU loops vectorise on any x86-64 and the same code runs
// on the device.
#pragma once

#include <stdint.h>
#include <string.h>

#include <type_traits>

#include "fusedopt/macros.h"

namespace fusedopt {

enum class DType : int { kFloat = 0, kBFloat16 = 1, kHalf = 2, kUInt8 = 3 };

template <DType D>
struct Storage;
template <>
struct Storage<DType::kFloat> { using type = float; };
template <>
struct Storage<DType::kBFloat16> { using type = uint16_t; };
template <>
struct Storage<DType::kHalf> { using type = uint16_t; };
template <>
struct Storage<DType::kUInt8> { using type = uint8_t; };

FUSEDOPT_HD FUSEDOPT_INLINE uint32_t fo_f2u(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof(u));
  return u;
}
FUSEDOPT_HD FUSEDOPT_INLINE float fo_u2f(uint32_t u) {
  float f;
  memcpy(&f, &u, sizeof(f));
  return f;
}

// bfloat16 -------------------------------------------------------------------
FUSEDOPT_HD FUSEDOPT_INLINE float bf16_to_float(uint16_t h) {
  return fo_u2f(static_cast<uint32_t>(h) << 16);
}
// Round to nearest even; NaN becomes the canonical quiet NaN 0x7fc0 (as c10).
FUSEDOPT_HD FUSEDOPT_INLINE uint16_t float_to_bf16(float f) {
  uint32_t u = fo_f2u(f);
  uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  return static_cast<uint16_t>((f != f) ? 0x7fc0u : rounded);
}

// float16 --------------------------------------------------------------------
FUSEDOPT_HD FUSEDOPT_INLINE float half_to_float(uint16_t h) {
  const uint32_t shifted_exp = 0x7c00u << 13;
  uint32_t o = (static_cast<uint32_t>(h) & 0x7fffu) << 13;
  uint32_t exp = shifted_exp & o;
  o += (127u - 15u) << 23;
  uint32_t inf_nan = o + ((128u - 16u) << 23);
  // Zero/subnormal: renormalise through one float subtraction (exact).
  float sub = fo_u2f(o + (1u << 23)) - fo_u2f(113u << 23);
  uint32_t sub_u = fo_f2u(sub);
  // Selects as masks: GCC does not if-convert nested selects for AVX2.
  const uint32_t is_special = 0u - static_cast<uint32_t>(exp == shifted_exp);
  const uint32_t is_sub = 0u - static_cast<uint32_t>(exp == 0u);
  o = (inf_nan & is_special) | (sub_u & is_sub) | (o & ~(is_special | is_sub));
  o |= (static_cast<uint32_t>(h) & 0x8000u) << 16;
  return fo_u2f(o);
}

// Round to nearest even, overflow to inf, NaN to quiet NaN.
FUSEDOPT_HD FUSEDOPT_INLINE uint16_t float_to_half(float f) {
  const uint32_t f32infty = 255u << 23;
  const uint32_t f16max = (127u + 16u) << 23;
  const uint32_t denorm_magic_u = ((127u - 15u) + (23u - 10u) + 1u) << 23;
  uint32_t u = fo_f2u(f);
  uint32_t sign = u & 0x80000000u;
  u ^= sign;
  // Subnormal or zero result: the float addition aligns the 10 mantissa bits
  // at the bottom and rounds to nearest even.
  uint32_t sub = fo_f2u(fo_u2f(u) + fo_u2f(denorm_magic_u)) - denorm_magic_u;
  // Normal result.
  uint32_t mant_odd = (u >> 13) & 1u;
  uint32_t norm = (u + (static_cast<uint32_t>(15 - 127) << 23) + 0xfffu + mant_odd) >> 13;
  // u < 2^31 here: compare as signed, which every SIMD instruction set has.
  const int32_t su = static_cast<int32_t>(u);
  const uint32_t is_nan = 0u - static_cast<uint32_t>(su > static_cast<int32_t>(f32infty));
  const uint32_t is_big = 0u - static_cast<uint32_t>(su >= static_cast<int32_t>(f16max));
  const uint32_t is_sub = 0u - static_cast<uint32_t>(su < static_cast<int32_t>(113u << 23));
  const uint32_t big = 0x7c00u | (0x0200u & is_nan);
  uint32_t o = (big & is_big) | (sub & is_sub) | (norm & ~(is_big | is_sub));
  return static_cast<uint16_t>(o | (sign >> 16));
}

template <DType D>
FUSEDOPT_HD FUSEDOPT_INLINE float load_as_float(typename Storage<D>::type v);
template <>
FUSEDOPT_HD FUSEDOPT_INLINE float load_as_float<DType::kFloat>(float v) { return v; }
template <>
FUSEDOPT_HD FUSEDOPT_INLINE float load_as_float<DType::kBFloat16>(uint16_t v) { return bf16_to_float(v); }
template <>
FUSEDOPT_HD FUSEDOPT_INLINE float load_as_float<DType::kHalf>(uint16_t v) { return half_to_float(v); }

template <DType D>
FUSEDOPT_HD FUSEDOPT_INLINE typename Storage<D>::type store_from_float(float v);
template <>
FUSEDOPT_HD FUSEDOPT_INLINE float store_from_float<DType::kFloat>(float v) { return v; }
template <>
FUSEDOPT_HD FUSEDOPT_INLINE uint16_t store_from_float<DType::kBFloat16>(float v) { return float_to_bf16(v); }
template <>
FUSEDOPT_HD FUSEDOPT_INLINE uint16_t store_from_float<DType::kHalf>(float v) { return float_to_half(v); }

// The one dtype-dispatch point of both traversals: (param dtype, state dtype, master weights,
// stochastic rounding) -> fn(DTypeConstant<PD>, DTypeConstant<SD>, std::integral_constant<bool,
// MASTER>, std::integral_constant<bool, ROUND>). Master weights exist for 16-bit params only
// (checked on the host); states are float32 or bfloat16, and float16 with float16 params for a
// rule that asks for it (HALF_STATES: Lookahead's slow weights may have the params' dtype).
// LOWBIT adds 8-bit states (kUInt8) and the stochastic rounding of 16-bit params without master
// weights (ROUND) with float32 or 8-bit states; without it `round` must be false and sd not kUInt8
// (the host refuses them, and bfloat16 states with rounding).
template <DType D>
using DTypeConstant = std::integral_constant<DType, D>;

template <bool HALF_STATES = false, bool LOWBIT = false, class Fn>
FUSEDOPT_INLINE void with_storage(DType pd, DType sd, bool master, bool round, const Fn& fn) {
  using No = std::false_type;
  using Yes = std::true_type;
  if constexpr (HALF_STATES) {
    if (sd == DType::kHalf) {  // params float16 too, no master weights (checked on the host)
      fn(DTypeConstant<DType::kHalf>{}, DTypeConstant<DType::kHalf>{}, No{}, No{});
      return;
    }
  }
  auto with_params = [&](auto sdc) {
    auto half = [&](auto pdc) {
      if (master) fn(pdc, sdc, Yes{}, No{});
      // (bfloat16 states with stochastic rounding: refused on the host, a build-time saving)
      else if (LOWBIT && round && !std::is_same_v<decltype(sdc), DTypeConstant<DType::kBFloat16>>)
        fn(pdc, sdc, No{}, std::integral_constant<bool, LOWBIT>{});
      else fn(pdc, sdc, No{}, No{});
    };
    switch (pd) {
      case DType::kBFloat16: half(DTypeConstant<DType::kBFloat16>{}); break;
      case DType::kHalf: half(DTypeConstant<DType::kHalf>{}); break;
      default: fn(DTypeConstant<DType::kFloat>{}, sdc, No{}, No{}); break;
    }
  };
  if (LOWBIT && sd == DType::kUInt8) with_params(DTypeConstant<LOWBIT ? DType::kUInt8 : DType::kFloat>{});
  else if (sd == DType::kBFloat16) with_params(DTypeConstant<DType::kBFloat16>{});
  else with_params(DTypeConstant<DType::kFloat>{});
}

}  // namespace fusedopt
