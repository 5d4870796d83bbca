"""Gallery search (reid_sdk.Gallery, streaming top-k in Cython) versus numpy brute force, on
this CPU: time, ratio, peak memory, agreement.

    python benchmarks/bench_gallery.py                     # 1 x 1M and 1k x 100k, D = 2048
    python benchmarks/bench_gallery.py --cases 1x20000 64x5000 --dim 256   # a quick look

Numpy brute force is the usual idiom: the whole [Q, G] score matrix by one matmul, then
``argpartition`` for the top k and a sort of those k (ties by position, as the gallery does).
Peak memory is what ``tracemalloc`` sees during one call: numpy's allocations (the gallery
itself exists before and is not counted; OpenBLAS's own work buffers are not traced, the same
for both sides). Data are random float32 vectors, L2-normalised, cosine metric.
"""
from __future__ import annotations

import argparse
import gc
import sys
import tracemalloc
from typing import Sequence

import numpy as np

from bench_engine import best_time
from reid_sdk.gallery import Gallery

DEFAULT_CASES = ("1x1000000", "1000x100000")
ADD_BATCH = 50_000


def parse_case(text: str) -> tuple[int, int]:
    try:
        queries, gallery = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"case {text!r} must look like QUERIESxGALLERY, e.g. "
                                         "1x1000000") from None
    return queries, gallery


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", default=list(DEFAULT_CASES),
                        help="QUERIESxGALLERY sizes (default: %(default)s)")
    parser.add_argument("--dim", type=int, default=2048, help="embedding size (default 2048)")
    parser.add_argument("-k", type=int, default=10, help="top k (default 10)")
    parser.add_argument("--chunk-size", type=int, default=None,
                        help="gallery rows per search chunk (default: automatic, 32 MiB of "
                             "scores at once)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs, best kept")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def make_gallery(rng, size: int, dim: int, chunk_size: int | None) -> Gallery:
    gallery = Gallery(dim, "cosine", chunk_size=chunk_size)
    gallery.reserve(size)
    for start in range(0, size, ADD_BATCH):
        count = min(ADD_BATCH, size - start)
        gallery.add(np.arange(start, start + count),
                    rng.standard_normal((count, dim), dtype=np.float32))
    return gallery


def numpy_topk(queries: np.ndarray, embeddings: np.ndarray, k: int):
    """Brute force: full score matrix, argpartition, then the k sorted (score desc, position)."""
    scores = queries @ embeddings.T
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -part_scores), axis=1)
    return np.take_along_axis(part, order, axis=1), np.take_along_axis(part_scores, order, axis=1)


def traced_peak(fn) -> int:
    gc.collect()
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def run(args: argparse.Namespace | Sequence[str] | None = None) -> list[dict]:
    """Runs the cases; returns one dict per case (sizes, seconds, ratio, peak MiB, agreement)."""
    if not isinstance(args, argparse.Namespace):
        args = build_parser().parse_args([] if args is None else list(args))
    rng = np.random.default_rng(args.seed)
    results = []
    for case in args.cases:
        num_queries, size = parse_case(case) if isinstance(case, str) else case
        gallery = make_gallery(rng, size, args.dim, args.chunk_size)
        queries = rng.standard_normal((num_queries, args.dim), dtype=np.float32)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        embeddings = gallery.embeddings

        def sdk_search():
            return gallery.search(queries, args.k)

        def numpy_search():
            return numpy_topk(queries, embeddings, args.k)

        sdk_ids, sdk_scores = sdk_search()
        np_positions, np_scores = numpy_search()
        same_ids = float(np.mean(sdk_ids == gallery.ids[np_positions]))
        max_score_diff = float(np.abs(sdk_scores - np_scores).max())
        sdk_s, _ = best_time(sdk_search, args.repeats)
        numpy_s, _ = best_time(numpy_search, args.repeats)
        results.append({
            "case": f"{num_queries}x{size}", "queries": num_queries, "gallery": size,
            "dim": args.dim, "k": args.k, "metric": "cosine", "chunk_size": gallery.chunk_size or "auto",
            "sdk_s": sdk_s, "numpy_s": numpy_s, "numpy_over_sdk": numpy_s / sdk_s,
            "sdk_peak_mib": traced_peak(sdk_search) / 2**20,
            "numpy_peak_mib": traced_peak(numpy_search) / 2**20,
            "gallery_mib": embeddings.nbytes / 2**20,
            "same_ids_fraction": same_ids, "max_score_diff": max_score_diff,
        })
        del gallery, embeddings
        gc.collect()
    return results


def format_table(results: list[dict]) -> str:
    header = (f"{'case (Q x G)':>14} {'D':>5} {'k':>3} {'sdk s':>8} {'numpy s':>8} "
              f"{'numpy/sdk':>9} {'sdk peak MiB':>12} {'numpy peak MiB':>14} {'gallery MiB':>11} "
              f"{'same ids':>8} {'max |dscore|':>12}")
    lines = [header]
    for r in results:
        lines.append(f"{r['case']:>14} {r['dim']:>5} {r['k']:>3} {r['sdk_s']:>8.3f} "
                     f"{r['numpy_s']:>8.3f} {r['numpy_over_sdk']:>9.2f} {r['sdk_peak_mib']:>12.1f} "
                     f"{r['numpy_peak_mib']:>14.1f} {r['gallery_mib']:>11.0f} "
                     f"{r['same_ids_fraction']:>8.4f} {r['max_score_diff']:>12.2e}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    print(f"gallery search, cosine, best of {args.repeats}; numpy "
          f"{np.__version__}, python {sys.version.split()[0]}", flush=True)
    print(format_table(run(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
