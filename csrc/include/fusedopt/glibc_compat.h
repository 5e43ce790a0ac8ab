// Force-included (`-include`) before every translation unit of both libraries, by setup.py.
//
// Note [glibc 2.28]: the wheel is tagged manylinux_2_28 (the floor of torch's own wheels), so
// the libraries may reference no glibc symbol version newer than GLIBC_2.28 (setup.py checks
// the built files, Note [manylinux]). Built on a newer glibc, three kinds of reference break that.
//
// 1. libstdc++'s `__is_single_threaded()` (<ext/atomicity.h>, GCC 11+), inlined into every
// shared_ptr and std::string refcount update: when <sys/single_threaded.h> exists (glibc 2.32+)
// it reads `::__libc_single_threaded`, a variable that exists only at GLIBC_2.32.
// Here that name is redirected to a constant 0 ("the process may be multi-threaded"): every
// refcount update takes the atomic path, which is what libstdc++ does anyway in a process with
// a second thread (torch's), and what it did before glibc 2.32. No kernel loop touches a
// refcount. The constant is read, never odr-used, so the inline functions stay ODR-equivalent
// across the translation units of one library.
//
// 2. glibc 2.34 moved libdl's and libpthread's functions into libc.so.6 and gave them a new
// default version, GLIBC_2.34 (the old version stays, as an alias of the same function); a
// build on glibc 2.34+ binds calls to the new one. The CUDA library looks torch's current-stream
// function up with dlopen/dlsym (csrc/cuda/ops.cpp). `.symver` binds this family to its base
// version instead, the one every glibc has (x86_64: GLIBC_2.2.5, aarch64: GLIBC_2.17). On a
// glibc before 2.34 the functions live in libdl.so.2, which is always loaded by then (libc10.so
// and libtorch_cpu.so need it); the dynamic loader matches a versioned symbol by name and
// version in any loaded object, so the reference resolves there. A .symver of a name the
// translation unit does not use emits nothing. Host code only: nvcc's device pass gets no asm.
#pragma once

#if defined(__linux__) && defined(__has_include)
#if __has_include(<sys/single_threaded.h>)
#include <sys/single_threaded.h>  // declares the real variable first, under its own name
#define __libc_single_threaded fusedopt_libc_single_threaded
static const char fusedopt_libc_single_threaded = 0;
#endif

#include <features.h>
#if defined(__GLIBC__) && !defined(__CUDA_ARCH__)
#if defined(__x86_64__)
#define FUSEDOPT_GLIBC_BASE "GLIBC_2.2.5"
#elif defined(__aarch64__)
#define FUSEDOPT_GLIBC_BASE "GLIBC_2.17"
#endif
#if defined(FUSEDOPT_GLIBC_BASE) && __GLIBC_PREREQ(2, 34)
__asm__(".symver dlopen,dlopen@" FUSEDOPT_GLIBC_BASE);
__asm__(".symver dlsym,dlsym@" FUSEDOPT_GLIBC_BASE);
__asm__(".symver dlclose,dlclose@" FUSEDOPT_GLIBC_BASE);
__asm__(".symver dlerror,dlerror@" FUSEDOPT_GLIBC_BASE);
#endif
// 3. glibc 2.29 gave pow a new version (GLIBC_2.29) when it dropped the SVID error-handling
// wrapper; the base version is that wrapper around the same implementation, so the per-tensor
// scalars (Note [python pow]) compute the same values through it.
#if defined(FUSEDOPT_GLIBC_BASE) && __GLIBC_PREREQ(2, 29)
__asm__(".symver pow,pow@" FUSEDOPT_GLIBC_BASE);
#endif
#endif
#endif
