# MoECombine wrapper (included by _native.pyx): validates on the host, then launches
# reid_moe_combine_{f32,f16,bf16} without the GIL. kernels/moe_combine/README.md has the
# semantics; reid_export.ops.moe_combine is the reference.
cimport cython
from libc.string cimport memset

# The module compiles with wraparound=False; these wrappers index shapes from the end.


@cython.wraparound(True)
def _moe_lead_layout(lead, experts_strides, gate_shape, gate_strides, out_strides):
    """Leading axes as (shape, experts, gate, out strides) lists of at most REID_MAX_LEAD_DIMS.

    The gate's missing or size-1 leading axes get stride 0 (broadcast). Axes of size 1 are
    dropped; with more than REID_MAX_LEAD_DIMS axes left, neighbours contiguous in all three
    arrays are merged.
    """
    offset = len(lead) - len(gate_shape)
    axes = []
    for axis, size in enumerate(lead):
        if size == 1:
            continue
        gate_axis = axis - offset
        gate_stride = 0
        if gate_axis >= 0 and gate_shape[gate_axis] != 1:
            gate_stride = gate_strides[gate_axis]
        axes.append([size, experts_strides[axis], gate_stride, out_strides[axis]])
    if len(axes) > REID_MAX_LEAD_DIMS:
        merged = [axes[-1]]
        for outer in reversed(axes[:-1]):
            inner = merged[-1]
            if all(outer[k] == inner[k] * inner[0] for k in (1, 2, 3)):
                inner[0] *= outer[0]
            else:
                merged.append(outer)
        axes = merged[::-1]
    if len(axes) > REID_MAX_LEAD_DIMS:
        raise ValueError(
            f"MoECombine: {len(axes)} leading axes remain after merging contiguous ones; the "
            f"kernel takes at most {REID_MAX_LEAD_DIMS}. Make experts, gate_logits and out "
            "contiguous (or reshape their leading axes) first")
    return axes


@cython.wraparound(True)
def moe_combine(experts, gate_logits, out, *, softmax=True, stream=0):
    """``out[..., c, j] = sum_m experts[..., c, m] * w[..., m, j]`` on the GPU, into ``out``.

    experts ``[..., C, E]``, gate_logits ``[..., E, J]`` (leading axes broadcast: missing or
    size 1), out ``[..., C, J]`` with the experts' leading shape; one dtype for all three
    (float32, float16 or bfloat16), 1 <= E <= 16, J <= 8, any strides (out must not overlap).
    ``w`` is the softmax over E of gate_logits, or gate_logits itself when ``softmax`` is
    False. Device arrays as :func:`as_device_array` takes them. Enqueued on ``stream`` (an
    integer cudaStream_t); returns without synchronising.
    """
    ex = as_device_array(experts, "experts")
    gate = as_device_array(gate_logits, "gate_logits")
    dst = as_device_array(out, "out")
    if ex.ndim < 2:
        raise ValueError(f"MoECombine: experts must be [..., C, E] (rank >= 2), got shape "
                         f"{list(ex.shape)}")
    if gate.ndim < 2:
        raise ValueError(f"MoECombine: gate_logits must be [..., E, J] (rank >= 2), got shape "
                         f"{list(gate.shape)}")
    channels, num_experts = ex.shape[-2], ex.shape[-1]
    num_outputs = gate.shape[-1]
    if gate.shape[-2] != num_experts:
        raise ValueError(f"MoECombine: experts has E={num_experts} (last axis of "
                         f"{list(ex.shape)}) but gate_logits has {gate.shape[-2]} (axis -2 of "
                         f"{list(gate.shape)}); they must be equal")
    if not 1 <= num_experts <= REID_MOE_MAX_EXPERTS:
        raise ValueError(f"MoECombine: E={num_experts}; the kernel supports "
                         f"1..{REID_MOE_MAX_EXPERTS} experts")
    if num_outputs > REID_MOE_MAX_OUTPUTS:
        raise ValueError(f"MoECombine: J={num_outputs}; the kernel supports at most "
                         f"{REID_MOE_MAX_OUTPUTS} outputs (split the gate along J)")
    lead = ex.shape[:-2]
    gate_lead = gate.shape[:-2]
    if len(gate_lead) > len(lead) or any(
            g not in (1, e) for g, e in zip(reversed(gate_lead), reversed(lead))):
        raise ValueError(f"MoECombine: gate_logits leading shape {list(gate_lead)} does not "
                         f"broadcast to the experts' leading shape {list(lead)}; each gate axis "
                         "must equal the experts' axis or be 1")
    expected = lead + (channels, num_outputs)
    if dst.shape != expected:
        raise ValueError(f"MoECombine: out must be {list(expected)} (the experts' leading shape, "
                         f"C, J), got {list(dst.shape)}")
    if ex.dtype not in _FLOAT_INDEX:
        raise ValueError(f"MoECombine: experts dtype {ex.dtype} is not supported; use float32, "
                         "float16 or bfloat16")
    if gate.dtype != ex.dtype or dst.dtype != ex.dtype:
        raise ValueError(f"MoECombine: dtypes differ (experts {ex.dtype}, gate_logits "
                         f"{gate.dtype}, out {dst.dtype}); all three must match")
    if _overlapping(dst):
        raise ValueError(f"MoECombine: out has overlapping elements (strides {dst.strides} for "
                         f"shape {dst.shape}); pass a contiguous out")
    axes = _moe_lead_layout(lead, ex.strides[:-2], gate_lead, gate.strides[:-2],
                            dst.strides[:-2])

    cdef reid_moe_combine_desc desc
    memset(&desc, 0, sizeof(desc))
    desc.num_lead_dims = len(axes)
    desc.apply_softmax = 1 if softmax else 0
    for index, (size, experts_stride, gate_stride, out_stride) in enumerate(axes):
        desc.lead_shape[index] = size
        desc.experts_lead_strides[index] = experts_stride
        desc.gate_lead_strides[index] = gate_stride
        desc.out_lead_strides[index] = out_stride
    desc.channels, desc.num_experts, desc.num_outputs = channels, num_experts, num_outputs
    desc.experts_stride_c, desc.experts_stride_e = ex.strides[-2], ex.strides[-1]
    desc.gate_stride_e, desc.gate_stride_j = gate.strides[-2], gate.strides[-1]
    desc.out_stride_c, desc.out_stride_j = dst.strides[-2], dst.strides[-1]

    cdef reid_moe_combine_fn launcher = _moe_fns[_FLOAT_INDEX[ex.dtype]]
    cdef const void* experts_ptr = <const void*><uintptr_t>ex.ptr
    cdef const void* gate_ptr = <const void*><uintptr_t>gate.ptr
    cdef void* out_ptr = <void*><uintptr_t>dst.ptr
    cdef void* stream_ptr = <void*><uintptr_t>int(stream)
    cdef int code
    with nogil:
        code = launcher(&desc, experts_ptr, gate_ptr, out_ptr, stream_ptr)
    _check(code, "reid_moe_combine")
    return out
