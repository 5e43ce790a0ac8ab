"""The compiled libraries as the manylinux_2_28 wheel ships them (setup.py, Note [manylinux]).

- No symbol version above manylinux_2_28's limits from glibc, libstdc++ or libgcc (glibc 2.28,
  GLIBCXX_3.4.24, CXXABI_1.3.11, GCC_7.0.0), whatever glibc the build ran on
  (csrc/include/fusedopt/glibc_compat.h, Note [glibc 2.28]).
- The CUDA library's libcudart.so.<major> resolves to the runtime already loaded into the
  process: the one a CUDA build of torch loads on import (nvidia/cu13/lib of its CUDA wheels),
  or, next to a CPU build of torch, a copy of one loaded from a directory on no search path. The
  process holds one CUDA runtime (Note [shared cudart]).

Skipped where the libraries were not built or readelf is missing. Runs against the installed
package (CI: the wheel in a fresh environment).
"""
from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys

import pytest

import fusedopt

LIMITS = {"GLIBC": (2, 28), "GLIBCXX": (3, 4, 24), "CXXABI": (1, 3, 11), "GCC": (7, 0, 0)}


def _libraries():
    return sorted(glob.glob(os.path.join(os.path.dirname(fusedopt.__file__), "_C*.so")))


def _readelf(*args):
    if shutil.which("readelf") is None:
        pytest.skip("readelf is not installed")
    return subprocess.run(["readelf", *args], capture_output=True, text=True, check=True).stdout


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ELF libraries: Linux only")
@pytest.mark.parametrize("name", [os.path.basename(p) for p in _libraries()] or ["(none built)"])
def test_symbol_versions_fit_manylinux_2_28(name):
    lib = os.path.join(os.path.dirname(fusedopt.__file__), name)
    if not os.path.exists(lib):
        pytest.skip("no compiled library in the installed fusedopt")
    too_new = set()
    for line in _readelf("--dyn-syms", "--wide", lib).splitlines():
        m = re.search(r"\sUND\s+(\S+?)@+(GLIBC|GLIBCXX|CXXABI|GCC)_([0-9.]+)", line)
        if m and tuple(int(x) for x in m.group(3).split(".")) > LIMITS[m.group(2)]:
            too_new.add(f"{m.group(1)}@{m.group(2)}_{m.group(3)}")
    assert not too_new, f"{name} needs symbol versions newer than manylinux_2_28 allows: {sorted(too_new)}"


_SHARED_CUDART_SCRIPT = r'''
import ctypes, os, shutil, sys, tempfile
import torch
from fusedopt import _ext
assert _ext.cpu_status()[0], _ext.cpu_status()
soname, runtime, lib = sys.argv[1:4]

def mapped():
    return {line.split()[-1] for line in open("/proc/self/maps") if "/libcudart.so" in line}

loaded = mapped()  # a CUDA build of torch loads its runtime on import (nvidia/cu13/lib)
if not loaded:
    # A CPU build of torch: load one as a CUDA build would, from a directory on no search path of
    # the library (a copy), so that only the loaded runtime itself can satisfy its NEEDED entry.
    ctypes.CDLL(shutil.copy(runtime, tempfile.mkdtemp()))  # RTLD_LOCAL, as libtorch_cuda's is
    loaded = mapped()
assert len(loaded) == 1, loaded
if not os.path.basename(next(iter(loaded))).startswith(soname):
    print(f"torch {torch.__version__} has loaded {loaded}, not {soname}")
    sys.exit(3)
torch.ops.load_library(lib)
assert mapped() == loaded, (mapped(), loaded)
print("ok: one CUDA runtime,", next(iter(loaded)), f"(torch {torch.__version__})")
'''


def _find_runtime(soname):
    """A file named soname: the nvidia wheel's (nvidia/cu13/lib), the toolkit's, ldconfig's."""
    dirs = [os.path.join(p, "nvidia", "*", "lib") for p in sys.path if p]
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            dirs += [os.path.join(os.environ[var], sub) for sub in ("lib64", "lib")]
    dirs += ["/usr/local/cuda/lib64", "/usr/local/cuda/lib", "/usr/local/cuda-*/lib*"]
    for d in dirs:
        found = sorted(glob.glob(os.path.join(d, soname)))
        if found:
            return found[0]
    if shutil.which("ldconfig") or os.path.exists("/sbin/ldconfig"):
        out = subprocess.run([shutil.which("ldconfig") or "/sbin/ldconfig", "-p"], capture_output=True,
                             text=True).stdout
        for line in out.splitlines():
            if line.strip().startswith(soname + " ") and "=>" in line:
                return line.split("=>")[1].strip()
    return None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ELF libraries: Linux only")
def test_cuda_library_reuses_the_loaded_cuda_runtime():
    from fusedopt import _ext

    libs = [p for p in _libraries() if os.path.basename(p).startswith("_C_cuda")]
    if not libs:
        pytest.skip("fusedopt._C_cuda is not built")
    if not _ext.cpu_status()[0]:
        pytest.skip(f"the CPU extension is not loaded: {_ext.cpu_status()[1]}")
    needed = [line.split("[")[1].split("]")[0] for line in _readelf("-d", libs[0]).splitlines()
              if "(NEEDED)" in line and "libcudart" in line]
    assert len(needed) == 1, needed
    runtime = _find_runtime(needed[0])
    if runtime is None:
        pytest.skip(f"no {needed[0]} on this machine (torch's CUDA wheels bring it)")
    res = subprocess.run([sys.executable, "-c", _SHARED_CUDART_SCRIPT, needed[0], runtime, libs[0]],
                         capture_output=True, text=True, timeout=300, cwd=os.path.dirname(libs[0]))
    if res.returncode == 3:  # torch is built for another CUDA major: the CUDA kernels do not load there
        pytest.skip(res.stdout.strip())
    assert res.returncode == 0, res.stderr[-3000:]
    assert "ok: one CUDA runtime" in res.stdout, res.stdout
