// The device side of fusedopt/lowbit.h for the CUDA traversal (multi_tensor.cuh): the two
// dynamic maps as constants, the block quantizer of one warp, and the code and scale accesses.
//
// Note [8-bit blocks and warps]: with 8-bit states every tile of kTile = 2048 elements is walked
// in the contiguous layout (thread t holds elements base + 8t .. base + 8t + 7), so that one
// quantization block of 256 elements is exactly the 32 threads of one warp: block (base / 256) + w
// for warp w. Tiles start on multiples of kTile (a chunk is a multiple of the tile and a tensor's
// chunks start at multiples of it), so no block straddles two warps, tiles or work items, and its
// absmax is a warp reduction. The rules are fusedopt/lowbit.py's, bit for bit:
//   dequantize  x = map[code] * scale                 (one float32 multiply, never contracted)
//   absmax      the maximum of the bit patterns of |x| over the block (NaN, above inf, propagates)
//   quantize    y = x / absmax (IEEE division; 0 when absmax is 0: the code of +0.0)
//               code = #{k in 0..254 : y >= mid[k]}, mid[k] = (map[k] + map[k + 1]) * 0.5f,
//               by an exact branch-free binary search over the 255 midpoints (NaN: code 0).
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

#include "fusedopt/lowbit.h"
#include "launch.h"

