"""`reid-sdk demo`: the main job, end to end on the embedded defaults.

1. generates the synthetic video ReID benchmark (query / gallery tracklets with keypoints and
   cameras; docs/synth.md), or reuses it;
2. exports the default models (tiny HAMoBE and KeyRe-ID trained on that benchmark's train
   split, committed under reid_export/assets/) to ONNX with their engine spec, or reuses them;
3. embeds query and gallery through ``reid_sdk.Engine`` (ONNX Runtime) and prints Rank-1,
   Rank-5, mAP and mINP (same-clothes and clothes-changing protocols) and throughput;
4. embeds the same tracklets with PyTorch through the same SDK pipeline and prints the
   difference (minimum per-tracklet cosine, mAP delta);
5. writes ``report.json`` and a rank-list picture per model into ``--out``.

    reid-sdk demo                  # into ./reid_demo
    reid-sdk demo --out /tmp/demo --models keyreid
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ASSETS = Path(__file__).resolve().parent / "assets"
DEFAULTS_FILE = ASSETS / "defaults.json"
ARCHS = ("hamobe", "keyreid")


def load_defaults() -> dict:
    """The embedded default checkpoints: {arch: {"file", "sha256", "command", ...}}."""
    if not DEFAULTS_FILE.is_file():
        raise FileNotFoundError(f"{DEFAULTS_FILE} is missing: the package was installed without "
                                "its assets; reinstall reid-sdk from the repository")
    return json.loads(DEFAULTS_FILE.read_text())


def default_checkpoint(arch: str) -> Path:
    """Path of the embedded default checkpoint of ``arch``, its sha256 verified."""
    from reid_sdk.backends import file_sha256

    entry = load_defaults()[arch]
    path = ASSETS / entry["file"]
    if not path.is_file():
        raise FileNotFoundError(f"default checkpoint {path} is missing; reinstall reid-sdk")
    digest = file_sha256(path)
    if digest != entry["sha256"]:
        raise ValueError(f"default checkpoint {path} has sha256 {digest}, defaults.json records "
                         f"{entry['sha256']}: the file is damaged; restore it with git")
    return path


class Step:
    """Prints numbered steps with their duration to stderr."""

    def __init__(self, total: int):
        self.total, self.index, self.started = total, 0, time.perf_counter()

    def __call__(self, text: str):
        self.index += 1
        print(f"[{self.index}/{self.total}] {text}", file=sys.stderr, flush=True)
        return _Timer()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started


class _Timer:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start
        if exc[0] is None:
            print(f"      done in {self.seconds:.1f} s", file=sys.stderr, flush=True)
        return False


def export_default(arch: str, out_dir: Path) -> tuple[Path, object]:
    """The ONNX file of the default ``arch`` model in ``out_dir`` (exported unless a file with
    the same checkpoint sha256 is there) and the PyTorch model."""
    from reid_export import models
    from reid_export.onnx_export import export_onnx, read_spec

    checkpoint = default_checkpoint(arch)
    model = models.load_checkpoint(checkpoint, arch=arch)
    path = out_dir / f"{arch}_tiny.onnx"
    sha = model.reid_source["checkpoint_sha256"]
    if path.is_file():
        try:
            if read_spec(path).source.get("checkpoint_sha256") == sha:
                return path, model
        except Exception:  # an unreadable file is simply exported again
            pass
    export_onnx(model, path)
    return path, model


SPLITS = ("query", "gallery")


def scan_splits(bench) -> dict:
    """The query and gallery tracklets of a benchmark root: {"query": [...], "gallery": [...]}
    (reid_sdk.layout.Tracklet lists)."""
    from reid_sdk import layout

    return {name: layout.scan(Path(bench) / name) for name in SPLITS}


@dataclass
class SplitEvaluation:
    """What :func:`evaluate_splits` measures: embeddings {split: float32 [N, D]}, the figures of
    ``reid_sdk.layout.evaluate_tracklets`` and the seconds spent embedding."""
    embeddings: dict
    metrics: dict
    seconds: float


def evaluate_splits(engine, splits: dict, *, progress: bool | None = None) -> SplitEvaluation:
    """Embeds the tracklets of :func:`scan_splits` through ``engine`` (a reid_sdk.Engine) and
    evaluates query against gallery with the engine spec's metric."""
    from reid_sdk import layout

    embeddings, seconds = {}, 0.0
    for name, tracklets in splits.items():
        start = time.perf_counter()
        embeddings[name] = layout.embed_tracklets(engine, tracklets, progress=progress)
        seconds += time.perf_counter() - start
    metrics = layout.evaluate_tracklets(splits["query"], embeddings["query"], splits["gallery"],
                                        embeddings["gallery"], engine.spec.metric)
    return SplitEvaluation(embeddings, metrics, seconds)


