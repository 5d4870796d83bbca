"""The host toolchain the CPU-run op tests compile native code with (g++ and the CUDA toolkit
headers), and the build of a kernel's CPU emulation (tests/ops/*_cpu_emulation/harness.cpp,
which includes the kernel file as rewritten for the emulation) into a loaded ctypes library."""
import ctypes
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
KERNELS = ROOT / "kernels"
CUDA_INCLUDE = next((p for p in (Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "include",
                                 Path("/usr/local/cuda/include"))
                     if (p / "cuda_runtime.h").is_file() and (p / "cuda_fp16.h").is_file()),
                    None)
GXX = shutil.which("g++")

requires_host_toolchain = pytest.mark.skipif(
    CUDA_INCLUDE is None or GXX is None,
    reason="needs the CUDA toolkit headers and g++ (C++20), as the nvcc compile checks do")


def build_emulation(build_dir: Path, kernel_source: str, harness: Path, include_dirs, desc_type,
                    flags=(), timeout=900) -> ctypes.CDLL:
    """Compiles `harness` with `kernel_source` (the kernel file rewritten for the emulation,
    written to build_dir/kernel_source.cpp for the harness to include) into a shared library,
    loads it, and checks that the library's description struct (``emulated_desc_size()``) has the
    size of `desc_type`, the test's ctypes mirror of it.

    include_dirs: folders searched after build_dir and before kernels/, kernels/common and the
    CUDA headers; flags: extra g++ flags (optimisation level, warnings, linker options)."""
    (build_dir / "kernel_source.cpp").write_text(kernel_source)
    library = build_dir / f"lib{harness.parent.name}.so"
    includes = [build_dir, *include_dirs, KERNELS, KERNELS / "common", CUDA_INCLUDE]
    command = [GXX, "-std=c++20", "-shared", "-fPIC", "-pthread", *flags, "-o", str(library),
               str(harness), *(arg for folder in includes for arg in ("-I", str(folder)))]
    result = subprocess.run(command, check=False, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, result.stderr[-4000:]
    lib = ctypes.CDLL(str(library))
    lib.emulated_desc_size.restype = ctypes.c_size_t
    assert lib.emulated_desc_size() == ctypes.sizeof(desc_type), (
        f"{desc_type.__name__} differs from reid_kernels.h")
    return lib
