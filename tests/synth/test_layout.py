"""reid_sdk.layout on hand-made folders: discovery, ids from tracklet.json or folder names,
frame order, and clear errors for malformed keypoints / tracklet files."""
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from reid_sdk.errors import InputError
from reid_sdk.layout import (Tracklet, load_frames, load_image, load_keypoints,
                             parse_tracklet_name, scan, tracklet_name)


def _frame(path, rng, size=(20, 40)):
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return pixels


def _tracklet(folder, rng, count=3, suffix=".png"):
    folder.mkdir(parents=True)
    return [_frame(folder / f"{folder.name}F{i:04d}{suffix}", rng) for i in range(count)]


def _keypoints_file(tracklet, rows):
    tracklet.keypoints_path = tracklet.path / "keypoints.json"
    tracklet.keypoints_path.write_text(json.dumps({"format": "coco17", "frames": rows}))


def test_scan_finds_tracklets_and_their_ids(tmp_path, rng):
    _tracklet(tmp_path / "query" / "0007" / "0007C2T0001", rng, count=2)
    _tracklet(tmp_path / "gallery" / "0007" / "0007C3T0002", rng, count=4, suffix=".jpg")
    _tracklet(tmp_path / "gallery" / "00-1" / "00-1C1T0001", rng, count=1)
    named_by_json = tmp_path / "gallery" / "misc" / "clip_a"
    _tracklet(named_by_json, rng, count=2)
    meta = {"pid": 9, "camid": 4, "outfit": 1, "x": [1]}
    (named_by_json / "tracklet.json").write_text(json.dumps(meta))
    _tracklet(tmp_path / "gallery" / "misc" / "clip_b", rng, count=1)
    (tmp_path / "gallery" / ".hidden" / "0001C1T0001").mkdir(parents=True)
    _frame(tmp_path / "gallery" / ".hidden" / "0001C1T0001" / "a.png", rng)

    found = scan(tmp_path)
    assert [t.path.relative_to(tmp_path).as_posix() for t in found] == [
        "gallery/00-1/00-1C1T0001", "gallery/0007/0007C3T0002", "gallery/misc/clip_a",
        "gallery/misc/clip_b", "query/0007/0007C2T0001"]
    ids = [(t.pid, t.camid, t.num_frames) for t in found]
    assert ids == [(-1, 0, 1), (7, 2, 4), (9, 4, 2), (None, None, 1), (7, 1, 2)]
    assert found[2].meta == meta
    assert all(t.keypoints_path is None for t in found)
    assert [t.path.name for t in scan(tmp_path / "query")] == ["0007C2T0001"]
    one = scan(tmp_path / "query" / "0007" / "0007C2T0001")  # a tracklet folder itself
    assert len(one) == 1 and one[0].pid == 7


