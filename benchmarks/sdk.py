"""SDK benchmarks: what a user of reid_sdk gets, CPU and GPU.

    python benchmarks/sdk.py                 # CPU: preprocessing, tiny-model embedding, gallery
    python benchmarks/sdk.py --gpu           # GPU machine: Engine on .onnx through the CUDA EP,
                                             # tiny and official presets, cosine vs PyTorch
    python benchmarks/sdk.py --gpu --presets tiny --json out.json

CPU rows: preprocessing frames/s of the SDK pipeline versus a plain per-frame loop
(bench_engine), embed clips/s of the embedded default (tiny) models through ONNX Runtime,
gallery search 1 x 1M and 1k x 100k (D=2048) versus numpy brute force with peak memory
(bench_gallery). GPU rows: for each arch and preset with seeded random weights, the model is
exported to ONNX, run by reid_sdk.Engine on the CUDA EP (clips/s), and every engine batch is
compared with PyTorch on the same GPU and the same inputs (per-clip cosine, max abs error).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import bench_engine
import bench_gallery

CUDA_PROVIDERS = ["CUDAExecutionProvider", "CPUExecutionProvider"]


def torch_reference(onnx_path: str, device: int):
    """bench_engine reference factory: the seeded random-weight PyTorch model the engine was
    exported from, on ``cuda:device``, behind the engine's input contract."""
    from reid_export.onnx_export import read_spec
    from reid_export.torch_backend import TorchBackend
    from reid_export.validate import model_from_spec

    spec = read_spec(onnx_path)
    return TorchBackend(model_from_spec(spec), spec, device=f"cuda:{device}").run


def export_random(arch: str, preset: str, out_dir: Path, backbone_dtype: str | None) -> Path:
    from reid_export import models
    from reid_export.onnx_export import export_onnx

    overrides = {"backbone_dtype": backbone_dtype} if arch == "hamobe" and backbone_dtype else {}
    model = models.create_random(arch, preset=preset, seed=0, **overrides)
    path = out_dir / f"{arch}_{preset}.onnx"
    start = time.perf_counter()
    export_onnx(model, path)
    print(f"exported {path.name} in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return path


def cpu_rows(workdir: Path) -> list[dict]:
    from reid_export.demo import export_default

    paths = [str(export_default(arch, workdir)[0]) for arch in ("hamobe", "keyreid")]
    rows = bench_engine.run(["--onnx", *paths, "--providers", "CPUExecutionProvider"])
    return rows + bench_gallery.run([])


def gpu_rows(workdir: Path, presets, archs, batch_size: int, tracklets: int) -> list[dict]:
    rows = []
    for preset in presets:
        for arch in archs:
            # Official HAMoBE runs its frozen CLIP backbone in fp16, as the authors' code does.
            path = export_random(arch, preset, workdir,
                                 "float16" if preset == "official" else None)
            rows += bench_engine.run(["--onnx", str(path), "--providers", *CUDA_PROVIDERS,
                                      "--batch-size", str(batch_size), "--skip-preprocess",
                                      "--tracklets", str(tracklets),
                                      "--reference", f"{__name__}:torch_reference"])
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", action="store_true", help="CUDA EP rows instead of CPU rows")
    parser.add_argument("--presets", nargs="+", default=["tiny", "official"])
    parser.add_argument("--archs", nargs="+", default=["hamobe", "keyreid"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--tracklets", type=int, default=32)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        if args.gpu:
            rows = gpu_rows(Path(tmp), args.presets, args.archs, args.batch_size, args.tracklets)
        else:
            rows = cpu_rows(Path(tmp))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2, default=str))
    engine_rows = [r for r in rows if r.get("bench") in ("preprocess", "embed", "parity")]
    print(bench_engine.format_rows(engine_rows))
    gallery_rows = [r for r in rows if r not in engine_rows]
    if gallery_rows:
        print(bench_gallery.format_table(gallery_rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
