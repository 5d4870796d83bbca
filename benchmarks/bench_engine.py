"""reid_sdk.Engine throughput: preprocessing, embedding, and parity with a reference.

    python benchmarks/bench_engine.py                               # CPU: preprocessing + fixtures
    python benchmarks/bench_engine.py --onnx hamobe_tiny.onnx keyreid_tiny.onnx
    python benchmarks/bench_engine.py --onnx hamobe.onnx --providers CUDAExecutionProvider \\
        CPUExecutionProvider --batch-size 32 --skip-preprocess       # GPU machine, CUDA EP
    python benchmarks/bench_engine.py --onnx m.onnx --reference my_module:make_reference

Rows printed (and returned by ``run``):

* ``preprocess``: frames/s of the SDK's pipeline (Pillow in a thread pool, as ``Engine.embed``
  runs it) versus the same per-frame Pillow preprocessing in a plain single-threaded loop, on
  random detector-sized crops, for each resize policy; the two outputs are asserted identical.
* ``embed``: clips/s and frames/s of ``Engine.embed`` on each ``--onnx`` model (default: the
  hand-built fixture engines of tests/sdk/engine_fixtures.py, which measure the SDK's own
  overhead since their graphs are trivial), one warm-up call first, best of ``--repeats``.
* ``parity``: per-clip cosine (min, mean) and max abs error of the engine against a reference
  callable on the very same engine inputs (see :func:`parity`). ``--reference MODULE:FACTORY``
  names ``FACTORY(onnx_path, device) -> callable(feeds) -> [B, D] array``; e.g. a PyTorch model
  wrapped by the lead's export code.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from reid_sdk import Engine
from reid_sdk.clips import plan_clips
from reid_sdk.preprocess import Preprocessor, default_threads, preprocess_frames

Reference = Callable[[Mapping[str, np.ndarray]], np.ndarray]

PREPROCESS_SPECS = {
    "pad_to_square+bicubic->224x224": {
        "name": "frames", "layout": "NTHWC", "dtype": "uint8", "color": "RGB",
        "height": 224, "width": 224,
        "resize": {"policy": "pad_to_square", "interpolation": "bicubic", "pad_value": 0}},
    "stretch+bilinear->256x128": {
        "name": "frames", "layout": "NTHWC", "dtype": "uint8", "color": "RGB",
        "height": 256, "width": 128,
        "resize": {"policy": "stretch", "interpolation": "bilinear", "pad_value": 0}},
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--onnx", nargs="*", default=None,
                        help="engine files to embed with (default: the hand-built fixtures)")
    parser.add_argument("--providers", nargs="*", default=None,
                        help="ONNX Runtime execution providers (default: best available)")
    parser.add_argument("--device", type=int, default=0, help="CUDA device index")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="clips per engine run (default: the engine's max_batch)")
    parser.add_argument("--tracklets", type=int, default=32, help="tracklets per embed call")
    parser.add_argument("--min-frames", type=int, default=8)
    parser.add_argument("--max-frames", type=int, default=64)
    parser.add_argument("--frames", type=int, default=512,
                        help="crops for the preprocessing comparison")
    parser.add_argument("--threads", type=int, default=None,
                        help="preprocessing threads (default: CPU count, at most 8)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs, best kept")
    parser.add_argument("--reference", default=None,
                        help="MODULE:FACTORY giving FACTORY(onnx_path, device) -> "
                             "callable(feeds) -> [B, D] (parity rows)")
    parser.add_argument("--skip-preprocess", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    return parser


# -- inputs ---------------------------------------------------------------------------------------
def random_crops(rng, count: int) -> list[np.ndarray]:
    """Detector-sized uint8 crops: heights 96..256, widths 40..128 (MARS crops are 256x128)."""
    return [rng.integers(0, 256, size=(int(rng.integers(96, 257)), int(rng.integers(40, 129)), 3),
                         dtype=np.uint8) for _ in range(count)]


def random_inputs(engine: Engine, rng, tracklets: int, min_frames: int, max_frames: int):
    """(tracklets, keyword arguments of embed) fitting ``engine``'s spec."""
    lengths = rng.integers(min_frames, max_frames + 1, size=tracklets)
    crops = [random_crops(rng, int(n)) for n in lengths]
    kwargs = {}
    spec = engine.spec
    if "keypoints" in spec.extra_inputs:
        joints = spec.extra_inputs["keypoints"]["num_joints"]
        kwargs["keypoints"] = [
            np.stack([np.column_stack([rng.uniform(0, c.shape[1], joints),
                                       rng.uniform(0, c.shape[0], joints),
                                       rng.uniform(0, 1, joints)]) for c in t]).astype(np.float32)
            for t in crops]
    if "camera" in spec.extra_inputs:
        kwargs["camera"] = [int(c) for c in rng.integers(0, spec.num_cameras, size=tracklets)]
    return crops, kwargs


