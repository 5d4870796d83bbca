"""Retrieval metrics for re-identification: CMC, mAP and mINP under the standard protocol.

Protocol (Market-1501 / MARS, as torchreid's and fast-reid's ``eval_func``):

* for each query, gallery items with the same pid **and** the same camera are removed (junk);
  items with the same pid from another camera are the true matches;
* a query with no true match left is skipped and counted (``num_skipped_queries``);
* CMC[r] is the fraction of valid queries whose first true match is within the top r+1;
  it has ``min(max_rank, G)`` entries (torchreid caps at the gallery size the same way);
* AP is the mean of the precision at each true match; INP = matches / (rank of the last match);
  mAP and mINP average over valid queries.

Ties (equal distances) are broken by ascending gallery position (a stable sort). torchreid and
fast-reid use numpy's default, unstable ``argsort``, so on exactly tied distances their figures
may differ from these; elsewhere they agree.

``evaluate`` runs the per-query ranking in Cython (``reid_sdk._ranking``) without building a
[Q, G] index matrix; ``evaluate_py`` is the same protocol in plain numpy (a full stable sort per
query); tests assert both agree.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from reid_sdk.errors import InputError
from reid_sdk.spec import METRICS

__all__ = ["evaluate", "evaluate_py", "evaluate_protocols", "rank_lists", "similarity_to_distance", "distance_matrix",
           "l2_normalize", "cmc_summary"]


def _as_ids(values, length: int, name: str, expected: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1 or arr.shape[0] != length:
        raise InputError(f"{name} must be a 1-D array of length {length} ({expected}), got "
                         f"shape {arr.shape}")
    if arr.dtype.kind in "iub":
        return np.ascontiguousarray(arr, dtype=np.int64)
    if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
        return np.ascontiguousarray(arr, dtype=np.int64)
    raise InputError(f"{name} must hold integers (got dtype {arr.dtype}); map string labels to "
                     "integers first, e.g. with np.unique(labels, return_inverse=True)")


def _validate(distmat, q_pids, g_pids, q_camids, g_camids, max_rank):
    dist = np.asarray(distmat)
    if dist.ndim != 2:
        raise InputError(f"distmat must be a 2-D [num_queries, num_gallery] array, got shape "
                         f"{dist.shape}")
    if dist.dtype.kind not in "iuf":
        raise InputError(f"distmat must be numeric, got dtype {dist.dtype}")
    if dist.dtype not in (np.float32, np.float64):
        dist = dist.astype(np.float64)
    dist = np.ascontiguousarray(dist)
    num_queries, num_gallery = dist.shape
    if num_queries == 0 or num_gallery == 0:
        raise InputError(f"distmat is empty (shape {dist.shape}): evaluation needs at least one "
                         "query and one gallery item")
    if np.isnan(dist).any():
        raise InputError("distmat contains NaN; check the embeddings for NaN before computing "
                         "distances")
    if isinstance(max_rank, bool) or not isinstance(max_rank, (int, np.integer)) or max_rank < 1:
        raise InputError(f"max_rank must be an integer >= 1, got {max_rank!r}")
    q_pids = _as_ids(q_pids, num_queries, "q_pids", "one per distmat row")
    g_pids = _as_ids(g_pids, num_gallery, "g_pids", "one per distmat column")
    q_camids = _as_ids(q_camids, num_queries, "q_camids", "one per distmat row")
    g_camids = _as_ids(g_camids, num_gallery, "g_camids", "one per distmat column")
    return dist, q_pids, g_pids, q_camids, g_camids


def _summarise(first_rank: np.ndarray, average_precision: np.ndarray,
               inverse_negative_penalty: np.ndarray, max_rank: int, num_gallery: int) -> dict:
    valid = first_rank >= 0
    num_valid = int(valid.sum())
    if num_valid == 0:
        raise InputError(
            "no query has a true match in the gallery (same pid, different camera): check that "
            "q_pids/g_pids use the same labels and that camids are per tracklet")
    ranks = np.arange(min(int(max_rank), num_gallery))
    cmc = (first_rank[valid, None] <= ranks[None, :]).mean(axis=0)
    return {
        "cmc": cmc,
        "mAP": float(average_precision[valid].mean()),
        "mINP": float(inverse_negative_penalty[valid].mean()),
        "num_valid_queries": num_valid,
        "num_skipped_queries": int(first_rank.shape[0] - num_valid),
    }


def evaluate(distmat, q_pids, g_pids, q_camids, g_camids, max_rank: int = 50) -> dict:
    """CMC / mAP / mINP of a distance matrix under the standard protocol (module docstring).

    distmat: [Q, G] distances (smaller = closer; float32 or float64, no NaN; for similarities
    use :func:`similarity_to_distance`). q_pids, q_camids: int [Q]; g_pids, g_camids: int [G].
    Returns {"cmc": float64 [min(max_rank, G)], "mAP": float, "mINP": float,
    "num_valid_queries": int, "num_skipped_queries": int}. Raises InputError on shape or dtype
    mismatch, NaN, or when no query has a true match.
    """
    return _evaluate_validated(*_validate(distmat, q_pids, g_pids, q_camids, g_camids, max_rank),
                               max_rank)


def _evaluate_validated(dist, q_pids, g_pids, q_camids, g_camids, max_rank: int) -> dict:
    """:func:`evaluate` on inputs that :func:`_validate` returned."""
    from reid_sdk import _ranking

    first_rank, ap, inp = _ranking.retrieval_ranks(dist, q_pids, g_pids, q_camids, g_camids)
    return _summarise(first_rank, ap, inp, max_rank, dist.shape[1])


def _kept_ranking(distances: np.ndarray, pid: int, camid: int, g_pids: np.ndarray,
                  g_camids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gallery positions of one query ranked by a stable sort, junk removed, and whether each
    is a true match."""
    order = np.argsort(distances, kind="stable")
    same_pid = g_pids[order] == pid
    junk = same_pid & (g_camids[order] == camid)
    return order[~junk], same_pid[~junk]


