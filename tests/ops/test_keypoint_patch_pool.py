"""KeypointPatchPool on the CPU: reference vs the literal slow reference, torch op, ONNX function
body (ONNX Runtime and onnx.reference), the op in an exported model, errors, Cython validation."""
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
import kpp_cases as cases  # noqa: E402
from kpp_slow_reference import slow_keypoint_patch_pool  # noqa: E402

from reid_export.ops import _onnx  # noqa: E402
from reid_export.ops.keypoint_patch_pool import (  # noqa: E402
    KEYREID_PARTS, MODES, build_function, decode_parts, encode_parts, keypoint_patch_pool,
    keypoint_patch_pool_op)

KPP_MODULE = sys.modules["reid_export.ops.keypoint_patch_pool"]
# Geometry variants: (out_hw, patch, parts, joints).
ODD_GEOMETRIES = [
    ((12, 20), 4, ((3, 3, 5), (5, 0), (19,), (2, 7, 11, 13, 16)), 20),  # repeat + shared joint
    ((7, 3), 1, ((0,), (1, 2, 3, 4, 5, 6, 7, 8)), 17),
    ((9, 9), 3, KEYREID_PARTS, 17),
    ((32, 16), 16, ((16, 15, 14, 13),), 17),
]


def _reference(keypoints, crop_hw, frame_valid, dtype=torch.float64, **attributes):
    return keypoint_patch_pool(*cases.as_tensors(keypoints, crop_hw, frame_valid, dtype),
                               **attributes)


# ------------------------------------------------------------------------------------------------
# Reference vs the literal slow reference
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_reference_matches_slow_reference(mode, rng):
    for _ in range(2):
        keypoints, crop_hw, valid = cases.random_clip_batch(rng, 3, 4)
        slow = slow_keypoint_patch_pool(keypoints, crop_hw, valid, KEYREID_PARTS, mode=mode)
        for dtype in (torch.float64, torch.float32):
            ours = _reference(keypoints, crop_hw, valid, dtype, mode=mode)
            assert ours.dtype == dtype and ours.shape == (3, 6, 128)
            np.testing.assert_allclose(ours.double().numpy(), slow, rtol=0, atol=1e-5)
    if mode != "constant":  # the draws exercise the chain, not only the -1 floor
        assert (slow > -0.99).any() and len(np.unique(slow.round(3))) > 20


