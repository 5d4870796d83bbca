"""MoECombine on the CPU: reference vs a slow float64 loop, the torch custom op (values, autograd,
fake / compile registration), the ONNX function body in ONNX Runtime and the ONNX reference
evaluator, the op inside an exported model, and the clear errors of every entry point.

The CUDA kernel runs in tests/ops/test_moe_combine_gpu.py (GPU) and, emulated on the CPU, in
tests/ops/test_moe_combine_emulated.py.
"""
import importlib
import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

from reid_export.ops import _onnx, moe_combine

moe_module = importlib.import_module("reid_export.ops.moe_combine")

ORT_IR_VERSION = 10  # the IR version torch.onnx writes; onnxruntime 1.31 reads up to 13
ONNX_TYPES = {torch.float32: TensorProto.FLOAT, torch.float16: TensorProto.FLOAT16}


def slow_moe_combine(experts, gate_logits, softmax=True):
    """Independent float64 reference: explicit loops over tokens, channels, outputs, experts."""
    x = np.asarray(experts, dtype=np.float64)
    g = np.asarray(gate_logits, dtype=np.float64)
    lead, (channels, num_experts), num_outputs = x.shape[:-2], x.shape[-2:], g.shape[-1]
    g = np.broadcast_to(g, lead + g.shape[-2:])
    out = np.zeros(lead + (channels, num_outputs))
    for token in np.ndindex(*lead):
        for j in range(num_outputs):
            column = [g[token + (m, j)] for m in range(num_experts)]
            if softmax:
                peak = max(column)
                exps = [math.exp(v - peak) for v in column]
                column = [e / sum(exps) for e in exps]
            for c in range(channels):
                out[token + (c, j)] = sum(x[token + (c, m)] * column[m]
                                          for m in range(num_experts))
    return out


def random_inputs(rng, lead, channels, num_experts, num_outputs, gate_lead=None,
                  dtype=torch.float64, scale=3.0):
    gate_lead = lead if gate_lead is None else gate_lead
    experts = torch.from_numpy(rng.standard_normal(lead + (channels, num_experts))).to(dtype)
    gate = torch.from_numpy(scale * rng.standard_normal(gate_lead + (num_experts, num_outputs)))
    return experts, gate.to(dtype)


SHAPES = [  # lead, C, E, J, gate lead
    ((2, 3), 5, 4, 3, (2, 3)),
    ((2, 3), 5, 4, 3, (2, 1)),       # per-sample routing: the gate broadcasts over axis 1
    ((2, 3), 5, 4, 3, (3,)),         # missing leading gate axis
    ((), 7, 1, 1, ()),               # no leading axes, one expert
    ((4,), 1, 16, 8, (1,)),          # kernel limits
    ((2, 1, 2), 3, 3, 2, (1, 1, 2)),
]


@pytest.mark.parametrize("lead, channels, num_experts, num_outputs, gate_lead", SHAPES)
@pytest.mark.parametrize("softmax", (True, False))
def test_reference_matches_slow_loop(rng, lead, channels, num_experts, num_outputs, gate_lead,
                                     softmax):
    experts, gate = random_inputs(rng, lead, channels, num_experts, num_outputs, gate_lead)
    got = moe_combine(experts, gate, softmax=softmax)
    assert got.shape == lead + (channels, num_outputs) and got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), slow_moe_combine(experts, gate, softmax),
                               rtol=1e-12, atol=1e-12)


def test_reference_softmax_is_safe_for_large_logits(rng):
    experts, gate = random_inputs(rng, (3,), 4, 8, 3)
    gate = gate * 1e4
    for dtype in (torch.float32, torch.float64):
        got = moe_combine(experts.to(dtype), gate.to(dtype))
        assert torch.isfinite(got).all()
        np.testing.assert_allclose(got.double().numpy(), slow_moe_combine(experts, gate),
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16))
def test_reference_half_inputs_compute_in_float32(rng, dtype):
    experts, gate = random_inputs(rng, (2, 3), 16, 8, 3, (2, 1), dtype=dtype)
    got = moe_combine(experts, gate)
    assert got.dtype == dtype
    exact = slow_moe_combine(experts.double(), gate.double())
    # fp32 arithmetic, one rounding to the half type: within half an ulp of the exact value
    expected = torch.from_numpy(exact).to(dtype)
    assert torch.equal(got, expected) or float((got.double() - expected.double()).abs().max()) \
        <= float(torch.finfo(dtype).eps) * float(np.abs(exact).max())


