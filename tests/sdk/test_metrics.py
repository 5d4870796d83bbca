"""CMC / mAP / mINP: the Cython path, the numpy path and a literal per-query loop agree on random
problems with ties and skipped queries; hand-worked cases; input errors."""
import numpy as np
import pytest

from reid_sdk.errors import InputError
import reid_sdk.metrics
from reid_sdk.metrics import (cmc_summary, distance_matrix, evaluate, evaluate_protocols,
                              evaluate_py, rank_lists, similarity_to_distance)


def literal_evaluate(distmat, q_pids, g_pids, q_camids, g_camids, max_rank, removed=None):
    """The protocol written out with Python lists, one query at a time; ``removed[q][j]`` drops
    gallery item j for query q before ranking (the clothes protocols)."""
    num_queries, num_gallery = len(distmat), len(distmat[0])
    max_rank = min(max_rank, num_gallery)
    cmc_hits = [0] * max_rank
    aps, inps, valid = [], [], 0
    for q in range(num_queries):
        ranked = sorted(range(num_gallery), key=lambda j: (float(distmat[q][j]), j))
        kept = [j for j in ranked if not (g_pids[j] == q_pids[q] and g_camids[j] == q_camids[q])
                and not (removed and removed[q][j])]
        hits = [g_pids[j] == q_pids[q] for j in kept]
        if not any(hits):
            continue
        valid += 1
        first = hits.index(True)
        for r in range(first, max_rank):
            cmc_hits[r] += 1
        found, precisions, last = 0, [], 0
        for position, hit in enumerate(hits):
            if hit:
                found += 1
                precisions.append(found / (position + 1))
                last = position
        aps.append(sum(precisions) / found)
        inps.append(found / (last + 1))
    return {"cmc": np.array(cmc_hits) / valid, "mAP": sum(aps) / valid, "mINP": sum(inps) / valid,
            "num_valid_queries": valid, "num_skipped_queries": num_queries - valid}


def random_problem(rng, num_queries, num_gallery, num_ids, num_cams, dtype, quantum):
    distmat = rng.random((num_queries, num_gallery))
    if quantum:                                  # coarse values: many exact ties
        distmat = np.round(distmat / quantum) * quantum
    q_pids = rng.integers(0, num_ids + 2, num_queries)
    q_pids[0] = num_ids                          # an identity the gallery lacks: skipped
    return (distmat.astype(dtype), q_pids, rng.integers(0, num_ids, num_gallery),
            rng.integers(0, num_cams, num_queries), rng.integers(0, num_cams, num_gallery))