# -- preprocessing --------------------------------------------------------------------------------
def plain_loop(crops: Sequence[np.ndarray], spec_input: Mapping) -> np.ndarray:
    """The same per-frame preprocessing in a plain single-threaded loop, one crop after another:
    what calling Pillow per frame costs without the SDK's thread pool."""
    preprocessor = Preprocessor(spec_input)
    return np.stack([preprocessor.prepare(crop, "RGB") for crop in crops])


def best_time(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    """(fastest wall-clock seconds of ``repeats`` calls of ``fn`` (at least one), the last call's
    result)."""
    best, result = float("inf"), None
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def bench_preprocess(args, rng) -> list[dict]:
    threads = args.threads or default_threads()
    crops = random_crops(rng, args.frames)
    rows = []
    with ThreadPoolExecutor(threads) as pool:
        for name, spec_input in PREPROCESS_SPECS.items():
            loop_s, expected = best_time(lambda: plain_loop(crops, spec_input), args.repeats)
            pipe_s, got = best_time(lambda: preprocess_frames(crops, spec_input, executor=pool),
                                    args.repeats)
            np.testing.assert_array_equal(got, expected)
            rows.append({"bench": "preprocess", "case": name, "frames": len(crops),
                         "threads": threads, "plain_loop_fps": len(crops) / loop_s,
                         "pipeline_fps": len(crops) / pipe_s, "speedup": loop_s / pipe_s,
                         "equal": True})
    return rows


# -- embedding and parity -------------------------------------------------------------------------
def parity(engine: Engine, tracklets, reference: Reference, **embed_kwargs) -> dict:
    """Per-clip agreement of ``engine`` with ``reference`` on the same engine inputs.

    Every batch the engine runs (its exact uint8 frames and extra inputs, as a dict name ->
    array) is also given to ``reference``, which returns [B, D]. Returns clips, min / mean
    cosine and max absolute error over all clips.
    """
    backend = engine._backend
    run = backend.run
    cosines, max_error, clips = [], 0.0, 0

    def both(feeds):
        ours = np.asarray(run(feeds), dtype=np.float64)
        theirs = np.asarray(reference(feeds), dtype=np.float64).reshape(ours.shape)
        nonlocal max_error, clips
        cosines.extend((ours * theirs).sum(1) / (np.linalg.norm(ours, axis=1)
                                                 * np.linalg.norm(theirs, axis=1)))
        max_error = max(max_error, float(np.abs(ours - theirs).max()))
        clips += len(ours)
        return ours.astype(np.float32)

    backend.run = both
    try:
        engine.embed_clips(tracklets, **embed_kwargs)
    finally:
        del backend.run  # back to the class's method
    return {"clips": clips, "min_cosine": float(np.min(cosines)),
            "mean_cosine": float(np.mean(cosines)), "max_abs_error": max_error}


def load_reference(spec: str) -> Callable[[str, int], Reference]:
    module, _, name = spec.partition(":")
    if not name:
        raise SystemExit(f"--reference must be MODULE:FACTORY, got {spec!r}")
    return getattr(importlib.import_module(module), name)


def fixture_models(workdir: Path) -> list[Path]:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "sdk"))
    import engine_fixtures as fx
    return [fx.build_hamobe_like(workdir / "hamobe_fixture.onnx"),
            fx.build_keyreid_like(workdir / "keyreid_fixture.onnx")]


