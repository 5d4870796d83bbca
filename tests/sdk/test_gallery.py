"""Gallery: exact streaming top-k search against numpy brute force (ties included), add/remove,
the file format (round trip, corruption, atomic save)."""
import errno
import io
import json
import os
import tracemalloc
import zipfile

import numpy as np
import pytest

from reid_sdk import _ranking
from reid_sdk.errors import GalleryError, InputError
from reid_sdk.gallery import Gallery

METRICS = ("cosine", "euclidean", "squared_euclidean")


# -- data whose scores are exact in float32, so brute force and search must agree bit for bit --
def tied_unit_vectors(rng, n, dim=16, nonzeros=4):
    """Unit vectors with `nonzeros` entries of +-0.5: every dot product is a multiple of 0.25,
    exact whatever the summation order, and only 9 values exist, so ties are everywhere."""
    out = np.zeros((n, dim), dtype=np.float32)
    for row in out:
        cols = rng.choice(dim, size=nonzeros, replace=False)
        row[cols] = rng.choice([-0.5, 0.5], size=nonzeros)
    return out


def tied_integer_vectors(rng, n, dim=8):
    """Small integer vectors: squared distances are exact small integers, with many ties."""
    return rng.integers(-2, 3, size=(n, dim)).astype(np.float32)


def brute_force(queries, gallery, k, metric):
    """Positions and scores by float64 arithmetic written differently from the search
    (differences, not norms and dot products) and a stable full sort."""
    q = queries.astype(np.float64)
    g = gallery.astype(np.float64)
    if metric == "cosine":
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        g = g / np.linalg.norm(g, axis=1, keepdims=True)
        scores = q @ g.T
        order = np.argsort(-scores, axis=1, kind="stable")
    else:
        scores = ((q[:, None, :] - g[None, :, :]) ** 2).sum(axis=2)
        if metric == "euclidean":
            scores = np.sqrt(scores)
        order = np.argsort(scores, axis=1, kind="stable")
    order = order[:, :k]
    return order, np.take_along_axis(scores, order, axis=1).astype(np.float32), scores


def exact_data(rng, metric, n_query, n_gallery):
    make = tied_unit_vectors if metric == "cosine" else tied_integer_vectors
    return make(rng, n_query), make(rng, n_gallery)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("chunk_size", [1, 7, 63, 64, 65, 1000])
@pytest.mark.parametrize("k", [1, 5, 64, 100])
def test_search_equals_brute_force_with_ties(rng, metric, chunk_size, k):
    queries, gallery_vectors = exact_data(rng, metric, 9, 64)
    ids = rng.permutation(10_000)[:64]
    gallery = Gallery(gallery_vectors.shape[1], metric, chunk_size=chunk_size)
    gallery.add(ids, gallery_vectors)
    found_ids, found_scores = gallery.search(queries, k)

    order, ref_scores, _ = brute_force(queries, gallery_vectors, k, metric)
    assert found_ids.shape == found_scores.shape == (9, min(k, 64))
    assert found_scores.dtype == np.float32
    np.testing.assert_array_equal(found_ids, ids[order])
    np.testing.assert_array_equal(found_scores, ref_scores)


@pytest.mark.parametrize("metric", METRICS)
def test_many_exact_ties_follow_insertion_order(metric):
    # every gallery item is one of two vectors: each query sees two blocks of equal scores,
    # which must come back in insertion order.
    base = np.eye(4, dtype=np.float32)[:2] * 2
    pattern = np.array([0, 1, 1, 0, 0, 1, 0, 1, 1, 1, 0, 0])
    gallery = Gallery(4, metric, chunk_size=5)
    gallery.add([f"item{i}" for i in range(12)], base[pattern])
    ids, _ = gallery.search(base[:1], k=12)
    expected = [f"item{i}" for i in np.flatnonzero(pattern == 0)] + \
               [f"item{i}" for i in np.flatnonzero(pattern == 1)]
    assert ids[0].tolist() == expected


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("query_block", [1, 3, 50])
def test_topk_kernel_query_blocks(rng, metric, query_block):
    queries, gallery_vectors = exact_data(rng, metric, 11, 40)
    if metric == "cosine":
        norms = None
    else:
        norms = (gallery_vectors.astype(np.float64) ** 2).sum(1).astype(np.float32)
    positions, scores = _ranking.topk_search(queries, gallery_vectors, 6, metric, norms,
                                             chunk_size=9, query_block=query_block)
    order, ref_scores, _ = brute_force(queries, gallery_vectors, 6, metric)
    np.testing.assert_array_equal(positions, order)
    np.testing.assert_array_equal(scores, ref_scores)


