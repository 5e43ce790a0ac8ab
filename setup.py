"""Build of fusedopt: pure Python plus the compiled kernels.

The build is steered by environment variables:

FUSEDOPT_BUILD_EXT=0     pure-Python install (reference and Triton backends only).
FUSEDOPT_BUILD_CUDA      "auto" (default: build when csrc/cuda/*.cu exist and nvcc is found),
                         "1" (required: fail without nvcc), "0" (skip).
FUSEDOPT_CUDA_ARCHS      CUDA architectures, default "80;90" (commas or semicolons; a
                         trailing "+PTX" on the last one also embeds PTX for newer GPUs).
FUSEDOPT_NVCC            the nvcc to use (default: $CUDA_HOME/bin/nvcc, else nvcc on PATH).
FUSEDOPT_NVCC_THREADS    nvcc --threads (default 4).
MAX_JOBS                 parallel compile jobs (ninja), as for any torch extension.

The CPU extension ``fusedopt._C`` uses only the LibTorch stable ABI (targeting torch
TORCH_TARGET) and the limited Python API (3.10+), so ``pip wheel`` yields one
``cp310-abi3`` wheel for every torch from TORCH_TARGET on and every CPython from 3.10 on.
The CUDA kernels are compiled by nvcc alone (no CUDA build of torch is needed) into a
separate library ``fusedopt._C_cuda``, loaded only when ``torch.cuda.is_available()``.
"""
from __future__ import annotations

import glob
import os
import shlex
import shutil
import subprocess

from setuptools import Extension, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
TORCH_TARGET = (2, 11)  # oldest torch whose stable ABI the binary uses
PY_LIMITED_API = "0x030A0000"  # CPython 3.10


def _env_flag(name: str, default: str) -> str:
    return os.environ.get(name, default).strip().lower()


BUILD_EXT = _env_flag("FUSEDOPT_BUILD_EXT", "1") not in ("0", "false", "no", "off")
BUILD_CUDA = _env_flag("FUSEDOPT_BUILD_CUDA", "auto")


def _rel(paths):
    return sorted(os.path.relpath(p, ROOT) for p in paths)


def _target_version_define() -> str:
    major, minor = TORCH_TARGET
    return f"-DTORCH_TARGET_VERSION=0x{major:02x}{minor:02x}000000000000"


COMMON_DEFINES = [
    _target_version_define(),
    f"-DPy_LIMITED_API={PY_LIMITED_API}",
]

CXX_FLAGS = [
    "-O3",
    "-g0",  # Python's CFLAGS carry -g; debug info only slows the build and bloats the wheel
    "-std=c++17",
    # Note [float semantics]: sqrt must be one instruction for the loops to vectorise, but
    # nothing may change results: no fast-math, and no FMA contraction so every
    # instruction-set clone (and the reference) rounds the same way.
    "-fno-math-errno",
    "-ffp-contract=off",
    # Note [alias checks]: the update loop walks up to six arrays (param, grad, three states,
    # master weights); GCC honours __restrict on locals only partly and versions the loop with
    # runtime alias checks, and past its default of 10 checks it gives up vectorising.
    "--param=vect-max-version-for-alias-checks=64",
    "-fvisibility=hidden",
    "-Wall",
    "-Wno-unused-function",
] + COMMON_DEFINES


def _cpu_extension():
    from torch.utils.cpp_extension import CppExtension

    return CppExtension(
        name="fusedopt._C",
        sources=_rel(glob.glob(os.path.join(ROOT, "csrc", "cpu", "*.cpp"))),
        include_dirs=[os.path.join(ROOT, "csrc", "include"), os.path.join(ROOT, "csrc", "cpu")],
        extra_compile_args={"cxx": CXX_FLAGS},
        py_limited_api=True,
    )


# --- CUDA: nvcc alone -----------------------------------------------------------------------

def _find_nvcc() -> str | None:
    explicit = os.environ.get("FUSEDOPT_NVCC")
    if explicit:
        return explicit
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if cuda_home and os.path.exists(os.path.join(cuda_home, "bin", "nvcc")):
        return os.path.join(cuda_home, "bin", "nvcc")
    return shutil.which("nvcc")


def cuda_arch_flags(spec: str | None = None) -> list[str]:
    """nvcc -gencode flags for FUSEDOPT_CUDA_ARCHS ("80;90", "8.0,9.0", "90+PTX")."""
    spec = spec if spec is not None else os.environ.get("FUSEDOPT_CUDA_ARCHS", "80;90")
    flags = []
    for item in spec.replace(",", ";").split(";"):
        item = item.strip()
        if not item:
            continue
        ptx = item.endswith("+PTX")
        arch = item.removesuffix("+PTX").replace(".", "").removeprefix("sm_")
        flags.append(f"-gencode=arch=compute_{arch},code=sm_{arch}")
        if ptx:
            flags.append(f"-gencode=arch=compute_{arch},code=compute_{arch}")
    return flags


