"""Export HAMoBE / KeyRe-ID to ONNX with the engine spec in the model.

The exported graph takes what the SDK hands over and nothing else: ``frames`` uint8
[B, T, H, W, 3] RGB (cast, layout change and mean/std happen inside the graph, so no caller can
normalise twice or forget to), plus for KeyRe-ID ``keypoints`` float32 [B, T, 17, 3], ``crop_hw``
int32 [B, T, 2], ``frame_valid`` bool [B, T] and ``camera`` int64 [B]. Output ``embedding``
float32 [B, D], one row per clip. B is dynamic. The custom ops appear as ``reid::MoECombine`` /
``reid::KeypointPatchPool`` nodes with model-local function bodies in standard ops, so ONNX
Runtime runs the file as it is and TensorRT maps the nodes to our plugins.

    from reid_export import models, onnx_export
    model = models.create("hamobe", preset="tiny")
    onnx_export.export_onnx(model, "hamobe_tiny.onnx")
"""
from __future__ import annotations

import datetime
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnx_ir
import onnxscript.optimizer
import torch

import reid_export
from reid_export.contracts import ExportContract, contract_for
from reid_export.ops import _onnx as reid_onnx
from reid_sdk.spec import METADATA_KEY, SPEC_VERSION, EngineSpec

TWO_GIB = 2**31
FOLD_LIMIT = 2**40  # elements: fold every constant computation, whatever its size
INPUT_FRAMES = "frames"
OUTPUT_EMBEDDING = "embedding"


