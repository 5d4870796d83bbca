# cython: language_level=3
"""reid_sdk._ranking: streaming top-k gallery search and per-query retrieval ranks, in C loops
with the GIL released.

Ordering rule (search and evaluation alike): items are ordered by score, best first
(similarity descending, distance ascending); items with exactly equal scores are ordered by
ascending gallery position, i.e. insertion order. This is what ``np.argsort(..., kind="stable")``
gives on distances (or on negated similarities), so a brute-force numpy reference reproduces
every result, ties included.

Callers (``reid_sdk.gallery``, ``reid_sdk.metrics``) validate inputs: the functions here expect
finite values and contiguous arrays of the documented dtypes.
"""
import numpy as np

from libc.math cimport sqrt
from libc.stdint cimport int64_t
from libc.stdlib cimport free, malloc, qsort

from cython cimport floating

__all__ = ["METRIC_CODES", "topk_search", "retrieval_ranks"]

# Metric name -> code used in the C loops. Cosine expects L2-normalised vectors (the score is
# then their dot product); the two distances use ||q||^2 + ||g||^2 - 2 q.g, clamped at 0.
METRIC_CODES = {"cosine": 0, "squared_euclidean": 1, "euclidean": 2}
DEFAULT_QUERY_BLOCK = 1024
# Scores held at once when the chunk size is chosen automatically: 8 Mi float32 = 32 MiB. Few
# queries then get long chunks: each BLAS call has a fixed cost (thread wake-up), which
# short chunks would pay many times.
TILE_ELEMENTS = 1 << 23


# --------------------------------------------------------------------------------------------
# Streaming top-k
# --------------------------------------------------------------------------------------------
# Each query keeps a binary heap of its k best items so far, keyed by (key, gallery position);
# the key is the similarity, or minus the distance, so that larger is always better. The root
# is the worst kept item, so a candidate that is not strictly better than the root is dropped
# with one comparison. Chunks arrive in ascending gallery position, so a candidate whose key
# equals the root's has a larger position and loses the tie: the strict test implements the
# tie rule without looking at positions in the hot path.

cdef inline bint _worse(float key_a, int64_t pos_a, float key_b, int64_t pos_b) noexcept nogil:
    return key_a < key_b or (key_a == key_b and pos_a > pos_b)


cdef inline void _sift_down(float* keys, int64_t* pos, Py_ssize_t size,
                            Py_ssize_t i) noexcept nogil:
    cdef Py_ssize_t child
    cdef float key = keys[i]
    cdef int64_t p = pos[i]
    while True:
        child = 2 * i + 1
        if child >= size:
            break
        if child + 1 < size and _worse(keys[child + 1], pos[child + 1], keys[child], pos[child]):
            child += 1
        if not _worse(keys[child], pos[child], key, p):
            break
        keys[i] = keys[child]
        pos[i] = pos[child]
        i = child
    keys[i] = key
    pos[i] = p


cdef inline void _push(float* keys, int64_t* pos, Py_ssize_t size, float key,
                       int64_t p) noexcept nogil:
    cdef Py_ssize_t i = size, parent
    while i > 0:
        parent = (i - 1) // 2
        if not _worse(key, p, keys[parent], pos[parent]):
            break
        keys[i] = keys[parent]
        pos[i] = pos[parent]
        i = parent
    keys[i] = key
    pos[i] = p


