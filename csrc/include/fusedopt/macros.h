// Portability macros shared by the CPU (C++) and CUDA (nvcc) builds.
//
// The per-element update of every algorithm lives in algos/<name>.h as an
// inline function marked FUSEDOPT_HD, so the CPU traversal (csrc/cpu) and the
// CUDA traversal (csrc/cuda) compile the very same math.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define FUSEDOPT_HD __host__ __device__
#define FUSEDOPT_INLINE __forceinline__
#else
#define FUSEDOPT_HD
// Note [always_inline]: the CPU kernels are compiled once per instruction set
// (function multiversioning). Only code inlined into a clone gets that clone's
// instruction set, so the math must always be inlined.
#define FUSEDOPT_INLINE inline __attribute__((always_inline))
#endif
