"""MoECombine: mix expert features with per-token gate weights (HAMoBE's first-level mixture).

    out[..., c, j] = sum_m experts[..., c, m] * w[..., m, j]
    w = softmax over m of gate_logits[..., m, j]   (softmax=True)
    w = gate_logits                                (softmax=False)

experts ``[..., C, E]``, gate_logits ``[..., E, J]`` -> out ``[..., C, J]``. The gate's leading
axes broadcast against the experts' (size-1 or missing axes: per-sample routing); the output has
the experts' leading shape. Four forms that agree (kernels/moe_combine/README.md):

* :func:`moe_combine`: the torch reference, which is the spec (float64-capable);
* ``torch.ops.reid.moe_combine``: CPU runs the reference, CUDA runs our kernel on the current
  stream (usable under ``torch.compile`` and CUDA graph capture), with a torch-op backward;
* ONNX node ``reid::MoECombine`` (attribute ``softmax``: 1 or 0) whose model-local function
  body is written in standard ONNX ops;
* the TensorRT plugin ``MoECombine`` version ``1`` (kernels/moe_combine/).
"""
from __future__ import annotations

import onnx
import torch
from onnx import TensorProto, helper

from reid_export.ops import _onnx

__all__ = ["moe_combine", "MAX_KERNEL_EXPERTS", "MAX_KERNEL_OUTPUTS", "KERNEL_DTYPES"]

# Limits of the CUDA kernel (kernels/reid_kernels.h: REID_MOE_MAX_EXPERTS / _OUTPUTS).
MAX_KERNEL_EXPERTS = 16
MAX_KERNEL_OUTPUTS = 8
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_REFERENCE_DTYPES = KERNEL_DTYPES + (torch.float64,)
_HALF_DTYPES = (torch.float16, torch.bfloat16)


def _check_inputs(experts_shape, gate_shape, experts_dtype, gate_dtype, *, for_kernel):
    """Validate shapes and dtypes; return the output shape ``lead + (C, J)``.

    ``for_kernel`` adds the CUDA kernel's limits (E <= 16, J <= 8, no float64, E >= 1).
    """
    experts_shape, gate_shape = tuple(experts_shape), tuple(gate_shape)
    if len(experts_shape) < 2:
        raise ValueError(f"MoECombine: experts must be [..., C, E] (rank >= 2), got shape "
                         f"{list(experts_shape)}")
    if len(gate_shape) < 2:
        raise ValueError(f"MoECombine: gate_logits must be [..., E, J] (rank >= 2), got shape "
                         f"{list(gate_shape)}")
    channels, num_experts = experts_shape[-2:]
    gate_experts, num_outputs = gate_shape[-2:]
    if gate_experts != num_experts:
        raise ValueError(
            f"MoECombine: experts has E={num_experts} experts (last axis of {list(experts_shape)})"
            f" but gate_logits has {gate_experts} (axis -2 of {list(gate_shape)}); they must be "
            "equal: experts is [..., C, E] and gate_logits is [..., E, J]")
    lead, gate_lead = experts_shape[:-2], gate_shape[:-2]
    if len(gate_lead) > len(lead) or any(
            g not in (1, e) for g, e in zip(reversed(gate_lead), reversed(lead))):
        raise ValueError(
            f"MoECombine: gate_logits leading shape {list(gate_lead)} does not broadcast to the "
            f"experts' leading shape {list(lead)}; each gate axis must equal the experts' axis "
            "or be 1 (missing leading axes count as 1)")
    allowed = KERNEL_DTYPES if for_kernel else _REFERENCE_DTYPES
    if experts_dtype not in allowed:
        raise ValueError(f"MoECombine: experts dtype {experts_dtype} is not supported"
                         f"{' by the CUDA kernel' if for_kernel else ''}; use one of "
                         f"{[str(d) for d in allowed]}")
    if gate_dtype != experts_dtype:
        raise ValueError(f"MoECombine: gate_logits dtype {gate_dtype} differs from experts dtype "
                         f"{experts_dtype}; cast one of them so both match")
    if for_kernel and not 1 <= num_experts <= MAX_KERNEL_EXPERTS:
        raise ValueError(f"MoECombine: the CUDA kernel supports 1..{MAX_KERNEL_EXPERTS} experts, "
                         f"got E={num_experts}; run the reference (CPU) for larger E")
    if for_kernel and num_outputs > MAX_KERNEL_OUTPUTS:
        raise ValueError(f"MoECombine: the CUDA kernel supports at most {MAX_KERNEL_OUTPUTS} "
                         f"outputs, got J={num_outputs}; split the gate along J")
    return lead + (channels, num_outputs)