def run_model(arch: str, splits: dict, out_dir: Path, *, compare_torch: bool,
              progress: bool | None) -> dict:
    """Everything the demo reports for one model on the tracklets of :func:`scan_splits`."""
    from reid_export.torch_backend import TorchBackend
    from reid_sdk import Engine
    from reid_sdk.clips import plan_clips
    from reid_sdk.layout import MiddleFrames, middle_frame
    from reid_sdk.metrics import distance_matrix, rank_lists
    from reid_sdk.visualize import rank_list_picture

    report = {"arch": arch}
    path, model = export_default(arch, out_dir / "models")
    report["onnx"] = str(path)
    engine = Engine(path)
    report["providers"] = engine.providers
    result = evaluate_splits(engine, splits, progress=progress)
    clips = sum(len(plan_clips(engine.spec.clips, t.num_frames)[0])
                for tracklets in splits.values() for t in tracklets)
    report["throughput"] = {"clips": clips, "seconds": result.seconds,
                            "clips_per_s": clips / result.seconds,
                            "tracklets_per_s": sum(map(len, splits.values())) / result.seconds}
    report["metrics"] = result.metrics
    embedded = result.embeddings
    if compare_torch:
        reference = Engine.from_backend(TorchBackend(model, engine.spec))
        torch_result = evaluate_splits(reference, splits, progress=progress)
        torch_embedded = torch_result.embeddings
        cos = np.concatenate([_cosine(embedded[n], torch_embedded[n]) for n in splits])
        report["torch_vs_onnxruntime"] = {
            "min_cosine": float(cos.min()), "mean_cosine": float(cos.mean()),
            "max_abs_diff": float(max(np.abs(embedded[n] - torch_embedded[n]).max()
                                      for n in splits)),
            "mAP_delta": {protocol: report["metrics"][protocol]["mAP"] - values["mAP"]
                          for protocol, values in torch_result.metrics.items()},
        }
    metric = engine.spec.metric
    engine.close()

    # The rank-list picture: the first queries of the standard protocol, top 8 each.
    q, g = splits["query"], splits["gallery"]
    shown = np.arange(min(8, len(q)))
    dist = distance_matrix(embedded["query"][shown], embedded["gallery"], metric)
    ranked, matches = rank_lists(dist, [q[i].pid for i in shown], [t.pid for t in g],
                                 [q[i].camid for i in shown], [t.camid for t in g], 8)
    picture = out_dir / f"rank_list_{arch}.png"
    rank_list_picture([middle_frame(q[i]) for i in shown], MiddleFrames(g), ranked, matches,
                      picture, k=8, query_labels=[Path(q[i].path).name for i in shown],
                      gallery_labels=[Path(t.path).name for t in g],
                      title=f"{arch} (tiny, synthetic benchmark): top-8 per query; "
                            "green = same identity, red = other")
    report["rank_list"] = str(picture)
    return report


def _cosine(a, b):
    from reid_export.validate import cosine_rows
    return cosine_rows(a, b)


def print_summary(reports: list, elapsed: float) -> None:
    rows = []
    for r in reports:
        for protocol in ("same_clothes", "clothes_changing", "standard"):
            m = r["metrics"].get(protocol)
            if m is None:
                continue
            rows.append((r["arch"], protocol, m["Rank-1"], m["Rank-5"], m["mAP"], m["mINP"]))
    print(f"\n{'model':<8} {'protocol':<17} {'Rank-1':>7} {'Rank-5':>7} {'mAP':>7} {'mINP':>7}")
    for arch, protocol, r1, r5, m, inp in rows:
        print(f"{arch:<8} {protocol:<17} {r1 * 100:6.1f}% {r5 * 100:6.1f}% {m * 100:6.1f}% "
              f"{inp * 100:6.1f}%")
    print()
    for r in reports:
        t = r["throughput"]
        line = (f"{r['arch']:<8} ONNX Runtime ({', '.join(r['providers'])}): "
                f"{t['clips_per_s']:.1f} clips/s ({t['clips']} clips in {t['seconds']:.1f} s)")
        parity = r.get("torch_vs_onnxruntime")
        if parity:
            delta = max(abs(v) for v in parity["mAP_delta"].values())
            line += (f"; PyTorch vs ONNX Runtime: min cosine {parity['min_cosine']:.7f}, "
                     f"|mAP delta| <= {delta:.2e}")
        print(line)
    print(f"\ntotal {elapsed:.1f} s")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="reid-sdk demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("reid_demo"),
                        help="output folder (benchmark, models, report.json, pictures)")
    parser.add_argument("--models", default=",".join(ARCHS),
                        help="comma-separated subset of hamobe,keyreid")
    parser.add_argument("--bench-preset", default="demo", help="synthetic benchmark preset")
    parser.add_argument("--seed", type=int, default=0,
                        help="benchmark seed: 0 is the world (cameras) the default models were "
                             "trained in, with test identities they never saw")
    parser.add_argument("--no-torch", action="store_true",
                        help="skip the PyTorch vs ONNX Runtime comparison (faster)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    archs = [a.strip() for a in args.models.split(",") if a.strip()]
    unknown = sorted(set(archs) - set(ARCHS))
    if unknown or not archs:
        parser.error(f"--models takes hamobe and/or keyreid, got {args.models!r}")
    progress = None if not args.no_progress else False

    from reid_export import synth

    steps = Step(1 + len(archs))
    args.out.mkdir(parents=True, exist_ok=True)
    with steps(f"synthetic benchmark ({args.bench_preset}, seed {args.seed}) in "
               f"{args.out / 'bench'}"):
        bench = synth.generate(args.out / "bench", synth.SynthConfig.preset(args.bench_preset),
                               seed=args.seed, progress=progress is None, reuse=True)
    splits = scan_splits(bench)
    reports = []
    for arch in archs:
        with steps(f"{arch}: export, embed through reid_sdk.Engine"
                   + ("" if args.no_torch else ", compare with PyTorch")):
            reports.append(run_model(arch, splits, args.out, compare_torch=not args.no_torch,
                                     progress=progress))
    report = {"benchmark": {"path": str(bench), "preset": args.bench_preset, "seed": args.seed},
              "models": reports, "seconds": steps.elapsed}
    (args.out / "report.json").write_text(json.dumps(report, indent=2, default=_jsonable))
    print_summary(reports, steps.elapsed)
    print(f"wrote {args.out / 'report.json'} and "
          + ", ".join(r["rank_list"] for r in reports))
    return 0


def _jsonable(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


if __name__ == "__main__":
    sys.exit(main())
