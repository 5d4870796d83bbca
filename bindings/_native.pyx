# cython: language_level=3
"""reid_sdk._native: the CUDA kernels of libreid_kernels.so, called with device arrays.

The library is found beside this module (``libreid_kernels.so``, built by ``pip install`` where
nvcc exists) or at ``$REID_SDK_KERNELS_LIB``. Importing this module without it raises
:class:`reid_sdk.errors.NativeUnavailableError` saying how to build it.

Device arrays are anything with ``__cuda_array_interface__`` (CuPy, Numba, torch CUDA tensors
for fp32/fp16) or a :class:`DeviceArray` describing a raw device pointer (any dtype, bf16
included). Every launcher enqueues on ``stream`` (an integer ``cudaStream_t``; 0 = legacy
default stream) and returns without synchronising: the caller orders its own work.
"""
import os

from libc.stdint cimport int32_t, int64_t, uint8_t, uintptr_t
from posix.dlfcn cimport dlopen, dlsym, dlerror, RTLD_NOW, RTLD_LOCAL

from reid_kernels cimport *

from reid_sdk.errors import KernelError, NativeUnavailableError

__all__ = ["DeviceArray", "as_device_array", "library_path", "abi_version", "cuda_archs",
           "device_count", "moe_combine", "keypoint_patch_pool"]

_HOW_TO_BUILD = (
    "Install the CUDA toolkit (nvcc 12 or 13) and reinstall reid-sdk from source "
    "(pip install -e . ; REID_SDK_CUDA_ARCHS=87 for Jetson Orin), or point REID_SDK_KERNELS_LIB "
    "at a libreid_kernels.so built with cmake (see README, 'Building the kernels'). The ONNX "
    "Runtime and TensorRT runtimes do not need this module.")


def _find_library():
    env = os.environ.get("REID_SDK_KERNELS_LIB")
    if env:
        if not os.path.isfile(env):
            raise NativeUnavailableError(
                f"REID_SDK_KERNELS_LIB={env!r} does not exist. Unset it or point it at a built "
                f"libreid_kernels.so. {_HOW_TO_BUILD}")
        return env
    here = os.path.dirname(os.path.abspath(__file__))
    path = os.path.join(here, "libreid_kernels.so")
    if not os.path.isfile(path):
        raise NativeUnavailableError(
            f"reid_sdk._native needs libreid_kernels.so, which was not built: no {path}. "
            + _HOW_TO_BUILD)
    return path


cdef void* _handle = NULL
cdef reid_moe_combine_fn _moe_fns[3]
cdef reid_keypoint_patch_pool_fn _kpp_fns[3]
cdef reid_error_string_fn _error_string = NULL
cdef reid_device_count_fn _device_count = NULL
cdef reid_cuda_archs_fn _cuda_archs = NULL

_LIBRARY_PATH = _find_library()


cdef void* _symbol(bytes name) except NULL:
    cdef void* fn = dlsym(_handle, name)
    if fn == NULL:
        raise NativeUnavailableError(
            f"{_LIBRARY_PATH} has no symbol {name.decode()}: it is from another reid-sdk version. "
            + _HOW_TO_BUILD)
    return fn


cdef _load():
    global _handle, _error_string, _device_count, _cuda_archs
    _handle = dlopen(_LIBRARY_PATH.encode(), RTLD_NOW | RTLD_LOCAL)
    if _handle == NULL:
        err = dlerror()
        raise NativeUnavailableError(
            f"cannot load {_LIBRARY_PATH}: {err.decode() if err != NULL else 'unknown error'}. "
            + _HOW_TO_BUILD)
    cdef int version = (<reid_abi_version_fn>_symbol(b"reid_kernels_abi_version"))()
    if version != REID_KERNELS_ABI_VERSION:
        raise NativeUnavailableError(
            f"{_LIBRARY_PATH} has C ABI version {version}, this module needs "
            f"{REID_KERNELS_ABI_VERSION}: rebuild both from the same source. " + _HOW_TO_BUILD)
    _error_string = <reid_error_string_fn>_symbol(b"reid_kernels_error_string")
    _device_count = <reid_device_count_fn>_symbol(b"reid_kernels_device_count")
    _cuda_archs = <reid_cuda_archs_fn>_symbol(b"reid_kernels_cuda_archs")
    _moe_fns[0] = <reid_moe_combine_fn>_symbol(b"reid_moe_combine_f32")
    _moe_fns[1] = <reid_moe_combine_fn>_symbol(b"reid_moe_combine_f16")
    _moe_fns[2] = <reid_moe_combine_fn>_symbol(b"reid_moe_combine_bf16")
    _kpp_fns[0] = <reid_keypoint_patch_pool_fn>_symbol(b"reid_keypoint_patch_pool_f32")
    _kpp_fns[1] = <reid_keypoint_patch_pool_fn>_symbol(b"reid_keypoint_patch_pool_f16")
    _kpp_fns[2] = <reid_keypoint_patch_pool_fn>_symbol(b"reid_keypoint_patch_pool_bf16")