def _mixture_weights(gate_logits: torch.Tensor, softmax: bool) -> torch.Tensor:
    return torch.softmax(gate_logits, dim=-2) if softmax else gate_logits


def moe_combine(experts: torch.Tensor, gate_logits: torch.Tensor,
                softmax: bool = True) -> torch.Tensor:
    """Reference MoECombine (the spec): ``out = experts @ softmax_E(gate_logits)``.

    Args:
        experts: ``[..., C, E]`` expert features (float16, bfloat16, float32 or float64).
        gate_logits: ``[..., E, J]`` gate logits (or weights when ``softmax`` is False), same
            dtype; leading axes broadcast against the experts' (size 1 or missing).
        softmax: apply a softmax over the E axis of ``gate_logits`` first.

    Returns:
        ``[..., C, J]`` in the experts' dtype, with the experts' leading shape. float16 and
        bfloat16 inputs are computed in float32 and rounded once at the end.
    """
    _check_inputs(experts.shape, gate_logits.shape, experts.dtype, gate_logits.dtype,
                  for_kernel=False)
    compute = torch.float32 if experts.dtype in _HALF_DTYPES else experts.dtype
    weights = _mixture_weights(gate_logits.to(compute), bool(softmax))
    return torch.matmul(experts.to(compute), weights).to(experts.dtype)


# ------------------------------------------------------------------------------------------------
# torch custom op: torch.ops.reid.moe_combine
# ------------------------------------------------------------------------------------------------
@torch.library.custom_op("reid::moe_combine", mutates_args=())
def _moe_combine_op(experts: torch.Tensor, gate_logits: torch.Tensor,
                    softmax: bool = True) -> torch.Tensor:
    return moe_combine(experts, gate_logits, softmax)


@_moe_combine_op.register_kernel("cuda")
def _moe_combine_cuda(experts, gate_logits, softmax=True):
    out_shape = _check_inputs(experts.shape, gate_logits.shape, experts.dtype, gate_logits.dtype,
                              for_kernel=True)
    if gate_logits.device != experts.device:
        raise ValueError(f"MoECombine: experts is on {experts.device} but gate_logits on "
                         f"{gate_logits.device}; move both to the same device")
    from reid_sdk import _native  # lazy: the CPU path needs no CUDA library

    out = torch.empty(out_shape, dtype=experts.dtype, device=experts.device)
    with torch.cuda.device(experts.device):
        stream = torch.cuda.current_stream(experts.device).cuda_stream
        _native.moe_combine(experts, gate_logits, out, softmax=bool(softmax), stream=stream)
    return out


@_moe_combine_op.register_fake
def _moe_combine_fake(experts, gate_logits, softmax=True):
    out_shape = _check_inputs(experts.shape, gate_logits.shape, experts.dtype, gate_logits.dtype,
                              for_kernel=experts.device.type == "cuda")
    return experts.new_empty(out_shape)


def _sum_to_shape(grad: torch.Tensor, shape) -> torch.Tensor:
    """Sum ``grad`` over the axes that were broadcast to reach its shape from ``shape``."""
    extra = grad.dim() - len(shape)
    if extra:
        grad = grad.sum(dim=tuple(range(extra)))
    axes = tuple(i for i, size in enumerate(shape) if size == 1 and grad.shape[i] != 1)
    return grad.sum(dim=axes, keepdim=True) if axes else grad


def _setup_context(ctx, inputs, output):
    experts, gate_logits, softmax = inputs
    ctx.save_for_backward(experts, gate_logits)
    ctx.softmax = bool(softmax)


def _backward(ctx, grad_out):
    experts, gate_logits = ctx.saved_tensors
    compute = torch.float32 if experts.dtype in _HALF_DTYPES else experts.dtype
    x, g, dy = experts.to(compute), gate_logits.to(compute), grad_out.to(compute)
    weights = _mixture_weights(g, ctx.softmax)
    grad_experts = grad_gate = None
    if ctx.needs_input_grad[0]:
        grad_experts = torch.matmul(dy, weights.transpose(-1, -2)).to(experts.dtype)
    if ctx.needs_input_grad[1]:
        grad_weights = _sum_to_shape(torch.matmul(x.transpose(-1, -2), dy), gate_logits.shape)
        if ctx.softmax:  # softmax Jacobian over E (axis -2): w * (dw - sum_m w * dw)
            grad_weights = weights * (grad_weights - (grad_weights * weights).sum(-2, keepdim=True))
        grad_gate = grad_weights.to(gate_logits.dtype)
    return grad_experts, grad_gate, None