namespace fusedopt {
namespace cuda {

static_assert(kVec * 32 == lowbit::kQuantBlock, "one 8-bit block is one warp's 32 x kVec elements");
static_assert(kTile % lowbit::kQuantBlock == 0, "tiles (and chunks) start on an 8-bit block");
static_assert(kThreads == 256, "the maps are loaded one entry per thread");
static_assert(lowbit::kQuantBlock == 256, "i >> 8 is the block of element i");

// The float32 bit patterns of lowbit::dynamic_map(false) and lowbit::dynamic_map(true) (index:
// is_signed), ascending: the sorted tables fusedopt/lowbit.py defines, embedded as constants
// (written from lowbit.dynamic_map; tests/test_cuda_backend.py checks them against it, without
// a GPU). Global rather than __constant__ memory: every thread reads another entry.
__device__ const uint32_t kMapBits[2][256] = {
    {  // unsigned: 0 (code 0), 254 positives, 1
        0x00000000u, 0x34ae7ba9u, 0x35500998u, 0x360e9b39u, 0x3692ccf7u, 0x36de4c51u, 0x3714e5d6u, 0x3783126fu,
        0x37e1719fu, 0x381fe868u, 0x384f1801u, 0x387e4799u, 0x3896bb99u, 0x38ae5365u, 0x38c5eb31u, 0x3906594bu,
        0x394154cau, 0x397c5048u, 0x399ba5e3u, 0x39b923a3u, 0x39d6a162u, 0x39f41f21u, 0x3a08ce70u, 0x3a178d50u,
        0x3a264c30u, 0x3a350b0fu, 0x3a43c9efu, 0x3a5288ceu, 0x3a6147aeu, 0x3a70068eu, 0x3a7ec56du, 0x3a958106u,
        0x3aba5e35u, 0x3adf3b64u, 0x3b020c4au, 0x3b147ae1u, 0x3b26e979u, 0x3b395810u, 0x3b4bc6a8u, 0x3b5e353fu,
        0x3b70a3d7u, 0x3b818937u, 0x3b8ac083u, 0x3b93f7cfu, 0x3b9d2f1bu, 0x3ba66666u, 0x3baf9db2u, 0x3bb8d4feu,
        0x3bc20c4au, 0x3bcb4396u, 0x3bd47ae1u, 0x3bddb22du, 0x3be6e979u, 0x3bf020c5u, 0x3bf95810u, 0x3c0147aeu,
        0x3c05e354u, 0x3c0a7efau, 0x3c0f1aa0u, 0x3c13b646u, 0x3c1851ecu, 0x3c1ced91u, 0x3c218937u, 0x3c2f5c29u,
        0x3c466666u, 0x3c5d70a4u, 0x3c747ae1u, 0x3c85c28fu, 0x3c9147aeu, 0x3c9ccccdu, 0x3ca851ecu, 0x3cb3d70au,
        0x3cbf5c29u, 0x3ccae148u, 0x3cd66666u, 0x3ce1eb85u, 0x3ced70a4u, 0x3cf8f5c3u, 0x3d023d71u, 0x3d080000u,
        0x3d0dc28fu, 0x3d13851fu, 0x3d1947aeu, 0x3d1f0a3du, 0x3d24cccdu, 0x3d2a8f5cu, 0x3d3051ecu, 0x3d36147bu,
        0x3d3bd70au, 0x3d41999au, 0x3d475c29u, 0x3d4d1eb8u, 0x3d52e148u, 0x3d58a3d7u, 0x3d5e6666u, 0x3d6428f6u,
        0x3d69eb85u, 0x3d6fae14u, 0x3d7570a4u, 0x3d7b3333u, 0x3d807ae1u, 0x3d835c29u, 0x3d863d71u, 0x3d891eb8u,
        0x3d8c0000u, 0x3d8ee148u, 0x3d91c28fu, 0x3d94a3d7u, 0x3d97851fu, 0x3d9a6666u, 0x3d9d47aeu, 0x3da028f6u,
        0x3da30a3du, 0x3da5eb85u, 0x3da8cccdu, 0x3dabae14u, 0x3dae8f5cu, 0x3db170a4u, 0x3db451ecu, 0x3db73333u,
        0x3dba147bu, 0x3dbcf5c3u, 0x3dbfd70au, 0x3dc2b852u, 0x3dc5999au, 0x3dc87ae1u, 0x3dcb5c29u, 0x3dd40000u,
        0x3de26666u, 0x3df0cccdu, 0x3dff3333u, 0x3e06cccdu, 0x3e0e0000u, 0x3e153333u, 0x3e1c6666u, 0x3e23999au,
        0x3e2acccdu, 0x3e320000u, 0x3e393333u, 0x3e406666u, 0x3e47999au, 0x3e4ecccdu, 0x3e560000u, 0x3e5d3333u,
        0x3e646666u, 0x3e6b999au, 0x3e72cccdu, 0x3e7a0000u, 0x3e80999au, 0x3e843333u, 0x3e87cccdu, 0x3e8b6666u,
        0x3e8f0000u, 0x3e92999au, 0x3e963333u, 0x3e99cccdu, 0x3e9d6666u, 0x3ea10000u, 0x3ea4999au, 0x3ea83333u,
        0x3eabcccdu, 0x3eaf6666u, 0x3eb30000u, 0x3eb6999au, 0x3eba3333u, 0x3ebdcccdu, 0x3ec16666u, 0x3ec50000u,
        0x3ec8999au, 0x3ecc3333u, 0x3ecfcccdu, 0x3ed36666u, 0x3ed70000u, 0x3eda999au, 0x3ede3333u, 0x3ee1cccdu,
        0x3ee56666u, 0x3ee90000u, 0x3eec999au, 0x3ef03333u, 0x3ef3cccdu, 0x3ef76666u, 0x3efb0000u, 0x3efe999au,
        0x3f01199au, 0x3f02e666u, 0x3f04b333u, 0x3f068000u, 0x3f084ccdu, 0x3f0a199au, 0x3f0be666u, 0x3f0db333u,
        0x3f0f8000u, 0x3f114ccdu, 0x3f13199au, 0x3f14e666u, 0x3f16b333u, 0x3f188000u, 0x3f1a4ccdu, 0x3f1c199au,
        0x3f1de666u, 0x3f1fb333u, 0x3f218000u, 0x3f234ccdu, 0x3f25199au, 0x3f26e666u, 0x3f28b333u, 0x3f2a8000u,
        0x3f2c4ccdu, 0x3f2e199au, 0x3f2fe666u, 0x3f31b333u, 0x3f338000u, 0x3f354ccdu, 0x3f37199au, 0x3f38e666u,
        0x3f3ab333u, 0x3f3c8000u, 0x3f3e4ccdu, 0x3f40199au, 0x3f41e666u, 0x3f43b333u, 0x3f458000u, 0x3f474ccdu,
        0x3f49199au, 0x3f4ae666u, 0x3f4cb333u, 0x3f4e8000u, 0x3f504ccdu, 0x3f52199au, 0x3f53e666u, 0x3f55b333u,
        0x3f578000u, 0x3f594ccdu, 0x3f5b199au, 0x3f5ce666u, 0x3f5eb333u, 0x3f608000u, 0x3f624ccdu, 0x3f64199au,
        0x3f65e666u, 0x3f67b333u, 0x3f698000u, 0x3f6b4ccdu, 0x3f6d199au, 0x3f6ee666u, 0x3f70b333u, 0x3f728000u,
        0x3f744ccdu, 0x3f76199au, 0x3f77e666u, 0x3f79b333u, 0x3f7b8000u, 0x3f7d4ccdu, 0x3f7f199au, 0x3f800000u,
    },
    {  // signed: 127 negatives, 0 (code 127), 127 positives, 1
        0xbf7e3333u, 0xbf7a999au, 0xbf770000u, 0xbf736666u, 0xbf6fcccdu, 0xbf6c3333u, 0xbf68999au, 0xbf650000u,
        0xbf616666u, 0xbf5dcccdu, 0xbf5a3333u, 0xbf56999au, 0xbf530000u, 0xbf4f6666u, 0xbf4bcccdu, 0xbf483333u,
        0xbf44999au, 0xbf410000u, 0xbf3d6666u, 0xbf39cccdu, 0xbf363333u, 0xbf32999au, 0xbf2f0000u, 0xbf2b6666u,
        0xbf27cccdu, 0xbf243333u, 0xbf20999au, 0xbf1d0000u, 0xbf196666u, 0xbf15cccdu, 0xbf123333u, 0xbf0e999au,
        0xbf0b0000u, 0xbf076666u, 0xbf03cccdu, 0xbf003333u, 0xbef93333u, 0xbef20000u, 0xbeeacccdu, 0xbee3999au,
        0xbedc6666u, 0xbed53333u, 0xbece0000u, 0xbec6cccdu, 0xbebf999au, 0xbeb86666u, 0xbeb13333u, 0xbeaa0000u,
        0xbea2cccdu, 0xbe9b999au, 0xbe946666u, 0xbe8d3333u, 0xbe860000u, 0xbe7d999au, 0xbe6f3333u, 0xbe60cccdu,
        0xbe526666u, 0xbe440000u, 0xbe35999au, 0xbe273333u, 0xbe18cccdu, 0xbe0a6666u, 0xbdf80000u, 0xbddb3333u,
        0xbdc9eb85u, 0xbdc428f6u, 0xbdbe6666u, 0xbdb8a3d7u, 0xbdb2e148u, 0xbdad1eb8u, 0xbda75c29u, 0xbda1999au,
        0xbd9bd70au, 0xbd96147bu, 0xbd9051ecu, 0xbd8a8f5cu, 0xbd84cccdu, 0xbd7e147bu, 0xbd728f5cu, 0xbd670a3du,
        0xbd5b851fu, 0xbd500000u, 0xbd447ae1u, 0xbd38f5c3u, 0xbd2d70a4u, 0xbd21eb85u, 0xbd166666u, 0xbd0ae148u,
        0xbcfeb852u, 0xbce7ae14u, 0xbcd0a3d7u, 0xbcb9999au, 0xbca28f5cu, 0xbc8b851fu, 0xbc68f5c3u, 0xbc3ae148u,
        0xbc1f3b64u, 0xbc160419u, 0xbc0ccccdu, 0xbc039581u, 0xbbf4bc6au, 0xbbe24dd3u, 0xbbcfdf3bu, 0xbbbd70a4u,
        0xbbab020cu, 0xbb989375u, 0xbb8624ddu, 0xbb676c8bu, 0xbb428f5cu, 0xbb1db22du, 0xbaf1a9fcu, 0xbaa7ef9eu,
        0xba7765feu, 0xba59e83eu, 0xba3c6a7fu, 0xba1eecc0u, 0xba016f00u, 0xb9c7e282u, 0xb98ce704u, 0xb923d70au,
        0xb8ba1f4bu, 0xb88aefb3u, 0xb8378034u, 0xb7b24207u, 0xb70205ffu, 0xb65a1a93u, 0xb513a3b6u, 0x00000000u,
        0x3513a3b6u, 0x365a1a93u, 0x370205ffu, 0x37b24207u, 0x38378034u, 0x388aefb3u, 0x38ba1f4bu, 0x3923d70au,
        0x398ce704u, 0x39c7e282u, 0x3a016f00u, 0x3a1eecc0u, 0x3a3c6a7fu, 0x3a59e83eu, 0x3a7765feu, 0x3aa7ef9eu,
        0x3af1a9fcu, 0x3b1db22du, 0x3b428f5cu, 0x3b676c8bu, 0x3b8624ddu, 0x3b989375u, 0x3bab020cu, 0x3bbd70a4u,
        0x3bcfdf3bu, 0x3be24dd3u, 0x3bf4bc6au, 0x3c039581u, 0x3c0ccccdu, 0x3c160419u, 0x3c1f3b64u, 0x3c3ae148u,
        0x3c68f5c3u, 0x3c8b851fu, 0x3ca28f5cu, 0x3cb9999au, 0x3cd0a3d7u, 0x3ce7ae14u, 0x3cfeb852u, 0x3d0ae148u,
        0x3d166666u, 0x3d21eb85u, 0x3d2d70a4u, 0x3d38f5c3u, 0x3d447ae1u, 0x3d500000u, 0x3d5b851fu, 0x3d670a3du,
        0x3d728f5cu, 0x3d7e147bu, 0x3d84cccdu, 0x3d8a8f5cu, 0x3d9051ecu, 0x3d96147bu, 0x3d9bd70au, 0x3da1999au,
        0x3da75c29u, 0x3dad1eb8u, 0x3db2e148u, 0x3db8a3d7u, 0x3dbe6666u, 0x3dc428f6u, 0x3dc9eb85u, 0x3ddb3333u,
        0x3df80000u, 0x3e0a6666u, 0x3e18cccdu, 0x3e273333u, 0x3e35999au, 0x3e440000u, 0x3e526666u, 0x3e60cccdu,
        0x3e6f3333u, 0x3e7d999au, 0x3e860000u, 0x3e8d3333u, 0x3e946666u, 0x3e9b999au, 0x3ea2cccdu, 0x3eaa0000u,
        0x3eb13333u, 0x3eb86666u, 0x3ebf999au, 0x3ec6cccdu, 0x3ece0000u, 0x3ed53333u, 0x3edc6666u, 0x3ee3999au,
        0x3eeacccdu, 0x3ef20000u, 0x3ef93333u, 0x3f003333u, 0x3f03cccdu, 0x3f076666u, 0x3f0b0000u, 0x3f0e999au,
        0x3f123333u, 0x3f15cccdu, 0x3f196666u, 0x3f1d0000u, 0x3f20999au, 0x3f243333u, 0x3f27cccdu, 0x3f2b6666u,
        0x3f2f0000u, 0x3f32999au, 0x3f363333u, 0x3f39cccdu, 0x3f3d6666u, 0x3f410000u, 0x3f44999au, 0x3f483333u,
        0x3f4bcccdu, 0x3f4f6666u, 0x3f530000u, 0x3f56999au, 0x3f5a3333u, 0x3f5dcccdu, 0x3f616666u, 0x3f650000u,
        0x3f68999au, 0x3f6c3333u, 0x3f6fcccdu, 0x3f736666u, 0x3f770000u, 0x3f7a999au, 0x3f7e3333u, 0x3f800000u,
    },
};

// The maps and midpoints of one block (the step kernel's shared memory): map[s][code] and
// mid[s][k] (k < 255) of the unsigned (s = 0) and signed (s = 1) maps.
struct QuantMaps {
  float map[2][256];
  float mid[2][256];
};

// The block's maps, in shared memory (one instance per block).
__device__ FUSEDOPT_INLINE QuantMaps& block_maps() {
  __shared__ QuantMaps q;
  return q;
}

// Thread `t` of the block fills entry t of the maps that `need` asks for (bit s: map s), before
// the block's barrier.
__device__ FUSEDOPT_INLINE void load_maps(QuantMaps& q, int need, int t) {
#pragma unroll
  for (int s = 0; s < 2; ++s) {
    if (!((need >> s) & 1)) continue;
    const float a = __uint_as_float(kMapBits[s][t]);
    q.map[s][t] = a;
    // (map[k] + map[k + 1]) * 0.5f: one rounded add, an exact halving (lowbit.midpoints)
    const float b = __uint_as_float(kMapBits[s][t < 255 ? t + 1 : 255]);
    q.mid[s][t] = t < 255 ? __fmul_rn(__fadd_rn(a, b), 0.5f) : __int_as_float(0x7f800000);  // (mid[255]: unused)
  }
}

// The code of y: the number of the 255 ascending midpoints <= y, in 8 steps (a step of s adds s
// when the s-th midpoint above those counted is <= y; the indices stay below 255). NaN: 0.
__device__ FUSEDOPT_INLINE uint32_t quant_code(const float* mid, float y) {
  uint32_t c = 0;
#pragma unroll
  for (uint32_t s = 128; s > 0; s >>= 1) c += y >= mid[c + s - 1] ? s : 0u;
  return c;
}

// The maximum of v over the warp (every lane must call it).
__device__ FUSEDOPT_INLINE uint32_t warp_max(uint32_t v) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  return __reduce_max_sync(0xffffffffu, v);
#else
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const uint32_t w = __shfl_xor_sync(0xffffffffu, v, o);
    v = w > v ? w : v;
  }
  return v;
#endif
}

