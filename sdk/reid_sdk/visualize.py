"""Rank-list pictures: each query beside its top-k gallery items, true matches framed green,
false ones red (Pillow only).

    rank_list_picture(query_crops, gallery_crops, ranked, matches, "ranks.png", k=10,
                      scores=scores, gallery_labels=gallery_ids)

Layout: one row per query, at most ``max_queries`` rows (the first ones; the title says how
many were left out). Column 0 is a representative crop of the query (the middle frame of its
tracklet) in a blue frame, then a gap, then ranks 1..k. Under each tile: the rank and score,
and the id. :class:`RankListLayout` gives every tile's pixel box.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from reid_sdk.errors import InputError
from reid_sdk.preprocess import PIL_FILTERS, check_crop, prepare_crop

__all__ = ["rank_list_picture", "RankListLayout", "MATCH_COLOR", "MISMATCH_COLOR",
           "QUERY_COLOR", "UNKNOWN_COLOR"]

MATCH_COLOR = (0, 190, 0)
MISMATCH_COLOR = (225, 0, 0)
QUERY_COLOR = (30, 90, 230)
UNKNOWN_COLOR = (150, 150, 150)    # frames when no match information is given
_BACKGROUND = (255, 255, 255)
_LETTERBOX = (235, 235, 235)
_TEXT = (20, 20, 20)


@dataclass(frozen=True)
class RankListLayout:
    """Pixel geometry of a rank-list picture. Column 0 is the query, columns 1..k the ranks."""

    rows: int
    ranks: int
    tile_height: int = 128
    tile_width: int = 64
    frame: int = 4          # frame thickness around each tile
    gap: int = 6            # between neighbouring framed tiles
    query_gap: int = 24     # extra space between the query and rank 1
    label_height: int = 30  # two text lines under each tile
    margin: int = 10
    title_height: int = 22

    @property
    def cell_width(self) -> int:
        return self.tile_width + 2 * self.frame + self.gap

    @property
    def cell_height(self) -> int:
        return self.tile_height + 2 * self.frame + self.label_height + self.gap

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the picture."""
        width = 2 * self.margin + (self.ranks + 1) * self.cell_width + self.query_gap - self.gap
        height = 2 * self.margin + self.title_height + self.rows * self.cell_height - self.gap
        return width, height

    def frame_box(self, row: int, column: int) -> tuple[int, int, int, int]:
        """(left, top, right, bottom), right/bottom exclusive, of the tile with its frame."""
        left = self.margin + column * self.cell_width + (self.query_gap if column > 0 else 0)
        top = self.margin + self.title_height + row * self.cell_height
        return (left, top, left + self.tile_width + 2 * self.frame,
                top + self.tile_height + 2 * self.frame)

    def tile_box(self, row: int, column: int) -> tuple[int, int, int, int]:
        """(left, top, right, bottom), exclusive, of the crop area inside the frame."""
        left, top, right, bottom = self.frame_box(row, column)
        return left + self.frame, top + self.frame, right - self.frame, bottom - self.frame