@pytest.mark.parametrize("mode", ("paper", "max"))
@pytest.mark.parametrize("out_hw, patch, parts, joints", ODD_GEOMETRIES)
def test_reference_matches_slow_reference_odd_geometry(mode, out_hw, patch, parts, joints, rng):
    keypoints, crop_hw, valid = cases.random_clip_batch(rng, 2, 3, joints=joints, kind="small")
    attributes = dict(out_hw=out_hw, patch=patch, parts=parts, mode=mode)
    slow = slow_keypoint_patch_pool(keypoints, crop_hw, valid, **attributes)
    ours = _reference(keypoints, crop_hw, valid, **attributes)
    assert ours.shape == (2, len(parts), (out_hw[0] // patch) * (out_hw[1] // patch))
    np.testing.assert_allclose(ours.numpy(), slow, rtol=0, atol=1e-5)


def test_paper_and_max_differ_where_windows_overlap(rng):
    keypoints, crop_hw, valid = cases.random_clip_batch(rng, 2, 4, kind="small",
                                                        invalid_fraction=0)
    paper = _reference(keypoints, crop_hw, valid, mode="paper")
    peak = _reference(keypoints, crop_hw, valid, mode="max")
    assert (paper - peak).abs().max() > 1e-2


@pytest.mark.parametrize("mode", ("paper", "max"))
def test_part_maximum_reaches_the_output_through_eps(mode, monkeypatch):
    """The crop-resolution part maximum enters only through the min-max eps: this clip makes
    that term visible (a wrong maximum, e.g. the value at the joint centres, would fail)."""
    keypoints, crop_hw, valid, attributes = cases.eps_sensitive_clip(mode)
    slow = slow_keypoint_patch_pool(keypoints, crop_hw, valid, **attributes)
    for dtype in (torch.float64, torch.float32):
        ours = _reference(keypoints, crop_hw, valid, dtype, **attributes)
        np.testing.assert_allclose(ours.double().numpy(), slow, rtol=0, atol=1e-5)
    monkeypatch.setattr(KPP_MODULE, "MIN_MAX_EPS", 0.0)
    without_eps = _reference(keypoints, crop_hw, valid, **attributes).numpy()
    assert np.nanmax(np.abs(without_eps[0, :2] - slow[0, :2])) > 1e-3


@pytest.mark.parametrize("mode", ("paper", "max"))
def test_non_finite_keypoints_are_skipped(mode, rng):
    keypoints, crop_hw, valid = cases.random_clip_batch(rng, 2, 3, kind="small")
    poison = rng.random(keypoints.shape) < 0.1
    keypoints[poison] = rng.choice([np.nan, np.inf, -np.inf], size=int(poison.sum()))
    slow = slow_keypoint_patch_pool(keypoints, crop_hw, valid, KEYREID_PARTS, mode=mode)
    ours = _reference(keypoints, crop_hw, valid, mode=mode)
    assert np.isfinite(slow).all()
    np.testing.assert_allclose(ours.numpy(), slow, rtol=0, atol=1e-5)


def test_invalid_frames_count_as_zero_in_the_frame_mean(rng):
    keypoints, crop_hw, valid = cases.random_clip_batch(rng, 1, 4, kind="small",
                                                        invalid_fraction=0)
    full = _reference(keypoints, crop_hw, valid)
    valid[0, 1:3] = False
    crop_hw[0, 1] = (0, -3)  # padding frames may carry anything
    partial = _reference(keypoints, crop_hw, valid)
    frame = [_reference(keypoints[:, t:t + 1], crop_hw[:, t:t + 1], np.ones((1, 1), bool))
             for t in (0, 3)]
    torch.testing.assert_close(partial, (frame[0] + frame[1]) / 4, rtol=0, atol=1e-12)
    assert (partial - full).abs().max() > 1e-3


def test_constant_mode_is_minus_one_per_valid_frame(rng):
    keypoints, crop_hw, valid = cases.random_clip_batch(rng, 4, 5)
    ours = _reference(keypoints, crop_hw, valid, mode="constant")
    expected = -valid.sum(axis=1) / 5.0
    np.testing.assert_array_equal(ours.numpy(), np.broadcast_to(expected[:, None, None],
                                                                 ours.shape))


@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16))
def test_reference_in_half_precision(dtype, rng):
    keypoints, crop_hw, valid = cases.random_clip_batch(rng, 2, 3, kind="small")
    rounded = torch.tensor(keypoints).to(dtype)
    exact = _reference(rounded.double().numpy(), crop_hw, valid)
    half = keypoint_patch_pool(rounded, *cases.as_tensors(keypoints, crop_hw, valid)[1:])
    assert half.dtype == dtype
    tolerance = 2e-2 if dtype == torch.bfloat16 else 4e-3
    torch.testing.assert_close(half.double(), exact, rtol=0, atol=tolerance)


def test_batch_of_zero_clips():
    out = keypoint_patch_pool(torch.zeros(0, 4, 17, 3), torch.zeros(0, 4, 2, dtype=torch.int32),
                              torch.zeros(0, 4, dtype=torch.bool))
    assert out.shape == (0, 6, 128)


# ------------------------------------------------------------------------------------------------
# Attributes and errors
# ------------------------------------------------------------------------------------------------
def test_parts_encoding_round_trip():
    flat = encode_parts(KEYREID_PARTS)
    assert flat == [0, 1, 2, 3, 4, -1, 5, 6, 11, 12, -1, 7, 9, -1, 8, 10, -1, 13, 15, -1, 14, 16]
    assert decode_parts(flat) == KEYREID_PARTS
    assert decode_parts(encode_parts(((3, 3), (0,)))) == ((3, 3), (0,))