// Eight codes at 8-byte aligned `ptr`.
__device__ FUSEDOPT_INLINE uint2 ld_global_64(const void* ptr) {
  uint2 r;
  asm volatile("ld.global.v2.u32 {%0, %1}, [%2];" : "=r"(r.x), "=r"(r.y) : "l"(ptr));
  return r;
}
__device__ FUSEDOPT_INLINE void st_global_64(void* ptr, uint2 v) {
  asm volatile("st.global.v2.u32 [%0], {%1, %2};" ::"l"(ptr), "r"(v.x), "r"(v.y) : "memory");
}

// Quantizes the warp's block of one slot: x[k] is element i0 + k of this thread (its first
// `valid` of kVec are in the tensor; none past them is read or written). The block's new scale
// goes to scale[blk] (lane 0, when the block is in the tensor), the codes to codes[i0 + k], eight
// bytes at once when `full` (every element valid, `codes + i0` 8-byte aligned). Every lane of
// the warp calls it.
__device__ FUSEDOPT_INLINE void quantize_block(const float (&x)[kVec], int valid, bool full, const float* mid,
                                               uint8_t* codes, int64_t i0, float* scale, int64_t blk) {
  uint32_t m = 0;
#pragma unroll
  for (int k = 0; k < kVec; ++k) {
    const uint32_t a = __float_as_uint(x[k]) & 0x7fffffffu;
    m = (k < valid && a > m) ? a : m;
  }
  m = warp_max(m);
  const float absmax = __uint_as_float(m);
  uint32_t c[kVec];
#pragma unroll
  for (int k = 0; k < kVec; ++k) c[k] = quant_code(mid, absmax == 0.0f ? 0.0f : __fdiv_rn(x[k], absmax));
  if (full) {
    st_global_64(codes + i0, make_uint2(c[0] | (c[1] << 8) | (c[2] << 16) | (c[3] << 24),
                                        c[4] | (c[5] << 8) | (c[6] << 16) | (c[7] << 24)));
  } else {
#pragma unroll
    for (int k = 0; k < kVec; ++k)
      if (k < valid) codes[i0 + k] = static_cast<uint8_t>(c[k]);
  }
  if ((threadIdx.x & 31u) == 0 && valid > 0) scale[blk] = absmax;
}

// The eight codes of elements i0 .. i0 + 7 (the first `valid`; 0 past them), eight bytes at once
// when `full`.
__device__ FUSEDOPT_INLINE void load_codes(const uint8_t* codes, int64_t i0, int valid, bool full,
                                           uint32_t (&c)[kVec]) {
  if (full) {
    const uint2 w = ld_global_64(codes + i0);
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      c[k] = (w.x >> (8 * k)) & 0xffu;
      c[k + 4] = (w.y >> (8 * k)) & 0xffu;
    }
  } else {
#pragma unroll
    for (int k = 0; k < kVec; ++k) c[k] = k < valid ? codes[i0 + k] : 0u;
  }
}

}  // namespace cuda
}  // namespace fusedopt
