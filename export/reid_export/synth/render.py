"""Renders one tracklet: an identity in one outfit walking past one camera, as detector-like crops
with COCO-17 keypoints.

Each frame is painted back to front from primitives (capsules for limbs, convex polygons for torso, skirt,
bags, occluders) into a per-pixel body-part label image; colours, garment patterns, background,
shadow, illumination, blur and sensor noise are applied to that label image. Joint visibility is
decided geometrically from the same primitives (the last primitive drawn over a joint is its own
part, another part, or an occluder), so the label image is an independent check of it.
"""
import math
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

from reid_export.synth import skeleton as sk
from reid_export.synth.camera import BACKGROUND_HEIGHT, BACKGROUND_WIDTH, CANONICAL_PERSON_PX, GROUND_ROWS

# Part labels of the debug label image (0 = background).
(BACKGROUND, HEAD, HAIR, NECK, TORSO, L_UPPER_ARM, R_UPPER_ARM, L_FOREARM, R_FOREARM, L_HAND,
 R_HAND, L_THIGH, R_THIGH, L_SHIN, R_SHIN, L_FOOT, R_FOOT, SKIRT, HAT, BAG, STRAP, BACKPACK, LOGO,
 SHADOW, OCCLUDER, PASSER) = range(26)
NUM_LABELS = 26
#: Drawn on a part's surface; they never hide a joint from the simulated detector.
DECORATIONS = (STRAP, LOGO)
OCCLUDERS = (OCCLUDER, PASSER)
#: The parts each COCO joint belongs to: a joint is visible when one of them is on top.
JOINT_PARTS = (
    (HEAD,), (HEAD,), (HEAD,), (HEAD,), (HEAD,),
    (TORSO, L_UPPER_ARM), (TORSO, R_UPPER_ARM),
    (L_UPPER_ARM, L_FOREARM), (R_UPPER_ARM, R_FOREARM),
    (L_FOREARM, L_HAND), (R_FOREARM, R_HAND),
    (TORSO, L_THIGH, SKIRT), (TORSO, R_THIGH, SKIRT),
    (L_THIGH, L_SHIN), (R_THIGH, R_SHIN),
    (L_SHIN, L_FOOT), (R_SHIN, R_FOOT),
)
FACE_JOINTS = (sk.NOSE, sk.L_EYE, sk.R_EYE, sk.L_EAR, sk.R_EAR)

# Visibility classes of a joint in a frame.
VISIBLE, SELF_OCCLUDED, OCCLUDED, OUTSIDE = 0, 1, 2, 3
#: Confidence ranges the simulated detector gives each class (OUTSIDE is always [0, 0, 0]).
VISIBLE_CONFIDENCE = (0.5, 0.99)
SELF_OCCLUDED_CONFIDENCE = (0.1, 0.4)
OCCLUDED_CONFIDENCE = (0.0, 0.08)
#: Below this the official extractor writes [0, 0, 0].
DETECTOR_THRESHOLD = 0.005

#: A joint closer than this (pixels) to a primitive drawn over it counts as hidden: Pillow fills
#: pixels whose centres lie up to ~1.05 px outside a polygon, and a joint is up to 0.71 px from
#: the centre of its pixel.
COVER_MARGIN_PX = 2.0
CAPSULE_VERTICES = 16
POLYGON_VERTICES = 6
#: Perspective: the person's scale grows by this share per unit of H walked towards the camera.
PERSPECTIVE_PER_H = 1.0 / 8.0


@dataclass
class RenderedTracklet:
    """frames: list of T PIL RGB images (sizes vary, like detector crops); keypoints: [T, 17, 3]
    float64 (x, y in crop pixels, confidence), rounded exactly as written to keypoints.json
    (x, y to 0.01 px, confidence to 0.001); meta: the
    tracklet's generator parameters (JSON-ready); debug (only when asked): `labels` list of T
    [h, w] uint8 part-label images, `joints` [T, 17, 2] float64 noise-free joint positions,
    `visibility` [T, 17] int8 classes (VISIBLE, SELF_OCCLUDED, OCCLUDED, OUTSIDE)."""
    frames: list
    keypoints: np.ndarray
    meta: dict
    debug: dict | None = None


class _Primitives:
    """Capsules and convex polygons over T frames (view units, or tracklet pixels for
    occluders). Polygons have up to POLYGON_VERTICES corners; shorter ones repeat their last."""

    def __init__(self):
        self.capsules = []   # (label, a [T,2], b [T,2], radius [T] or scalar, depth [T])
        self.polygons = []   # (label, corners [T,POLYGON_VERTICES,2], depth [T])

    def capsule(self, label, a, b, radius, depth):
        self.capsules.append((label, a, b, radius, depth))

    def polygon(self, label, corners, depth):
        padding = POLYGON_VERTICES - corners.shape[1]
        if padding:
            corners = np.concatenate([corners, np.repeat(corners[:, -1:], padding, axis=1)], axis=1)
        self.polygons.append((label, corners, depth))


def _unit(v):
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


def _support(axes2d, half_sizes, direction):
    """Half-extent along `direction` [T,2] of a box with axes `axes2d` (list of [T,2]) and
    `half_sizes`: the exact support function of a projected box."""
    return sum(np.abs(np.sum(axis * direction, axis=-1)) * h for axis, h in zip(axes2d, half_sizes))


