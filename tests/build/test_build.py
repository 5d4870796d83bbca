"""The spine: packaging, the kernel library's C ABI, compile checks, the no-torch rule, CI."""
import ctypes
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NVCC = shutil.which("nvcc")
ABI_SYMBOLS = [
    "reid_kernels_abi_version", "reid_kernels_error_string", "reid_kernels_device_count",
    "reid_kernels_cuda_archs",
    *(f"reid_moe_combine_{t}" for t in ("f32", "f16", "bf16")),
    *(f"reid_keypoint_patch_pool_{t}" for t in ("f32", "f16", "bf16")),
]


def _run_python(code, env=None):
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=full_env, timeout=120)


def test_import_reid_sdk_never_imports_torch():
    code = ("import sys, reid_sdk, reid_sdk.spec, reid_sdk.errors\n"
            "for name in ('Engine', 'Gallery', 'evaluate'):\n"
            "    getattr(reid_sdk, name)\n"
            "heavy = sorted(m for m in ('torch', 'onnx', 'tensorrt') if m in sys.modules)\n"
            "print(','.join(heavy))")
    result = _run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"reid_sdk imported {result.stdout.strip()}"


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"<!-- test-command -->\s*```(?:bash|sh)?\n(.+?)\n```", readme, re.S)
    assert match, "README.md must mark its test command with <!-- test-command -->"
    command = match.group(1).strip()
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
    assert command in ci_lines, f".ci/run does not run the README command {command!r}"


@pytest.mark.skipif(NVCC is None, reason="nvcc absent: the package installs without kernels")
class TestKernelLibrary:
    def test_library_was_built_and_exports_the_c_abi(self):
        import reid_sdk
        lib_path = Path(reid_sdk.__file__).with_name("libreid_kernels.so")
        assert lib_path.is_file(), "pip install with nvcc present must build libreid_kernels.so"
        lib = ctypes.CDLL(str(lib_path))
        for name in ABI_SYMBOLS:
            assert hasattr(lib, name), f"libreid_kernels.so does not export {name}"
        lib.reid_kernels_abi_version.restype = ctypes.c_int
        header = (ROOT / "kernels" / "reid_kernels.h").read_text()
        version = int(re.search(r"#define REID_KERNELS_ABI_VERSION (\d+)", header).group(1))
        assert lib.reid_kernels_abi_version() == version

    def test_native_module_loads_and_reports_facts(self):
        from reid_sdk import _native
        archs = _native.cuda_archs()
        wanted = [int(a) for a in os.environ.get("REID_SDK_CUDA_ARCHS", "87;89;90").split(";")]
        assert archs == wanted
        count = _native.device_count()  # 0 without a GPU: not an error
        assert isinstance(count, int) and count >= 0

    @pytest.mark.parametrize("source", sorted(str(p.relative_to(ROOT)) for p in
                                              (ROOT / "kernels").glob("*/*_kernel.cu")))
    def test_nvcc_compiles_kernel_warning_free(self, source, tmp_path):
        # Compile-only: sm_87 (Jetson Orin) as the one arch CI checks; the install builds all.
        result = subprocess.run(
            [NVCC, "-c", str(ROOT / source), "-o", str(tmp_path / "k.o"), "-std=c++17",
             "-arch=sm_87", "-O3", "--expt-relaxed-constexpr", "-Werror", "all-warnings",
             "-I", str(ROOT / "kernels"), "-I", str(ROOT / "kernels" / "common")],
            capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr


def test_native_import_without_library_explains_how_to_build():
    result = _run_python(
        "import reid_sdk\n"
        "try:\n"
        "    import reid_sdk._native\n"
        "except reid_sdk.NativeUnavailableError as exc:\n"
        "    print('ERR', exc)\n",
        env={"REID_SDK_KERNELS_LIB": "/nonexistent/libreid_kernels.so"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ERR"), result.stdout
    assert "nvcc" in result.stdout and "REID_SDK_KERNELS_LIB" in result.stdout


@pytest.mark.slow
def test_build_without_nvcc_succeeds_and_native_explains(tmp_path):
    """A machine without the CUDA toolkit still installs; _native then says how to get it."""
    build_lib, build_temp = tmp_path / "lib", tmp_path / "temp"
    env = dict(os.environ, REID_SDK_NVCC="")
    result = subprocess.run(
        [sys.executable, "setup.py", "-q", "build_ext", "--build-lib", str(build_lib),
         "--build-temp", str(build_temp)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "installing without libreid_kernels.so" in result.stdout
    built = build_lib / "reid_sdk"
    assert list(built.glob("_native*.so")) and not (built / "libreid_kernels.so").exists()
    # Import the freshly built extension against the source package; it must find no library.
    code = ("import importlib.util, sys, reid_sdk\n"
            f"spec = importlib.util.spec_from_file_location('reid_sdk._native', "
            f"{str(next(built.glob('_native*.so')))!r})\n"
            "mod = importlib.util.module_from_spec(spec)\n"
            "try:\n"
            "    spec.loader.exec_module(mod)\n"
            "except reid_sdk.NativeUnavailableError as exc:\n"
            "    print('ERR', exc)\n")
    result = _run_python(code, env={"REID_SDK_KERNELS_LIB": ""})
    assert result.stdout.startswith("ERR") and "was not built" in result.stdout, (
        result.stdout + result.stderr)
