"""layout.middle_frame and layout.MiddleFrames: the middle frame of each scanned tracklet, read
from disk on demand."""
import numpy as np
import pytest
from PIL import Image

from reid_sdk import layout
from reid_sdk.errors import InputError


def write_tracklets(root, rng, lengths):
    """Tracklet folders of random PNG frames; returns the frames written, per folder in name
    order, as uint8 [H, W, 3] arrays."""
    written = []
    for number, length in enumerate(lengths):
        folder = root / layout.tracklet_name(number, 0, number)
        folder.mkdir(parents=True)
        frames = []
        for index in range(length):
            pixels = rng.integers(0, 256, (int(rng.integers(8, 20)), int(rng.integers(4, 12)), 3),
                                  dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{index:03d}.png")
            frames.append(pixels)
        written.append(frames)
    return written


def test_middle_frame_is_frame_t_over_2(tmp_path, rng):
    lengths = [1, 2, 5, 6]
    written = write_tracklets(tmp_path, rng, lengths)
    tracklets = layout.scan(tmp_path)
    for tracklet, frames, length in zip(tracklets, written, lengths):
        middle = layout.middle_frame(tracklet)
        assert middle.dtype == np.uint8 and middle.ndim == 3
        np.testing.assert_array_equal(middle, frames[length // 2])


def test_middle_frames_loads_on_demand(tmp_path, rng, monkeypatch):
    written = write_tracklets(tmp_path, rng, [3, 4, 1])
    tracklets = layout.scan(tmp_path)
    loaded = []
    load_image = layout.load_image
    monkeypatch.setattr(layout, "load_image", lambda path: loaded.append(path) or load_image(path))
    frames = layout.MiddleFrames(tracklets)
    assert loaded == []                          # nothing is read up front
    assert len(frames) == 3
    np.testing.assert_array_equal(frames[np.int64(1)], written[1][2])
    np.testing.assert_array_equal(frames[-1], written[2][0])
    assert loaded == [tracklets[1].frames[2], tracklets[2].frames[0]]
    with pytest.raises(IndexError):
        frames[3]
    with pytest.raises(TypeError):
        frames[1.0]
    assert [f.shape for f in frames] == [written[i][len(written[i]) // 2].shape for i in range(3)]


def test_middle_frame_of_an_empty_tracklet_is_refused(tmp_path):
    empty = layout.Tracklet(path=tmp_path / "0001C1T0001", pid=1, camid=0, frames=[],
                            keypoints_path=None)
    with pytest.raises(InputError, match="0001C1T0001 has no frames"):
        layout.middle_frame(empty)