def evaluate_py(distmat, q_pids, g_pids, q_camids, g_camids, max_rank: int = 50) -> dict:
    """:func:`evaluate` in plain numpy (a stable sort per query); same arguments and result."""
    dist, q_pids, g_pids, q_camids, g_camids = _validate(distmat, q_pids, g_pids, q_camids,
                                                         g_camids, max_rank)
    num_queries = dist.shape[0]
    first_rank = np.full(num_queries, -1, dtype=np.int64)
    ap = np.full(num_queries, np.nan)
    inp = np.full(num_queries, np.nan)
    for q in range(num_queries):
        _, is_match = _kept_ranking(dist[q], q_pids[q], q_camids[q], g_pids, g_camids)
        match_ranks = np.flatnonzero(is_match)
        if match_ranks.size == 0:
            continue
        first_rank[q] = match_ranks[0]
        ap[q] = np.mean(np.arange(1, match_ranks.size + 1) / (match_ranks + 1))
        inp[q] = match_ranks.size / (match_ranks[-1] + 1)
    return _summarise(first_rank, ap, inp, max_rank, dist.shape[1])


def rank_lists(distmat, q_pids, g_pids, q_camids, g_camids, k: int = 10
               ) -> tuple[np.ndarray, np.ndarray]:
    """What a rank-list picture shows: per query the k nearest gallery items with junk (same
    pid and camera) removed, as the protocol ranks them.

    Returns (indices int64 [Q, k'], is_match bool [Q, k']) with k' = min(k, the fewest kept
    items of any query).
    """
    dist, q_pids, g_pids, q_camids, g_camids = _validate(distmat, q_pids, g_pids, q_camids,
                                                         g_camids, 1)
    rows = [_kept_ranking(dist[q], q_pids[q], q_camids[q], g_pids, g_camids)
            for q in range(dist.shape[0])]
    width = min([int(k)] + [len(order) for order, _ in rows])
    return (np.array([order[:width] for order, _ in rows], dtype=np.int64).reshape(-1, width),
            np.array([match[:width] for _, match in rows], dtype=bool).reshape(-1, width))


def similarity_to_distance(similarity) -> np.ndarray:
    """Distances for :func:`evaluate` from similarities [Q, G] (larger = closer): their negation.

    Negation is exact, so the order and every tie are kept (``1 - s`` would round nearby
    similarities together). For a cosine distance in [0, 2] to display, add 1.
    """
    sim = np.asarray(similarity)
    if sim.dtype.kind not in "iuf":
        raise InputError(f"similarity must be numeric, got dtype {sim.dtype}")
    return np.negative(sim if sim.dtype.kind == "f" else sim.astype(np.float64))