@pytest.mark.parametrize("softmax", (True, False))
def test_torch_op_on_cpu_is_the_reference(rng, softmax):
    experts, gate = random_inputs(rng, (2, 3), 5, 4, 3, (2, 1), dtype=torch.float32)
    got = torch.ops.reid.moe_combine(experts, gate, softmax)
    assert torch.equal(got, moe_combine(experts, gate, softmax))
    np.testing.assert_allclose(got.double().numpy(), slow_moe_combine(experts, gate, softmax),
                               rtol=1e-5, atol=1e-6)


def test_torch_op_default_is_softmax(rng):
    experts, gate = random_inputs(rng, (3,), 4, 5, 2, dtype=torch.float32)
    assert torch.equal(torch.ops.reid.moe_combine(experts, gate),
                       moe_combine(experts, gate, softmax=True))


@pytest.mark.parametrize("softmax", (True, False))
@pytest.mark.parametrize("gate_lead", ((2, 3), (2, 1), (3,), ()))
def test_gradcheck_float64(rng, softmax, gate_lead):
    experts, gate = random_inputs(rng, (2, 3), 4, 5, 3, gate_lead, scale=1.0)
    experts.requires_grad_(True)
    gate.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda x, g: torch.ops.reid.moe_combine(x, g, softmax), (experts, gate))


@pytest.mark.parametrize("softmax", (True, False))
def test_backward_matches_autograd_of_plain_torch(rng, softmax):
    """The registered backward against autograd through an independent formulation."""
    experts, gate = random_inputs(rng, (2, 3), 6, 4, 3, (2, 1), dtype=torch.float32)
    weights_of = (lambda g: torch.softmax(g, dim=-2)) if softmax else (lambda g: g)
    upstream = torch.randn(2, 3, 6, 3, generator=torch.Generator().manual_seed(5))
    grads = []
    for fn in (lambda x, g: torch.ops.reid.moe_combine(x, g, softmax),
               lambda x, g: torch.einsum("...cm,...mj->...cj", x, weights_of(g))):
        x, g = experts.clone().requires_grad_(True), gate.clone().requires_grad_(True)
        (fn(x, g) * upstream).sum().backward()
        grads.append((x.grad, g.grad))
    for ours, plain in zip(*grads):
        torch.testing.assert_close(ours, plain, rtol=1e-5, atol=1e-6)


def test_backward_of_half_inputs_returns_their_dtype(rng):
    experts, gate = random_inputs(rng, (2,), 8, 4, 3, dtype=torch.bfloat16)
    experts.requires_grad_(True)
    gate.requires_grad_(True)
    torch.ops.reid.moe_combine(experts, gate).float().sum().backward()
    assert experts.grad.dtype == torch.bfloat16 and gate.grad.dtype == torch.bfloat16
    x, g = experts.detach().float().requires_grad_(True), gate.detach().float().requires_grad_(True)
    torch.ops.reid.moe_combine(x, g).sum().backward()
    torch.testing.assert_close(experts.grad.float(), x.grad, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(gate.grad.float(), g.grad, rtol=1e-2, atol=1e-2)


def test_opcheck_registration(rng):
    """Schema, fake (meta) kernel, autograd registration and dispatch are consistent."""
    experts, gate = random_inputs(rng, (2, 3), 8, 4, 3, (2, 1), dtype=torch.float32)
    for softmax in (True, False):
        torch.library.opcheck(torch.ops.reid.moe_combine.default,
                              (experts.requires_grad_(True), gate, softmax))


def test_torch_compile_full_graph(rng):
    experts, gate = random_inputs(rng, (2, 3), 8, 4, 3, (2, 1), dtype=torch.float32)

    def mixture(x, g):
        return torch.ops.reid.moe_combine(x * 2.0, g, True).relu()

    compiled = torch.compile(mixture, backend="aot_eager", fullgraph=True, dynamic=True)
    torch.testing.assert_close(compiled(experts, gate), mixture(experts, gate))
    x = experts.clone().requires_grad_(True)
    compiled(x, gate).sum().backward()
    x_ref = experts.clone().requires_grad_(True)
    mixture(x_ref, gate).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad)


