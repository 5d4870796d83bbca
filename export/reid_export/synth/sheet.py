"""Contact sheets of the benchmark for the docs: per test identity its query tracklet, a
same-clothes gallery tracklet and a clothes-changing gallery tracklet (other cameras), a few
frames each, optionally with the keypoints drawn on."""
from pathlib import Path

from PIL import Image, ImageDraw

from reid_export.synth.render import SELF_OCCLUDED_CONFIDENCE, VISIBLE_CONFIDENCE

#: COCO-17 skeleton edges.
SKELETON = ((0, 1), (0, 2), (1, 3), (2, 4), (5, 6), (5, 7), (7, 9), (6, 8), (8, 10), (5, 11),
            (6, 12), (11, 12), (11, 13), (13, 15), (12, 14), (14, 16))
ROLES = (("query", "query"), ("same_clothes", "same clothes"), ("clothes_change", "2nd outfit"))
BACKDROP = (24, 24, 28)
HEADER = 14


def _fit(frame, cell):
    """The frame scaled to the cell's height (width kept in proportion), centred in the cell;
    returns the cell image, the scale and the x offset."""
    w, h = cell
    scale = min(h / frame.height, w / frame.width)
    size = (max(1, round(frame.width * scale)), max(1, round(frame.height * scale)))
    canvas = Image.new("RGB", cell, BACKDROP)
    offset = ((w - size[0]) // 2, (h - size[1]) // 2)
    canvas.paste(frame.resize(size, Image.BILINEAR), offset)
    return canvas, scale, offset


def _draw_keypoints(cell_image, keypoints, scale, offset):
    draw = ImageDraw.Draw(cell_image)
    xy = [(offset[0] + x * scale, offset[1] + y * scale) for x, y, _ in keypoints]
    confidence = [c for _, _, c in keypoints]
    for a, b in SKELETON:
        if confidence[a] > SELF_OCCLUDED_CONFIDENCE[0] and confidence[b] > SELF_OCCLUDED_CONFIDENCE[0]:
            draw.line([xy[a], xy[b]], fill=(255, 255, 255), width=1)
    for (x, y), c in zip(xy, confidence):
        if c <= 0:
            continue
        colour = (60, 220, 60) if c >= VISIBLE_CONFIDENCE[0] else \
            (250, 170, 30) if c >= SELF_OCCLUDED_CONFIDENCE[0] else (230, 40, 40)
        draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colour)


def contact_sheet(world, path, num_identities: int = 6, frames_per_tracklet: int = 3,
                  cell=(56, 112), keypoints: bool = False) -> Path:
    """Write a PNG with one row per test identity: its query, same-clothes and clothes-changing
    tracklets, `frames_per_tracklet` evenly spaced frames each. With `keypoints`, joints are
    drawn green (visible), orange (self-occluded, low confidence) or red (occluded)."""
    pids = sorted({job.pid for job in world.jobs if job.role == "query"})[:num_identities]
    if not pids:
        raise ValueError("the benchmark has no query identities to show; use num_test_ids >= 1")
    cw, ch = cell
    gap = 6
    group_width = frames_per_tracklet * cw + gap
    sheet = Image.new("RGB", (len(ROLES) * group_width - gap, HEADER + len(pids) * (ch + 2)), BACKDROP)
    draw = ImageDraw.Draw(sheet)
    for column, (_, title) in enumerate(ROLES):
        draw.text((column * group_width + 2, 1), title, fill=(230, 230, 230))
    for row, pid in enumerate(pids):
        for column, (role, _) in enumerate(ROLES):
            job = next((j for j in world.jobs if j.pid == pid and j.role == role), None)
            if job is None:
                continue
            tracklet = world.render(job)
            count = len(tracklet.frames)
            picks = sorted({round(k * (count - 1) / max(1, frames_per_tracklet - 1))
                            for k in range(frames_per_tracklet)})
            for slot, index in enumerate(picks):
                image, scale, offset = _fit(tracklet.frames[index], cell)
                if keypoints:
                    _draw_keypoints(image, tracklet.keypoints[index], scale, offset)
                sheet.paste(image, (column * group_width + slot * cw, HEADER + row * (ch + 2)))
            draw.text((column * group_width + 2, HEADER + row * (ch + 2) + 1), f"c{job.camid + 1}",
                      fill=(255, 255, 0))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(path, optimize=True)
    return path