@pytest.mark.parametrize("metric", METRICS)
def test_search_random_continuous_data(rng, metric):
    # Rounding differs between chunked float32 BLAS and the float64 reference, so compare the
    # score lists within tolerance and check every returned id really has its returned score.
    queries = rng.normal(size=(20, 48)).astype(np.float32)
    vectors = rng.normal(size=(700, 48)).astype(np.float32) * rng.uniform(0.5, 2, (700, 1))
    gallery = Gallery(48, metric, chunk_size=128)
    ids = np.arange(700) * 3 + 1
    gallery.add(ids, vectors.astype(np.float32))
    found_ids, found_scores = gallery.search(queries, 25)
    _, ref_scores, full = brute_force(queries, vectors, 25, metric)
    tol = dict(rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(found_scores, ref_scores, **tol)
    np.testing.assert_allclose(np.take_along_axis(full, (found_ids - 1) // 3, axis=1),
                               found_scores, **tol)
    assert all(len(set(row)) == 25 for row in found_ids.tolist())


def test_k_larger_than_gallery_returns_every_item_once(rng):
    gallery = Gallery(8, "euclidean")
    vectors = tied_integer_vectors(rng, 5)
    gallery.add([10, 11, 12, 13, 14], vectors)
    ids, scores = gallery.search(tied_integer_vectors(rng, 3), k=50)
    assert ids.shape == scores.shape == (3, 5)
    assert all(sorted(row) == [10, 11, 12, 13, 14] for row in ids.tolist())
    assert (np.diff(scores, axis=1) >= 0).all()


def test_empty_gallery_search_returns_no_columns(rng):
    ids, scores = Gallery(8).search(rng.normal(size=(2, 8)), k=3)
    assert ids.shape == scores.shape == (2, 0)


def test_single_vector_query_is_one_row(rng):
    gallery = Gallery(16)
    gallery.add([1, 2, 3], tied_unit_vectors(rng, 3))
    ids, scores = gallery.search(tied_unit_vectors(rng, 1)[0], k=2)
    assert ids.shape == scores.shape == (1, 2)


@pytest.mark.parametrize("num_queries, size, chunk_size, bound", [
    (64, 40_000, 500, 64 * 40_000 * 4 / 8),
    # automatic chunks: a 32 MiB tile where the full matrix would take 80 MiB
    (1024, 20_000, None, 34 * 2**20),
])
def test_search_memory_is_bounded_by_the_chunk(rng, num_queries, size, chunk_size, bound):
    queries = rng.normal(size=(num_queries, 4)).astype(np.float32)
    gallery = Gallery(4, "squared_euclidean", chunk_size=chunk_size)
    gallery.add(np.arange(size), rng.normal(size=(size, 4)).astype(np.float32))
    tracemalloc.start()
    try:
        gallery.search(queries, k=10)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < bound < num_queries * size * 4, f"search peaked at {peak} bytes"


# -- add / remove -------------------------------------------------------------------------------
def assert_holds_exactly(gallery, rng, metric, item_ids, vectors, cameras, k):
    """The gallery holds these items (ids, cameras) in this order, and its search of fresh
    queries equals brute force over ``vectors``."""
    assert gallery.ids.tolist() == item_ids.tolist()
    assert len(gallery) == len(item_ids)
    assert gallery.cameras.tolist() == cameras.tolist()
    queries = exact_data(rng, metric, 6, 1)[0]
    ids, scores = gallery.search(queries, k=k)
    order, ref_scores, _ = brute_force(queries, vectors, k, metric)
    np.testing.assert_array_equal(ids, item_ids[order])
    np.testing.assert_array_equal(scores, ref_scores)


@pytest.mark.parametrize("metric", METRICS)
def test_remove_then_add_keeps_insertion_order(rng, metric):
    first, second = exact_data(rng, metric, 30, 30)
    gallery = Gallery(first.shape[1], metric, chunk_size=8)
    gallery.add(np.arange(30), first)
    gallery.add(np.arange(100, 130), second, cameras=np.arange(30) % 4)
    removed = rng.choice(np.r_[np.arange(30), np.arange(100, 130)], size=17, replace=False)
    gallery.remove(removed)
    gallery.add([5000], first[:1])              # a vector equal to item 0: ties with it
    all_ids = np.r_[np.arange(30), np.arange(100, 130), [5000]]
    all_vectors = np.concatenate([first, second, first[:1]])
    keep = ~np.isin(all_ids, removed)
    cams = np.r_[np.full(30, -1), np.arange(30) % 4, [-1]]
    assert_holds_exactly(gallery, rng, metric, all_ids[keep], all_vectors[keep], cams[keep], 20)


def test_reserve_then_add_in_pieces(rng):
    vectors = tied_unit_vectors(rng, 50)
    gallery = Gallery(16)
    gallery.reserve(50)
    for start in range(0, 50, 7):
        gallery.add(range(start, min(start + 7, 50)), vectors[start:start + 7])
    np.testing.assert_array_equal(gallery.embeddings, vectors)
    with pytest.raises(ValueError):
        gallery.embeddings[0, 0] = 1.0          # a read-only view


def test_add_validation_names_the_problem(rng):
    gallery = Gallery(8)
    gallery.add(["a", "b"], rng.normal(size=(2, 8)))
    with pytest.raises(GalleryError, match="dimension 7"):
        gallery.add(["c"], rng.normal(size=(1, 7)))
    bad = rng.normal(size=(3, 8))
    bad[1, 4] = np.nan
    with pytest.raises(InputError, match="rows 1 contain NaN"):
        gallery.add(["c", "d", "e"], bad)
    bad[1, 4] = np.inf
    with pytest.raises(InputError, match="NaN or inf"):
        gallery.add(["c", "d", "e"], bad)
    with pytest.raises(GalleryError, match="duplicate ids.*'c'"):
        gallery.add(["c", "c"], rng.normal(size=(2, 8)))
    with pytest.raises(GalleryError, match="already in the gallery: 'a'"):
        gallery.add(["a"], rng.normal(size=(1, 8)))
    with pytest.raises(GalleryError, match="holds str ids"):
        gallery.add([3], rng.normal(size=(1, 8)))
    with pytest.raises(GalleryError, match="mix integers and strings"):
        Gallery(8).add([1, "x"], rng.normal(size=(2, 8)))
    with pytest.raises(GalleryError, match="2 ids for 3 embeddings"):
        gallery.add(["x", "y"], rng.normal(size=(3, 8)))
    with pytest.raises(GalleryError, match="single str"):
        gallery.add("x", rng.normal(size=(1, 8)))
    with pytest.raises(InputError, match="all zero"):
        gallery.add(["z"], np.zeros((1, 8)))
    with pytest.raises(InputError, match="cameras must be 1 non-negative"):
        gallery.add(["z"], rng.normal(size=(1, 8)), cameras=[-1])
    with pytest.raises(InputError, match="JSON-serialisable"):
        gallery.add(["z"], rng.normal(size=(1, 8)), meta=[{"x": object()}])
    with pytest.raises(InputError, match="float32"):
        Gallery(8, "euclidean").add([1], np.full((1, 8), 1e30))
    assert gallery.ids.tolist() == ["a", "b"]   # every failed add left it unchanged
    with pytest.raises(InputError, match="metric 'dot'"):
        Gallery(8, "dot")
    with pytest.raises(InputError, match="k must be a positive integer"):
        gallery.search(rng.normal(size=(1, 8)), k=0)
    with pytest.raises(GalleryError, match="dimension 9"):
        gallery.search(rng.normal(size=(1, 9)), k=1)


def test_remove_unknown_ids_removes_nothing(rng):
    gallery = Gallery(8)
    gallery.add([1, 2, 3], rng.normal(size=(3, 8)))
    with pytest.raises(GalleryError, match="not in the gallery: 7"):
        gallery.remove([2, 7])
    assert gallery.ids.tolist() == [1, 2, 3]
    gallery.remove(np.array([2]))
    assert gallery.ids.tolist() == [1, 3] and 2 not in gallery and 3 in gallery


# -- files -------------------------------------------------------------------------------------
def filled_gallery(rng, metric="cosine", ids=None):
    vectors = exact_data(rng, metric, 1, 40)[1]
    gallery = Gallery(vectors.shape[1], metric)
    ids = [f"person-{i:03d}" for i in range(40)] if ids is None else ids
    gallery.add(ids, vectors, cameras=rng.integers(0, 6, 40),
                meta=[{"frames": int(i), "path": f"t/{i}"} if i % 3 else None for i in range(40)])
    return gallery


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("int_ids", [False, True])
def test_save_load_round_trip(tmp_path, rng, metric, int_ids):
    gallery = filled_gallery(rng, metric, ids=list(range(500, 540)) if int_ids else None)
    gallery.remove(gallery.ids[[3, 17]])
    path = tmp_path / "people.gallery"
    gallery.save(path)
    loaded = Gallery.load(path)
    assert (loaded.dim, loaded.metric, len(loaded)) == (gallery.dim, metric, 38)
    assert loaded.ids.tolist() == gallery.ids.tolist()
    assert loaded.ids.dtype.kind == ("i" if int_ids else "U")
    np.testing.assert_array_equal(loaded.embeddings, gallery.embeddings)
    assert loaded.cameras.tolist() == gallery.cameras.tolist()
    assert loaded.meta == gallery.meta
    queries = exact_data(rng, metric, 5, 1)[0]
    for a, b in zip(loaded.search(queries, 12), gallery.search(queries, 12)):
        np.testing.assert_array_equal(a, b)
    with np.load(path) as npz:                   # an npz: numpy opens it as well
        np.testing.assert_array_equal(npz["embeddings"], gallery.embeddings)
    loaded.add([999 if int_ids else "new"], exact_data(rng, metric, 1, 1)[0])
    assert len(loaded) == 39


def test_empty_gallery_round_trip(tmp_path):
    Gallery(12, "euclidean").save(tmp_path / "empty.gallery")
    loaded = Gallery.load(tmp_path / "empty.gallery")
    assert (len(loaded), loaded.dim, loaded.metric) == (0, 12, "euclidean")


def rewrite_zip(src, dst, edit):
    """Copies a gallery zip, letting `edit(name, data) -> data | None` change or drop members
    (the zip's own CRCs are recomputed, so only our checks can notice)."""
    with zipfile.ZipFile(src) as archive:
        members = [(info.filename, archive.read(info.filename)) for info in archive.infolist()]
    with zipfile.ZipFile(dst, "w") as archive:
        for name, data in members:
            data = edit(name, data)
            if data is not None:
                archive.writestr(name, data)


def test_content_changed_behind_the_zip_fails_the_checksum(tmp_path, rng):
    path = tmp_path / "g.gallery"
    filled_gallery(rng).save(path)

    def flip_one_float(name, data):
        if name != "embeddings.npy":
            return data
        data = bytearray(data)
        data[-7] ^= 0x10
        return bytes(data)

    rewrite_zip(path, tmp_path / "flipped.gallery", flip_one_float)
    with pytest.raises(GalleryError, match="fails its checksum"):
        Gallery.load(tmp_path / "flipped.gallery")

    def edit_meta(name, data):
        if name != "header.json":
            return data
        header = json.loads(data)
        header["meta"][1]["frames"] = 7
        return json.dumps(header)

    rewrite_zip(path, tmp_path / "meta.gallery", edit_meta)
    with pytest.raises(GalleryError, match="fails its checksum"):
        Gallery.load(tmp_path / "meta.gallery")


def test_byte_flip_in_the_file_is_detected(tmp_path, rng):
    path = tmp_path / "g.gallery"
    filled_gallery(rng).save(path)
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0xFF                 # inside the embeddings
    path.write_bytes(bytes(data))
    with pytest.raises(GalleryError, match="corrupt"):
        Gallery.load(path)


@pytest.mark.parametrize("keep_fraction", [0.0, 0.1, 0.5, 0.99])
def test_truncated_file(tmp_path, rng, keep_fraction):
    path = tmp_path / "g.gallery"
    filled_gallery(rng).save(path)
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep_fraction)])
    with pytest.raises(GalleryError, match="corrupt|truncated|not a"):
        Gallery.load(path)


