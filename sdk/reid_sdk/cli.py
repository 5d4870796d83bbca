"""``reid-sdk``: the runtime's command line.

    reid-sdk info MODEL [--json]
    reid-sdk embed MODEL DIR... --out emb.npz [--camera N]
    reid-sdk gallery build MODEL DIR... --out people.gallery
    reid-sdk gallery search GALLERY --queries emb.npz [-k 10] [--json]
    reid-sdk eval MODEL --query DIR --gallery DIR [--out-dir D] [-k 10]
    reid-sdk demo [...]

DIR is a folder in the tracklet layout of docs/dataset_layout.md: a tracklet folder (images,
optional keypoints.json and tracklet.json), or any folder above such folders. Identity and
camera come from tracklet.json or the folder name ``<pid>C<cam>T<n>``; ``--camera`` overrides
the camera for every tracklet. Keypoints are read for engines that take them (KeyRe-ID).

What the commands write:

* ``embed``: an .npz with ``ids`` (tracklet folder names), ``paths``, ``pids``, ``camids``
  (int64, -1 where the layout gives none; pid -1 also marks distractors), ``embeddings``
  float32 [N, D], ``metric`` (the engine spec's) and ``format``.
* ``gallery build``: a gallery file (:mod:`reid_sdk.gallery`), ids = tracklet folder names,
  cameras from the layout, meta = path, pid and frame count of each tracklet.
* ``eval``: ranks the gallery by the engine spec's metric: for "cosine" the negated cosine
  similarity, which ranks as HAMoBE's official Euclidean distance between L2-normalised
  features does (d^2 = 2 - 2 cos, up to rounding); "squared_euclidean" for KeyRe-ID as its official test
  (MODELS.md 1.7, 2.6); one camera per tracklet. Standard protocol (:mod:`reid_sdk.metrics`);
  writes ``rank_list.png`` and ``metrics.json`` into ``--out-dir``.

Errors of the SDK print one line and exit with status 2 (``--debug`` shows the traceback).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from reid_sdk._atomic import atomic_write
from reid_sdk.errors import InputError, ReidError

EMBEDDINGS_FORMAT = "reid_sdk.embeddings"
# pid / camid written where the layout gives none (pid -1 also marks distractors).
UNKNOWN = -1


# -- tracklets to embeddings ----------------------------------------------------------------------
def _scan(dirs: Sequence[str]) -> list:
    from reid_sdk import layout

    return [tracklet for directory in dirs for tracklet in layout.scan(directory)]


def _tracklet_id(tracklet) -> str:
    return Path(tracklet.path).name


def _open_engine(args):
    from reid_sdk.engine import Engine

    providers = args.providers.split(",") if args.providers else None
    return Engine(args.model, providers=providers)


def _embed(engine, tracklets: list, camera: int | None, progress: bool | None) -> dict:
    """Embeddings of layout tracklets with what the output files record about them."""
    started = time.perf_counter()
    from reid_sdk import layout

    embeddings = layout.embed_tracklets(engine, tracklets, camera=camera, progress=progress)
    seconds = time.perf_counter() - started
    frames = sum(len(t.frames) for t in tracklets)
    print(f"embedded {len(tracklets)} tracklets ({frames} frames) in {seconds:.1f} s "
          f"({frames / max(seconds, 1e-9):.1f} frames/s)", file=sys.stderr)
    return {
        "ids": np.array([_tracklet_id(t) for t in tracklets]),
        "paths": np.array([str(t.path) for t in tracklets]),
        "pids": np.array([UNKNOWN if t.pid is None else t.pid for t in tracklets],
                         dtype=np.int64),
        "camids": np.array([camera if camera is not None else
                            UNKNOWN if t.camid is None else t.camid for t in tracklets],
                           dtype=np.int64),
        "embeddings": embeddings,
        "tracklets": tracklets,
    }


def _read_embeddings(path: str) -> dict:
    """An embeddings file written by ``reid-sdk embed``."""
    if not Path(path).is_file():
        raise InputError(f"no embeddings file at {path}; write one with `reid-sdk embed`")
    try:
        with np.load(path, allow_pickle=False) as npz:
            data = {name: npz[name] for name in npz.files}
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(f"{path} is not a readable .npz embeddings file ({exc})") from None
    if "embeddings" not in data or data["embeddings"].ndim != 2:
        raise InputError(f"{path} has no [N, D] 'embeddings' array; write it with "
                         "`reid-sdk embed`")
    count = data["embeddings"].shape[0]
    if "ids" not in data or data["ids"].shape != (count,):
        data["ids"] = np.arange(count)
    return data


# -- commands --------------------------------------------------------------------------------------
def _print_mapping(mapping: dict, indent: int = 0) -> None:
    for key, value in mapping.items():
        if isinstance(value, dict) and value:
            print(f"{' ' * indent}{key}:")
            _print_mapping(value, indent + 2)
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            print(f"{' ' * indent}{key}:")
            for item in value:
                print(f"{' ' * (indent + 2)}- " + ", ".join(f"{k}={v}" for k, v in item.items()))
        else:
            print(f"{' ' * indent}{key}: {value}")


def cmd_info(args) -> int:
    with _open_engine(args) as engine:
        info = engine.info()
    if args.json:
        print(json.dumps(info, indent=2, default=str))
    else:
        _print_mapping(info)
    return 0


def cmd_embed(args) -> int:
    with _open_engine(args) as engine:
        result = _embed(engine, _scan(args.dirs), args.camera, args.progress)
        metric = engine.spec.metric
    arrays = {k: v for k, v in result.items() if k != "tracklets"}
    arrays["metric"] = np.array(metric)
    arrays["format"] = np.array(EMBEDDINGS_FORMAT)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(args.out) as handle:
        np.savez(handle, **arrays)
    print(f"wrote {args.out}: {len(arrays['ids'])} embeddings of dimension "
          f"{arrays['embeddings'].shape[1]} (metric {metric})")
    return 0


def cmd_gallery_build(args) -> int:
    from reid_sdk.gallery import Gallery

    with _open_engine(args) as engine:
        result = _embed(engine, _scan(args.dirs), args.camera, args.progress)
        spec = engine.spec
    gallery = Gallery(spec.embedding_dim, spec.metric)
    meta = [{"path": str(t.path), "pid": int(t.pid), "frames": len(t.frames)}
            for t in result["tracklets"]]
    cameras = result["camids"] if (result["camids"] >= 0).all() else None
    gallery.add(result["ids"].tolist(), result["embeddings"], cameras=cameras, meta=meta)
    gallery.save(args.out)
    print(f"wrote {args.out}: {len(gallery)} items, dimension {gallery.dim}, "
          f"metric {gallery.metric}")
    return 0


def cmd_gallery_search(args) -> int:
    from reid_sdk.gallery import Gallery

    gallery = Gallery.load(args.gallery)
    queries = _read_embeddings(args.queries)
    if "metric" in queries and str(queries["metric"]) != gallery.metric:
        print(f"reid-sdk: warning: the queries were embedded by a model whose metric is "
              f"{queries['metric']}, the gallery uses {gallery.metric}", file=sys.stderr)
    ids, scores = gallery.search(queries["embeddings"], args.k)
    score_name = "similarity" if gallery.metric == "cosine" else "distance"
    if args.json:
        print(json.dumps([{"query": q.item(), "results": [
            {"rank": r + 1, "id": i.item(), score_name: float(s)}
            for r, (i, s) in enumerate(zip(row_ids, row_scores))]}
            for q, row_ids, row_scores in zip(queries["ids"], ids, scores)], indent=1))
        return 0
    query_width = max([5] + [len(str(q)) for q in queries["ids"]])
    id_width = max([2] + [len(str(i)) for i in ids.ravel().tolist()])
    print(f"{'query':<{query_width}}  {'rank':>4}  {'id':<{id_width}}  {score_name:>10}")
    for query_id, row_ids, row_scores in zip(queries["ids"], ids, scores):
        for rank, (item_id, score) in enumerate(zip(row_ids, row_scores)):
            shown = str(query_id) if rank == 0 else ""
            print(f"{shown:<{query_width}}  {rank + 1:>4}  {str(item_id):<{id_width}}  "
                  f"{score:>10.4f}")
    return 0


def cmd_eval(args) -> int:
    from reid_sdk.layout import MiddleFrames
    from reid_sdk.metrics import cmc_summary, distance_matrix, evaluate, rank_lists
    from reid_sdk.visualize import rank_list_picture

    scanned = {"query": _scan([args.query]), "gallery": _scan([args.gallery])}
    for name, tracklets in scanned.items():
        unknown = [t.path for t in tracklets
                   if t.pid is None or (t.camid is None and args.camera is None)]
        if unknown:
            raise InputError(f"{unknown[0]} ({len(unknown)} {name} tracklets in all) has no "
                             "identity or camera: evaluation needs both, from tracklet.json or "
                             "a <pid>C<cam>T<n> folder name")
    with _open_engine(args) as engine:
        metric = engine.spec.metric
        query = _embed(engine, scanned["query"], args.camera, args.progress)
        gallery = _embed(engine, scanned["gallery"], args.camera, args.progress)
    distmat = distance_matrix(query["embeddings"], gallery["embeddings"], metric)
    result = evaluate(distmat, query["pids"], gallery["pids"], query["camids"],
                      gallery["camids"], max_rank=args.max_rank)
    summary = cmc_summary(result, ranks=(1, 5, 10))
    report = {"model": str(args.model), "metric": metric, **summary,
              "num_valid_queries": result["num_valid_queries"],
              "num_skipped_queries": result["num_skipped_queries"],
              "num_gallery": int(distmat.shape[1]), "cmc": result["cmc"].tolist()}

    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shown = np.arange(min(args.max_queries, distmat.shape[0]))
    ranked, matches = rank_lists(distmat[shown], query["pids"][shown], gallery["pids"],
                                 query["camids"][shown], gallery["camids"], args.k)
    scores = np.take_along_axis(distmat[shown], ranked, axis=1)
    if metric == "cosine":
        scores = -scores                        # show the similarity
    picture = out_dir / "rank_list.png"
    rank_list_picture(MiddleFrames([query["tracklets"][q] for q in shown]),
                      MiddleFrames(gallery["tracklets"]), ranked, matches, picture,
                      k=args.k, scores=scores, query_labels=query["ids"][shown].tolist(),
                      gallery_labels=gallery["ids"].tolist(), max_queries=args.max_queries,
                      title=f"{Path(args.model).name}: top-{ranked.shape[1]} per query "
                            f"({metric}); green = true match, red = false")
    report["rank_list"] = str(picture)
    report["rank_list_queries"] = query["ids"][shown].tolist()
    (out_dir / "metrics.json").write_text(json.dumps(report, indent=1))
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(f"queries {distmat.shape[0]} (valid {result['num_valid_queries']}, skipped "
              f"{result['num_skipped_queries']} without a true match), gallery "
              f"{distmat.shape[1]}, metric {metric}")
        print("  ".join(f"{name} {value * 100:.2f}%" for name, value in summary.items()))
        print(f"wrote {picture} and {out_dir / 'metrics.json'}")
    return 0


def cmd_demo(args) -> int:
    try:
        from reid_export import demo
    except ImportError as exc:
        raise InputError(f"the demo needs the export side of reid-sdk ({exc}); install it with "
                         'pip install -e ".[export]"') from None
    return int(demo.main(args.demo_args) or 0)


# -- parser ------------------------------------------------------------------------------------------
def _add_engine_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--providers", default=None,
                        help="ONNX Runtime execution providers, comma-separated, in order of "
                             "preference (default: TensorRT, CUDA, CPU: the first available)")


def _add_embed_options(parser: argparse.ArgumentParser) -> None:
    _add_engine_options(parser)
    parser.add_argument("--camera", type=int, default=None,
                        help="camera index (0-based) for every tracklet, instead of the "
                             "layout's tracklet.json / <pid>C<cam>T<n> folder name")
    progress = parser.add_mutually_exclusive_group()
    progress.add_argument("--progress", dest="progress", action="store_true", default=None,
                          help="always show the progress bar (default: only on a terminal)")
    progress.add_argument("--no-progress", dest="progress", action="store_false")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reid-sdk", description="Video person re-identification: engine info, tracklet "
        "embedding, gallery search, evaluation.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    info = commands.add_parser("info", help="describe an engine (.onnx / .plan / .engine)")
    info.add_argument("model")
    info.add_argument("--json", action="store_true", help="print JSON")
    _add_engine_options(info)
    info.set_defaults(handler=cmd_info)

    embed = commands.add_parser("embed", help="embed tracklet folders into an .npz file")
    embed.add_argument("model")
    embed.add_argument("dirs", nargs="+", metavar="DIR")
    embed.add_argument("--out", required=True, help="output .npz (ids, paths, pids, camids, "
                                                    "embeddings, metric)")
    _add_embed_options(embed)
    embed.set_defaults(handler=cmd_embed)

    gallery = commands.add_parser("gallery", help="build or search a gallery file")
    gallery_commands = gallery.add_subparsers(dest="gallery_command", required=True,
                                              metavar="ACTION")
    build = gallery_commands.add_parser("build", help="embed tracklet folders into a gallery")
    build.add_argument("model")
    build.add_argument("dirs", nargs="+", metavar="DIR")
    build.add_argument("--out", required=True, help="gallery file to write")
    _add_embed_options(build)
    build.set_defaults(handler=cmd_gallery_build)
    search = gallery_commands.add_parser("search", help="top-k gallery items per query")
    search.add_argument("gallery", help="gallery file (from `reid-sdk gallery build`)")
    search.add_argument("--queries", required=True, help=".npz from `reid-sdk embed`")
    search.add_argument("-k", type=int, default=10, help="results per query (default 10)")
    search.add_argument("--json", action="store_true", help="print JSON")
    search.set_defaults(handler=cmd_gallery_search)

    evaluation = commands.add_parser(
        "eval", help="Rank-1/5/10, mAP, mINP of a model on query / gallery folders, and a "
                     "rank-list picture")
    evaluation.add_argument("model")
    evaluation.add_argument("--query", required=True, metavar="DIR")
    evaluation.add_argument("--gallery", required=True, metavar="DIR")
    evaluation.add_argument("--out-dir", default="reid_eval",
                            help="where rank_list.png and metrics.json go (default %(default)s)")
    evaluation.add_argument("-k", type=int, default=10, help="ranks in the picture (default 10)")
    evaluation.add_argument("--max-rank", type=int, default=50, help="CMC length (default 50)")
    evaluation.add_argument("--max-queries", type=int, default=16,
                            help="query rows in the picture (default 16)")
    evaluation.add_argument("--json", action="store_true", help="print the report as JSON")
    _add_embed_options(evaluation)
    evaluation.set_defaults(handler=cmd_eval)

    demo = commands.add_parser("demo", add_help=False,
                               help="the end-to-end demo (needs the [export] extra); its "
                                    "arguments go to reid_export.demo (reid-sdk demo --help)")
    demo.set_defaults(handler=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``reid-sdk``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # Everything after `demo` belongs to reid_export.demo, whose options this parser does not
    # know.
    command_at = next((i for i, arg in enumerate(argv) if not arg.startswith("-")), None)
    if command_at is not None and argv[command_at] == "demo":
        args = parser.parse_args(argv[:command_at + 1])
        args.demo_args = argv[command_at + 1:]
    else:
        args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except ReidError as exc:
        if args.debug:
            raise
        print(f"reid-sdk: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("reid-sdk: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
