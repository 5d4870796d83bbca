"""Pictures of the benchmark for the docs: contact sheets (per test identity its query, a
same-clothes and a clothes-changing gallery tracklet, from different cameras), the same with
keypoints drawn on, and the debug part-label images the keypoint tests check against."""
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from reid_export.synth import render as rd
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
        if min(confidence[a], confidence[b]) > SELF_OCCLUDED_CONFIDENCE[0]:
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
    size = (len(ROLES) * group_width - gap, HEADER + len(pids) * (ch + 2))
    sheet = Image.new("RGB", size, BACKDROP)
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
    return _save(sheet, path)


def _save(image, path):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    palette_image = image.quantize(colors=256, method=Image.Quantize.MEDIANCUT,
                                   dither=Image.Dither.NONE)
    palette_image.save(path, optimize=True)
    return path


def _label_colours():
    """[256, 3] uint8 false colours: person's left parts reddish, right parts bluish."""
    colours = np.zeros((256, 3), np.uint8)
    named = {rd.HEAD: (250, 210, 170), rd.HAIR: (90, 60, 30), rd.NECK: (230, 180, 140),
             rd.TORSO: (240, 240, 80), rd.L_UPPER_ARM: (250, 80, 80), rd.L_FOREARM: (200, 40, 40),
             rd.L_HAND: (140, 20, 20), rd.R_UPPER_ARM: (80, 120, 250), rd.R_FOREARM: (40, 70, 200),
             rd.R_HAND: (20, 30, 140), rd.L_THIGH: (250, 150, 60), rd.L_SHIN: (210, 110, 30),
             rd.L_FOOT: (150, 70, 10), rd.R_THIGH: (80, 220, 220), rd.R_SHIN: (40, 170, 170),
             rd.R_FOOT: (10, 110, 110), rd.SKIRT: (200, 120, 220), rd.HAT: (120, 255, 120),
             rd.BAG: (160, 160, 160), rd.STRAP: (210, 210, 210), rd.BACKPACK: (110, 110, 110),
             rd.LOGO: (255, 255, 255), rd.SHADOW: (40, 40, 40), rd.OCCLUDER: (255, 0, 255),
             rd.PASSER: (180, 0, 180)}
    for label, colour in named.items():
        colours[label] = colour
    return colours


def part_label_sheet(world, path, num_tracklets: int = 4, cell=(96, 192)) -> Path:
    """Write a PNG with one row per query tracklet (first frame): the frame, its debug
    part-label image (false colours, left parts red, right parts blue) and the keypoints."""
    jobs = [job for job in world.jobs if job.role == "query"][:num_tracklets]
    if not jobs:
        raise ValueError("the benchmark has no query tracklets to show; use num_test_ids >= 1")
    colours = _label_colours()
    sheet = Image.new("RGB", (3 * cell[0], len(jobs) * cell[1]), BACKDROP)
    for row, job in enumerate(jobs):
        tracklet = world.render(job, debug=True)
        frame = tracklet.frames[0]
        labels = Image.fromarray(colours[tracklet.debug["labels"][0]])
        with_points, scale, offset = _fit(frame, cell)
        _draw_keypoints(with_points, tracklet.keypoints[0], scale, offset)
        for column, image in enumerate((_fit(frame, cell)[0], _fit(labels, cell)[0], with_points)):
            sheet.paste(image, (column * cell[0], row * cell[1]))
    return _save(sheet, path)


def write_pictures(world, folder) -> list:
    """The docs pictures: synth_contact_sheet.png, synth_keypoints.png, synth_part_labels.png."""
    folder = Path(folder)
    return [contact_sheet(world, folder / "synth_contact_sheet.png"),
            contact_sheet(world, folder / "synth_keypoints.png", num_identities=4, cell=(96, 192),
                          keypoints=True),
            part_label_sheet(world, folder / "synth_part_labels.png")]
