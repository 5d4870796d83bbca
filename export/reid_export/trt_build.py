"""`reid-export trt`: build a TensorRT engine (``.plan``) and its ``<plan>.json`` sidecar from an
exported ONNX model.

    reid-export trt hamobe.onnx --out hamobe.plan --max-batch 32

Written to the documented TensorRT 10/11 Python API; TensorRT cannot be installed where
reid-sdk is developed, so this module has NEVER BEEN EXECUTED against TensorRT. What it does:

1. registers ``libreid_trt_plugins.so`` (our MoECombine / KeypointPatchPool plugins) with
   TensorRT's plugin registry, before parsing;
2. removes the reid ops' ONNX function bodies (``ops._onnx.strip_functions``): the ONNX parser
   expands a node's model-local function instead of asking the plugin registry, so without the
   bodies it maps ``reid::MoECombine`` / ``reid::KeypointPatchPool`` to our plugins of the same
   name and version (kernels/moe_combine/README.md, "TensorRT", has the parser references);
3. parses into a strongly typed network (TensorRT 11 has only those; the precision is the ONNX
   model's: export HAMoBE with ``--backbone-dtype float16`` for an fp16 backbone), adds one
   optimisation profile over the batch axis, builds, and writes the plan atomically;
4. writes the sidecar (engine spec + sha256 + size) that ``reid_sdk.Engine`` checks before
   deserialising.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import onnx

from reid_export.onnx_export import spec_of
from reid_export.ops import _onnx as reid_onnx
from reid_sdk._atomic import atomic_write
from reid_sdk.backends import io_contract
from reid_sdk.backends.tensorrt import (import_tensorrt, load_plugins, tensorrt_logger,
                                        write_sidecar)


def stripped_copy(proto: onnx.ModelProto, path: Path) -> Path:
    """Strip the reid function bodies from ``proto`` (in place) and save it as ``path``, which
    must lie in the model's own folder when it has external data (the data file is found
    relative to the model). Returns ``path``."""
    reid_onnx.strip_functions(proto)
    onnx.save(proto, str(path))
    return path


def profile_shapes(spec, max_batch: int, opt_batch: int | None) -> dict:
    """{input name: (min, opt, max) shapes} of the one optimisation profile (batch 1..max)."""
    if max_batch < 1:
        raise ValueError(f"--max-batch must be >= 1, got {max_batch}")
    opt = opt_batch or max(1, max_batch // 2)
    if not 1 <= opt <= max_batch:
        raise ValueError(f"--opt-batch {opt} must lie in 1..{max_batch}")
    inputs, _ = io_contract(spec)
    return {t.name: tuple((b, *t.shape[1:]) for b in (1, opt, max_batch)) for t in inputs}


def build_engine(onnx_path, out_path, *, max_batch: int = 32, opt_batch: int | None = None,
                 workspace_gib: float = 4.0) -> Path:
    """Build ``out_path`` (.plan) from ``onnx_path``; returns the plan path (sidecar beside)."""
    onnx_path, out_path = Path(onnx_path), Path(out_path)
    proto = onnx.load(str(onnx_path), load_external_data=False)
    spec = spec_of(proto, onnx_path)
    shapes = profile_shapes(spec, max_batch, opt_batch)
    trt = import_tensorrt()
    logger = tensorrt_logger(trt)
    load_plugins(trt, spec)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    stripped = stripped_copy(proto, onnx_path.parent / f".{onnx_path.stem}.stripped.onnx")
    del proto  # the parser reads the file; the weights need not stay in memory twice
    try:
        ok = parser.parse_from_file(str(stripped))
    finally:
        stripped.unlink()
    if not ok:
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT's ONNX parser rejected {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    profile = builder.create_optimization_profile()
    for name, (low, opt, high) in shapes.items():
        profile.set_shape(name, low, opt, high)
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT could not build an engine from {onnx_path} (see its log)")
    with atomic_write(out_path) as handle:
        handle.write(memoryview(serialized))
    write_sidecar(out_path, spec)
    return out_path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="reid-export trt", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="ONNX model from `reid-export onnx`")
    parser.add_argument("--out", type=Path, required=True, help="engine file (.plan / .engine)")
    parser.add_argument("--max-batch", type=int, default=32, help="clips per run, at most")
    parser.add_argument("--opt-batch", type=int, default=None, help="batch TensorRT tunes for")
    parser.add_argument("--workspace-gib", type=float, default=4.0)
    args = parser.parse_args(argv)
    if args.out.suffix not in (".plan", ".engine"):
        parser.error(f"--out {args.out} must end in .plan or .engine")
    path = build_engine(args.model, args.out, max_batch=args.max_batch,
                        opt_batch=args.opt_batch, workspace_gib=args.workspace_gib)
    print(f"wrote {path} and {path}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
