"""`reid-sdk` end to end on hand-built ONNX engines and a small tracklet tree in the layout of
docs/dataset_layout.md: the figures the commands print and write are checked against the
Engine, Gallery and metrics called directly on frames read here with Pillow."""
import hashlib
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import engine_fixtures as fx  # noqa: E402

from reid_sdk.cli import main  # noqa: E402
from reid_sdk.engine import Engine  # noqa: E402
from reid_sdk.gallery import Gallery  # noqa: E402
from reid_sdk.metrics import distance_matrix, evaluate_py, rank_lists  # noqa: E402
from reid_sdk.visualize import RankListLayout  # noqa: E402

# (split, pid, camera 1-based as in folder names, tracklet no., frames)
TRACKLETS = [
    ("query", 1, 1, 1, 5), ("query", 2, 2, 1, 3), ("query", 3, 1, 2, 9), ("query", 9, 3, 1, 2),
    ("gallery", 1, 1, 3, 4), ("gallery", 1, 2, 1, 6), ("gallery", 1, 3, 2, 2),
    ("gallery", 2, 2, 2, 5), ("gallery", 2, 3, 1, 7), ("gallery", 3, 2, 1, 3),
    ("gallery", 3, 1, 5, 4), ("gallery", 4, 1, 1, 8), ("gallery", 4, 3, 3, 1),
    ("gallery", 5, 2, 4, 3),
]
# tracklet.json overrides the camera of this tracklet (name says C2, file says camid 0)
OVERRIDE = ("gallery", 2, 2, 2)