# ------------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("experts_shape, gate_shape, dtype, gate_dtype, match", [
    ((5,), (5, 3), torch.float32, torch.float32, r"experts must be \[\.\.\., C, E\]"),
    ((4, 5), (5,), torch.float32, torch.float32, r"gate_logits must be \[\.\.\., E, J\]"),
    ((2, 4, 5), (2, 6, 3), torch.float32, torch.float32, "E=5 experts.*6.*must be equal"),
    ((2, 3, 4, 5), (3, 1, 5, 2), torch.float32, torch.float32, "does not broadcast"),
    ((3, 4, 5), (2, 3, 5, 2), torch.float32, torch.float32, "does not broadcast"),
    ((4, 5), (5, 2), torch.float32, torch.float64, "gate_logits dtype torch.float64 differs"),
    ((4, 5), (5, 2), torch.int32, torch.int32, "dtype torch.int32 is not supported"),
])
def test_reference_and_op_errors_name_the_problem(experts_shape, gate_shape, dtype, gate_dtype,
                                                  match):
    experts = torch.ones(experts_shape, dtype=dtype)
    gate = torch.ones(gate_shape, dtype=gate_dtype)
    for fn in (moe_combine, torch.ops.reid.moe_combine):
        with pytest.raises(ValueError, match=match):
            fn(experts, gate)


@pytest.mark.parametrize("experts_shape, gate_shape, dtype, match", [
    ((4, 17), (17, 2), torch.float32, "1..16 experts, got E=17"),
    ((4, 5), (5, 9), torch.float32, "at most 8 outputs, got J=9"),
    ((4, 5), (5, 2), torch.float64, "not supported by the CUDA kernel"),
    ((4, 0), (0, 2), torch.float32, "1..16 experts, got E=0"),
])
def test_kernel_limits_are_checked_before_launch(experts_shape, gate_shape, dtype, match):
    with pytest.raises(ValueError, match=match):
        moe_module._check_inputs(experts_shape, gate_shape, dtype, dtype, for_kernel=True)
    # the reference itself accepts any E, J and float64
    moe_combine(torch.ones(experts_shape, dtype=dtype), torch.ones(gate_shape, dtype=dtype))


def test_onnx_function_needs_castlike_opset():
    with pytest.raises(ValueError, match="opset >= 15"):
        moe_module.build_function(14)


# ------------------------------------------------------------------------------------------------
# ONNX
# ------------------------------------------------------------------------------------------------
def single_node_model(onnx_type, experts_dims, gate_dims, out_dims, **attributes):
    node = helper.make_node("MoECombine", ["experts", "gate_logits"], ["out"], domain="reid",
                            **attributes)
    graph = helper.make_graph(
        [node], "moe_combine",
        [helper.make_tensor_value_info("experts", onnx_type, experts_dims),
         helper.make_tensor_value_info("gate_logits", onnx_type, gate_dims)],
        [helper.make_tensor_value_info("out", onnx_type, out_dims)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18),
                                                    helper.make_opsetid("reid", 1)],
                              ir_version=ORT_IR_VERSION)
    _onnx.attach_functions(model)
    onnx.checker.check_model(model, full_check=True)
    return model


def run_ort(model, feeds):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


@pytest.mark.parametrize("dtype", (torch.float32, torch.float16))
@pytest.mark.parametrize("softmax", (1, 0))
@pytest.mark.parametrize("gate_lead", ((2, 3), (2, 1), (3,)))
def test_onnx_function_body_runs_in_ort_and_reference_evaluator(rng, dtype, softmax, gate_lead):
    experts, gate = random_inputs(rng, (2, 3), 16, 8, 3, gate_lead, dtype=dtype)
    model = single_node_model(ONNX_TYPES[dtype], ["B", 3, 16, 8], list(gate_lead) + [8, 3],
                              ["B", 3, 16, 3], softmax=softmax)
    feeds = {"experts": experts.numpy(), "gate_logits": gate.numpy()}
    expected = moe_combine(experts, gate, softmax=bool(softmax))
    exact = slow_moe_combine(experts.double(), gate.double(), bool(softmax))
    for name, got in (("onnxruntime", run_ort(model, feeds)),
                      ("ReferenceEvaluator", ReferenceEvaluator(model).run(None, feeds)[0])):
        assert got.dtype == feeds["experts"].dtype, name
        if dtype == torch.float32:
            np.testing.assert_allclose(got, expected.numpy(), rtol=1e-5, atol=1e-5, err_msg=name)
        else:  # float32 inside, one rounding: no worse than 2x torch's own float16 error
            ours = np.abs(got.astype(np.float64) - exact).max()
            theirs = np.abs(expected.double().numpy() - exact).max()
            assert ours <= 2 * theirs + 1e-12, name