cdef void _merge_chunk(const float[:, ::1] dots, const float[::1] query_sq_norms,
                       const float[::1] gallery_sq_norms, Py_ssize_t query_start,
                       Py_ssize_t gallery_start, int metric_code, float[:, ::1] heap_keys,
                       int64_t[:, ::1] heap_pos, int64_t[::1] heap_size) noexcept nogil:
    """Folds dots[q, j] = <query query_start+q, gallery item gallery_start+j> into the heaps."""
    cdef Py_ssize_t num_queries = dots.shape[0], chunk = dots.shape[1], k = heap_keys.shape[1]
    cdef Py_ssize_t q, j, row, size
    cdef float key, sq, qn
    cdef float* keys
    cdef int64_t* pos
    for q in range(num_queries):
        row = query_start + q
        keys = &heap_keys[row, 0]
        pos = &heap_pos[row, 0]
        size = heap_size[row]
        qn = query_sq_norms[row] if metric_code != 0 else 0.0
        for j in range(chunk):
            if metric_code == 0:
                key = dots[q, j]
            else:
                sq = qn + gallery_sq_norms[gallery_start + j] - 2.0 * dots[q, j]
                if sq < 0.0:  # cancellation of nearly equal vectors
                    sq = 0.0
                key = -sq if metric_code == 1 else -sqrt(sq)
            if size < k:
                _push(keys, pos, size, key, gallery_start + j)
                size += 1
            elif key > keys[0]:
                keys[0] = key
                pos[0] = gallery_start + j
                _sift_down(keys, pos, size, 0)
        heap_size[row] = size


cdef void _sort_heaps(float[:, ::1] heap_keys, int64_t[:, ::1] heap_pos,
                      const int64_t[::1] heap_size) noexcept nogil:
    """Heap sort in place: moving the worst item to the end each time leaves each row best first."""
    cdef Py_ssize_t row, end
    cdef float key
    cdef int64_t p
    for row in range(heap_keys.shape[0]):
        end = heap_size[row] - 1
        while end > 0:
            key = heap_keys[row, 0]
            p = heap_pos[row, 0]
            heap_keys[row, 0] = heap_keys[row, end]
            heap_pos[row, 0] = heap_pos[row, end]
            heap_keys[row, end] = key
            heap_pos[row, end] = p
            _sift_down(&heap_keys[row, 0], &heap_pos[row, 0], end, 0)
            end -= 1