@pytest.mark.parametrize("flat, message", [
    ([0, -1, -1, 2], "part 1 has no joints"),
    ([0, 1, -1], "part 1 has no joints"),
    ([0, -2], "negative joint index"),
    ([0, 1.5], "must be an int"),
    ([-1] * 16 + [0], "has no joints"),
    (list(range(1, 66)), "at most 64"),
    ([0] + [-1, 1] * 16, r"17 parts; 1\.\.16"),
])
def test_bad_parts_are_refused(flat, message):
    with pytest.raises((ValueError, TypeError), match=message):
        decode_parts(flat)


def _good_inputs():
    return (torch.rand(2, 3, 17, 3) * 40, torch.full((2, 3, 2), 50, dtype=torch.int32),
            torch.ones(2, 3, dtype=torch.bool))


@pytest.mark.parametrize("change, message", [
    (lambda k, h, v: (k[..., :2], h, v), r"keypoints must be a \[B, T, J, 3\]"),
    (lambda k, h, v: (k[0], h, v), r"keypoints must be a \[B, T, J, 3\]"),
    (lambda k, h, v: (k.to(torch.int32), h, v), "keypoints dtype"),
    (lambda k, h, v: (k[:, :, :12], h, v), "J=12 joints but the parts use joint index 16"),
    (lambda k, h, v: (k, h.to(torch.int64), v), "crop_hw must be int32"),
    (lambda k, h, v: (k, h[:, :2], v), r"crop_hw must be \[B, T, 2\]"),
    (lambda k, h, v: (k, h, v.to(torch.uint8)), "frame_valid must be bool"),
    (lambda k, h, v: (k, h, v[:1]), r"frame_valid must be \[B, T\]"),
    (lambda k, h, v: (k[:, :0], h[:, :0], v[:, :0]), "T = 0 frames"),
    (lambda k, h, v: (k, h.index_fill(1, torch.tensor([1]), 0), v),
     r"valid frame \(b, t\) = \(0, 1\) has crop size \[0, 0\]"),
    (lambda k, h, v: (k, h.index_fill(2, torch.tensor([1]), 40000), v), r"\[1, 32768\]"),
    (lambda k, h, v: (k.requires_grad_(), h, v), "require grad"),
])
def test_bad_inputs_are_refused(change, message):
    with pytest.raises(ValueError, match=message):
        keypoint_patch_pool(*change(*_good_inputs()))


@pytest.mark.parametrize("attributes, message", [
    (dict(out_hw=(250, 128)), "not divisible by patch=16"),
    (dict(out_hw=(256,)), r"out_hw must be \(height, width\)"),
    (dict(patch=0), "patch must be >= 1"),
    (dict(mode="head"), "unknown mode 'head'"),
    (dict(vis_thresh=float("nan")), "vis_thresh must be a finite number"),
    (dict(parts=()), "0 parts"),
    (dict(out_hw=(65536, 16)), r"\[1, 32768\]"),
])
def test_bad_attributes_are_refused(attributes, message):
    with pytest.raises(ValueError, match=message):
        keypoint_patch_pool(*_good_inputs(), **attributes)


def test_invalid_frames_may_carry_any_crop_size():
    keypoints, crop_hw, valid = _good_inputs()
    valid[1, 2] = False
    crop_hw[1, 2] = torch.tensor([-5, 1 << 30])
    assert torch.isfinite(keypoint_patch_pool(keypoints, crop_hw, valid)).all()


# ------------------------------------------------------------------------------------------------
# torch custom op
# ------------------------------------------------------------------------------------------------
def _op_args(rng, mode="paper", out_hw=(32, 16), patch=4):
    keypoints, crop_hw, valid = cases.random_clip_batch(rng, 2, 3, kind="small")
    return (*cases.as_tensors(keypoints, crop_hw, valid, torch.float32),
            encode_parts(KEYREID_PARTS), list(out_hw), patch, 0.1, mode)


