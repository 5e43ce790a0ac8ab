// The instruction sets the CPU kernels are compiled for (Note [instruction sets]): the attributes
// of their clones, shared by the traversal (multi_tensor.h) and the code it calls from them
// (random_bits.h), and free of torch so that the benchmarks can include it.
#pragma once

// Note [instruction sets]: every inner loop is compiled three times: for the
// x86-64 baseline (SSE2), x86-64-v3 (AVX2, FMA, F16C) and x86-64-v4 (AVX-512),
// and picked at run time (cpu_isa()). The math is always inlined into these
// functions, so it takes their instruction set; it never uses -march=native.
// FUSEDOPT_CPU_ISA=baseline|avx2|avx512 caps the choice (for tests and timing).
#if defined(__x86_64__) && defined(__GNUC__)
#define FUSEDOPT_X86_CLONES 1
#define FUSEDOPT_TARGET_V3 __attribute__((target("arch=x86-64-v3")))
#define FUSEDOPT_TARGET_V4 __attribute__((target("arch=x86-64-v4")))
#else
#define FUSEDOPT_X86_CLONES 0
#endif