def topk_search(queries, gallery, Py_ssize_t k, str metric, gallery_sq_norms=None, *,
                chunk_size=None, Py_ssize_t query_block=DEFAULT_QUERY_BLOCK):
    """Top-k gallery positions and scores for each query, streaming over gallery chunks.

    queries: float32 [Q, D] C-contiguous; gallery: float32 [G, D] C-contiguous (for "cosine"
    both L2-normalised); gallery_sq_norms: float32 [G] squared L2 norms of the gallery rows
    (needed for the two euclidean metrics, ignored for cosine). k >= 1. chunk_size: gallery
    rows scored per BLAS call; None chooses TILE_ELEMENTS // min(Q, query_block).
    Returns (positions int64 [Q, min(k, G)], scores float32 [Q, min(k, G)]), best first:
    similarity descending for "cosine", distance ascending for "euclidean" /
    "squared_euclidean"; equal scores by ascending gallery position.

    Scores of a (query block x gallery chunk) tile are computed by BLAS (numpy matmul) into one
    reused buffer, then folded into per-query heaps in C: working memory is
    min(Q, query_block) x min(G, chunk_size) float32 (32 MiB with the automatic chunk size)
    plus the [Q, k] result, never Q x G.
    """
    if metric not in METRIC_CODES:
        raise ValueError(f"metric {metric!r} is not one of {sorted(METRIC_CODES)}")
    if k < 1 or query_block < 1 or (chunk_size is not None and chunk_size < 1):
        raise ValueError("k, chunk_size and query_block must be >= 1")
    cdef int metric_code = METRIC_CODES[metric]
    cdef Py_ssize_t num_queries = queries.shape[0], num_gallery = gallery.shape[0]
    cdef Py_ssize_t kept = min(k, num_gallery)
    if gallery.ndim != 2 or queries.ndim != 2 or queries.shape[1] != gallery.shape[1]:
        raise ValueError(f"queries {queries.shape} and gallery {gallery.shape} must be [Q, D] "
                         "and [G, D] with the same D")

    heap_keys_arr = np.empty((num_queries, kept), dtype=np.float32)
    heap_pos_arr = np.empty((num_queries, kept), dtype=np.int64)
    heap_size_arr = np.zeros(num_queries, dtype=np.int64)
    cdef float[:, ::1] heap_keys = heap_keys_arr
    cdef int64_t[:, ::1] heap_pos = heap_pos_arr
    cdef int64_t[::1] heap_size = heap_size_arr
    if kept == 0 or num_queries == 0:
        return heap_pos_arr, heap_keys_arr

    if metric_code == 0:
        query_sq_norms_arr = np.zeros(0, dtype=np.float32)
        gallery_sq_norms_arr = np.zeros(0, dtype=np.float32)
    else:
        query_sq_norms_arr = np.einsum("qd,qd->q", queries, queries)
        gallery_sq_norms_arr = np.ascontiguousarray(gallery_sq_norms, dtype=np.float32)
        if gallery_sq_norms_arr.shape != (num_gallery,):
            raise ValueError(f"gallery_sq_norms must have shape ({num_gallery},)")
    cdef const float[::1] query_sq_norms = query_sq_norms_arr
    cdef const float[::1] gallery_norms = gallery_sq_norms_arr

    cdef Py_ssize_t block = min(query_block, num_queries)
    if chunk_size is None:
        chunk_size = max(1, TILE_ELEMENTS // block)
    cdef Py_ssize_t chunk = min(chunk_size, num_gallery)
    tile_buffer = np.empty(block * chunk, dtype=np.float32)
    cdef const float[:, ::1] tile
    cdef Py_ssize_t q0, q1, g0, g1
    for q0 in range(0, num_queries, block):
        q1 = min(q0 + block, num_queries)
        query_rows = queries[q0:q1]
        for g0 in range(0, num_gallery, chunk):
            g1 = min(g0 + chunk, num_gallery)
            tile_arr = tile_buffer[:(q1 - q0) * (g1 - g0)].reshape(q1 - q0, g1 - g0)
            np.matmul(query_rows, gallery[g0:g1].T, out=tile_arr)
            tile = tile_arr
            with nogil:
                _merge_chunk(tile, query_sq_norms, gallery_norms, q0, g0, metric_code,
                             heap_keys, heap_pos, heap_size)
    with nogil:
        _sort_heaps(heap_keys, heap_pos, heap_size)
    if metric_code != 0:
        np.negative(heap_keys_arr, out=heap_keys_arr)
    return heap_pos_arr, heap_keys_arr


# --------------------------------------------------------------------------------------------
# Retrieval ranks for CMC / mAP / mINP
# --------------------------------------------------------------------------------------------
# Per query, only the positions of the true matches in the ranked list matter. Instead of
# sorting the whole gallery row, the matches are sorted by (distance, position) and every
# non-match counts, by binary search, how many matches precede it: O(G log P) per query with P
# true matches, no [Q, G] index matrix.

cdef struct _Ranked:
    double distance
    int64_t position


cdef int _compare_ranked(const void* a, const void* b) noexcept nogil:
    cdef const _Ranked* x = <const _Ranked*>a
    cdef const _Ranked* y = <const _Ranked*>b
    if x.distance < y.distance:
        return -1
    if x.distance > y.distance:
        return 1
    return (x.position > y.position) - (x.position < y.position)


cdef inline Py_ssize_t _count_before(const _Ranked* matches, Py_ssize_t num_matches,
                                     double distance, int64_t position) noexcept nogil:
    """Number of matches ordered before (distance, position)."""
    cdef Py_ssize_t lo = 0, hi = num_matches, mid
    while lo < hi:
        mid = (lo + hi) // 2
        if (matches[mid].distance < distance
                or (matches[mid].distance == distance and matches[mid].position < position)):
            lo = mid + 1
        else:
            hi = mid
    return lo


cdef void _query_ranks(const floating[:, ::1] distmat, const int64_t[::1] q_pids,
                      const int64_t[::1] g_pids, const int64_t[::1] q_camids,
                      const int64_t[::1] g_camids, int64_t[::1] first_rank,
                      double[::1] average_precision, double[::1] inverse_negative_penalty,
                      _Ranked* matches, int64_t* negatives_before) noexcept nogil:
    cdef Py_ssize_t num_gallery = distmat.shape[1], q, j, m, num_matches, rank
    cdef int64_t pid, camid
    cdef double precision_sum
    for q in range(distmat.shape[0]):
        pid = q_pids[q]
        camid = q_camids[q]
        num_matches = 0
        for j in range(num_gallery):
            if g_pids[j] == pid and g_camids[j] != camid:
                matches[num_matches].distance = distmat[q, j]
                matches[num_matches].position = j
                num_matches += 1
        if num_matches == 0:
            first_rank[q] = -1
            continue
        qsort(matches, num_matches, sizeof(_Ranked), _compare_ranked)
        for m in range(num_matches + 1):
            negatives_before[m] = 0
        for j in range(num_gallery):
            if g_pids[j] != pid:  # same pid: a match, or junk (same camera) that is left out
                negatives_before[_count_before(matches, num_matches, distmat[q, j], j)] += 1
        # negatives_before[m] now counts the non-matches between match m-1 and match m.
        precision_sum = 0.0
        rank = 0
        for m in range(num_matches):
            rank += negatives_before[m] + (1 if m > 0 else 0)
            if m == 0:
                first_rank[q] = rank
            precision_sum += (m + 1.0) / (rank + 1.0)
        average_precision[q] = precision_sum / num_matches
        inverse_negative_penalty[q] = num_matches / (rank + 1.0)


def retrieval_ranks(distmat, q_pids, g_pids, q_camids, g_camids):
    """Per-query retrieval figures under the standard protocol, from a distance matrix.

    distmat: float32 or float64 [Q, G] C-contiguous, smaller = closer, no NaN; pids / camids:
    int64 C-contiguous [Q] and [G]. Gallery items with the query's pid and camera are removed;
    items with the query's pid from another camera are the true matches. Ties: ascending
    gallery position.
    Returns (first_rank int64 [Q]: 0-based rank of the first true match among the kept items,
    -1 where the query has none (skipped); average_precision float64 [Q]; inverse negative
    penalty float64 [Q] = matches / (rank of the last match + 1); both NaN for skipped queries).
    """
    num_queries, num_gallery = distmat.shape
    first_rank_arr = np.full(num_queries, -1, dtype=np.int64)
    ap_arr = np.full(num_queries, np.nan, dtype=np.float64)
    inp_arr = np.full(num_queries, np.nan, dtype=np.float64)
    cdef int64_t[::1] first_rank = first_rank_arr
    cdef double[::1] ap = ap_arr
    cdef double[::1] inp = inp_arr
    cdef const int64_t[::1] qp = q_pids, gp = g_pids, qc = q_camids, gc = g_camids
    cdef const float[:, ::1] dist32
    cdef const double[:, ::1] dist64
    cdef _Ranked* matches = <_Ranked*>malloc(max(num_gallery, 1) * sizeof(_Ranked))
    cdef int64_t* negatives_before = <int64_t*>malloc((num_gallery + 1) * sizeof(int64_t))
    if matches == NULL or negatives_before == NULL:
        free(matches)
        free(negatives_before)
        raise MemoryError(f"cannot allocate ranking buffers for a gallery of {num_gallery}")
    try:
        if distmat.dtype == np.float32:
            dist32 = distmat
            with nogil:
                _query_ranks(dist32, qp, gp, qc, gc, first_rank, ap, inp, matches,
                             negatives_before)
        else:
            dist64 = distmat
            with nogil:
                _query_ranks(dist64, qp, gp, qc, gc, first_rank, ap, inp, matches,
                             negatives_before)
    finally:
        free(matches)
        free(negatives_before)
    return first_rank_arr, ap_arr, inp_arr