class EngineModel(torch.nn.Module):
    """``model`` behind the engine input contract: uint8 NTHWC frames, normalised in-graph.

    forward(frames uint8 [B, T, H, W, 3], *extra) -> model(x [B, T, 3, H, W] float32, *extra).
    """

    def __init__(self, model: torch.nn.Module, mean, std):
        super().__init__()
        self.model = model
        std = torch.tensor(std, dtype=torch.float32)
        mean = torch.tensor(mean, dtype=torch.float32)
        # (x / 255 - mean) / std as one multiply-add.
        self.register_buffer("scale", (1.0 / (255.0 * std)).view(1, 1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", (-mean / std).view(1, 1, 3, 1, 1), persistent=False)

    def forward(self, frames, *extra):
        x = frames.permute(0, 1, 4, 2, 3).to(torch.float32) * self.scale + self.shift
        return self.model(x, *extra)


def torch_inputs(arrays) -> tuple:
    """numpy engine inputs -> torch tensors (bool stays bool)."""
    return tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in arrays)


def build_spec(model: torch.nn.Module, contract: ExportContract, *, opset: int,
               source: dict | None = None) -> EngineSpec:
    """The complete engine spec (ARCHITECTURE.md 4.1) for ``model`` exported at ``opset``."""
    src = {"exporter": f"reid-export {reid_export.__version__}", "torch": torch.__version__,
           "onnx": onnx.__version__,
           "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    src.update(getattr(model, "reid_source", None) or {})
    src.update(source or {})
    frames = contract.inputs[0]
    data = {
        "spec_version": SPEC_VERSION,
        **contract.spec_fields,
        "input": {**contract.spec_fields["input"], "name": frames.name, "layout": "NTHWC",
                  "dtype": "uint8"},
        "normalize": {"mean": list(contract.mean), "std": list(contract.std), "scale": 255.0,
                      "in_graph": True},
        "output": {"name": OUTPUT_EMBEDDING, "dtype": "float32"},
        "opset": opset,
        "custom_ops": {f"{reid_onnx.REID_DOMAIN}::{op}": reid_onnx.REID_OPSET_VERSION
                       for op in contract.custom_ops},
        "source": src,
    }
    return EngineSpec(data)


def export_onnx(model: torch.nn.Module, out_path, *, opset: int | None = None,
                example_batch: int = 2, source: dict | None = None, seed: int = 0,
                verbose: bool = False) -> EngineSpec:
    """Export ``model`` to ``out_path`` (``.onnx``; weights over 2 GiB go to ``<out>.data``).

    Returns the engine spec written into the model. The file is replaced atomically: a failed
    export never leaves a half-written model behind.
    """
    out_path = Path(out_path)
    if out_path.suffix != ".onnx":
        raise ValueError(f"output {out_path} must end in .onnx")
    contract = contract_for(model)
    model = model.eval()
    wrapper = EngineModel(model, contract.mean, contract.std).eval()
    rng = np.random.default_rng(seed)
    example = torch_inputs(contract.example_inputs(example_batch, rng))
    batch = torch.export.Dim("batch", min=1, max=4096)
    # forward(frames, *extra): torch.export sees (frames, (extra...)).
    extras = tuple({0: batch} for _ in contract.inputs[1:])
    dynamic_shapes = ({0: batch}, extras) if extras else ({0: batch},)

    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_path.parent, prefix=".export-") as tmp:
        tmp_model = Path(tmp) / out_path.name
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's deprecation chatter
            program = torch.onnx.export(
                wrapper, example, dynamo=True, opset_version=opset,
                input_names=[i.name for i in contract.inputs], output_names=[OUTPUT_EMBEDDING],
                dynamic_shapes=dynamic_shapes,
                custom_translation_table=reid_onnx.translation_table(),
                optimize=True, verbose=verbose, report=False)
        # The exporter's optimizer leaves computations on large initializers (e.g. a reshaped
        # patch-embedding weight) unfolded; fold those too, so engines start from constants.
        onnxscript.optimizer.fold_constants(program.model, input_size_limit=FOLD_LIMIT,
                                            output_size_limit=FOLD_LIMIT)
        onnx_ir.passes.common.RemoveUnusedNodesPass()(program.model)
        weights_bytes = sum(int(np.prod(t.shape)) * t.element_size()
                            for t in list(model.parameters()) + list(model.buffers()))
        program.save(str(tmp_model), external_data=weights_bytes >= TWO_GIB)
        proto = onnx.load(str(tmp_model), load_external_data=False)
        reid_onnx.attach_functions(proto)
        used = {n.op_type for n in proto.graph.node if n.domain == reid_onnx.REID_DOMAIN}
        missing = set(contract.custom_ops) - used
        if missing:
            raise RuntimeError(f"exported graph lacks the custom nodes {sorted(missing)}: the "
                               "model must call torch.ops.reid.* for them")
        spec = build_spec(model, contract, opset=reid_onnx.ai_onnx_opset(proto), source=source)
        set_spec(proto, spec)
        proto.producer_name = "reid-export"
        proto.producer_version = reid_export.__version__
        onnx.save(proto, str(tmp_model))
        # Path-based, so models with external data are checked too; full_check includes strict
        # shape and type inference (function bodies as well).
        onnx.checker.check_model(str(tmp_model), full_check=True)
        for produced in Path(tmp).iterdir():
            if produced.name != out_path.name:
                os.replace(produced, out_path.parent / produced.name)  # external data first
        os.replace(tmp_model, out_path)
    return spec


def set_spec(proto: onnx.ModelProto, spec: EngineSpec) -> None:
    """Write ``spec`` into ``proto.metadata_props`` under ``reid_sdk.spec`` (replacing)."""
    keep = [p for p in proto.metadata_props if p.key != METADATA_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, spec.to_json()


def spec_of(proto: onnx.ModelProto, name="the model") -> EngineSpec:
    """The engine spec stored in ``proto.metadata_props`` (``name`` labels the model in the
    error raised when there is none)."""
    for prop in proto.metadata_props:
        if prop.key == METADATA_KEY:
            return EngineSpec.from_json(prop.value)
    raise ValueError(f"{name} has no {METADATA_KEY} metadata: export it with `reid-export onnx`")


def read_spec(path) -> EngineSpec:
    """The engine spec stored in an ONNX file (without loading its external weights)."""
    return spec_of(onnx.load(str(path), load_external_data=False), path)


__all__ = ["EngineModel", "build_spec", "export_onnx", "read_spec", "set_spec", "spec_of",
           "torch_inputs"]