def test_wrong_format_files(tmp_path, rng):
    with pytest.raises(GalleryError, match="no gallery file"):
        Gallery.load(tmp_path / "absent.gallery")
    (tmp_path / "noise.bin").write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(GalleryError, match="not a gallery file"):
        Gallery.load(tmp_path / "noise.bin")
    np.savez(tmp_path / "plain.npz", embeddings=rng.normal(size=(3, 4)))
    with pytest.raises(GalleryError, match="not a reid-sdk gallery .no header.json"):
        Gallery.load(tmp_path / "plain.npz")

    path = tmp_path / "g.gallery"
    filled_gallery(rng).save(path)

    def header_edit(**changes):
        def edit(name, data):
            if name != "header.json":
                return data
            header = json.loads(data)
            header.update(changes)
            return json.dumps(header)
        return edit

    cases = {"format": ("not a reid-sdk gallery .format 'other'", header_edit(format="other")),
             "version": ("version 2; this reid-sdk reads version 1", header_edit(version=2)),
             "count": ("does not match the gallery header", header_edit(count=41)),
             "dim": ("does not match the gallery header", header_edit(dim=8)),
             "id_kind": ("does not match the gallery header", header_edit(id_kind="int")),
             "metric": ("invalid values", header_edit(metric="dot")),
             "json": ("not valid JSON", lambda n, d: b"{" if n == "header.json" else d),
             "member": ("missing cameras.npy", lambda n, d: None if n == "cameras.npy" else d)}
    for label, (message, edit) in cases.items():
        target = tmp_path / f"{label}.gallery"
        rewrite_zip(path, target, edit)
        with pytest.raises(GalleryError, match=message):
            Gallery.load(target)


