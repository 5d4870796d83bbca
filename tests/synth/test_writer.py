"""The benchmark writer: same seed gives the same bytes (whatever the worker count), the layout
reads back through reid_sdk.layout, splits and protocols are right, reuse and interrupted runs."""
import hashlib
import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from reid_export.synth import SynthConfig, build_world, generate
from reid_export.synth import writer as writer_module
from reid_sdk.layout import load_frames, load_keypoints, scan

TINY = SynthConfig.preset("tiny")


def _digests(root):
    result = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as handle:
                result[os.path.relpath(path, root)] = hashlib.sha256(handle.read()).hexdigest()
    return result


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """The tiny benchmark, seed 3, written in-process."""
    root = tmp_path_factory.mktemp("synth") / "bench"
    return generate(root, TINY, seed=3, progress=False, workers=1)


def test_same_seed_same_bytes_with_any_worker_count(bench, tmp_path, monkeypatch):
    monkeypatch.setattr(writer_module, "PARALLEL_MIN_FRAMES", 0)  # force the process pool
    again = generate(tmp_path / "again", TINY, seed=3, progress=False, workers=2)
    first, second = _digests(bench), _digests(again)
    assert len(first) > 50
    assert first == second


def test_different_seed_different_bytes(bench, tmp_path):
    other = generate(tmp_path / "other", TINY, seed=4, progress=False, workers=1)
    first, second = _digests(bench), _digests(other)
    assert first["dataset.json"] != second["dataset.json"]
    frames = lambda digests: {v for k, v in digests.items() if k.endswith(".jpg")}  # noqa: E731
    assert not frames(first) & frames(second)


def test_layout_round_trip(bench):
    """scan finds every planned tracklet with its pid, camid, outfit and frame count; frames
    and keypoints read back as rendered."""
    world = build_world(TINY, 3)
    found = {(t.path.parent.parent.name, t.pid, t.camid, t.meta["outfit"], t.num_frames): t
             for t in scan(bench)}
    planned = {(job.split, job.pid, job.camid, job.outfit, job.num_frames): job
               for job in world.jobs}
    assert set(found) == set(planned)
    for key in sorted(planned)[:6]:
        job, tracklet = planned[key], found[key]
        assert tracklet.path.name == job.name and tracklet.frames[0].name == f"{job.name}F0000.jpg"
        rendered = world.render(job)
        np.testing.assert_array_equal(load_keypoints(tracklet),
                                      rendered.keypoints.astype(np.float32))
        for path, frame, image in zip(tracklet.frames, load_frames(tracklet), rendered.frames):
            encoded = io.BytesIO()
            image.save(encoded, "JPEG", quality=TINY.jpeg_quality)
            assert path.read_bytes() == encoded.getvalue()
            decoded = np.asarray(Image.open(io.BytesIO(encoded.getvalue())).convert("RGB"))
            assert frame.dtype == np.uint8
            np.testing.assert_array_equal(frame, decoded)


def test_splits_and_protocols(bench):
    """Train and test identities are disjoint; each query has same-clothes and clothes-changing
    gallery entries of its pid, all from other cameras; distractors are gallery-only;
    dataset.json counts what is on disk."""
    tracklets = {split: scan(bench / split) for split in ("train", "query", "gallery")}
    pids = {split: {t.pid for t in ts} for split, ts in tracklets.items()}
    assert not pids["train"] & (pids["query"] | pids["gallery"])
    assert pids["query"] < pids["gallery"]
    distractors = {t.pid for t in tracklets["gallery"] if t.meta["role"] == "distractor"}
    assert distractors and distractors == pids["gallery"] - pids["query"]
    for query in tracklets["query"]:
        assert query.meta["outfit"] == 0
        mates = [g for g in tracklets["gallery"] if g.pid == query.pid]
        assert all(g.camid != query.camid for g in mates)
        assert any(g.meta["clothes_id"] == query.meta["clothes_id"] for g in mates)
        assert any(g.meta["clothes_id"] != query.meta["clothes_id"] for g in mates)
    record = json.loads((bench / "dataset.json").read_text())
    assert record["generator"]["seed"] == 3 and record["generator"]["config"] == TINY.to_dict()
    for split, ts in tracklets.items():
        assert record["splits"][split]["tracklets"] == len(ts)
        assert record["splits"][split]["frames"] == sum(t.num_frames for t in ts)
        assert record["splits"][split]["identities"] == len({t.pid for t in ts})
    roles = {t.meta["role"] for t in tracklets["gallery"]}
    assert roles == {"same_clothes", "clothes_change", "distractor"}


def test_reuse_keeps_a_complete_benchmark(bench):
    stamp = (bench / "dataset.json").stat().st_mtime_ns
    assert generate(bench, TINY, seed=3, progress=False) == bench
    assert (bench / "dataset.json").stat().st_mtime_ns == stamp


def test_incomplete_or_different_benchmarks_are_regenerated(tmp_path):
    root = generate(tmp_path / "b", TINY, seed=5, progress=False, workers=1)
    reference = _digests(root)
    victim = next(root.glob("gallery/*/*/*F0000.jpg"))
    victim.unlink()
    generate(root, TINY, seed=5, progress=False, workers=1)
    assert _digests(root) == reference
    changed = TINY.with_values(num_test_ids=2)
    generate(root, changed, seed=5, progress=False, workers=1)
    record = json.loads((root / "dataset.json").read_text())
    assert record["generator"]["config"] == changed.to_dict()


def test_interrupted_run_leaves_nothing_that_looks_finished(tmp_path, monkeypatch):
    """A crash mid-run leaves no output folder and no scratch; a scratch folder left by a dead
    process is removed by the next run."""
    calls = {"n": 0}
    real = writer_module.write_tracklet

    def crash_after_three(world, job, root):
        calls["n"] += 1
        if calls["n"] > 3:
            raise KeyboardInterrupt
        return real(world, job, root)

    monkeypatch.setattr(writer_module, "write_tracklet", crash_after_three)
    with pytest.raises(KeyboardInterrupt):
        generate(tmp_path / "b", TINY, seed=6, progress=False, workers=1)
    assert not (tmp_path / "b").exists()
    assert not list(tmp_path.iterdir())
    monkeypatch.setattr(writer_module, "write_tracklet", real)

    dead = 2 ** 22 + 12345  # above the default pid_max: no such process
    stale = tmp_path / f".b.partial-{dead}"
    (stale / "train").mkdir(parents=True)
    generate(tmp_path / "b", TINY, seed=6, progress=False, workers=1)
    assert not stale.exists() and (tmp_path / "b" / "dataset.json").exists()


def test_refuses_to_overwrite_other_folders(tmp_path):
    mine = tmp_path / "photos"
    mine.mkdir()
    (mine / "holiday.jpg").write_bytes(b"not ours")
    with pytest.raises(FileExistsError, match="not a synthetic benchmark"):
        generate(mine, TINY, seed=0, progress=False, workers=1)
    assert (mine / "holiday.jpg").read_bytes() == b"not ours"
    with pytest.raises(ValueError, match="seed"):
        generate(tmp_path / "x", TINY, seed=-1, progress=False)