def _representative(item, what: str):
    """A PIL RGB image of one crop, or of the middle frame of a tracklet (a frame sequence)."""
    from PIL import Image

    if isinstance(item, np.ndarray) and item.ndim == 4:
        item = list(item)
    if isinstance(item, (list, tuple)):
        if not item:
            raise InputError(f"{what} is an empty tracklet: give at least one frame")
        item = item[len(item) // 2]
    if isinstance(item, Image.Image):
        return item.convert("RGB")
    return Image.fromarray(np.ascontiguousarray(prepare_crop(check_crop(item, what), "RGB")))


def _fit(image, width: int, height: int):
    """The image scaled to fit width x height, aspect kept, letterboxed."""
    from PIL import Image

    scale = min(width / image.width, height / image.height)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    canvas = Image.new("RGB", (width, height), _LETTERBOX)
    canvas.paste(image.resize(size, PIL_FILTERS["bilinear"]),
                 ((width - size[0]) // 2, (height - size[1]) // 2))
    return canvas


def _as_table(values, rows: int, columns: int, name: str, kinds: str, what: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 2 or arr.shape[0] != rows or arr.shape[1] < columns \
            or arr.dtype.kind not in kinds:
        raise InputError(f"{name} must be a [{rows} queries, >= {columns}] array of {what}, got "
                         f"shape {arr.shape} and dtype {arr.dtype}")
    return arr[:, :columns]


def rank_list_picture(query_frames: Sequence, gallery_frames: Sequence, ranked_indices,
                      matches, path: str | os.PathLike, k: int = 10, *, scores=None,
                      query_labels: Sequence | None = None,
                      gallery_labels: Sequence | None = None, max_queries: int = 16,
                      tile_height: int = 128, tile_width: int = 64,
                      title: str | None = None) -> RankListLayout:
    """Writes a PNG rank list and returns its layout.

    query_frames: Q items, each a crop (uint8 HxWx3) or a tracklet (sequence of crops / uint8
    [T, H, W, 3]; its middle frame is shown). gallery_frames: G items of the same kinds.
    ranked_indices: int [Q, >= k] gallery indices best first. matches: bool [Q, >= k], True where
    ranked_indices points at a true match (green) and False (red); None draws grey frames.
    scores: optional [Q, >= k] shown as "#rank score"; query_labels / gallery_labels: optional Q /
    G strings (ids) shown under the tiles. Only the first ``max_queries`` queries are drawn.
    """
    from PIL import Image, ImageDraw, ImageFont

    num_queries = len(query_frames)
    if num_queries == 0:
        raise InputError("no queries to draw")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InputError(f"k must be a positive integer, got {k!r}")
    if max_queries < 1:
        raise InputError(f"max_queries must be >= 1, got {max_queries}")
    ranks = min(int(k), np.shape(ranked_indices)[-1]) if np.ndim(ranked_indices) == 2 else 1
    rows = min(num_queries, int(max_queries))
    ranked = _as_table(ranked_indices, num_queries, max(ranks, 1), "ranked_indices", "iu",
                       "gallery indices")[:rows]
    if ranked.size and (ranked.min() < 0 or ranked.max() >= len(gallery_frames)):
        raise InputError(f"ranked_indices must index gallery_frames (0..{len(gallery_frames) - 1}),"
                         f" got values in [{ranked.min()}, {ranked.max()}]")
    is_match = None if matches is None else \
        _as_table(matches, num_queries, ranks, "matches", "b", "booleans")[:rows]
    score_table = None if scores is None else \
        _as_table(scores, num_queries, ranks, "scores", "iuf", "numbers")[:rows]
    for labels, count, name in ((query_labels, num_queries, "query_labels"),
                                (gallery_labels, len(gallery_frames), "gallery_labels")):
        if labels is not None and len(labels) != count:
            raise InputError(f"{name} must have one label per item ({count}), got {len(labels)}")

    layout = RankListLayout(rows=rows, ranks=ranks, tile_height=int(tile_height),
                            tile_width=int(tile_width))
    picture = Image.new("RGB", layout.size, _BACKGROUND)
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default()
    if title is None:
        title = f"top-{ranks} per query: green = true match, red = false"
    if rows < num_queries:
        title += f" (first {rows} of {num_queries} queries)"
    draw.text((layout.margin, layout.margin), title, fill=_TEXT, font=font)

    def place(row, column, image, color, lines):
        left, top, right, bottom = layout.frame_box(row, column)
        draw.rectangle((left, top, right - 1, bottom - 1), fill=color)
        tile_left, tile_top, _, _ = layout.tile_box(row, column)
        picture.paste(_fit(image, layout.tile_width, layout.tile_height), (tile_left, tile_top))
        for line_no, text in enumerate(lines):
            draw.text((left, bottom + 2 + 13 * line_no), text, fill=_TEXT, font=font)

    for row in range(rows):
        query_id = "" if query_labels is None else str(query_labels[row])
        place(row, 0, _representative(query_frames[row], f"query {row}"), QUERY_COLOR,
              ["query", query_id])
        for rank in range(ranks):
            g = int(ranked[row, rank])
            color = UNKNOWN_COLOR if is_match is None else \
                (MATCH_COLOR if is_match[row, rank] else MISMATCH_COLOR)
            head = f"#{rank + 1}" + ("" if score_table is None
                                    else f": {float(score_table[row, rank]):.3f}")
            place(row, rank + 1, _representative(gallery_frames[g], f"gallery item {g}"), color,
                  [head, "" if gallery_labels is None else str(gallery_labels[g])])

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path, format="PNG")
    return layout
