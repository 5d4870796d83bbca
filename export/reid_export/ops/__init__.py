"""The two custom ops of reid-sdk, each in four forms that agree: torch reference (the spec),
torch custom op (``torch.ops.reid.*``: CPU = reference, CUDA = our kernel), ONNX node with a
standard-op function body, TensorRT plugin (kernels/<op>/)."""
from reid_export.ops.keypoint_patch_pool import KEYREID_PARTS, keypoint_patch_pool
from reid_export.ops.moe_combine import moe_combine

__all__ = ["moe_combine", "keypoint_patch_pool", "KEYREID_PARTS"]