def test_corrupt_array_header_does_not_allocate(tmp_path, rng):
    path = tmp_path / "g.gallery"
    filled_gallery(rng).save(path)

    def huge_shape(name, data):
        if name != "embeddings.npy":
            return data
        buffer = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            buffer, {"descr": "<f4", "fortran_order": False, "shape": (10**12, 16)})
        return buffer.getvalue() + data[len(buffer.getvalue()):]

    rewrite_zip(path, tmp_path / "huge.gallery", huge_shape)
    with pytest.raises(GalleryError, match=r"\(1000000000000, 16\)"):
        Gallery.load(tmp_path / "huge.gallery")


# -- atomic save -------------------------------------------------------------------------------
def failing_write_array(real, fail_after_bytes, error):
    """write_array that passes `fail_after_bytes` through, then raises `error`."""
    def write_array(fp, array, *args, **kwargs):
        class Cutoff:
            written = 0

            def write(self, data):
                if Cutoff.written + len(data) > fail_after_bytes:
                    fp.write(bytes(data)[:fail_after_bytes - Cutoff.written])
                    raise error
                Cutoff.written += len(data)
                return fp.write(data)
        return real(Cutoff(), array, *args, **kwargs)
    return write_array


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"),
                                   KeyboardInterrupt()])
def test_failed_save_leaves_the_previous_file_intact(tmp_path, rng, monkeypatch, error):
    path = tmp_path / "g.gallery"
    old = filled_gallery(rng)
    old.save(path)
    before = path.read_bytes()

    bigger = filled_gallery(rng, "cosine", ids=list(range(40)))
    bigger.add(list(range(40, 90)), tied_unit_vectors(rng, 50))
    monkeypatch.setattr(np.lib.format, "write_array",
                        failing_write_array(np.lib.format.write_array, 3000, error))
    with pytest.raises(GalleryError if isinstance(error, OSError) else KeyboardInterrupt,
                       match="No space left.*previous file there is unchanged"
                       if isinstance(error, OSError) else None):
        bigger.save(path)
    monkeypatch.undo()

    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["g.gallery"], "the temporary file was left behind"
    assert Gallery.load(path).ids.tolist() == old.ids.tolist()