def assert_same_result(a, b):
    assert a["num_valid_queries"] == b["num_valid_queries"]
    assert a["num_skipped_queries"] == b["num_skipped_queries"]
    np.testing.assert_allclose(a["cmc"], b["cmc"], rtol=0, atol=1e-12)
    assert a["mAP"] == pytest.approx(b["mAP"], abs=1e-12)
    assert a["mINP"] == pytest.approx(b["mINP"], abs=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("quantum", [0, 0.1, 0.5])
@pytest.mark.parametrize("shape", [(25, 120, 20, 3), (40, 60, 40, 2), (7, 300, 5, 6)])
def test_cython_numpy_and_literal_loop_agree(rng, dtype, quantum, shape):
    problem = random_problem(rng, *shape, dtype, quantum)
    reference = literal_evaluate(*[p.tolist() for p in problem], max_rank=50)
    assert reference["num_skipped_queries"] > 0
    fast = evaluate(*problem, max_rank=50)
    assert_same_result(fast, reference)
    assert_same_result(evaluate_py(*problem, max_rank=50), reference)
    assert fast["cmc"].shape == (50,)
    assert np.all(np.diff(fast["cmc"]) >= 0) and 0 < fast["mINP"] <= 1 and 0 < fast["mAP"] <= 1


def test_all_equal_distances_rank_by_gallery_position():
    # With every distance equal, the ranking is the gallery order: matches at positions 1 and
    # 3 of the kept list [g0, g1, g3, g4] (g2 is junk: same pid and camera).
    distmat = np.zeros((1, 5))
    result = evaluate(distmat, [7], [1, 7, 7, 2, 7], [0], [1, 1, 0, 1, 2])
    assert result["cmc"].tolist() == [0, 1, 1, 1, 1]
    assert result["mAP"] == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert result["mINP"] == pytest.approx(2 / 4)


def test_hand_worked_example():
    # Query 0 (pid 1, cam 0) ranks g3, g0, g1, g4, g2; g0 is junk (pid 1, cam 0), the matches
    # are g1 and g2, so the kept ranking is [g3, g1, g4, g2]: matches at ranks 2 and 4.
    # Query 1 (pid 5) has no match: skipped.
    distmat = np.array([[0.2, 0.3, 0.9, 0.1, 0.5],
                        [0.4, 0.1, 0.2, 0.3, 0.6]])
    args = (distmat, [1, 5], [1, 1, 1, 2, 3], [0, 0], [0, 1, 2, 0, 1])
    for fn in (evaluate, evaluate_py):
        result = fn(*args, max_rank=3)
        assert result["cmc"].tolist() == [0.0, 1.0, 1.0]
        assert result["mAP"] == pytest.approx((1 / 2 + 2 / 4) / 2)
        assert result["mINP"] == pytest.approx(2 / 4)
        assert (result["num_valid_queries"], result["num_skipped_queries"]) == (1, 1)
    assert cmc_summary(evaluate(*args, max_rank=3), ranks=(1, 3, 5)) == {
        "Rank-1": 0.0, "Rank-3": 1.0, "mAP": pytest.approx(0.5), "mINP": pytest.approx(0.5)}


def test_max_rank_is_capped_at_the_gallery_size(rng):
    problem = random_problem(rng, 10, 8, 3, 2, np.float64, 0)
    result = evaluate(*problem, max_rank=50)
    assert result["cmc"].shape == (8,)
    assert result["cmc"][-1] == 1.0                # every valid query has a match within G
    assert_same_result(result, literal_evaluate(*[p.tolist() for p in problem], max_rank=50))


def test_infinite_distances_are_ordered(rng):
    problem = list(random_problem(rng, 12, 40, 6, 3, np.float64, 0.25))
    problem[0][rng.random(problem[0].shape) < 0.3] = np.inf
    assert_same_result(evaluate(*problem), literal_evaluate(*[p.tolist() for p in problem], 50))


def test_similarity_to_distance_keeps_order_and_ties(rng):
    similarity = np.round(rng.uniform(-1, 1, (6, 30)), 1).astype(np.float32)
    distance = similarity_to_distance(similarity)
    assert distance.dtype == np.float32
    by_similarity_then_position = np.lexsort((np.tile(np.arange(30), (6, 1)), -similarity))
    np.testing.assert_array_equal(np.argsort(distance, axis=1, kind="stable"),
                                  by_similarity_then_position)


@pytest.mark.parametrize("metric", ["cosine", "euclidean", "squared_euclidean"])
def test_distance_matrix_against_float64_loops(rng, metric):
    queries = rng.normal(size=(5, 12))
    gallery = rng.normal(size=(9, 12)) * 3
    got = distance_matrix(queries, gallery, metric)
    expected = np.empty((5, 9))
    for i, q in enumerate(queries):
        for j, g in enumerate(gallery):
            if metric == "cosine":
                expected[i, j] = -np.dot(q, g) / np.sqrt(np.dot(q, q) * np.dot(g, g))
            else:
                expected[i, j] = np.sum((q - g) ** 2)
                if metric == "euclidean":
                    expected[i, j] = np.sqrt(expected[i, j])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_errors_name_the_problem(rng):
    distmat = rng.random((3, 4))
    good = ([1, 2, 3], [1, 2, 3, 1], [0, 0, 0], [1, 1, 1, 1])
    with pytest.raises(InputError, match="q_pids must be a 1-D array of length 3"):
        evaluate(distmat, [1, 2], *good[1:])
    with pytest.raises(InputError, match="g_camids must be a 1-D array of length 4"):
        evaluate(distmat, *good[:3], [1, 1, 1])
    with pytest.raises(InputError, match="2-D"):
        evaluate(distmat[0], *good)
    with pytest.raises(InputError, match="empty"):
        evaluate(np.zeros((0, 4)), [], good[1], [], good[3])
    nan = distmat.copy()
    nan[1, 2] = np.nan
    with pytest.raises(InputError, match="NaN"):
        evaluate(nan, *good)
    with pytest.raises(InputError, match="integers.*np.unique"):
        evaluate(distmat, ["a", "b", "c"], *good[1:])
    with pytest.raises(InputError, match="max_rank"):
        evaluate(distmat, *good, max_rank=0)
    with pytest.raises(InputError, match="no query has a true match"):
        evaluate(distmat, [9, 9, 9], *good[1:])
    with pytest.raises(InputError, match="dimension 12 but the gallery has 13"):
        distance_matrix(rng.normal(size=(2, 12)), rng.normal(size=(2, 13)), "cosine")
    with pytest.raises(InputError, match="metric 'cos'"):
        distance_matrix(rng.normal(size=(2, 12)), rng.normal(size=(2, 12)), "cos")


def test_rank_lists_drop_junk_and_mark_matches(rng):
    distmat, q_pids, g_pids, q_camids, g_camids = random_problem(rng, 9, 40, 4, 2, np.float64,
                                                                 0.2)
    indices, is_match = rank_lists(distmat, q_pids, g_pids, q_camids, g_camids, k=7)
    assert indices.shape == is_match.shape == (9, 7)
    for q in range(9):
        ranked = sorted(range(40), key=lambda j: (distmat[q, j], j))
        kept = [j for j in ranked if not (g_pids[j] == q_pids[q] and g_camids[j] == q_camids[q])]
        assert indices[q].tolist() == kept[:7]
        assert is_match[q].tolist() == [bool(g_pids[j] == q_pids[q]) for j in kept[:7]]
    # k beyond what every query keeps: cut to the shortest kept list
    narrow, _ = rank_lists(distmat[:, :3], q_pids, g_pids[:3], q_camids, g_camids[:3], k=10)
    kept_counts = [sum(not (g_pids[j] == q_pids[q] and g_camids[j] == q_camids[q])
                       for j in range(3)) for q in range(9)]
    assert narrow.shape == (9, min(kept_counts))


def test_clothes_protocols_against_the_literal_loop(rng, monkeypatch):
    distmat, q_pids, g_pids, q_camids, g_camids = random_problem(rng, 30, 150, 12, 3, np.float64,
                                                                 0.1)
    q_outfits, g_outfits = rng.integers(0, 3, 30), rng.integers(0, 3, 150)
    validations = []
    validate = reid_sdk.metrics._validate
    monkeypatch.setattr(reid_sdk.metrics, "_validate",
                        lambda *args: validations.append(1) or validate(*args))
    results = evaluate_protocols(distmat, q_pids, g_pids, q_camids, g_camids, q_outfits,
                                 g_outfits, max_rank=20)
    assert len(validations) == 1                 # the inputs are checked once for all protocols
    problem = [p.tolist() for p in (distmat, q_pids, g_pids, q_camids, g_camids)]
    assert_same_result(results["standard"], literal_evaluate(*problem, max_rank=20))
    same_pid = q_pids[:, None] == g_pids[None, :]
    same_outfit = q_outfits[:, None] == g_outfits[None, :]
    for name, removed in (("same_clothes", same_pid & ~same_outfit),
                          ("clothes_changing", same_pid & same_outfit)):
        assert_same_result(results[name], literal_evaluate(*problem, max_rank=20,
                                                           removed=removed.tolist()))
    assert set(evaluate_protocols(distmat, q_pids, g_pids, q_camids, g_camids)) == {"standard"}
