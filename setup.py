"""Build of reid-sdk: the Cython extensions and, where nvcc exists, the CUDA kernel library.

Environment knobs (all optional):
  REID_SDK_BUILD_KERNELS   auto (default): build kernels/ when nvcc is found; 1: fail without nvcc;
                           0: skip the CUDA library.
  REID_SDK_CUDA_ARCHS      CMake list of SM architectures, default "87;89;90" (Jetson Orin, Ada,
                           Hopper). Example for a Jetson-only build: REID_SDK_CUDA_ARCHS=87.
  REID_SDK_TENSORRT_ROOT   TensorRT root; when found, libreid_trt_plugins.so is built too.
  REID_SDK_CMAKE_ARGS      extra arguments for the CMake configure step.
  REID_SDK_NVCC            the nvcc to use (default: $CUDACXX, PATH, /usr/local/cuda/bin);
                           empty: build as on a machine without the CUDA toolkit.
"""
import os
import shlex
import shutil
import subprocess
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
DEFAULT_CUDA_ARCHS = "87;89;90"
NATIVE_LIBS = ("libreid_kernels.so", "libreid_trt_plugins.so")


def find_nvcc():
    if "REID_SDK_NVCC" in os.environ:  # explicit choice; empty means "behave as if absent"
        candidates = (os.environ["REID_SDK_NVCC"],)
    else:
        candidates = (os.environ.get("CUDACXX"), shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc")
    for candidate in candidates:
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


class BuildExtWithKernels(build_ext):
    """Builds kernels/ through CMake first, then the Cython extensions."""

    def run(self):
        self.build_kernels()
        super().run()

    def build_kernels(self):
        mode = os.environ.get("REID_SDK_BUILD_KERNELS", "auto").lower()
        if mode in ("0", "off", "no", "false"):
            print("reid-sdk: REID_SDK_BUILD_KERNELS=0: skipping the CUDA kernel library")
            return
        nvcc = find_nvcc()
        cmake = shutil.which("cmake")
        if nvcc is None or cmake is None:
            missing = "nvcc (the CUDA toolkit)" if nvcc is None else "cmake"
            msg = (f"reid-sdk: {missing} not found: installing without libreid_kernels.so. "
                   "The ONNX Runtime / TensorRT runtime works; reid_sdk._native will explain how "
                   "to add the kernels (install the CUDA toolkit, then reinstall).")
            if mode in ("1", "on", "yes", "true"):
                raise RuntimeError(msg + " REID_SDK_BUILD_KERNELS=1 demands them.")
            print(msg)
            return
        build_dir = ROOT / "build" / "cmake"
        build_dir.mkdir(parents=True, exist_ok=True)
        archs = os.environ.get("REID_SDK_CUDA_ARCHS", DEFAULT_CUDA_ARCHS)
        args = [cmake, "-S", str(ROOT), "-B", str(build_dir), "-DCMAKE_BUILD_TYPE=Release",
                f"-DREID_CUDA_ARCHS={archs}", f"-DCMAKE_CUDA_COMPILER={nvcc}"]
        trt_root = os.environ.get("REID_SDK_TENSORRT_ROOT")
        if trt_root:
            args.append(f"-DTensorRT_ROOT={trt_root}")
        args += shlex.split(os.environ.get("REID_SDK_CMAKE_ARGS", ""))
        jobs = str(max(1, os.cpu_count() or 1))
        print("reid-sdk: building CUDA kernels for SM", archs)
        subprocess.check_call(args)
        subprocess.check_call([cmake, "--build", str(build_dir), "-j", jobs])
        targets = [Path(self.build_lib) / "reid_sdk"]
        if self.inplace:
            targets.append(ROOT / "sdk" / "reid_sdk")
        for name in NATIVE_LIBS:
            built = build_dir / name
            if not built.exists():
                continue
            for target in targets:
                target.mkdir(parents=True, exist_ok=True)
                # Copy then rename: processes that have the old library loaded keep their
                # mapping intact (an in-place overwrite crashes them).
                staging = target / f".{name}.tmp"
                shutil.copy2(built, staging)
                os.replace(staging, target / name)


def extensions():
    import numpy
    from Cython.Build import cythonize

    exts = [
        Extension("reid_sdk._native", ["bindings/_native.pyx"],
                  include_dirs=["kernels", "bindings"], libraries=["dl"]),
        Extension("reid_sdk._ranking", ["bindings/_ranking.pyx"],
                  include_dirs=["bindings", numpy.get_include()],
                  define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
                  extra_compile_args=["-O3"]),
    ]
    return cythonize(exts, language_level=3, include_path=["bindings"],
                     compiler_directives={"boundscheck": False, "wraparound": False,
                                          "cdivision": True, "embedsignature": True})


setup(
    ext_modules=extensions(),
    cmdclass={"build_ext": BuildExtWithKernels},
)