def test_onnx_function_default_attribute_is_softmax(rng):
    # The reference evaluator does not resolve function attribute defaults; ONNX Runtime does.
    # Exported nodes always carry the attribute (see test_exported_model_runs_in_ort).
    experts, gate = random_inputs(rng, (4,), 8, 5, 2, dtype=torch.float32)
    model = single_node_model(TensorProto.FLOAT, [4, 8, 5], [4, 5, 2], [4, 8, 2])
    got = run_ort(model, {"experts": experts.numpy(), "gate_logits": gate.numpy()})
    np.testing.assert_allclose(got, moe_combine(experts, gate).numpy(), rtol=1e-5, atol=1e-5)


def test_onnx_function_is_safe_for_large_logits(rng):
    experts, gate = random_inputs(rng, (3,), 8, 8, 3, dtype=torch.float32)
    gate = gate * 1e4
    model = single_node_model(TensorProto.FLOAT, [3, 8, 8], [3, 8, 3], [3, 8, 3], softmax=1)
    got = run_ort(model, {"experts": experts.numpy(), "gate_logits": gate.numpy()})
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, slow_moe_combine(experts, gate), rtol=1e-4, atol=1e-4)


def test_schema_registered_and_function_attached_once():
    schema = onnx.defs.get_schema("MoECombine", 1, "reid")
    assert [p.name for p in schema.inputs] == ["experts", "gate_logits"]
    assert schema.attributes["softmax"].default_value.i == 1
    model = single_node_model(TensorProto.FLOAT, [2, 4, 3], [2, 3, 2], [2, 4, 2], softmax=1)
    _onnx.attach_functions(model)  # re-attaching replaces, never duplicates
    assert [(f.domain, f.name) for f in model.functions] == [("reid", "MoECombine")]
    assert [a.name for a in model.functions[0].attribute_proto] == ["softmax"]
    stripped = _onnx.strip_functions(onnx.ModelProto.FromString(model.SerializeToString()))
    assert not stripped.functions and stripped.graph.node[0].op_type == "MoECombine"


class TinyMixture(torch.nn.Module):
    """Experts and gate from linear maps, mixed by MoECombine: [B, T, D] -> [B, T, C * J]."""

    def __init__(self, dim=6, channels=8, num_experts=4, num_outputs=3, softmax=True):
        super().__init__()
        self.shape = (channels, num_experts, num_outputs)
        self.softmax = softmax
        self.experts = torch.nn.Linear(dim, channels * num_experts)
        self.gate = torch.nn.Linear(dim, num_experts * num_outputs)

    def forward(self, x):
        channels, num_experts, num_outputs = self.shape
        experts = self.experts(x).unflatten(-1, (channels, num_experts))
        # per-sample routing: one gate per clip, broadcast over its T tokens
        gate = self.gate(x.mean(1, keepdim=True)).unflatten(-1, (num_experts, num_outputs))
        return torch.ops.reid.moe_combine(experts, gate, self.softmax).flatten(-2)