def _box_polygon(centre, axes2d, half_sizes, along, across):
    """The rectangle around a projected box, aligned with `along`/`across` [T,2]: [T,4,2]."""
    e_along = _support(axes2d, half_sizes, along)[:, None]
    e_across = _support(axes2d, half_sizes, across)[:, None]
    return np.stack([centre + along * e_along + across * e_across,
                     centre + along * e_along - across * e_across,
                     centre - along * e_along - across * e_across,
                     centre - along * e_along + across * e_across], axis=1)


def _person_primitives(body, outfit, pose, view):
    """All body, clothing and accessory primitives in view units (x, y up; H = 1)."""
    prims = _Primitives()
    pts = pose.points @ view.T                         # [T, P, 3] (x, y up, depth)
    xy, depth = pts[..., :2], pts[..., 2]
    to_view = lambda v: v @ view.T                     # noqa: E731  body-local vectors -> view
    s_left, s_fwd = to_view(pose.shoulder_left), to_view(pose.shoulder_forward)
    h_left, h_fwd = to_view(pose.hip_left), to_view(pose.hip_forward)
    t_up = to_view(pose.torso_up)
    f_view = view[:, 0]                                # body forward in view coordinates
    neck, pelvis = xy[:, sk.NECK], xy[:, sk.PELVIS]
    axis = _unit(neck - pelvis)
    across = np.stack([-axis[:, 1], axis[:, 0]], axis=-1)
    torso_depth = 0.5 * (depth[:, sk.NECK] + depth[:, sk.PELVIS])
    front_depth = torso_depth + 0.5 * body.chest_depth * abs(f_view[2]) + 0.002
    r_head = body.head_radius

    def cap(label, i, j, radius, bias=0.0):
        prims.capsule(label, xy[:, i], xy[:, j], radius, 0.5 * (depth[:, i] + depth[:, j]) + bias)

    # Hair first: on ties (profile views) the head is drawn over it.
    hair_back = pose.points[:, sk.HEAD] - r_head * np.array([0.3, 0.0, 0.0])
    hair_depth = to_view(hair_back)[:, 2]
    hair_shift = {"short": (0.12, 0.12, 1.0), "long": (0.12, 0.12, 1.02), "shaved": (0.1, 0.04, 0.92)}
    up_shift, back_shift, radius = hair_shift[body.hair_style]
    hair_centre = xy[:, sk.HEAD] + r_head * (up_shift * view[:2, 1] - back_shift * f_view[:2])
    prims.capsule(HAIR, hair_centre, hair_centre, radius * r_head, hair_depth)
    if body.hair_style == "long":
        nape = to_view(pose.points[:, sk.NECK] - np.array([0.5 * body.chest_depth + 0.01, 0.0, 0.0])
                       - 0.04 * pose.torso_up)
        prims.capsule(HAIR, hair_centre, nape[:, :2], 0.75 * r_head,
                      0.5 * (hair_depth + nape[:, 2]))
    cap(NECK, sk.NECK, sk.HEAD, 0.45 * r_head, bias=-0.01)
    cap(HEAD, sk.HEAD, sk.HEAD, r_head, bias=0.01)

    # Torso: a box from the shoulder line down to the hip line.
    top_axes, top_half = [s_left[:, :2], s_fwd[:, :2], t_up[:, :2]], [body.shoulder_width / 2, body.chest_depth / 2, 0.02]
    hip_half_width = body.hip_width / 2 + 0.3 * body.leg_radius
    bottom_axes, bottom_half = [h_left[:, :2], h_fwd[:, :2]], [hip_half_width, 0.45 * body.chest_depth]
    top_across = _support(top_axes, top_half, across)[:, None]
    bottom_across = _support(bottom_axes, bottom_half, across)[:, None]
    top = neck + axis * (_support(top_axes[:2], top_half[:2], axis)[:, None] + 0.01)
    shoulders = top - 0.04 * axis
    bottom = pelvis - axis * (_support(bottom_axes, bottom_half, axis)[:, None] + 0.04)
    # Sloping shoulders: the top edge is narrower than the shoulder line.
    torso = np.stack([top + 0.55 * across * top_across, shoulders + across * top_across,
                      bottom + across * bottom_across, bottom - across * bottom_across,
                      shoulders - across * top_across, top - 0.55 * across * top_across], axis=1)
    prims.polygon(TORSO, torso, torso_depth)

    if outfit.upper_pattern == "logo":
        chest = pose.points[:, sk.NECK] + 0.35 * (pose.points[:, sk.PELVIS] - pose.points[:, sk.NECK])
        centre = to_view(chest + 0.5 * body.chest_depth * pose.shoulder_forward)
        logo = _box_polygon(centre[:, :2], [s_left[:, :2], t_up[:, :2]], [0.045, 0.04], axis, across)
        prims.polygon(LOGO, logo, centre[:, 2] + 0.001)

    for left_side, shoulder, elbow, wrist, hand, hip, knee, ankle, heel, toe in (
            (True, sk.L_SHOULDER, sk.L_ELBOW, sk.L_WRIST, sk.L_HAND, sk.L_HIP, sk.L_KNEE, sk.L_ANKLE, sk.L_HEEL, sk.L_TOE),
            (False, sk.R_SHOULDER, sk.R_ELBOW, sk.R_WRIST, sk.R_HAND, sk.R_HIP, sk.R_KNEE, sk.R_ANKLE, sk.R_HEEL, sk.R_TOE)):
        pick = lambda left, right: left if left_side else right  # noqa: E731
        cap(pick(L_UPPER_ARM, R_UPPER_ARM), shoulder, elbow, body.arm_radius)
        cap(pick(L_FOREARM, R_FOREARM), elbow, wrist, 0.85 * body.arm_radius)
        cap(pick(L_HAND, R_HAND), hand, hand, 1.15 * body.arm_radius, bias=0.001)
        cap(pick(L_THIGH, R_THIGH), hip, knee, body.leg_radius)
        cap(pick(L_SHIN, R_SHIN), knee, ankle, 0.85 * body.leg_radius)
        cap(pick(L_FOOT, R_FOOT), heel, toe, sk.FOOT_RADIUS, bias=0.001)

    if outfit.lower_style == "skirt":
        knees = 0.5 * (xy[:, sk.L_KNEE] + xy[:, sk.R_KNEE])
        hem = pelvis + 0.62 * (knees - pelvis)
        knee_spread = np.abs(np.sum((xy[:, sk.L_KNEE] - xy[:, sk.R_KNEE]) * across, axis=-1))[:, None]
        hem_half = np.maximum(1.25 * bottom_across, 0.31 * knee_spread + body.leg_radius)
        waist = pelvis + 0.02 * axis
        skirt = np.stack([waist + across * bottom_across * 1.05, waist - across * bottom_across * 1.05,
                          hem - across * hem_half, hem + across * hem_half], axis=1)
        thighs = np.maximum(depth[:, sk.L_HIP] + depth[:, sk.L_KNEE], depth[:, sk.R_HIP] + depth[:, sk.R_KNEE])
        prims.polygon(SKIRT, skirt, 0.5 * thighs + 0.002)

    if outfit.backpack is not None:
        chest = pose.points[:, sk.NECK] + 0.35 * (pose.points[:, sk.PELVIS] - pose.points[:, sk.NECK])
        centre = to_view(chest - (0.5 * body.chest_depth + 0.04) * pose.shoulder_forward)
        pack = _box_polygon(centre[:, :2], [s_left[:, :2], s_fwd[:, :2], t_up[:, :2]], [0.1, 0.04, 0.11], axis, across)
        prims.polygon(BACKPACK, pack, centre[:, 2])
        for sign in (1.0, -1.0):
            offset = sign * (body.shoulder_width / 2 - 0.05) * pose.shoulder_left
            front = 0.5 * body.chest_depth * pose.shoulder_forward
            a = to_view(pose.points[:, sk.NECK] + offset + front)
            b = to_view(pose.points[:, sk.NECK] + 0.55 * (pose.points[:, sk.PELVIS] - pose.points[:, sk.NECK]) + offset + front)
            prims.capsule(STRAP, a[:, :2], b[:, :2], 0.012, 0.5 * (a[:, 2] + b[:, 2]))

    if outfit.bag is not None:
        side = outfit.bag_side
        centre = to_view(pose.points[:, sk.PELVIS] + side * (body.hip_width / 2 + body.leg_radius + 0.03)
                         * pose.hip_left - 0.06 * pose.torso_up)
        vertical, horizontal = np.broadcast_to([0.0, 1.0], centre[:, :2].shape), np.broadcast_to([1.0, 0.0], centre[:, :2].shape)
        bag_axes = [h_fwd[:, :2], np.broadcast_to(view[:2, 1], h_fwd[:, :2].shape), h_left[:, :2]]
        prims.polygon(BAG, _box_polygon(centre[:, :2], bag_axes, [0.08, 0.065, 0.03], vertical, horizontal), centre[:, 2])
        strap_top = to_view(pose.points[:, sk.NECK] - side * 0.3 * body.shoulder_width * pose.shoulder_left)
        prims.capsule(STRAP, strap_top[:, :2], centre[:, :2] + 0.065 * view[:2, 1], 0.01, front_depth)

    if outfit.hat is not None:
        crown = xy[:, sk.HEAD] + 0.8 * r_head * view[:2, 1]
        prims.capsule(HAT, crown, crown, 0.5 * r_head, depth[:, sk.HEAD] + 0.02)
        brim_base = pose.points[:, sk.HEAD] + 0.35 * r_head * np.array([0.0, 1.0, 0.0])
        a = to_view(brim_base - 0.5 * r_head * np.array([1.0, 0.0, 0.0]))
        b = to_view(brim_base + 1.25 * r_head * np.array([1.0, 0.0, 0.0]))
        prims.capsule(HAT, a[:, :2], b[:, :2], 0.12 * r_head, 0.5 * (a[:, 2] + b[:, 2]) + 0.02)
    return prims, xy, depth


