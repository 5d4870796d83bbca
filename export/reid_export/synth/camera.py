"""Cameras: each has its own scene (background strip), illumination (gain, colour cast, gamma),
scale range, dominant walking direction, elevation, blur, sensor noise and occlusion rate."""
import math
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
from PIL import Image, ImageDraw

from reid_export.synth.identity import GARMENT_COLOURS

#: The background strip is drawn at a scale where a person is this many pixels tall.
CANONICAL_PERSON_PX = 128
BACKGROUND_HEIGHT = 288
BACKGROUND_WIDTH = 1536
#: The ground line people walk on, in canonical background rows.
GROUND_ROWS = (222.0, 246.0)
#: Padding of the noise tile beyond the largest crop; the tile is cropped at a random offset.
NOISE_TILE_SLACK = 64

SCENE_STYLES = ("indoor", "street", "park", "plaza")
_WALLS = {"indoor": ((196, 188, 170), (150, 160, 170), (208, 200, 190), (120, 112, 100)),
          "street": ((150, 140, 130), (120, 120, 124), (170, 150, 120), (96, 90, 88)),
          "park": ((70, 110, 60), (96, 128, 70), (60, 90, 56), (120, 140, 90)),
          "plaza": ((180, 176, 168), (140, 136, 132), (160, 150, 140), (110, 116, 120))}
_FLOORS = {"indoor": ((160, 150, 130), (120, 110, 100), (180, 180, 176)),
           "street": ((96, 96, 100), (120, 116, 110), (80, 82, 88)),
           "park": ((150, 130, 100), (120, 110, 90), (100, 120, 70)),
           "plaza": ((170, 160, 150), (140, 140, 136), (190, 180, 160))}


@dataclass(eq=False)
class Camera:
    """One camera. `background` is the raw scene strip [BACKGROUND_HEIGHT, BACKGROUND_WIDTH, 3]
    uint8 at the canonical scale; `noise_tile` [Hn, Wn, 3] uint8 holds 128 + sensor noise."""
    index: int
    style: str
    walk_direction_deg: float         # dominant direction; tracklets also walk the opposite way
    elevation_deg: float              # how far the camera looks down
    crop_height_range: tuple          # (lo, hi) crop heights in pixels
    gain: float
    colour_cast: tuple                # per-channel gain (r, g, b)
    gamma: float
    noise_sigma: float
    defocus: float                    # blur radius in pixels for a 128-px tall person
    motion_blur_rate: float           # share of tracklets with horizontal motion blur
    occlusion_factor: float           # multiplies config.occlusion_rate
    background: np.ndarray = field(repr=False)
    noise_tile: np.ndarray = field(repr=False)

    @cached_property
    def background_image(self) -> Image.Image:
        return Image.fromarray(self.background)

    @cached_property
    def noise_image(self) -> Image.Image:
        return Image.fromarray(self.noise_tile)

    def tone_lut(self, extra_gain: float = 1.0) -> np.ndarray:
        """[3, 256] uint8: the camera's response per channel (gain, cast, gamma)."""
        levels = (np.arange(256, dtype=np.float64) / 255.0) ** self.gamma
        gains = self.gain * extra_gain * np.asarray(self.colour_cast, np.float64)[:, None]
        return np.clip(np.round(255.0 * gains * levels[None, :]), 0, 255).astype(np.uint8)


def sample_cameras(config, seed: int) -> list:
    """`config.num_cameras` cameras, each drawn from its own stream (seed, camera index)."""
    n = config.num_cameras
    order_rng = np.random.default_rng([seed, 1, 0])
    # Dominant directions spread over half a turn (each tracklet may walk the other way too).
    spread = np.arange(n) * 180.0 / n + order_rng.uniform(0, 180.0 / n)
    directions = spread[order_rng.permutation(n)]
    styles = [SCENE_STYLES[(i + int(order_rng.integers(len(SCENE_STYLES)))) % len(SCENE_STYLES)]
              for i in range(n)]
    log_lo, log_hi = math.log(config.min_crop_height), math.log(config.max_crop_height)
    cameras = []
    for index in range(n):
        rng = np.random.default_rng([seed, 1, index + 1])
        # Each camera sees people at its own distance: a window of 60% of the log scale range.
        width = 0.6 * (log_hi - log_lo)
        centre = rng.uniform(log_lo + width / 2, log_hi - width / 2) if width > 0 else log_lo
        crop_range = (math.exp(max(log_lo, centre - width / 2)),
                      math.exp(min(log_hi, centre + width / 2)))
        illum = config.illumination
        noise_sigma = config.noise * float(rng.uniform(1.0, 6.0))
        max_h = config.max_crop_height
        tile_shape = (max_h + NOISE_TILE_SLACK, int(math.ceil(max_h * 1.25)) + NOISE_TILE_SLACK, 3)
        noise_tile = np.clip(np.round(128.0 + rng.normal(0.0, noise_sigma, tile_shape)), 0, 255)
        cameras.append(Camera(
            index=index, style=styles[index],
            walk_direction_deg=float(directions[index]),
            elevation_deg=float(rng.uniform(0.0, 25.0)),
            crop_height_range=crop_range,
            gain=float(1.0 + illum * rng.uniform(-0.3, 0.22)),
            colour_cast=tuple(float(v) for v in 1.0 + illum * rng.uniform(-0.12, 0.12, 3)),
            gamma=float(1.0 + illum * rng.uniform(-0.25, 0.25)),
            noise_sigma=noise_sigma,
            defocus=config.blur * float(rng.choice([0.0, 0.0, rng.uniform(0.3, 1.2)])),
            motion_blur_rate=min(1.0, config.blur * float(rng.uniform(0.0, 0.4))),
            occlusion_factor=float(rng.uniform(0.5, 1.5)),
            background=make_background(rng, styles[index], config.clutter),
            noise_tile=noise_tile.astype(np.uint8)))
    return cameras