@pytest.mark.parametrize("mode", MODES)
def test_torch_op_runs_the_reference_on_cpu(mode, rng):
    args = _op_args(rng, mode)
    ours = torch.ops.reid.keypoint_patch_pool(*args)
    expected = keypoint_patch_pool(*args[:3], parts=KEYREID_PARTS, out_hw=(32, 16), patch=4,
                                   mode=mode)
    torch.testing.assert_close(ours, expected, rtol=0, atol=0)
    wrapper = keypoint_patch_pool_op(*args[:3], out_hw=(32, 16), patch=4, mode=mode)
    torch.testing.assert_close(wrapper, expected, rtol=0, atol=0)


def test_torch_op_passes_opcheck(rng):
    results = torch.library.opcheck(torch.ops.reid.keypoint_patch_pool.default, _op_args(rng))
    assert all(v == "SUCCESS" for v in results.values()), results


def test_torch_op_compiles_with_fullgraph(rng):
    args = _op_args(rng)

    def model(keypoints, crop_hw, valid):
        return keypoint_patch_pool_op(keypoints, crop_hw, valid, out_hw=(32, 16), patch=4) * 2

    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(*args[:3]), model(*args[:3]), rtol=0, atol=0)


def test_torch_op_inside_a_model_in_training(rng):
    args = _op_args(rng)
    head = torch.nn.Linear(32, 3)
    head.train()
    weights = keypoint_patch_pool_op(*args[:3], out_hw=(32, 16), patch=4)
    assert not weights.requires_grad
    head(weights).sum().backward()
    assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="keypoints require grad.*detach"):
        keypoint_patch_pool_op(args[0].clone().requires_grad_(), *args[1:3])


