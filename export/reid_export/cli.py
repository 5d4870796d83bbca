"""`reid-export`: the training-side command line.

    reid-export onnx --arch hamobe --random --preset tiny --out hamobe_tiny.onnx
    reid-export onnx --arch hamobe --checkpoint best_model.pth.tar --backbone ViT-L-14.pt --out hamobe.onnx
    reid-export onnx --arch keyreid --checkpoint Marsbest.pth --unseen-camera --out keyreid.onnx
    reid-export validate hamobe.onnx --checkpoint best_model.pth.tar --backbone ViT-L-14.pt
    reid-export validate keyreid.onnx --random --frames data/query
    reid-export synth data/synth --preset demo
    reid-export train --arch keyreid --preset tiny --data data/synth --out keyreid_tiny.safetensors
    reid-export trt hamobe.onnx --out hamobe.plan --max-batch 32
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def _model_from_args(args, spec=None):
    """The PyTorch model the command works on: a checkpoint, or seeded random weights."""
    from reid_export import models

    dtype = getattr(args, "backbone_dtype", None)
    if dtype and args.arch not in (None, "hamobe"):
        raise ValueError("--backbone-dtype applies to HAMoBE's CLIP backbone only")
    overrides = {"backbone_dtype": dtype} if dtype else {}
    if args.checkpoint:
        model = models.load_checkpoint(args.checkpoint, arch=args.arch, preset=args.preset,
                                       backbone_path=args.backbone, overrides=overrides or None)
    elif spec is not None:
        from reid_export.validate import model_from_spec
        model = model_from_spec(spec)
    else:
        if args.arch is None:
            raise SystemExit("reid-export: --random needs --arch")
        model = models.create_random(args.arch, preset=args.preset or "official",
                                     seed=args.seed, **overrides)
    return model


def cmd_onnx(args) -> int:
    from reid_export.onnx_export import export_onnx

    model = _model_from_args(args)
    if args.unseen_camera:
        if model.reid_config.get("arch", args.arch) != "keyreid" and args.arch != "keyreid":
            raise SystemExit("reid-export: --unseen-camera applies to KeyRe-ID only")
        from reid_export.models.keyreid import add_unseen_camera_row
        add_unseen_camera_row(model)
    start = time.perf_counter()
    print(f"exporting {type(model).__name__} to {args.out} ...", file=sys.stderr)
    spec = export_onnx(model, args.out, opset=args.opset, seed=args.seed)
    size = sum(p.stat().st_size for p in Path(args.out).parent.glob(Path(args.out).name + "*"))
    print(f"wrote {args.out} ({size / 1e6:.1f} MB) in {time.perf_counter() - start:.1f} s: "
          f"{spec!r}")
    if args.print_spec:
        print(spec.to_json(indent=2))
    return 0


def cmd_validate(args) -> int:
    from reid_export.onnx_export import read_spec
    from reid_export.validate import validate

    spec = read_spec(args.model)
    args.arch = args.arch or spec.arch
    model = _model_from_args(args, spec=None if args.checkpoint else spec)
    expected = spec.source.get("checkpoint_sha256")
    got = getattr(model, "reid_source", {}).get("checkpoint_sha256")
    if args.checkpoint and expected and got != expected:
        print(f"FAIL: {args.model} was exported from checkpoint sha256 {expected[:16]}..., "
              f"but {args.checkpoint} has {str(got)[:16]}...: pass the checkpoint it came from",
              file=sys.stderr)
        return 1
    report = validate(args.model, model, frames_dir=args.frames, batch=args.batch,
                      seed=args.seed, limit=args.limit, providers=args.providers,
                      min_cosine=args.min_cosine, max_abs=args.max_abs,
                      progress=sys.stderr.isatty())
    print(report.summary())
    if args.json:
        Path(args.json).write_text(json.dumps(report.as_dict(), indent=2))
    return 0 if report.passed else 1


def _synth_main(argv) -> int:
    from reid_export.synth import cli as synth_cli
    return synth_cli.main(argv)


def _train_main(argv) -> int:
    from reid_export.train import main as train_main
    return train_main(argv)


def _trt_main(argv) -> int:
    from reid_export.trt_build import main as trt_main
    return trt_main(argv)


# Subcommands with parsers of their own: everything after the name is theirs.
DELEGATED = {"synth": _synth_main, "train": _train_main, "trt": _trt_main}


def _add_model_source(parser, *, random_help):
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", type=Path, help="official or reid-export checkpoint")
    src.add_argument("--random", action="store_true", help=random_help)
    parser.add_argument("--preset", choices=("official", "tiny"), default=None,
                        help="configuration (random weights: default official; checkpoint: "
                             "checked against it)")
    parser.add_argument("--backbone", type=Path, default=None,
                        help="HAMoBE: OpenAI CLIP file (ViT-L-14.pt) when the checkpoint lacks it")
    parser.add_argument("--backbone-dtype", choices=("float16", "float32"), default=None,
                        help="HAMoBE backbone precision (official: float16; float32 suits ONNX "
                             "Runtime on CPU)")
    parser.add_argument("--seed", type=int, default=0, help="seed of random weights / inputs")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reid-export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("onnx", help="export a model to ONNX with its engine spec")
    p.add_argument("--arch", choices=("hamobe", "keyreid"), required=True)
    _add_model_source(p, random_help="seeded random weights (for testing the pipeline)")
    p.add_argument("--unseen-camera", action="store_true",
                   help="KeyRe-ID: add a camera row = mean of the trained ones, used for cameras "
                        "the model never saw (not part of the official method)")
    p.add_argument("--opset", type=int, default=None, help="ai.onnx opset (default: exporter's)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--print-spec", action="store_true")
    p.set_defaults(func=cmd_onnx)

    p = sub.add_parser("validate", help="compare an exported model with PyTorch")
    p.add_argument("model", type=Path)
    p.add_argument("--arch", choices=("hamobe", "keyreid"), default=None)
    _add_model_source(p, random_help="the seeded random weights the model was exported with")
    p.add_argument("--frames", type=Path, default=None,
                   help="a folder of tracklets (docs/dataset_layout.md) instead of random clips")
    p.add_argument("--limit", type=int, default=16, help="tracklets taken from --frames")
    p.add_argument("--batch", type=int, default=4, help="random clips when --frames is absent")
    p.add_argument("--providers", nargs="+", default=None, help="ONNX Runtime providers")
    p.add_argument("--min-cosine", type=float, default=None,
                   help="PASS threshold (default by precision: fp32 0.99999, fp16 0.9995)")
    p.add_argument("--max-abs", type=float, default=None, help="optional max |diff| threshold")
    p.add_argument("--json", type=Path, default=None, help="write the report as JSON")
    p.set_defaults(func=cmd_validate)

    sub.add_parser("synth", help="generate the synthetic video ReID benchmark (synth --help)")
    sub.add_parser("train", help="train a preset on a tracklet folder (train --help)")
    sub.add_parser("trt", help="build a TensorRT engine + sidecar from an ONNX model (trt --help)")
    return parser


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv else None
    try:
        if command in DELEGATED:
            return DELEGATED[command](argv[1:])
        args = build_parser().parse_args(argv)
        return args.func(args)
    except (ValueError, FileNotFoundError, ImportError, RuntimeError) as exc:
        print(f"reid-export {command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