def _low_frequency(rng, shape, cell):
    """Smooth noise in [-1, 1] of `shape` (h, w): a coarse random grid upsampled bilinearly."""
    h, w = shape
    coarse = rng.uniform(0, 255, (max(2, h // cell + 2), max(2, w // cell + 2))).astype(np.uint8)
    smooth = Image.fromarray(coarse).resize((w, h), Image.BILINEAR)
    return np.asarray(smooth, np.float64) / 127.5 - 1.0


def make_background(rng, style: str, clutter: float) -> np.ndarray:
    """A scene strip [BACKGROUND_HEIGHT, BACKGROUND_WIDTH, 3] uint8: wall or vegetation above a
    floor, with clutter (doors, windows, posters, poles, bushes), texture and uneven light."""
    h, w = BACKGROUND_HEIGHT, BACKGROUND_WIDTH
    horizon = int(rng.uniform(0.42, 0.66) * h)
    wall = np.asarray(_WALLS[style][int(rng.integers(4))], np.float64)
    floor = np.asarray(_FLOORS[style][int(rng.integers(3))], np.float64)
    rows = np.arange(h, dtype=np.float64)[:, None, None]
    image = np.where(rows < horizon, wall * (0.9 + 0.2 * rows / h), floor * (0.85 + 0.3 * rows / h))
    image = image * np.ones((1, w, 1))
    canvas = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    muted = [tuple(int(c) for c in rng.uniform(40, 220, 3)) for _ in range(6)]
    # Garment colours in the scene too, so that colour alone does not single out the person.
    colours = muted + list(GARMENT_COLOURS[:8])
    pick = lambda: colours[int(rng.integers(len(colours)))]  # noqa: E731
    for _ in range(int(round(clutter * w / 70))):
        kind = rng.random()
        x = rng.uniform(-40, w)
        if style == "park" and kind < 0.5:
            cx, cy = x, horizon - rng.uniform(0, 40)
            rx, ry = rng.uniform(20, 70), rng.uniform(15, 50)
            green = tuple(int(v) for v in rng.uniform([30, 70, 20], [90, 150, 80]))
            draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=green)
        elif kind < 0.35:  # window, poster or shop front
            bw, bh = rng.uniform(20, 120), rng.uniform(20, 90)
            top = rng.uniform(5, max(6, horizon - bh - 5))
            draw.rectangle([x, top, x + bw, top + bh], fill=pick())
            if rng.random() < 0.5:
                draw.rectangle([x + 3, top + 3, x + bw - 3, top + bh - 3], fill=pick())
        elif kind < 0.6:  # door reaching the floor
            bw = rng.uniform(30, 60)
            top = rng.uniform(horizon - 130, horizon - 60)
            draw.rectangle([x, top, x + bw, horizon], fill=pick())
        elif kind < 0.8:  # pole or column
            bw = rng.uniform(4, 16)
            draw.rectangle([x, 0, x + bw, horizon + rng.uniform(0, 30)], fill=pick())
        else:  # horizontal band (rail, sign, shelf)
            top = rng.uniform(0, horizon)
            right, bottom = x + rng.uniform(60, 300), top + rng.uniform(3, 12)
            draw.rectangle([x, top, right, bottom], fill=pick())
    # Floor texture: tiles or paving lines getting wider towards the camera.
    line = tuple(int(v) for v in floor * 0.75)
    y, step = float(horizon), 4.0
    while y < h:
        draw.line([(0, y), (w, y)], fill=line, width=1)
        step *= 1.25
        y += step
    if style in ("indoor", "plaza"):
        vanish = rng.uniform(0, w)
        for x in np.arange(-w, 2 * w, rng.uniform(40, 90)):
            draw.line([(vanish + (x - vanish) * 0.1, horizon), (x, h)], fill=line, width=1)
    pixels = np.asarray(canvas, np.float64)
    texture = 1.0 + 0.08 * clutter * _low_frequency(rng, (h, w), 12)[..., None]
    light = 1.0 + 0.18 * _low_frequency(rng, (1, w), 256)[..., None]
    return np.clip(np.round(pixels * texture * light), 0, 255).astype(np.uint8)
