"""How the `reid` custom ops travel through ONNX.

Each op registers one :class:`OnnxOp`: its ONNX schema (so onnxscript and the checker know the
node), the translation the torch exporter uses for ``torch.ops.reid.<op>`` (it emits a bare
``reid::<Op>`` node), and a builder of the model-local FunctionProto whose body is written in
standard ONNX ops. :func:`attach_functions` adds those bodies to an exported model, so ONNX
Runtime (or any runtime) executes the model as it is, while TensorRT maps the node to our plugin
of the same name.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import onnx

REID_DOMAIN = "reid"
REID_OPSET_VERSION = 1


@dataclasses.dataclass(frozen=True)
class OnnxOp:
    """One custom op's ONNX side.

    name: ONNX op_type in domain ``reid`` (also the TensorRT plugin name).
    torch_op: the overload the exporter sees, e.g. ``torch.ops.reid.moe_combine.default``.
    translate: onnxscript translation for ``torch.onnx.export(custom_translation_table=...)``.
    schema: the ``onnx.defs.OpSchema`` registered for ``reid::<name>`` version 1.
    build_function: ``f(ai_onnx_opset: int) -> onnx.FunctionProto`` with the standard-op body.
    """

    name: str
    torch_op: Callable
    translate: Callable
    schema: "onnx.defs.OpSchema"
    build_function: Callable[[int], onnx.FunctionProto]


_REGISTRY: dict[str, OnnxOp] = {}


def register_onnx_op(op: OnnxOp) -> OnnxOp:
    """Register ``op`` (idempotent: a module imported twice registers the schema once)."""
    if op.name in _REGISTRY:
        return _REGISTRY[op.name]
    if not onnx.defs.has(op.name, REID_DOMAIN):
        onnx.defs.register_schema(op.schema)
    _REGISTRY[op.name] = op
    return op


def registered_ops() -> dict[str, OnnxOp]:
    _import_all_ops()
    return dict(_REGISTRY)


def translation_table() -> dict:
    """``custom_translation_table`` for ``torch.onnx.export`` covering every reid op."""
    return {op.torch_op: op.translate for op in registered_ops().values()}


def ai_onnx_opset(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    raise ValueError("model imports no ai.onnx opset")


def attach_functions(model: onnx.ModelProto) -> onnx.ModelProto:
    """Add the FunctionProto of every reid op used in ``model`` (in place; returns ``model``).

    Existing bodies for the same op are replaced, so re-attaching is safe. The model's
    ``reid`` opset import is added if the exporter did not write it.
    """
    ops = registered_ops()
    used = {node.op_type for node in _all_nodes(model.graph) if node.domain == REID_DOMAIN}
    unknown = used - set(ops)
    if unknown:
        raise ValueError(f"model uses reid ops with no registered ONNX function: {sorted(unknown)}")
    opset = ai_onnx_opset(model)
    keep = [f for f in model.functions if not (f.domain == REID_DOMAIN and f.name in used)]
    del model.functions[:]
    model.functions.extend(keep)
    for name in sorted(used):
        model.functions.append(ops[name].build_function(opset))
    if used and not any(e.domain == REID_DOMAIN for e in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid(REID_DOMAIN, REID_OPSET_VERSION))
    return model


def strip_functions(model: onnx.ModelProto) -> onnx.ModelProto:
    """Remove the reid function bodies (in place), so a parser that would inline them maps the
    nodes to the TensorRT plugins instead."""
    keep = [f for f in model.functions if f.domain != REID_DOMAIN]
    del model.functions[:]
    model.functions.extend(keep)
    return model


def _all_nodes(graph: onnx.GraphProto):
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _all_nodes(g)


def _import_all_ops():
    # Importing the op modules registers them.
    from reid_export.ops import keypoint_patch_pool, moe_combine  # noqa: F401