# ------------------------------------------------------------------------------------------------
# ONNX
# ------------------------------------------------------------------------------------------------
def _single_node_model(opset, dtype=TensorProto.FLOAT, joints=17, **attributes):
    parts = attributes.get("parts", KEYREID_PARTS)
    full = dict(parts=encode_parts(parts), out_hw=list(attributes.get("out_hw", (256, 128))),
                patch=attributes.get("patch", 16), vis_thresh=attributes.get("vis_thresh", 0.1),
                mode=attributes.get("mode", "paper"))
    node = helper.make_node("KeypointPatchPool", ["keypoints", "crop_hw", "frame_valid"],
                            ["weights"], domain="reid", **full)
    graph = helper.make_graph(
        [node], "kpp",
        [helper.make_tensor_value_info("keypoints", dtype, ["B", "T", joints, 3]),
         helper.make_tensor_value_info("crop_hw", TensorProto.INT32, ["B", "T", 2]),
         helper.make_tensor_value_info("frame_valid", TensorProto.BOOL, ["B", "T"])],
        [helper.make_tensor_value_info("weights", dtype, ["B", "P", "K"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset),
                                                    helper.make_opsetid("reid", 1)],
                              ir_version=9)
    _onnx.attach_functions(model)
    onnx.checker.check_model(model, full_check=True)
    return model


def _run_onnx(model, feeds, evaluator):
    if evaluator == "onnxruntime":
        import onnxruntime as ort
        session = ort.InferenceSession(model.SerializeToString(),
                                       providers=["CPUExecutionProvider"])
        return session.run(None, feeds)[0]
    from onnx.reference import ReferenceEvaluator
    return ReferenceEvaluator(model).run(None, feeds)[0]


@pytest.mark.parametrize("evaluator", ("onnxruntime", "reference"))
@pytest.mark.parametrize("opset", (17, 20))
@pytest.mark.parametrize("mode", MODES)
def test_onnx_function_matches_reference(mode, opset, evaluator, rng):
    keypoints, crop_hw, valid = cases.random_clip_batch(rng, 2, 3, kind="small")
    keypoints = keypoints.astype(np.float32)
    feeds = {"keypoints": keypoints, "crop_hw": crop_hw, "frame_valid": valid}
    got = _run_onnx(_single_node_model(opset, mode=mode), feeds, evaluator)
    expected = _reference(keypoints, crop_hw, valid, mode=mode).numpy()
    assert got.dtype == np.float32 and got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("evaluator", ("onnxruntime", "reference"))
@pytest.mark.parametrize("out_hw, patch, parts, joints", ODD_GEOMETRIES[:2])
def test_onnx_function_honours_attributes(out_hw, patch, parts, joints, evaluator, rng):
    keypoints, crop_hw, valid = cases.random_clip_batch(rng, 2, 2, joints=joints, kind="small")
    keypoints = keypoints.astype(np.float32)
    attributes = dict(out_hw=out_hw, patch=patch, parts=parts, mode="max", vis_thresh=0.3)
    model = _single_node_model(18, joints=joints, **attributes)
    got = _run_onnx(model, {"keypoints": keypoints, "crop_hw": crop_hw, "frame_valid": valid},
                    evaluator)
    np.testing.assert_allclose(got, _reference(keypoints, crop_hw, valid, **attributes).numpy(),
                               rtol=0, atol=1e-5)


def test_onnx_function_part_maximum_and_bad_frames():
    keypoints, crop_hw, valid, attributes = cases.eps_sensitive_clip("paper")
    keypoints = np.concatenate([keypoints, keypoints], axis=1).astype(np.float32)
    crop_hw = np.concatenate([crop_hw, np.array([[[0, 64]]], np.int32)], axis=1)
    valid = np.ones((1, 2), bool)
    model = _single_node_model(20, **attributes)
    got = _run_onnx(model, {"keypoints": keypoints, "crop_hw": crop_hw, "frame_valid": valid},
                    "onnxruntime")
    assert np.isnan(got).all()  # a valid frame with a zero-height crop poisons its clip
    valid[0, 1] = False
    got = _run_onnx(model, {"keypoints": keypoints, "crop_hw": crop_hw, "frame_valid": valid},
                    "onnxruntime")
    expected = _reference(keypoints, crop_hw, valid, **attributes).numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


def test_onnx_function_in_half_precision_and_empty_batch(rng):
    import onnxruntime as ort
    keypoints, crop_hw, valid = cases.random_clip_batch(rng, 2, 3, kind="small")
    keypoints = keypoints.astype(np.float16)
    model = _single_node_model(18, dtype=TensorProto.FLOAT16)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {"keypoints": keypoints, "crop_hw": crop_hw, "frame_valid": valid})[0]
    assert got.dtype == np.float16
    expected = _reference(keypoints.astype(np.float64), crop_hw, valid).numpy()
    np.testing.assert_allclose(got.astype(np.float64), expected, rtol=0, atol=1e-3)
    empty = session.run(None, {"keypoints": keypoints[:0], "crop_hw": crop_hw[:0],
                               "frame_valid": valid[:0]})[0]
    assert empty.shape == (0, 6, 128)


