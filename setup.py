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

On Linux the wheel is tagged manylinux_2_28 (glibc 2.28+, the floor of torch's own wheels)
when the built libraries pass that policy, checked here on the files themselves; otherwise it
stays linux_<arch> and the build says why (Note [manylinux]).
"""
from __future__ import annotations

import glob
import os
import re
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
    # Note [glibc 2.28] (in the header): keeps symbol versions above GLIBC_2.28 out when the
    # build system's glibc is newer (libstdc++'s __libc_single_threaded, dlopen/dlsym).
    # g++ and nvcc both take -include.
    "-include", os.path.join(ROOT, "csrc", "include", "fusedopt", "glibc_compat.h"),
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


# Note [one translation unit per algorithm]: the kernels of each algorithm are compiled in a
# translation unit of their own, so that the build compiles the algorithms in parallel. The units
# are three lines each, written here from the one list of algorithms (FUSEDOPT_FOR_EACH_ALGORITHM
# in the generated csrc/include/fusedopt/algos/contract.h, Note [one declaration] in
# fusedopt/algorithms/contract.py) rather than kept in the source tree, one file per algorithm
# and language.
_CONTRACT = os.path.join(ROOT, "csrc", "include", "fusedopt", "algos", "contract.h")
_INSTANTIATE = {
    "cpu": ("cpp", "multi_tensor.h", "template struct fusedopt::cpu::Step<fusedopt::{A}>;"),
    "cuda": ("cu", "multi_tensor.cuh", "template int fusedopt::cuda::launch_step<fusedopt::{A}>(const StepLaunch&);"),
}


def algorithms() -> list[str]:
    """The C++ names of the algorithms, in registration order (the generated contract.h)."""
    with open(_CONTRACT) as f:
        m = re.search(r"#define FUSEDOPT_FOR_EACH_ALGORITHM\(X\) (.*)", f.read())
    if m is None:
        raise RuntimeError(f"{_CONTRACT} has no FUSEDOPT_FOR_EACH_ALGORITHM list")
    return re.findall(r"X\((\w+)\)", m.group(1))


def _step_units(kind: str) -> list[str]:
    """Write build/generated/<kind>/step_<algorithm>.<ext>, one per algorithm; their paths."""
    ext, header, line = _INSTANTIATE[kind]
    out_dir = os.path.join(ROOT, "build", "generated", kind)
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for name in algorithms():
        path = os.path.join(out_dir, f"step_{name.lower()}.{ext}")
        text = (f"// GENERATED by setup.py (Note [one translation unit per algorithm]): the {kind} kernels of\n"
                f"// the algorithm {name}.\n#include \"fusedopt/algos/all.h\"\n#include \"{header}\"\n\n"
                + line.format(A=name) + "\n")
        old = open(path).read() if os.path.exists(path) else None
        if old != text:  # unchanged units keep their timestamps: no rebuild
            with open(path, "w") as f:
                f.write(text)
        paths.append(path)
    return paths


def _cpu_extension():
    from torch.utils.cpp_extension import CppExtension

    return CppExtension(
        name="fusedopt._C",
        sources=_rel(glob.glob(os.path.join(ROOT, "csrc", "cpu", "*.cpp")) + _step_units("cpu")),
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


def _cuda_runtime_wheel_dir(nvcc: str) -> str | None:
    """Where the nvidia-cuda-runtime wheel of nvcc's CUDA major puts libcudart, under nvidia/."""
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
    found = re.search(r"release (\d+)\.", out)
    if not found:
        return None
    major = int(found.group(1))
    return f"cu{major}" if major >= 13 else "cuda_runtime"  # CUDA 12's wheels: nvidia/cuda_runtime


class NvccExtension(Extension):
    """A shared library built from .cu (and .cpp) sources by nvcc alone.

    It links against torch's libraries only through the stable C shim, so it needs
    torch's headers and libtorch_cpu, never a CUDA build of torch.
    """


def _cuda_extension():
    sources = _rel(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")))
    if sources:  # host-only C++ of the CUDA library (nvcc hands it to the host compiler)
        sources += _rel(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cpp")) + _step_units("cuda"))
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
            # Note [shared cudart]: the CUDA runtime is linked dynamically (libcudart.so.<major>),
            # not statically. The static runtime's calls into glibc (pthread_*, sem_*, shm_open,
            # dl*) are unversioned in the archive and bind, at link time, to the build system's
            # newest versions: GLIBC_2.34 on any glibc 2.34+ system, which would make the wheel
            # manylinux_2_34. The shared runtime is the one torch's CUDA wheels ship
            # (nvidia-cuda-runtime, nvidia/cu13/lib/libcudart.so.13) and link libtorch_cuda.so
            # against; fusedopt/_ext.py loads this library only when torch.cuda.is_available(),
            # i.e. after libtorch_cuda.so has loaded that libcudart, so our NEEDED entry resolves
            # to the same, already loaded runtime by its SONAME (one runtime in the process, as
            # for torch's own CUDA extensions). The RUNPATH is a fallback for loading the library
            # first: the directory torch's own libraries look in ($ORIGIN/../../nvidia/cu13/lib
            # from torch/lib), seen from fusedopt/. A system CUDA toolkit's libcudart (ld.so.conf,
            # LD_LIBRARY_PATH) serves too.
            wheel_dir = _cuda_runtime_wheel_dir(nvcc)
            rpath = ["-Xlinker", f"-rpath=$ORIGIN/../nvidia/{wheel_dir}/lib"] if wheel_dir else []
            link = ([nvcc, "-shared", "-o", out] + objects
                    + [f"-L{d}" for d in libdirs]
                    # -ldl: dlopen/dlsym (ops.cpp) live in libdl.so.2 before glibc 2.34
                    + ["-ltorch_cpu", "-lc10", "-ldl", "-cudart=shared"] + rpath)
            print(" ".join(shlex.quote(c) for c in link))
            subprocess.check_call(link, cwd=ROOT)

    return FusedoptBuildExt


# --- the wheel's platform tag ------------------------------------------------------------------
#
# Note [manylinux]: a linux_<arch> wheel cannot be uploaded to the package index, and the tag
# must not claim more than the binaries allow. The wheel is tagged manylinux_2_28 (glibc 2.28+:
# RHEL/Rocky 8, Ubuntu 20.04, Debian 10, Amazon Linux 2023 ...), the floor of torch's own
# wheels, when every built library passes auditwheel's manylinux_2_28 policy: no glibc /
# libstdc++ / libgcc symbol version above the limits below (Note [glibc 2.28], Note [shared
# cudart]), and no NEEDED library outside the policy's system list but those the installed
# torch provides (libtorch_cpu, libc10, and libcudart of torch's CUDA wheels; never vendored).
# Otherwise the wheel stays linux_<arch> and the build prints what is in the way. This needs no
# manylinux container: the check reads the built files, whatever the build system's glibc.
# `auditwheel show` on the wheel agrees (CI checks it). --plat-name still overrides.
MANYLINUX = "manylinux_2_28"
MANYLINUX_MAX_VERSIONS = {"GLIBC": (2, 28), "GLIBCXX": (3, 4, 24), "CXXABI": (1, 3, 11), "GCC": (7, 0, 0)}
MANYLINUX_SYSTEM_LIBS = {"libc.so.6", "libm.so.6", "libdl.so.2", "librt.so.1", "libpthread.so.0",
                         "libstdc++.so.6", "libgcc_s.so.1", "ld-linux-x86-64.so.2", "ld-linux-aarch64.so.1"}
TORCH_PROVIDED_LIBS = ("libtorch_cpu.so", "libc10.so", "libcudart.so.")  # libcudart.so.<major>


def elf_dependencies(path: str) -> tuple[list[str], dict[str, set[str]]]:
    """(DT_NEEDED libraries, {library: symbol versions required from it}) of a 64-bit
    little-endian ELF file, read from its .dynamic and .gnu.version_r sections."""
    import struct

    with open(path, "rb") as f:
        data = f.read()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ValueError(f"{path}: not a 64-bit little-endian ELF file")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    # (name, type, flags, addr, offset, size, link, info, addralign, entsize)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]

    def string(strtab: int, offset: int) -> str:
        start = sections[strtab][4] + offset
        return data[start:data.index(b"\0", start)].decode()

    needed, versions = [], {}
    for _, kind, _, _, offset, size, link, info, _, _ in sections:
        if kind == 6:  # SHT_DYNAMIC
            for pos in range(offset, offset + size, 16):
                tag, value = struct.unpack_from("<qQ", data, pos)
                if tag == 0:
                    break
                if tag == 1:  # DT_NEEDED
                    needed.append(string(link, value))
        elif kind == 0x6FFFFFFE:  # SHT_GNU_verneed: info entries
            pos = offset
            for _ in range(info):
                _, count, file, aux, next_entry = struct.unpack_from("<HHIII", data, pos)
                lib, apos = string(link, file), pos + aux
                for _ in range(count):
                    _, _, _, name, next_aux = struct.unpack_from("<IHHII", data, apos)
                    versions.setdefault(lib, set()).add(string(link, name))
                    apos += next_aux
                pos += next_entry
    return needed, versions


def manylinux_problems(path: str) -> list[str]:
    """What keeps the library at ``path`` out of manylinux_2_28 (empty: nothing)."""
    needed, versions = elf_dependencies(path)
    problems = [f"needs {lib}" for lib in needed
                if lib not in MANYLINUX_SYSTEM_LIBS and not lib.startswith(TORCH_PROVIDED_LIBS)]
    for lib, names in versions.items():
        if lib not in MANYLINUX_SYSTEM_LIBS:
            continue  # torch's libraries: they come with torch, whatever they version
        for name in sorted(names):
            prefix, _, number = name.partition("_")
            limit = MANYLINUX_MAX_VERSIONS.get(prefix)
            if not (limit and number.replace(".", "").isdigit()
                    and tuple(int(x) for x in number.split(".")) <= limit):
                problems.append(f"{name} from {lib}")
    return problems


def _bdist_wheel_class():
    try:
        from setuptools.command.bdist_wheel import bdist_wheel
    except ImportError:  # setuptools < 70.1
        from wheel.bdist_wheel import bdist_wheel

    class FusedoptBdistWheel(bdist_wheel):
        _platform = None

        def get_tag(self):
            impl, abi, plat = super().get_tag()
            if self.plat_name_supplied or plat not in ("linux_x86_64", "linux_aarch64"):
                return impl, abi, plat
            if self._platform is None:  # get_tag runs twice; check and report once
                libs = sorted(glob.glob(os.path.join(self.bdist_dir, "**", "*.so"), recursive=True))
                problems = {os.path.basename(lib): manylinux_problems(lib) for lib in libs}
                problems = {lib: found for lib, found in problems.items() if found}
                if libs and not problems:
                    self._platform = plat.replace("linux", MANYLINUX, 1)
                else:
                    self._platform = plat
                    print(f"fusedopt: the wheel stays {plat}, not {MANYLINUX}: "
                          + ("; ".join(f"{lib}: {', '.join(found)}" for lib, found in problems.items())
                             or "no compiled library in the wheel"), flush=True)
            return impl, abi, self._platform

    return FusedoptBdistWheel


ext_modules = []
cmdclass = {}
options = {}
if BUILD_EXT:
    ext_modules.append(_cpu_extension())
    cuda_ext = _cuda_extension()
    if cuda_ext is not None:
        ext_modules.append(cuda_ext)
    cmdclass["build_ext"] = _build_ext_class().with_options(use_ninja=True)
    cmdclass["bdist_wheel"] = _bdist_wheel_class()
    # One wheel for CPython 3.10+: tag it cp310-abi3.
    options["bdist_wheel"] = {"py_limited_api": "cp310"}

setup(
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    options=options,
)