_load()


def library_path():
    """Path of the loaded libreid_kernels.so."""
    return _LIBRARY_PATH


def abi_version():
    """C ABI version of the loaded library (equal to this module's)."""
    return REID_KERNELS_ABI_VERSION


def cuda_archs():
    """SM architectures compiled into the library, e.g. ``[87, 89, 90]``."""
    return [int(a) for a in _cuda_archs().decode().split(";") if a.strip().isdigit()]


def device_count():
    """Number of CUDA devices visible to the library (0 on a machine without a GPU)."""
    cdef int count = 0
    _check(_device_count(&count), "cudaGetDeviceCount")
    return count


cdef int _check(int code, str what) except -1:
    if code != 0:
        raise KernelError(f"{what} failed: {_error_string(code).decode()} (code {code})")
    return 0


# ------------------------------------------------------------------------------------------------
# Device arrays
# ------------------------------------------------------------------------------------------------
_ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2, "int32": 4, "int64": 8, "uint8": 1,
             "bool": 1}
_TYPESTR = {"<f4": "float32", "<f2": "float16", "<i4": "int32", "<i8": "int64", "|u1": "uint8",
            "|b1": "bool", "<V2": "bfloat16"}
# Launcher table index per floating dtype.
_FLOAT_INDEX = {"float32": 0, "float16": 1, "bfloat16": 2}


class DeviceArray:
    """A device buffer: pointer, shape, strides in elements, dtype name (see ``_ITEMSIZE``)."""

    __slots__ = ("ptr", "shape", "strides", "dtype")

    def __init__(self, ptr, shape, strides=None, dtype="float32"):
        if dtype not in _ITEMSIZE:
            raise ValueError(f"unsupported dtype {dtype!r}; use one of {sorted(_ITEMSIZE)}")
        self.ptr = int(ptr)
        self.shape = tuple(int(s) for s in shape)
        if strides is None:
            strides, acc = [], 1
            for s in reversed(self.shape):
                strides.append(acc)
                acc *= max(s, 1)
            strides = tuple(reversed(strides))
        self.strides = tuple(int(s) for s in strides)
        if len(self.strides) != len(self.shape):
            raise ValueError(f"strides {self.strides} do not match shape {self.shape}")
        self.dtype = dtype

    @property
    def ndim(self):
        return len(self.shape)

    @property
    def size(self):
        n = 1
        for s in self.shape:
            n *= s
        return n

    def __repr__(self):
        return (f"DeviceArray(ptr=0x{self.ptr:x}, shape={self.shape}, strides={self.strides}, "
                f"dtype={self.dtype!r})")


def as_device_array(obj, name="array"):
    """Describe ``obj`` as a :class:`DeviceArray`.

    Accepts a DeviceArray, a torch CUDA tensor (any dtype, bf16 included; torch is not
    imported), or any object with ``__cuda_array_interface__``.
    """
    if isinstance(obj, DeviceArray):
        return obj
    if hasattr(obj, "data_ptr") and hasattr(obj, "stride") and hasattr(obj, "is_cuda"):
        if not obj.is_cuda:
            raise ValueError(f"{name} is a CPU tensor; the kernels need CUDA tensors (.cuda())")
        dtype = str(obj.dtype).replace("torch.", "")
        if dtype not in _ITEMSIZE:
            raise ValueError(f"{name} has dtype {obj.dtype}, which the kernels do not take")
        return DeviceArray(obj.data_ptr(), tuple(obj.shape), tuple(obj.stride()), dtype)
    cai = getattr(obj, "__cuda_array_interface__", None)
    if cai is None:
        raise ValueError(
            f"{name} ({type(obj).__name__}) is not a device array: pass a CuPy array, a torch "
            "CUDA tensor, or reid_sdk._native.DeviceArray(ptr, shape, strides, dtype)")
    typestr = cai["typestr"]
    if typestr not in _TYPESTR:
        raise ValueError(f"{name} has typestr {typestr!r}; supported: {sorted(_TYPESTR)}")
    dtype = _TYPESTR[typestr]
    itemsize = _ITEMSIZE[dtype]
    strides = cai.get("strides")
    if strides is not None:
        if any(s % itemsize for s in strides):
            raise ValueError(f"{name} has strides {strides} that are not whole elements")
        strides = tuple(s // itemsize for s in strides)
    return DeviceArray(cai["data"][0], cai["shape"], strides, dtype)


def _overlapping(array):
    """Whether two elements of ``array`` share an address (so concurrent writes would race)."""
    span = 0
    for stride, size in sorted((abs(st), sz) for sz, st in zip(array.shape, array.strides)
                               if sz > 1):
        if stride <= span:
            return True
        span += stride * (size - 1)
    return False


include "_native_moe_combine.pxi"
include "_native_keypoint_patch_pool.pxi"