_moe_combine_op.register_autograd(_backward, setup_context=_setup_context)


# ------------------------------------------------------------------------------------------------
# ONNX: reid::MoECombine v1
# ------------------------------------------------------------------------------------------------
ONNX_OP_NAME = "MoECombine"

_SCHEMA = onnx.defs.OpSchema(
    ONNX_OP_NAME, _onnx.REID_DOMAIN, _onnx.REID_OPSET_VERSION,
    doc=("out[..., c, j] = sum_m experts[..., c, m] * w[..., m, j], w = softmax over m of "
         "gate_logits[..., m, j] (softmax=1) or gate_logits (softmax=0). gate_logits' leading "
         "axes broadcast against the experts'. Computed in float32."),
    inputs=[onnx.defs.OpSchema.FormalParameter("experts", "T", "[..., C, E] expert features"),
            onnx.defs.OpSchema.FormalParameter("gate_logits", "T",
                                               "[..., E, J] gate logits (or weights)")],
    outputs=[onnx.defs.OpSchema.FormalParameter("out", "T", "[..., C, J]")],
    type_constraints=[("T", ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"],
                       "float32, float16 or bfloat16 (accumulation is float32)")],
    attributes=[onnx.defs.OpSchema.Attribute(
        "softmax", helper.make_attribute("softmax", 1),
        "1: softmax over E inside the op; 0: gate_logits already holds the weights")],
)


def _translate(experts, gate_logits, softmax: bool = True):
    import onnxscript

    reid = onnxscript.values.Opset(_onnx.REID_DOMAIN, _onnx.REID_OPSET_VERSION)
    return reid.MoECombine(experts, gate_logits, softmax=int(softmax))


def build_function(ai_onnx_opset: int) -> onnx.FunctionProto:
    """The model-local function ``reid::MoECombine`` in standard ONNX ops (opset >= 15).

    The ``softmax`` attribute reaches the body through an attribute-referencing Constant; a
    Where on it selects the softmaxed or the raw gate exactly. Inputs are cast to float32 and
    the result back to the experts' type, as the kernel computes. MatMul broadcasts the
    gate's leading axes against the experts'.
    """
    if ai_onnx_opset < 15:
        raise ValueError(f"reid::MoECombine's function body needs ai.onnx opset >= 15 "
                         f"(CastLike); the model imports opset {ai_onnx_opset}")
    flag = helper.make_node("Constant", [], ["softmax_flag"])
    flag.attribute.append(onnx.AttributeProto(name="value_int", ref_attr_name="softmax",
                                              type=onnx.AttributeProto.INT))
    nodes = [
        flag,
        helper.make_node("Cast", ["softmax_flag"], ["use_softmax"], to=TensorProto.BOOL),
        helper.make_node("Cast", ["experts"], ["experts_f32"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["gate_logits"], ["gate_f32"], to=TensorProto.FLOAT),
        helper.make_node("Softmax", ["gate_f32"], ["gate_softmax"], axis=-2),
        helper.make_node("Where", ["use_softmax", "gate_softmax", "gate_f32"], ["weights"]),
        helper.make_node("MatMul", ["experts_f32", "weights"], ["out_f32"]),
        helper.make_node("CastLike", ["out_f32", "experts"], ["out"]),
    ]
    return helper.make_function(
        _onnx.REID_DOMAIN, ONNX_OP_NAME, ["experts", "gate_logits"], ["out"], nodes,
        opset_imports=[helper.make_opsetid("", ai_onnx_opset)],
        attribute_protos=[helper.make_attribute("softmax", 1)],
        doc_string=_SCHEMA.doc)


ONNX_OP = _onnx.register_onnx_op(_onnx.OnnxOp(
    name=ONNX_OP_NAME,
    torch_op=torch.ops.reid.moe_combine.default,
    translate=_translate,
    schema=_SCHEMA,
    build_function=build_function,
))