class NvccExtension(Extension):
    """A shared library built from .cu (and .cpp) sources by nvcc alone.

    It links against torch's libraries only through the stable C shim, so it needs
    torch's headers and libtorch_cpu, never a CUDA build of torch.
    """


def _cuda_extension():
    sources = _rel(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")))
    if sources:  # host-only C++ of the CUDA library (nvcc hands it to the host compiler)
        sources += _rel(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cpp")))
    if BUILD_CUDA in ("0", "false", "no", "off") or not sources:
        if BUILD_CUDA in ("1", "true", "yes", "on") and not sources:
            raise RuntimeError("FUSEDOPT_BUILD_CUDA=1 but csrc/cuda has no .cu sources")
        return None
    if _find_nvcc() is None:
        if BUILD_CUDA in ("1", "true", "yes", "on"):
            raise RuntimeError("FUSEDOPT_BUILD_CUDA=1 but nvcc was not found (set CUDA_HOME or FUSEDOPT_NVCC)")
        print("fusedopt: nvcc not found, skipping the CUDA extension")
        return None
    return NvccExtension(
        name="fusedopt._C_cuda",
        sources=sources,
        include_dirs=[os.path.join(ROOT, "csrc", "include"), os.path.join(ROOT, "csrc", "cuda")],
        py_limited_api=True,
    )


def _build_ext_class():
    from torch.utils.cpp_extension import BuildExtension

    class FusedoptBuildExt(BuildExtension):
        def build_extensions(self):
            # torch's BuildExtension looks for a CUDA toolkit as soon as any extension has .cu
            # sources; the nvcc-only library is built here instead, after the CPU extension.
            nvcc_exts = [e for e in self.extensions if isinstance(e, NvccExtension)]
            self.extensions = [e for e in self.extensions if not isinstance(e, NvccExtension)]
            try:
                super().build_extensions()
                for ext in nvcc_exts:
                    self._build_nvcc(ext)
            finally:
                self.extensions = self.extensions + nvcc_exts

        def _build_nvcc(self, ext):
            from torch.utils.cpp_extension import include_paths, library_paths

            nvcc = _find_nvcc()
            out = self.get_ext_fullpath(ext.name)
            os.makedirs(os.path.dirname(out), exist_ok=True)
            objdir = os.path.join(self.build_temp, "cuda")
            os.makedirs(objdir, exist_ok=True)
            includes = [f"-I{p}" for p in ext.include_dirs + include_paths()]
            threads = os.environ.get("FUSEDOPT_NVCC_THREADS", "4")
            # --fmad=false: only the FMAs the shared headers spell out (Note [fma]), as the CPU
            # build's -ffp-contract=off; division and sqrt stay IEEE (no fast math).
            cflags = (["-O3", "-std=c++17", "-Xcompiler", "-fPIC", "-Xcompiler", "-fvisibility=hidden",
                       "-Xcompiler", "-Wall", f"--threads={threads}", "--expt-relaxed-constexpr",
                       "--fmad=false"]
                      + cuda_arch_flags() + COMMON_DEFINES + includes)
            objects = []
            cmds = []
            for src in ext.sources:
                obj = os.path.join(objdir, os.path.basename(src) + ".o")
                cmds.append([nvcc, "-c", src, "-o", obj] + cflags)
                objects.append(obj)

            def compile_one(cmd):
                print(" ".join(shlex.quote(c) for c in cmd), flush=True)
                subprocess.check_call(cmd, cwd=ROOT)

            # The translation units are independent: compile them MAX_JOBS at a time.
            from concurrent.futures import ThreadPoolExecutor
            jobs = max(1, int(os.environ.get("MAX_JOBS") or os.cpu_count() or 1))
            with ThreadPoolExecutor(max_workers=min(jobs, len(cmds))) as pool:
                for future in [pool.submit(compile_one, cmd) for cmd in cmds]:
                    future.result()
            libdirs = library_paths()
            link = ([nvcc, "-shared", "-o", out] + objects
                    + [f"-L{d}" for d in libdirs]
                    + ["-ltorch_cpu", "-lc10", "-ldl", "-cudart=static"])
            print(" ".join(shlex.quote(c) for c in link))
            subprocess.check_call(link, cwd=ROOT)

    return FusedoptBuildExt


ext_modules = []
cmdclass = {}
options = {}
if BUILD_EXT:
    ext_modules.append(_cpu_extension())
    cuda_ext = _cuda_extension()
    if cuda_ext is not None:
        ext_modules.append(cuda_ext)
    cmdclass["build_ext"] = _build_ext_class().with_options(use_ninja=True)
    # One wheel for CPython 3.10+: tag it cp310-abi3.
    options["bdist_wheel"] = {"py_limited_api": "cp310"}

setup(
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    options=options,
)
