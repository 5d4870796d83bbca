"""Rank-list picture: a valid PNG whose tiles show the right crops in the right frames."""
import numpy as np
import pytest
from PIL import Image

from reid_sdk.errors import InputError
from reid_sdk.visualize import (MATCH_COLOR, MISMATCH_COLOR, QUERY_COLOR, UNKNOWN_COLOR,
                                rank_list_picture)


def solid(color, height=100, width=50):
    return np.broadcast_to(np.array(color, np.uint8), (height, width, 3)).copy()


def distinct_colors(rng, count):
    """Colours far from each other and from the frame colours, so a pixel names its crop."""
    colors = set()
    while len(colors) < count:
        colors.add(tuple(int(v) for v in rng.integers(1, 26, 3) * 10))
    return sorted(colors)


def pixel(image, x, y):
    return tuple(image.getpixel((x, y)))


def test_tiles_and_frames(tmp_path, rng):
    num_queries, num_gallery, k = 4, 30, 6
    colors = distinct_colors(rng, num_gallery + 3 * num_queries)
    gallery = [solid(c) for c in colors[:num_gallery]]
    # each query is a 3-frame tracklet; the middle frame is the one shown
    queries = [[solid(colors[num_gallery + 3 * q + i], 80 + 10 * i, 40) for i in range(3)]
               for q in range(num_queries)]
    ranked = np.stack([rng.permutation(num_gallery) for _ in range(num_queries)])
    matches = rng.random((num_queries, num_gallery)) < 0.4
    path = tmp_path / "out" / "ranks.png"
    layout = rank_list_picture(queries, gallery, ranked, matches, path, k=k,
                               scores=rng.random((num_queries, num_gallery)),
                               gallery_labels=[f"g{i}" for i in range(num_gallery)],
                               query_labels=[f"q{i}" for i in range(num_queries)])
    image = Image.open(path)
    assert image.format == "PNG" and image.mode == "RGB"
    assert image.size == layout.size
    assert (layout.rows, layout.ranks) == (num_queries, k)
    image = image.convert("RGB")
    for row in range(num_queries):
        for column in range(k + 1):
            left, top, right, bottom = layout.frame_box(row, column)
            t_left, t_top, t_right, t_bottom = layout.tile_box(row, column)
            assert right <= image.width and bottom <= image.height
            if column == 0:
                frame_color = QUERY_COLOR
                crop_color = colors[num_gallery + 3 * row + 1]
            else:
                g = ranked[row, column - 1]
                frame_color = MATCH_COLOR if matches[row, column - 1] else MISMATCH_COLOR
                crop_color = colors[g]
            for x, y in ((left, top), (right - 1, bottom - 1), ((left + right) // 2, top + 1),
                         (left + 1, (top + bottom) // 2)):
                assert pixel(image, x, y) == frame_color, (row, column, x, y)
            assert pixel(image, (t_left + t_right) // 2, (t_top + t_bottom) // 2) == crop_color
            # gallery crops have the tile's aspect ratio: they fill it to the frame
            if column:
                assert pixel(image, t_left, t_top) == crop_color
                assert pixel(image, t_right - 1, t_bottom - 1) == crop_color


def test_rows_are_capped_and_title_says_so(tmp_path, rng):
    gallery = [solid(c) for c in distinct_colors(rng, 5)]
    queries = [solid((10, 10, 10))] * 9
    ranked = np.tile(np.arange(5), (9, 1))
    layout = rank_list_picture(queries, gallery, ranked, None, tmp_path / "r.png", k=10,
                               max_queries=3)
    assert (layout.rows, layout.ranks) == (3, 5)   # k beyond the ranked columns: all of them
    image = Image.open(tmp_path / "r.png").convert("RGB")
    assert image.size == layout.size
    left, top, _, _ = layout.frame_box(2, 3)
    assert pixel(image, left, top) == UNKNOWN_COLOR
    assert image.height < layout.frame_box(3, 0)[3]      # a fourth row would not fit


def test_bad_input(tmp_path, rng):
    gallery = [solid((50, 60, 70))] * 4
    queries = [solid((10, 20, 30))] * 2
    ranked = np.tile(np.arange(4), (2, 1))
    with pytest.raises(InputError, match="must index gallery_frames"):
        rank_list_picture(queries, gallery, ranked + 1, None, tmp_path / "x.png")
    with pytest.raises(InputError, match="matches must be a"):
        rank_list_picture(queries, gallery, ranked, np.ones((1, 4), bool), tmp_path / "x.png")
    with pytest.raises(InputError, match="uint8"):
        rank_list_picture([np.zeros((10, 10, 3), np.float32)] * 2, gallery, ranked, None,
                          tmp_path / "x.png")
    with pytest.raises(InputError, match="empty tracklet"):
        rank_list_picture([[], []], gallery, ranked, None, tmp_path / "x.png")
    with pytest.raises(InputError, match="gallery_labels"):
        rank_list_picture(queries, gallery, ranked, None, tmp_path / "x.png",
                          gallery_labels=["a"])
    assert not (tmp_path / "x.png").exists()


def test_grayscale_rgba_and_pil_crops(tmp_path, rng):
    """Crops in every accepted format are shown as their RGB pixels (preprocess conversions)."""
    gray_value = int(rng.integers(20, 230))
    rgba = rng.integers(0, 256, 4).astype(np.uint8)
    pil_color = tuple(int(v) for v in rng.integers(0, 256, 3))
    gallery = [np.full((100, 50), gray_value, np.uint8),
               np.full((100, 50, 1), gray_value, np.uint8),
               np.broadcast_to(rgba, (100, 50, 4)).copy(),
               Image.new("RGB", (50, 100), pil_color)]
    expected = [(gray_value,) * 3, (gray_value,) * 3, tuple(int(v) for v in rgba[:3]), pil_color]
    ranked = np.arange(4)[None]
    layout = rank_list_picture([solid((10, 20, 30))], gallery, ranked, None, tmp_path / "f.png",
                               k=4)
    image = Image.open(tmp_path / "f.png").convert("RGB")
    for column, color in enumerate(expected, start=1):
        t_left, t_top, t_right, t_bottom = layout.tile_box(0, column)
        assert pixel(image, (t_left + t_right) // 2, (t_top + t_bottom) // 2) == color