def _capsule_polygons(a, b, radius):
    """Capsules as convex polygons [T, C, CAPSULE_VERTICES, 2] (inscribed in the true capsule)."""
    direction = b - a
    length = np.linalg.norm(direction, axis=-1, keepdims=True)
    direction = np.where(length > 1e-9, direction / np.maximum(length, 1e-9), np.array([0.0, 1.0]))
    normal = np.stack([-direction[..., 1], direction[..., 0]], axis=-1)
    half = CAPSULE_VERTICES // 2
    theta = np.linspace(-np.pi / 2, np.pi / 2, half)
    cos, sin = np.cos(theta), np.sin(theta)
    r = radius[..., None, None]
    end_b = b[..., None, :] + r * (cos[:, None] * direction[..., None, :] + sin[:, None] * normal[..., None, :])
    end_a = a[..., None, :] + r * (-cos[:, None] * direction[..., None, :] - sin[:, None] * normal[..., None, :])
    return np.concatenate([end_b, end_a], axis=-2)


def _clearance(points, capsules, polygons):
    """How far inside each primitive each point lies, in pixels (negative: outside):
    [T, N, C + Q]. points [T, N, 2]; capsules (a [T,C,2], b [T,C,2], r [T,C]); convex polygons
    [T,Q,V,2] (repeated vertices allowed)."""
    a, b, r = capsules
    p = points[:, :, None, :]
    ab = (b - a)[:, None]
    ap = p - a[:, None]
    t = np.clip(np.sum(ap * ab, -1) / np.maximum(np.sum(ab * ab, -1), 1e-12), 0.0, 1.0)
    capsule_clearance = r[:, None] - np.linalg.norm(ap - t[..., None] * ab, axis=-1)
    edges = np.roll(polygons, -1, axis=2) - polygons                # [T, Q, V, 2]
    area = np.sum(polygons[..., 0] * np.roll(polygons[..., 1], -1, 2)
                  - np.roll(polygons[..., 0], -1, 2) * polygons[..., 1], -1)
    orient = np.where(area >= 0, 1.0, -1.0)[:, None, :, None]      # [T, 1, Q, 1]
    rel = points[:, :, None, None, :] - polygons[:, None]           # [T, N, Q, V, 2]
    cross = edges[:, None, ..., 0] * rel[..., 1] - edges[:, None, ..., 1] * rel[..., 0]
    edge_length = np.linalg.norm(edges, axis=-1)[:, None]
    signed = np.where(edge_length > 1e-9, orient * cross / np.maximum(edge_length, 1e-9), np.inf)
    return np.concatenate([capsule_clearance, np.min(signed, axis=-1)], axis=-1)