def _as_embeddings(values, name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 2 or arr.dtype.kind not in "iuf":
        raise InputError(f"{name} must be a numeric [N, D] array, got shape {arr.shape} and "
                         f"dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise InputError(f"{name} contains NaN or inf; check the embedding step")
    return arr


def l2_normalize(embeddings: np.ndarray, name: str = "embeddings") -> np.ndarray:
    """Rows scaled to unit L2 norm (float32 [N, D]); a zero row raises InputError."""
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    if (norms == 0).any():
        raise InputError(f"{name} has an all-zero row, which has no direction for the cosine "
                         f"metric (row {int(np.flatnonzero(norms[:, 0] == 0)[0])})")
    return (embeddings / norms).astype(np.float32)


def distance_matrix(queries, gallery, metric: str) -> np.ndarray:
    """Distances [Q, G] float32 between query [Q, D] and gallery [G, D] embeddings.

    metric: "cosine" (negated cosine similarity, see :func:`similarity_to_distance`),
    "euclidean" or "squared_euclidean" (on the embeddings as given, computed as
    ||q||^2 + ||g||^2 - 2 q.g clamped at 0, as the official KeyRe-ID test does).
    """
    if metric not in METRICS:
        raise InputError(f"metric {metric!r} is not one of {METRICS}")
    q = _as_embeddings(queries, "queries")
    g = _as_embeddings(gallery, "gallery")
    if q.shape[1] != g.shape[1]:
        raise InputError(f"queries have dimension {q.shape[1]} but the gallery has "
                         f"{g.shape[1]}: they must come from the same model")
    if metric == "cosine":
        return similarity_to_distance(l2_normalize(q, "queries") @ l2_normalize(g, "gallery").T)
    squared = (np.einsum("qd,qd->q", q, q)[:, None] + np.einsum("gd,gd->g", g, g)[None, :]
               - 2.0 * (q @ g.T))
    np.maximum(squared, 0.0, out=squared)
    return squared if metric == "squared_euclidean" else np.sqrt(squared)


def cmc_summary(result: dict, ranks: Sequence[int] = (1, 5, 10)) -> dict:
    """{"Rank-1": ..., "Rank-5": ..., "mAP": ..., "mINP": ...} from an :func:`evaluate` result
    (ranks beyond the CMC length are left out)."""
    summary = {f"Rank-{r}": float(result["cmc"][r - 1]) for r in ranks if r <= len(result["cmc"])}
    summary["mAP"] = result["mAP"]
    summary["mINP"] = result["mINP"]
    return summary


def evaluate_protocols(distmat, q_pids, g_pids, q_camids, g_camids, q_outfits=None,
                       g_outfits=None, max_rank: int = 50) -> dict:
    """The standard protocol and, given outfit labels, HAMoBE's clothes protocols
    (``evaluate_with_clothes``): ``same_clothes`` removes, per query, the gallery items of its
    identity in another outfit; ``clothes_changing`` removes those in the query's outfit.

    Returns {"standard": evaluate(...), "same_clothes": ..., "clothes_changing": ...} (the last
    two only with outfits), each with cmc / mAP / mINP / num_valid_queries /
    num_skipped_queries. Removal differs per query, so those two run query by query.
    """
    from reid_sdk import _ranking

    dist, q_pids, g_pids, q_camids, g_camids = _validate(distmat, q_pids, g_pids, q_camids,
                                                         g_camids, max_rank)
    results = {"standard": _evaluate_validated(dist, q_pids, g_pids, q_camids, g_camids,
                                               max_rank)}
    if q_outfits is None or g_outfits is None:
        return results
    q_outfits = _as_ids(q_outfits, dist.shape[0], "q_outfits", "one outfit id per query")
    g_outfits = _as_ids(g_outfits, dist.shape[1], "g_outfits", "one outfit id per gallery item")
    same_pid = q_pids[:, None] == g_pids[None, :]
    same_outfit = q_outfits[:, None] == g_outfits[None, :]
    for name, removed in (("same_clothes", same_pid & ~same_outfit),
                          ("clothes_changing", same_pid & same_outfit)):
        per_query = [_ranking.retrieval_ranks(
            np.ascontiguousarray(dist[q:q + 1, ~removed[q]]), q_pids[q:q + 1],
            g_pids[~removed[q]], q_camids[q:q + 1], g_camids[~removed[q]])
            for q in range(dist.shape[0])]
        first, ap, inp = (np.concatenate(column) for column in zip(*per_query))
        results[name] = _summarise(first, ap, inp, max_rank, dist.shape[1])
    return results