def test_frames_load_in_name_order_as_rgb(tmp_path, rng):
    folder = tmp_path / "0001C1T0001"
    folder.mkdir()
    written = {name: _frame(folder / name, rng) for name in ("f10.png", "f02.png", "f01.png")}
    Image.fromarray(written["f02.png"]).convert("L").save(folder / "f02.png")  # grey frame
    tracklet = scan(folder)[0]
    assert [p.name for p in tracklet.frames] == ["f01.png", "f02.png", "f10.png"]
    frames = load_frames(tracklet)
    np.testing.assert_array_equal(frames[0], written["f01.png"])
    assert all(frame.dtype == np.uint8 and frame.flags.writeable for frame in frames)
    assert frames[1].shape == (40, 20, 3) and np.all(frames[1][..., 0] == frames[1][..., 2])
    rgba = np.dstack([written["f01.png"], np.full((40, 20), 7, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    np.testing.assert_array_equal(load_image(tmp_path / "alpha.png"), written["f01.png"])
    (folder / "f10.png").write_bytes(b"broken")
    with pytest.raises(InputError, match="f10.png"):
        load_frames(tracklet)


def test_keypoints_round_trip(tmp_path, rng):
    folder = tmp_path / "0001C1T0001"
    _tracklet(folder, rng, count=3)
    tracklet = scan(folder)[0]
    values = np.round(rng.uniform(0, 40, (3, 17, 3)), 2)
    values[..., 2] = np.round(rng.uniform(0, 1, (3, 17)), 3)
    values[1, 4] = 0.0
    _keypoints_file(tracklet, {p.name: values[i].tolist() for i, p in enumerate(tracklet.frames)})
    loaded = load_keypoints(scan(folder)[0])
    assert loaded.dtype == np.float32 and loaded.shape == (3, 17, 3)
    np.testing.assert_array_equal(loaded, values.astype(np.float32))


@pytest.mark.parametrize("mutate, message", [
    (lambda rows, names: rows.pop(names[1]), "no keypoints for 1 of 3 frames"),
    (lambda rows, names: rows.__setitem__(names[0], rows[names[0]][:16]), r"shape \[16, 3\]"),
    (lambda rows, names: rows.__setitem__(names[0], [r[:2] for r in rows[names[0]]]),
     r"shape \[17, 2\]"),
    (lambda rows, names: rows[names[2]][5].__setitem__(0, float("nan")),
     "non-finite value at joint 5"),
    (lambda rows, names: rows[names[2]][3].__setitem__(2, 1.5), "confidence 1.5 at joint 3"),
    (lambda rows, names: rows[names[0]][0].__setitem__(1, "up"), "non-numeric"),
])
def test_malformed_keypoints_are_refused(tmp_path, rng, mutate, message):
    folder = tmp_path / "0003C2T0001"
    _tracklet(folder, rng, count=3)
    tracklet = scan(folder)[0]
    names = [p.name for p in tracklet.frames]
    rows = {name: rng.uniform(0, 1, (17, 3)).tolist() for name in names}
    mutate(rows, names)
    _keypoints_file(tracklet, rows)
    with pytest.raises(InputError, match=message) as error:
        load_keypoints(tracklet)
    assert "keypoints.json" in str(error.value)


def test_malformed_files_name_the_file(tmp_path, rng):
    folder = tmp_path / "0003C2T0001"
    _tracklet(folder, rng, count=1)
    (folder / "keypoints.json").write_text("{not json")
    with pytest.raises(InputError, match="keypoints.json .*not valid JSON"):
        load_keypoints(scan(folder)[0])
    (folder / "keypoints.json").write_text(json.dumps({"format": "body25", "frames": {}}))
    with pytest.raises(InputError, match="format 'body25'"):
        load_keypoints(scan(folder)[0])
    (folder / "keypoints.json").write_text(json.dumps([1, 2]))
    with pytest.raises(InputError, match='"frames"'):
        load_keypoints(scan(folder)[0])
    (folder / "tracklet.json").write_text(json.dumps({"camid": -2}))
    with pytest.raises(InputError, match="tracklet.json: 'camid'"):
        scan(folder)
    (folder / "tracklet.json").write_text(json.dumps({"pid": "7"}))
    with pytest.raises(InputError, match="'pid' must be an integer"):
        scan(folder)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no tracklet folders"):
        scan(empty)
    with pytest.raises(InputError, match="is not a folder"):
        scan(tmp_path / "missing")


def test_names_round_trip():
    for pid, camid, number in [(1, 0, 1), (42, 5, 17), (12345, 9, 3), (-1, 2, 8)]:
        assert parse_tracklet_name(tracklet_name(pid, camid, number)) == (pid, camid)
    assert tracklet_name(7, 1, 3) == "0007C2T0003"
    assert parse_tracklet_name("0007C0T0003") is None  # cameras are 1-based in names
    assert parse_tracklet_name("person7") is None
    assert Tracklet(path=None, pid=1, camid=0, frames=[], keypoints_path=None).meta == {}


def test_layout_does_not_import_torch():
    code = "import sys, reid_sdk.layout; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