@pytest.mark.parametrize("metric", METRICS)
def test_loaded_gallery_grows_removes_and_searches(tmp_path, rng, metric):
    """A loaded gallery's storage is exactly full; adding grows it, and search stays exact."""
    first, second = exact_data(rng, metric, 25, 25)
    gallery = Gallery(first.shape[1], metric, chunk_size=6)
    gallery.add(np.arange(25), first, cameras=np.arange(25) % 3)
    gallery.save(tmp_path / "g.gallery")
    loaded = Gallery.load(tmp_path / "g.gallery", chunk_size=6)
    loaded.add(np.arange(100, 125), second)
    loaded.remove([3, 104, 7])
    loaded.add([500], second[:1])
    all_ids = np.r_[np.arange(25), np.arange(100, 125), [500]]
    all_vectors = np.concatenate([first, second, second[:1]])
    keep = ~np.isin(all_ids, [3, 104, 7])
    cams = np.r_[np.arange(25) % 3, np.full(26, -1)]
    assert_holds_exactly(loaded, rng, metric, all_ids[keep], all_vectors[keep], cams[keep], 15)


def test_load_does_not_copy_the_embeddings(tmp_path, rng):
    """Loading holds one [N, D] buffer (plus bounded read chunks), not a second copy."""
    count, dim = 200_000, 64
    gallery = Gallery(dim, "euclidean")
    gallery.add(np.arange(count), rng.normal(size=(count, dim)).astype(np.float32))
    gallery.save(tmp_path / "big.gallery")
    del gallery
    tracemalloc.start()
    try:
        loaded = Gallery.load(tmp_path / "big.gallery")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(loaded) == count
    embedding_bytes = count * dim * 4
    assert peak < 2 * embedding_bytes, f"load peaked at {peak} bytes for {embedding_bytes}"