def test_onnx_shape_inference_gives_parts_and_patches():
    model = _single_node_model(18, parts=((0, 1), (5,), (7, 9)), out_hw=(64, 32), patch=8)
    model.graph.output[0].type.tensor_type.ClearField("shape")
    inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    dims = inferred.graph.output[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["B", 3, 32]


def test_onnx_function_needs_opset_17():
    with pytest.raises(ValueError, match="opset >= 17"):
        build_function(16)


class _PartWeightedHead(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(32, 5)

    def forward(self, keypoints, crop_hw, frame_valid):
        weights = keypoint_patch_pool_op(keypoints, crop_hw, frame_valid, out_hw=(32, 16),
                                         patch=4, mode="max")
        return self.proj(weights).mean(dim=1)


def test_op_inside_an_exported_model_with_dynamic_batch(rng):
    import onnxruntime as ort
    model = _PartWeightedHead().eval()
    example = _op_args(rng)[:3]
    batch = torch.export.Dim("batch", min=1)
    program = torch.onnx.export(model, example, dynamo=True,
                                custom_translation_table=_onnx.translation_table(),
                                dynamic_shapes=({0: batch}, {0: batch}, {0: batch}))
    proto = _onnx.attach_functions(program.model_proto)
    onnx.checker.check_model(proto, full_check=True)
    nodes = [n for n in proto.graph.node if n.domain == "reid"]
    assert [n.op_type for n in nodes] == ["KeypointPatchPool"]
    attributes = {a.name: helper.get_attribute_value(a) for a in nodes[0].attribute}
    assert attributes["mode"] == b"max" and list(attributes["out_hw"]) == [32, 16]
    assert list(attributes["parts"]) == encode_parts(KEYREID_PARTS)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    for batch_size in (1, 5):
        keypoints, crop_hw, valid = cases.random_clip_batch(rng, batch_size, 3, kind="small")
        inputs = cases.as_tensors(keypoints, crop_hw, valid, torch.float32)
        feeds = {i.name: t.numpy() for i, t in zip(session.get_inputs(), inputs, strict=True)}
        with torch.no_grad():
            expected = model(*inputs).numpy()
        np.testing.assert_allclose(session.run(None, feeds)[0], expected, rtol=0, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# Cython wrapper: validation happens before any launch (no GPU needed)
# ------------------------------------------------------------------------------------------------
def _descriptions(native, dtype="float32", batch=2, frames=3, joints=17, out_dtype=None,
                  patches=128, parts=6):
    array = native.DeviceArray
    return (array(0x1000, (batch, frames, joints, 3), dtype=dtype),
            array(0x2000, (batch, frames, 2), dtype="int32"),
            array(0x3000, (batch, frames), dtype="bool"),
            array(0x4000, (batch, parts, patches), dtype=out_dtype or dtype))


@pytest.mark.parametrize("change, message", [
    (dict(dtype="int32"), "keypoints dtype int32"),
    (dict(out_dtype="float16"), "out dtype float16 differs from keypoints dtype float32"),
    (dict(patches=127), r"out must be \[2, 6, 128\]"),
    (dict(joints=40), "at most 32 joints"),
    (dict(joints=12), "joint index 16"),
    (dict(frames=0), "T = 0 frames"),
])
def test_cython_wrapper_validates_before_launch(change, message):
    from reid_sdk import _native as native
    with pytest.raises(ValueError, match=message):
        native.keypoint_patch_pool(*_descriptions(native, **change))


@pytest.mark.parametrize("attributes, message", [
    (dict(mode="head"), "unknown mode"),
    (dict(out_hw=(100, 128)), "not divisible"),
    (dict(parts=((0, 1), ())), "part 1 has no joints"),
    (dict(out_hw=(2048, 512)), "at most 2048 patches"),
])
def test_cython_wrapper_validates_attributes(attributes, message):
    from reid_sdk import _native as native
    with pytest.raises(ValueError, match=message):
        native.keypoint_patch_pool(*_descriptions(native), **attributes)


def test_cython_wrapper_validates_layout():
    from reid_sdk import _native as native
    keypoints, crop_hw, valid, out = _descriptions(native)
    crop_hw.dtype = "int64"
    with pytest.raises(ValueError, match="crop_hw must be int32"):
        native.keypoint_patch_pool(keypoints, crop_hw, valid, out)
    bad_valid = native.DeviceArray(0x3000, (2, 3), dtype="float32")
    with pytest.raises(ValueError, match="frame_valid must be bool or uint8"):
        native.keypoint_patch_pool(keypoints, native.DeviceArray(0x2000, (2, 3, 2), dtype="int32"),
                                   bad_valid, out)
    overlapping = native.DeviceArray(0x4000, (2, 6, 128), (0, 0, 1), dtype="float32")
    with pytest.raises(ValueError, match="out has overlapping"):
        native.keypoint_patch_pool(keypoints, native.DeviceArray(0x2000, (2, 3, 2), dtype="int32"),
                                   valid, overlapping)