@pytest.mark.parametrize("softmax", (True, False))
def test_exported_model_runs_in_ort(tmp_path, softmax):
    torch.manual_seed(3)
    model = TinyMixture(softmax=softmax).eval()
    example = torch.randn(2, 5, 6)
    program = torch.onnx.export(
        model, (example,), dynamo=True, custom_translation_table=_onnx.translation_table(),
        dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False)
    proto = _onnx.attach_functions(program.model_proto)
    nodes = [n for n in proto.graph.node if n.domain == "reid"]
    assert [(n.op_type, [(a.name, a.i) for a in n.attribute]) for n in nodes] == [
        ("MoECombine", [("softmax", int(softmax))])]
    path = tmp_path / "mixture.onnx"
    onnx.save(proto, path)
    onnx.checker.check_model(str(path), full_check=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 4):  # a batch size other than the exported one
        x = torch.randn(batch, 5, 6)
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        with torch.no_grad():
            np.testing.assert_allclose(got, model(x).numpy(), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# Cython wrapper: host-side validation happens before any launch, so it is checked here with
# DeviceArray descriptions (no device memory is touched).
# ------------------------------------------------------------------------------------------------
def _native_or_reason():
    try:
        from reid_sdk import _native
    except ImportError as exc:  # NativeUnavailableError: the kernels were not built here
        return None, str(exc)
    return _native, ""


_native, _native_missing = _native_or_reason()
needs_native = pytest.mark.skipif(_native is None, reason=f"reid_sdk._native: {_native_missing}")


def _arrays(experts_shape, gate_shape, out_shape, dtypes=("float32",) * 3, out_strides=None):
    def array(shape, dtype, strides=None):
        return _native.DeviceArray(0x10000, shape, strides, dtype)
    return (array(experts_shape, dtypes[0]), array(gate_shape, dtypes[1]),
            array(out_shape, dtypes[2], out_strides))


@needs_native
@pytest.mark.parametrize("shapes, extra, match", [
    (((8,), (8, 3), (3,)), {}, r"experts must be \[\.\.\., C, E\]"),
    (((4, 8), (8,), (4,)), {}, r"gate_logits must be \[\.\.\., E, J\]"),
    (((2, 4, 8), (2, 7, 3), (2, 4, 3)), {}, "E=8 .* has 7"),
    (((2, 3, 4, 8), (3, 1, 8, 3), (2, 3, 4, 3)), {}, "does not broadcast"),
    (((2, 4, 8), (2, 8, 3), (2, 4, 2)), {}, r"out must be \[2, 4, 3\]"),
    (((2, 4, 8), (2, 8, 3), (4, 3)), {}, r"out must be \[2, 4, 3\]"),
    (((4, 17), (17, 3), (4, 3)), {}, "E=17; the kernel supports 1..16"),
    (((4, 8), (8, 9), (4, 9)), {}, "J=9; the kernel supports at most 8"),
    (((4, 8), (8, 3), (4, 3)), {"dtypes": ("float32", "float16", "float32")}, "dtypes differ"),
    (((4, 8), (8, 3), (4, 3)), {"dtypes": ("int32",) * 3}, "dtype int32 is not supported"),
    (((4, 8), (8, 3), (4, 3)), {"out_strides": (0, 1)}, "overlapping"),
])
def test_cython_wrapper_validates_before_launch(shapes, extra, match):
    with pytest.raises(ValueError, match=match):
        _native.moe_combine(*_arrays(*shapes, **extra))


@needs_native
def test_cython_wrapper_merges_leading_axes_beyond_the_abi_limit():
    lead = (2,) * 10
    strides = tuple(2 ** k for k in range(13, 3, -1))
    # contiguous experts / out, gate broadcast over every leading axis: one merged axis
    assert _native._moe_lead_layout(lead, strides, (1,) * 10, (0,) * 10, strides) == [
        [1024, 16, 0, 16]]
    # size-1 axes vanish, missing gate axes broadcast
    assert _native._moe_lead_layout((3, 1, 5), (80, 80, 16), (5,), (24,), (48, 48, 12)) == [
        [3, 80, 0, 48], [5, 16, 24, 12]]
    # every other axis non-mergeable: more than 8 remain -> a clear error
    gaps = tuple(3 ** k for k in range(18, 0, -2))
    with pytest.raises(ValueError, match="leading axes remain after merging"):
        _native._moe_lead_layout((2,) * 9, gaps, (2,) * 9, gaps, gaps)


@needs_native
def test_cython_wrapper_rejects_cpu_tensors():
    with pytest.raises(ValueError, match="CPU tensor"):
        _native.moe_combine(torch.ones(4, 8), torch.ones(8, 3), torch.empty(4, 3))


def test_translation_table_covers_the_op():
    table = _onnx.translation_table()
    assert table[torch.ops.reid.moe_combine.default] is moe_module._translate
    allowed = dict((c.type_param_str, set(c.allowed_type_strs))
                   for c in onnx.defs.get_schema("MoECombine", 1, "reid").type_constraints)
    assert allowed["T"] == {"tensor(float)", "tensor(float16)", "tensor(bfloat16)"}
