"""The SDK's exception types. Every error raised on bad input names the problem and the fix.

All derive from :class:`ReidError`; each also derives from the builtin a caller would expect
(``ValueError`` for bad values, ``ImportError`` for a missing optional part, ...), so generic
``except ValueError`` code keeps working.
"""


class ReidError(Exception):
    """Base class of every error reid-sdk raises on purpose."""


class InputError(ReidError, ValueError):
    """Bad input to embed / search / evaluate: wrong dtype, shape, empty tracklet, NaN keypoints,
    camera out of range, mismatched lengths."""


class SpecError(ReidError, ValueError):
    """The engine spec is missing, malformed, of an unknown version, or does not fit the engine."""


class EngineFileError(ReidError, ValueError):
    """The engine file is missing, truncated, corrupt, or its sha256 does not match its spec."""


class BackendUnavailableError(ReidError, ImportError):
    """The backend asked for (onnxruntime, TensorRT, cuda-python, an execution provider) is not
    installed or cannot run here."""


class NativeUnavailableError(ReidError, ImportError):
    """libreid_kernels.so (the CUDA kernels) was not built or cannot be loaded."""


class KernelError(ReidError, RuntimeError):
    """A CUDA kernel launcher returned an error."""


class GalleryError(ReidError, ValueError):
    """A gallery file is corrupt, has the wrong format, or ids / dimensions do not match."""


class BackendError(ReidError, RuntimeError):
    """The backend failed while running: an ONNX Runtime or TensorRT execution error, a CUDA
    runtime call that failed, or an engine output that is malformed or not finite."""