def _sample_scale(rng, camera, config, body, ramp_per_frame, num_frames):
    """Nominal crop height at frame 0, and the per-frame growth actually used, such that every
    frame's crop height stays inside the config's range."""
    lo, hi = camera.crop_height_range
    nominal = math.exp(rng.uniform(math.log(lo), math.log(hi))) * body.height_m / 1.75
    growth = 1.0 + ramp_per_frame * np.arange(num_frames)
    span = config.max_crop_height / config.min_crop_height
    extent = growth.max() / growth.min()
    if extent > span:  # the approach would leave the range: slow it down
        ramp_per_frame *= (span - 1.0) / max(extent - 1.0, 1e-9)
        growth = 1.0 + ramp_per_frame * np.arange(num_frames)
    nominal = min(max(nominal, config.min_crop_height / growth.min()), config.max_crop_height / growth.max())
    return nominal, growth


def _palettes(body, outfit, camera_lut, far_left_shade, far_right_shade, occluder_colours):
    """Packed RGBX palettes [512] uint32: entries 0..255 the primary colour of each label,
    256..511 the pattern colour; and the pattern flag of each label [256] uint8
    (1: follows the top's pattern field, 2: the bottoms')."""
    primary = np.zeros((256, 3))
    skin, upper, lower = body.skin, outfit.upper_colour, outfit.lower_colour
    long_sleeves, trousers = outfit.sleeves == "long", outfit.lower_style == "trousers"
    colours = {HEAD: skin, NECK: skin, HAIR: body.hair, TORSO: upper,
               L_UPPER_ARM: upper, R_UPPER_ARM: upper,
               L_FOREARM: upper if long_sleeves else skin, R_FOREARM: upper if long_sleeves else skin,
               L_HAND: skin, R_HAND: skin, L_THIGH: lower, R_THIGH: lower,
               L_SHIN: lower if trousers else skin, R_SHIN: lower if trousers else skin,
               L_FOOT: outfit.shoes, R_FOOT: outfit.shoes, SKIRT: lower, LOGO: outfit.upper_colour2,
               HAT: outfit.hat, BAG: outfit.bag, BACKPACK: outfit.backpack,
               OCCLUDER: occluder_colours[0], PASSER: occluder_colours[1]}
    colours[STRAP] = tuple(0.6 * c for c in (outfit.bag or outfit.backpack or (60, 60, 60)))
    for label, colour in colours.items():
        if colour is not None:
            primary[label] = colour
    secondary = primary.copy()
    flags = np.zeros(256, np.uint8)
    upper_parts = [TORSO] if outfit.upper_pattern == "twotone" else \
        [TORSO, L_UPPER_ARM, R_UPPER_ARM] + ([L_FOREARM, R_FOREARM] if long_sleeves else [])
    if outfit.upper_pattern in ("hstripes", "vstripes", "checks", "twotone"):
        flags[upper_parts] = 1
        secondary[upper_parts] = outfit.upper_colour2
    lower_parts = [L_THIGH, R_THIGH, SKIRT] + ([L_SHIN, R_SHIN] if trousers else [])
    if outfit.lower_pattern != "plain":
        flags[lower_parts] = 2
        secondary[lower_parts] = outfit.lower_colour2
    shade = np.ones((256, 1))
    shade[[L_UPPER_ARM, L_FOREARM, L_HAND, L_THIGH, L_SHIN, L_FOOT]] = far_left_shade
    shade[[R_UPPER_ARM, R_FOREARM, R_HAND, R_THIGH, R_SHIN, R_FOOT]] = far_right_shade
    primary, secondary = primary * shade, secondary * shade
    rgb = np.clip(np.round(np.concatenate([primary, secondary])), 0, 255).astype(np.uint8)
    return pack_rgb(camera_lut, rgb), flags