def bench_embed(args, rng, paths: Sequence[Path]) -> list[dict]:
    rows = []
    factory = load_reference(args.reference) if args.reference else None
    for path in paths:
        engine = Engine(path, providers=args.providers, device=args.device,
                        max_batch=args.batch_size, preprocess_threads=args.threads)
        providers = "+".join(engine.providers)
        tracklets, kwargs = random_inputs(engine, rng, args.tracklets, args.min_frames,
                                          args.max_frames)
        engine.embed(tracklets[:2], **{k: v[:2] for k, v in kwargs.items()})  # warm-up
        seconds, _ = best_time(lambda: engine.embed(tracklets, **kwargs), args.repeats)
        clips = sum(len(plan_clips(engine.spec.clips, len(t))[0]) for t in tracklets)
        frames = sum(len(t) for t in tracklets)
        rows.append({"bench": "embed", "model": os.fspath(path), "arch": engine.spec.arch,
                     "providers": providers, "batch": engine.max_batch,
                     "tracklets": len(tracklets), "frames": frames, "clips": clips,
                     "seconds": seconds, "clips_per_s": clips / seconds,
                     "frames_per_s": frames / seconds})
        if factory is not None:
            result = parity(engine, tracklets, factory(os.fspath(path), args.device), **kwargs)
            rows.append({"bench": "parity", "model": os.fspath(path), "arch": engine.spec.arch,
                         "providers": providers, **result})
        engine.close()
    return rows


def run(args: argparse.Namespace | Sequence[str] | None = None) -> list[dict]:
    """Run the benchmarks ``args`` select (a Namespace from :func:`build_parser`, or argv)."""
    if not isinstance(args, argparse.Namespace):
        args = build_parser().parse_args(args)
    rng = np.random.default_rng(args.seed)
    rows = [] if args.skip_preprocess else bench_preprocess(args, rng)
    if args.onnx:
        rows += bench_embed(args, rng, [Path(p) for p in args.onnx])
    else:
        import tempfile
        with tempfile.TemporaryDirectory() as workdir:
            rows += bench_embed(args, rng, fixture_models(Path(workdir)))
    return rows


def format_rows(rows: Sequence[dict]) -> str:
    lines = []
    for row in rows:
        if row["bench"] == "preprocess":
            lines.append(f"preprocess {row['case']:<32} {row['frames']} crops: plain loop "
                         f"{row['plain_loop_fps']:8.1f} frames/s, pipeline ({row['threads']} "
                         f"threads) {row['pipeline_fps']:8.1f} frames/s, x{row['speedup']:.2f}, "
                         "outputs identical")
        elif row["bench"] == "embed":
            lines.append(f"embed {row['arch']:<8} {Path(row['model']).name:<24} "
                         f"[{row['providers']}] batch {row['batch']}: {row['tracklets']} "
                         f"tracklets, {row['clips']} clips in {row['seconds']:.3f} s = "
                         f"{row['clips_per_s']:8.1f} clips/s, {row['frames_per_s']:8.1f} frames/s")
        else:
            lines.append(f"parity {row['arch']:<8} {Path(row['model']).name:<23} "
                         f"[{row['providers']}] {row['clips']} clips: min cosine "
                         f"{row['min_cosine']:.7f}, mean {row['mean_cosine']:.7f}, max abs "
                         f"error {row['max_abs_error']:.3g}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    print(f"reid_sdk.Engine benchmark, best of {args.repeats}; {os.cpu_count()} CPUs")
    rows = run(args)
    print(format_rows(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