def tracklet_name(pid, cam, number):
    return f"{pid:04d}C{cam}T{number:04d}"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Writes the tree; returns {split: {tracklet name: {"frames", "keypoints", "pid",
    "camid", "dir"}}} as this test expects the CLI to read it."""
    rng = np.random.default_rng(4)
    root = tmp_path_factory.mktemp("tracklets")
    expected = {"query": {}, "gallery": {}}
    for split, pid, cam, number, length in TRACKLETS:
        name = tracklet_name(pid, cam, number)
        folder = root / split / f"{pid:04d}" / name
        folder.mkdir(parents=True)
        base = rng.integers(0, 256, 3)
        frames, points = [], {}
        suffix = ".jpg" if pid == 4 else ".png"
        for f in range(length):
            h, w = rng.integers(20, 70), rng.integers(10, 40)
            crop = np.clip(base + rng.integers(-40, 41, (h, w, 3)), 0, 255).astype(np.uint8)
            path = folder / f"{name}F{f:04d}{suffix}"
            Image.fromarray(crop).save(path)
            with Image.open(path) as image:            # what the decoder gives back
                frames.append(np.asarray(image.convert("RGB")))
            points[path.name] = fx.random_keypoints(rng, [crop])[0].tolist()
        (folder / "keypoints.json").write_text(json.dumps({"format": "coco17",
                                                           "frames": points}))
        camid = cam - 1
        if (split, pid, cam, number) == OVERRIDE:
            camid = 0
            (folder / "tracklet.json").write_text(json.dumps({"pid": pid, "camid": camid,
                                                              "outfit": 1}))
        keypoints = np.array([points[f"{name}F{f:04d}{suffix}"] for f in range(length)],
                             np.float32)
        expected[split][name] = {"frames": frames, "keypoints": keypoints, "pid": pid,
                                 "camid": camid, "dir": folder}
    return root, expected


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    return {"hamobe": fx.build_hamobe_like(folder / "hamobe.onnx"),
            "keyreid": fx.build_keyreid_like(folder / "keyreid.onnx")}


def direct_embeddings(model, items, camera=None):
    """Embeddings of the expected tracklets by the Engine API, in the given order."""
    with Engine(model) as engine:
        needs_extra = engine.spec.arch == "keyreid"
        return engine.embed(
            [item["frames"] for item in items],
            keypoints=[item["keypoints"] for item in items] if needs_extra else None,
            camera=([item["camid"] if camera is None else camera for item in items]
                    if needs_extra else None))


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_info(capsys, models):
    code, out, _ = run_cli(capsys, "info", models["keyreid"], "--json")
    assert code == 0
    info = json.loads(out)
    assert info["sha256"] == hashlib.sha256(models["keyreid"].read_bytes()).hexdigest()
    assert info["spec"]["arch"] == "keyreid" and info["spec"]["embedding_dim"] == 24
    code, out, _ = run_cli(capsys, "info", models["hamobe"])
    assert code == 0
    assert "arch: hamobe" in out and "metric: cosine" in out and info["sha256"] not in out


@pytest.mark.parametrize("arch", ["hamobe", "keyreid"])
def test_embed_writes_what_the_engine_computes(capsys, tmp_path, dataset, models, arch):
    root, expected = dataset
    out_file = tmp_path / "emb.npz"
    code, out, err = run_cli(capsys, "embed", models[arch], root / "query", root / "gallery",
                             "--out", out_file, "--no-progress")
    assert code == 0, err
    assert "embedded 14 tracklets" in err
    with np.load(out_file, allow_pickle=False) as npz:
        written = {name: npz[name] for name in npz.files}
    items = {**expected["query"], **expected["gallery"]}
    assert sorted(written["ids"].tolist()) == sorted(items)
    ordered = [items[i] for i in written["ids"].tolist()]
    assert written["pids"].tolist() == [item["pid"] for item in ordered]
    assert written["camids"].tolist() == [item["camid"] for item in ordered]
    assert [Path(p) for p in written["paths"].tolist()] == [item["dir"] for item in ordered]
    assert str(written["metric"]) == ("cosine" if arch == "hamobe" else "squared_euclidean")
    np.testing.assert_allclose(written["embeddings"], direct_embeddings(models[arch], ordered),
                               rtol=1e-5, atol=1e-5)


def test_camera_option_overrides_the_layout(capsys, tmp_path, dataset, models):
    root, expected = dataset
    out_file = tmp_path / "emb.npz"
    code, _, err = run_cli(capsys, "embed", models["keyreid"], root / "gallery", "--out",
                           out_file, "--camera", "5", "--no-progress")
    assert code == 0, err
    with np.load(out_file) as npz:
        ids, embeddings, camids = npz["ids"].tolist(), npz["embeddings"], npz["camids"]
    assert camids.tolist() == [5] * len(ids)
    np.testing.assert_allclose(
        embeddings, direct_embeddings(models["keyreid"], [expected["gallery"][i] for i in ids],
                                      camera=5), rtol=1e-5, atol=1e-5)


def test_gallery_build_and_search(capsys, tmp_path, dataset, models):
    root, expected = dataset
    gallery_file = tmp_path / "people.gallery"
    code, out, err = run_cli(capsys, "gallery", "build", models["hamobe"], root / "gallery",
                             "--out", gallery_file, "--no-progress")
    assert code == 0, err
    gallery = Gallery.load(gallery_file)
    assert sorted(gallery.ids.tolist()) == sorted(expected["gallery"])
    assert gallery.cameras.tolist() == [expected["gallery"][i]["camid"] for i in gallery.ids]

    queries_file = tmp_path / "q.npz"
    assert run_cli(capsys, "embed", models["hamobe"], root / "query", "--out", queries_file,
                   "--no-progress")[0] == 0
    code, out, err = run_cli(capsys, "gallery", "search", gallery_file, "--queries",
                             queries_file, "-k", "4", "--json")
    assert code == 0, err
    answer = json.loads(out)

    with np.load(queries_file) as npz:
        query_ids, query_embeddings = npz["ids"].tolist(), npz["embeddings"]
    similarity = query_embeddings.astype(np.float64) @ gallery.embeddings.astype(np.float64).T
    similarity /= np.linalg.norm(query_embeddings, axis=1)[:, None]
    assert [entry["query"] for entry in answer] == query_ids
    for entry, row in zip(answer, similarity):
        best = np.argsort(-row, kind="stable")[:4]
        assert [r["id"] for r in entry["results"]] == gallery.ids[best].tolist()
        np.testing.assert_allclose([r["similarity"] for r in entry["results"]], row[best],
                                   atol=1e-5)
        assert [r["rank"] for r in entry["results"]] == [1, 2, 3, 4]

    code, out, _ = run_cli(capsys, "gallery", "search", gallery_file, "--queries", queries_file,
                           "-k", "2")
    lines = out.strip().splitlines()
    assert lines[0].split() == ["query", "rank", "id", "similarity"]
    assert len(lines) == 1 + 2 * len(query_ids)
    first = answer[0]["results"][0]
    assert lines[1].split() == [query_ids[0], "1", first["id"], f"{first['similarity']:.4f}"]


@pytest.mark.parametrize("arch", ["hamobe", "keyreid"])
def test_eval_prints_and_writes_the_protocol_figures(capsys, tmp_path, dataset, models, arch):
    root, expected = dataset
    out_dir = tmp_path / "eval"
    code, out, err = run_cli(capsys, "eval", models[arch], "--query", root / "query",
                             "--gallery", root / "gallery", "--out-dir", out_dir, "-k", "5",
                             "--no-progress")
    assert code == 0, err
    report = json.loads((out_dir / "metrics.json").read_text())

    query_names = report["rank_list_queries"]       # every query is shown: 4 < 16 rows
    assert sorted(query_names) == sorted(expected["query"])
    gallery_names = sorted(expected["gallery"])
    query = [expected["query"][n] for n in query_names]
    gallery = [expected["gallery"][n] for n in gallery_names]
    metric = "cosine" if arch == "hamobe" else "squared_euclidean"
    distmat = distance_matrix(direct_embeddings(models[arch], query),
                              direct_embeddings(models[arch], gallery), metric)
    pids = lambda items: np.array([i["pid"] for i in items])      # noqa: E731
    camids = lambda items: np.array([i["camid"] for i in items])  # noqa: E731
    reference = evaluate_py(distmat, pids(query), pids(gallery), camids(query), camids(gallery))
    # pid 9 has no gallery tracklet: skipped; the overridden camera of 0002C2T0002 makes it a
    # true match for query 0002C2T0001 (camera 1 vs 0).
    assert (report["num_valid_queries"], report["num_skipped_queries"]) == (3, 1)
    assert report["metric"] == metric
    for name, value in (("Rank-1", reference["cmc"][0]), ("Rank-5", reference["cmc"][4]),
                        ("Rank-10", reference["cmc"][9]), ("mAP", reference["mAP"]),
                        ("mINP", reference["mINP"])):
        assert report[name] == pytest.approx(value, abs=1e-6), name
        assert f"{name} {value * 100:.2f}%" in out
    np.testing.assert_allclose(report["cmc"], reference["cmc"], atol=1e-6)

    picture = Image.open(out_dir / "rank_list.png").convert("RGB")
    ranked, matches = rank_lists(distmat, pids(query), pids(gallery), camids(query),
                                 camids(gallery), 5)
    layout = RankListLayout(rows=len(query), ranks=ranked.shape[1])
    assert picture.size == layout.size
    from reid_sdk.visualize import MATCH_COLOR, MISMATCH_COLOR
    for row in range(len(query)):
        for rank in range(ranked.shape[1]):
            left, top, _, _ = layout.frame_box(row, rank + 1)
            want = MATCH_COLOR if matches[row, rank] else MISMATCH_COLOR
            assert picture.getpixel((left, top)) == want, (row, rank)


def test_errors_are_one_line_with_status_2(capsys, tmp_path, dataset, models):
    root, _ = dataset
    code, out, err = run_cli(capsys, "embed", models["hamobe"], tmp_path / "absent", "--out",
                             tmp_path / "e.npz")
    assert code == 2 and err.startswith("reid-sdk: error:") and "is not a folder" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1

    broken = tmp_path / "broken.onnx"
    broken.write_bytes(models["hamobe"].read_bytes()[:300])
    code, _, err = run_cli(capsys, "info", broken)
    assert code == 2 and err.startswith("reid-sdk: error:") and "Traceback" not in err

    no_keypoints = tmp_path / "nokp"
    source = next((root / "query").rglob("*T0001F0000.png")).parent
    (no_keypoints / source.name).mkdir(parents=True)
    for frame in source.glob("*.png"):
        (no_keypoints / source.name / frame.name).write_bytes(frame.read_bytes())
    code, _, err = run_cli(capsys, "embed", models["keyreid"], no_keypoints, "--out",
                           tmp_path / "e.npz")
    assert code == 2 and "keypoints" in err
    assert not (tmp_path / "e.npz").exists()

    code, _, err = run_cli(capsys, "gallery", "search", tmp_path / "none.gallery", "--queries",
                           tmp_path / "e.npz")
    assert code == 2 and "no gallery file" in err

    with pytest.raises(Exception, match="is not a folder"):
        main(["--debug", "embed", str(models["hamobe"]), str(tmp_path / "absent"), "--out",
              str(tmp_path / "e.npz")])


def test_demo_delegates_or_says_how_to_install(capsys, monkeypatch):
    calls = []
    fake = types.ModuleType("reid_export.demo")
    fake.main = lambda argv: calls.append(argv) or 7
    monkeypatch.setitem(sys.modules, "reid_export.demo", fake)
    import reid_export
    monkeypatch.setattr(reid_export, "demo", fake, raising=False)
    assert main(["demo", "--out", "x", "-k", "3"]) == 7
    assert calls == [["--out", "x", "-k", "3"]]

    monkeypatch.setitem(sys.modules, "reid_export.demo", None)   # import fails
    monkeypatch.delattr(reid_export, "demo")
    code, _, err = run_cli(capsys, "demo")
    assert code == 2 and 'pip install -e ".[export]"' in err


def copy_tracklet(source: Path, target: Path, meta: dict | None = None) -> Path:
    target.mkdir(parents=True)
    for file in source.iterdir():
        if file.name != "tracklet.json":
            (target / file.name).write_bytes(file.read_bytes())
    if meta is not None:
        (target / "tracklet.json").write_text(json.dumps(meta))
    return target


def test_tracklets_without_identity_or_known_camera(capsys, tmp_path, dataset, models):
    root, expected = dataset
    source = expected["query"][tracklet_name(1, 1, 1)]["dir"]
    loose = copy_tracklet(source, tmp_path / "loose" / "walker_17")     # no pid / camera
    code, _, err = run_cli(capsys, "embed", models["hamobe"], loose.parent, "--out",
                           tmp_path / "e.npz", "--no-progress")
    assert code == 0, err
    with np.load(tmp_path / "e.npz") as npz:
        assert npz["ids"].tolist() == ["walker_17"]
        assert (npz["pids"].tolist(), npz["camids"].tolist()) == ([-1], [-1])

    code, _, err = run_cli(capsys, "embed", models["keyreid"], loose.parent, "--out",
                           tmp_path / "k.npz")
    assert code == 2 and "walker_17 has no camera" in err and "--camera" in err
    code, _, err = run_cli(capsys, "eval", models["hamobe"], "--query", loose.parent,
                           "--gallery", root / "gallery", "--out-dir", tmp_path / "ev")
    assert code == 2 and "walker_17 (1 query tracklets in all) has no identity" in err

    far = copy_tracklet(source, tmp_path / "far" / "0001C1T0009", meta={"camid": 6})
    code, _, err = run_cli(capsys, "embed", models["keyreid"], far.parent, "--out",
                           tmp_path / "k.npz")
    assert code == 2 and "0001C1T0009 has camera 6" in err and "cameras 0..5" in err