def _pattern_field(pattern, period_px, split_px, height, width, bit):
    """[2*height+1, 2*width+1] uint8 field, `bit` where the pattern colour shows; the centre
    pixel is the anchor (top of the torso for tops, the hips for bottoms)."""
    rows = (np.arange(2 * height + 1) - height)[:, None]
    cols = (np.arange(2 * width + 1) - width)[None, :]
    p = max(2, int(round(period_px)))
    if pattern == "hstripes":
        on = (rows // p) % 2 == 1
    elif pattern == "vstripes":
        on = (cols // p) % 2 == 1
    elif pattern == "checks":
        on = ((rows // p) + (cols // p)) % 2 == 1
    elif pattern == "twotone":
        on = rows >= split_px
    else:
        on = np.zeros((1, 1), bool)
    return np.broadcast_to(on, (2 * height + 1, 2 * width + 1)).astype(np.uint8) * np.uint8(bit)


def _background_region(camera, scale, box, lut):
    """The camera's scene at `scale` pixels per canonical pixel, cut to `box` = (x0, y0, x1, y1)
    in scaled pixels, toned by `lut`: [y1-y0, x1-x0] packed RGBX uint32. Parts outside the scene
    repeat its edge."""
    x0, y0, x1, y1 = box
    source = camera.background_image
    # Clip the box to the scene, resample, then pad back to the full box with the edge pixels.
    cx0, cy0 = max(x0, 0), max(y0, 0)
    cx1 = min(x1, int(BACKGROUND_WIDTH * scale))
    cy1 = min(y1, int(BACKGROUND_HEIGHT * scale))
    region = source.resize((cx1 - cx0, cy1 - cy0), Image.BILINEAR,
                           box=(cx0 / scale, cy0 / scale, cx1 / scale, cy1 / scale))
    pixels = np.asarray(region)
    if (cx0, cy0, cx1, cy1) != (x0, y0, x1, y1):
        pixels = np.pad(pixels, ((cy0 - y0, y1 - cy1), (cx0 - x0, x1 - cx1), (0, 0)), mode="edge")
    return pack_rgb(lut, pixels)


def pack_rgb(lut, rgb):
    """Apply a per-channel `lut` [3, 256] to uint8 `rgb` [..., 3] and pack each pixel into one
    uint32 (R | G << 8 | B << 16; the layout Pillow's "RGBX" raw mode reads)."""
    shifted = lut.astype(np.uint32) << (np.arange(3, dtype=np.uint32) * 8)[:, None]
    return (np.take(shifted[0], rgb[..., 0]) | np.take(shifted[1], rgb[..., 1])
            | np.take(shifted[2], rgb[..., 2]))


def _occluder_primitives(rng, kind, person_x, ground, scale, num_frames):
    """Primitives of an occluder in tracklet pixels (drawn over everything), and its colours."""
    prims = _Primitives()
    t = np.arange(num_frames, dtype=np.float64)
    meet = rng.uniform(0.2, 0.8) * (num_frames - 1)
    x_meet = float(np.interp(meet, t, person_x))
    big = 1e4
    ones = np.ones(num_frames)
    last = np.full(num_frames, 1e6)
    if kind == "pole":
        half = rng.uniform(0.03, 0.07) * scale
        x = x_meet + rng.uniform(-0.25, 0.25) * scale
        corners = np.array([[x - half, -big], [x + half, -big], [x + half, big], [x - half, big]])
        prims.polygon(OCCLUDER, np.broadcast_to(corners, (num_frames, 4, 2)), last)
    elif kind == "wall":
        top = ground - rng.uniform(0.2, 0.45) * scale
        half = rng.uniform(0.4, 1.25) * scale
        x = x_meet + rng.uniform(-0.5, 0.5) * scale
        corners = np.array([[x - half, top], [x + half, top], [x + half, big], [x - half, big]])
        prims.polygon(OCCLUDER, np.broadcast_to(corners, (num_frames, 4, 2)), last)
    else:  # another pedestrian passing close to the camera
        size = rng.uniform(1.1, 1.5) * scale
        feet = ground + rng.uniform(0.1, 0.3) * scale
        speed = rng.choice([-1.0, 1.0]) * rng.uniform(0.06, 0.15) * scale
        x = x_meet + speed * (t - meet)
        column = lambda y: np.stack([x, y * ones], axis=-1)  # noqa: E731
        prims.capsule(PASSER, column(feet - 0.8 * size), column(feet - 0.25 * size), 0.15 * size * ones, last)
        prims.capsule(PASSER, column(feet - 0.3 * size), column(feet + 0.2 * size), 0.11 * size * ones, last)
        prims.capsule(PASSER, column(feet - 0.97 * size), column(feet - 0.97 * size), 0.075 * size * ones, last + 1)
    colours = [tuple(int(v) for v in rng.uniform(30, 200, 3)) for _ in range(2)]
    return prims, colours


def render_tracklet(identity, outfit_index: int, camera, num_frames: int, config, rng,
                    debug: bool = False) -> RenderedTracklet:
    """Render `num_frames` frames of `identity` wearing outfit `outfit_index` (0 or 1) walking
    past `camera`. All randomness comes from `rng` (numpy Generator), so the same stream gives
    the same bytes."""
    body, outfit = identity.body, identity.outfits[outfit_index]
    jitter = lambda: 1.0 + rng.uniform(-0.04, 0.04)  # noqa: E731  day-to-day gait variation
    gait = replace(identity.gait, period_frames=identity.gait.period_frames * jitter(),
                   hip_swing=identity.gait.hip_swing * jitter(), arm_swing=identity.gait.arm_swing * jitter())
    direction = (camera.walk_direction_deg + (180.0 if rng.random() < 0.5 else 0.0)
                 + rng.normal(0.0, 12.0 * config.viewpoint_spread)) % 360.0
    elevation = float(np.clip(camera.elevation_deg + rng.normal(0.0, 2.0), 0.0, 35.0))
    view = sk.view_matrix(direction, elevation)
    phase = rng.uniform(0.0, 1.0) + np.arange(num_frames) / gait.period_frames
    pose = sk.walk(body, gait, phase)

    # Speed without foot sliding: one stride (both feet) per cycle.
    speed = 2.0 * body.leg_length * math.sin(gait.hip_swing) / gait.period_frames   # H per frame
    towards = math.sin(math.radians(direction))
    nominal_crop, growth = _sample_scale(rng, camera, config, body, speed * towards * PERSPECTIVE_PER_H, num_frames)
    margin = rng.uniform(0.06, 0.2)
    person_px0 = nominal_crop / (1.0 + margin)
    person_px = person_px0 * growth                                                  # [T]
    bg_scale = person_px0 / CANONICAL_PERSON_PX
    ground = rng.uniform(*GROUND_ROWS) * bg_scale
    walk_x = speed * math.cos(math.radians(direction)) * person_px0 * np.arange(num_frames)

    prims, xy_view, depth_view = _person_primitives(body, outfit, pose, view)

    def to_pixels(points, origin_x):  # view units -> tracklet pixels, per frame
        scale = person_px.reshape((-1,) + (1,) * (points.ndim - 1))
        ox = origin_x.reshape((-1,) + (1,) * (points.ndim - 2))
        return np.stack([ox + points[..., 0] * scale[..., 0], ground - points[..., 1] * scale[..., 0]], axis=-1)

    cap_a = to_pixels(np.stack([a for _, a, _, _, _ in prims.capsules], axis=1), walk_x)
    cap_b = to_pixels(np.stack([b for _, _, b, _, _ in prims.capsules], axis=1), walk_x)
    cap_r = np.array([np.broadcast_to(r, (num_frames,)) for _, _, _, r, _ in prims.capsules]).T * person_px[:, None]
    polygons = to_pixels(np.stack([q for _, q, _ in prims.polygons], axis=1), walk_x)
    joints = to_pixels(xy_view[:, :sk.NUM_JOINTS], walk_x)

    # Detector box: around the person's extent, jittered, aspect ~ crop_aspect.
    xs = np.concatenate([(cap_a[..., 0] - cap_r), (cap_a[..., 0] + cap_r), (cap_b[..., 0] - cap_r),
                         (cap_b[..., 0] + cap_r), polygons[..., 0].reshape(num_frames, -1)], axis=1)
    ys = np.concatenate([(cap_a[..., 1] - cap_r), (cap_a[..., 1] + cap_r), (cap_b[..., 1] - cap_r),
                         (cap_b[..., 1] + cap_r), polygons[..., 1].reshape(num_frames, -1)], axis=1)
    j = config.crop_jitter
    centre_x = 0.5 * (xs.min(1) + xs.max(1)) + rng.normal(0.0, 0.5 * j, num_frames) * person_px
    centre_y = 0.5 * (ys.min(1) + ys.max(1)) + rng.normal(0.0, 0.5 * j, num_frames) * person_px
    heights = np.clip(np.round(person_px * (1.0 + margin) * (1.0 + rng.normal(0.0, j, num_frames))),
                      config.min_crop_height, config.max_crop_height).astype(int)
    aspect = config.crop_aspect * (1.0 + rng.uniform(-0.08, 0.08))
    widths = np.maximum(8, np.round(heights * aspect * (1.0 + rng.normal(0.0, j, num_frames)))).astype(int)
    left = np.round(centre_x - widths / 2).astype(int)
    top = np.round(centre_y - heights / 2).astype(int)
    # Place the walk inside the scene (the scene is wide enough for the longest tracklet).
    span_left, span_right = int(left.min()), int((left + widths).max())
    scene_width = int(BACKGROUND_WIDTH * bg_scale)
    room = scene_width - (span_right - span_left)
    shift = -span_left + (int(rng.integers(0, room + 1)) if room > 0 else room // 2)
    walk_x = walk_x + shift
    left = left + shift
    cap_a[..., 0] += shift
    cap_b[..., 0] += shift
    polygons[..., 0] += shift
    joints[..., 0] += shift

    occluder_kind = None
    occluder_colours = [(0, 0, 0), (0, 0, 0)]
    if rng.random() < min(1.0, config.occlusion_rate * camera.occlusion_factor):
        occluder_kind = ("pole", "wall", "passer")[int(rng.integers(3))]
        occ, occluder_colours = _occluder_primitives(rng, occluder_kind, walk_x, ground,
                                                     person_px0, num_frames)
        prims.capsules += occ.capsules
        prims.polygons += occ.polygons
        if occ.capsules:
            cap_a = np.concatenate([cap_a, np.stack([a for _, a, _, _, _ in occ.capsules], 1)], 1)
            cap_b = np.concatenate([cap_b, np.stack([b for _, _, b, _, _ in occ.capsules], 1)], 1)
            cap_r = np.concatenate([cap_r, np.stack([r for _, _, _, r, _ in occ.capsules], 1)], 1)
        if occ.polygons:
            polygons = np.concatenate([polygons, np.stack([q for _, q, _ in occ.polygons], 1)], 1)

    # Everything into crop coordinates.
    origin = np.stack([left, top], axis=-1).astype(np.float64)          # [T, 2]
    cap_a -= origin[:, None]
    cap_b -= origin[:, None]
    polygons -= origin[:, None, None]
    joints -= origin[:, None]

    labels = np.array([p[0] for p in prims.capsules] + [p[0] for p in prims.polygons])
    depths = np.stack([np.broadcast_to(p[4], (num_frames,)) for p in prims.capsules]
                      + [np.broadcast_to(p[2], (num_frames,)) for p in prims.polygons], axis=1)
    order = np.argsort(depths, axis=1, kind="stable")                     # back to front
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(order.shape[1])[None].repeat(num_frames, 0), axis=1)

    # Visibility of each joint: the last primitive drawn over it decides. Its own parts count
    # where the joint lies inside them, other parts (conservatively) up to COVER_MARGIN_PX
    # outside; decorations never hide a joint.
    own = np.zeros((sk.NUM_JOINTS, NUM_LABELS), bool)
    for joint, parts in enumerate(JOINT_PARTS):
        own[joint, list(parts)] = True
    own_primitive = own[:, labels][None]                                 # [1, 17, P]
    clearance = _clearance(joints, (cap_a, cap_b, cap_r), polygons)
    covers = np.where(own_primitive, clearance >= 0.0, clearance >= -COVER_MARGIN_PX)
    covers &= ~np.isin(labels, DECORATIONS)[None, None, :]
    ranked = np.where(covers, rank[:, None, :], -1)
    top_primitive = np.argmax(ranked, axis=-1)                            # [T, 17]
    top_label = labels[top_primitive]
    visibility = np.full((num_frames, sk.NUM_JOINTS), VISIBLE, np.int8)
    is_own = own[np.arange(sk.NUM_JOINTS)[None, :], top_label] | (ranked.max(-1) < 0)
    visibility[~is_own] = SELF_OCCLUDED
    visibility[np.isin(top_label, OCCLUDERS) & ~is_own] = OCCLUDED
    # The back of the head hides the face joints that point away from the camera.
    face = list(FACE_JOINTS)
    behind = depth_view[:, face] < depth_view[:, [sk.HEAD]] - 0.25 * body.head_radius
    visibility[:, face] = np.where(behind & (visibility[:, face] == VISIBLE), SELF_OCCLUDED, visibility[:, face])
    inside = ((joints[..., 0] >= 0) & (joints[..., 1] >= 0) & (joints[..., 0] < widths[:, None])
              & (joints[..., 1] < heights[:, None]))
    visibility[~inside] = OUTSIDE

    blur_x = 0.0
    motion_blurred = rng.random() < camera.motion_blur_rate
    if motion_blurred:
        blur_x = min(3.0, 0.25 * abs(speed * math.cos(math.radians(direction))) * person_px0)
    defocus = camera.defocus * person_px0 / CANONICAL_PERSON_PX
    blur_radius = (max(blur_x, defocus), defocus)
    keypoints = _detect(rng, joints, visibility, person_px, widths, heights, config,
                        blurred=max(blur_radius) >= 0.3)

    # Colours: the camera's response and a per-tracklet light level; far-side limbs darker.
    lut = camera.tone_lut(1.0 + config.illumination * rng.uniform(-0.12, 0.12))
    left_depth = view[2, 2]
    far_shade = 1.0 - 0.22 * abs(left_depth)
    palette, pattern_flags = _palettes(body, outfit, lut, far_shade if left_depth < 0 else 1.0,
                                       far_shade if left_depth > 0 else 1.0, occluder_colours)
    max_h, max_w = int(heights.max()), int(widths.max())
    upper_field = _pattern_field(outfit.upper_pattern, outfit.pattern_period * person_px0,
                                 0.55 * body.torso_length * person_px0, max_h, max_w, 1)
    lower_field = _pattern_field(outfit.lower_pattern, outfit.pattern_period * person_px0,
                                 0.0, max_h, max_w, 2)
    neck_px = to_pixels(xy_view[:, sk.NECK], walk_x) - origin
    pelvis_px = to_pixels(xy_view[:, sk.PELVIS], walk_x) - origin

    box = (int(left.min()), int(top.min()), int((left + widths).max()), int((top + heights).max()))
    background = _background_region(camera, bg_scale, box, lut)
    noise_tile = camera.noise_image
    noise_room = (camera.noise_tile.shape[1] - max_w, camera.noise_tile.shape[0] - max_h)
    shadow_half = (0.22 + 0.1 * abs(math.cos(math.radians(direction)))) * person_px, 0.035 * person_px
    foot_centre = 0.5 * (joints[:, sk.L_ANKLE] + joints[:, sk.R_ANKLE])
    shadow_y = ground - top

    patterned = bool(pattern_flags.any())
    capsule_polygons = _capsule_polygons(cap_a, cap_b, cap_r)
    frames, label_images = [], []
    blur_filter = ImageFilter.BoxBlur(blur_radius) if max(blur_radius) >= 0.3 else None
    for t in range(num_frames):
        h, w = int(heights[t]), int(widths[t])
        label_image = Image.new("L", (w, h))
        draw = ImageDraw.Draw(label_image)
        sx, sy = shadow_half[0][t], shadow_half[1][t]
        draw.ellipse([foot_centre[t, 0] - sx, shadow_y[t] - sy, foot_centre[t, 0] + sx, shadow_y[t] + sy], fill=SHADOW)
        outlines = capsule_polygons[t].reshape(len(prims.capsules), -1).tolist() + \
            polygons[t].reshape(len(prims.polygons), -1).tolist()
        for index in order[t]:
            draw.polygon(outlines[index], fill=int(labels[index]))
        label_map = np.asarray(label_image)
        if patterned:
            field_y, field_x = _anchor(neck_px[t], h, w, max_h, max_w)
            pattern = upper_field[field_y:field_y + h, field_x:field_x + w]
            field_y, field_x = _anchor(pelvis_px[t], h, w, max_h, max_w)
            pattern = pattern | lower_field[field_y:field_y + h, field_x:field_x + w]
            use_pattern = (np.take(pattern_flags, label_map) & pattern) != 0
            pixels = np.take(palette, (use_pattern.astype(np.uint16) << 8) | label_map)
        else:
            pixels = np.take(palette, label_map)
        scene = background[top[t] - box[1]:top[t] - box[1] + h, left[t] - box[0]:left[t] - box[0] + w]
        np.copyto(pixels, scene, where=label_map == BACKGROUND)
        # The shadow darkens the scene to 5/8; it only spans a few rows.
        rows = slice(max(0, int(shadow_y[t] - sy)), max(0, int(shadow_y[t] + sy) + 2))
        under = scene[rows]
        np.copyto(pixels[rows], ((under >> 1) & np.uint32(0x7F7F7F)) + ((under >> 3) & np.uint32(0x1F1F1F)),
                  where=label_map[rows] == SHADOW)
        image = Image.frombytes("RGB", (w, h), pixels.tobytes(), "raw", "RGBX")
        if blur_filter is not None:
            image = image.filter(blur_filter)
        if camera.noise_sigma > 0:
            nx, ny = int(rng.integers(0, noise_room[0] + 1)), int(rng.integers(0, noise_room[1] + 1))
            image = ImageChops.add(image, noise_tile.crop((nx, ny, nx + w, ny + h)), 1.0, -128)
        frames.append(image)
        if debug:
            label_images.append(label_map.copy())

    meta = {
        "walk_direction_deg": round(direction, 2),
        "elevation_deg": round(elevation, 2),
        "person_height_px": round(float(person_px0), 2),
        "crop_height_range": [int(heights.min()), int(heights.max())],
        "occluder": occluder_kind,
        "motion_blur": bool(motion_blurred),
        "blur_radius_px": [round(float(v), 3) for v in blur_radius],
        "gait_period_frames": round(gait.period_frames, 3),
    }
    debug_info = None
    if debug:
        debug_info = {"labels": label_images, "joints": joints, "visibility": visibility}
    return RenderedTracklet(frames=frames, keypoints=keypoints, meta=meta, debug=debug_info)


def _anchor(point, h, w, max_h, max_w):
    """Top-left corner in a pattern field so that the field's centre lands on `point`."""
    y = int(round(min(max(point[1], 0.0), h)))
    x = int(round(min(max(point[0], 0.0), w)))
    return max_h - y, max_w - x


def _detect(rng, joints, visibility, person_px, widths, heights, config, blurred):
    """Keypoints as a detector reports them: [T, 17, 3] float64 rounded as written (x, y to 0.01
    px, confidence to 0.001). Confidence ranges per visibility class; visible joints are missed
    at `keypoint_miss_rate`; anything at or below DETECTOR_THRESHOLD is written [0, 0, 0]."""
    t, n = visibility.shape
    quality = 0.9 - 0.12 * (1.0 - np.minimum(1.0, person_px / 150.0))[:, None] - (0.08 if blurred else 0.0)
    confidence = np.clip(quality + rng.normal(0.0, 0.05, (t, n)), *VISIBLE_CONFIDENCE)
    confidence = np.where(visibility == SELF_OCCLUDED, rng.uniform(*SELF_OCCLUDED_CONFIDENCE, (t, n)), confidence)
    confidence = np.where(visibility == OCCLUDED, rng.uniform(*OCCLUDED_CONFIDENCE, (t, n)), confidence)
    missed = (visibility == VISIBLE) & (rng.random((t, n)) < config.keypoint_miss_rate)
    confidence = np.where((visibility == OUTSIDE) | missed, 0.0, confidence)
    noise_scale = np.choose(visibility.astype(np.intp), [1.0, 2.0, 3.0, 0.0])
    sigma = (config.keypoint_noise * person_px)[:, None, None] * noise_scale[..., None]
    xy = joints + rng.normal(0.0, 1.0, joints.shape) * sigma
    xy[..., 0] = np.clip(xy[..., 0], 0.0, widths[:, None] - 0.01)
    xy[..., 1] = np.clip(xy[..., 1], 0.0, heights[:, None] - 0.01)
    confidence = np.round(confidence, 3)
    out = np.concatenate([np.round(xy, 2), confidence[..., None]], axis=-1)
    out[confidence <= DETECTOR_THRESHOLD] = 0.0
    return out
