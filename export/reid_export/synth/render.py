"""Renders one tracklet: an identity in one outfit walking past one camera, as detector-like crops
with COCO-17 keypoints.

Each frame is painted back to front from primitives (capsules for limbs, convex polygons for the
torso, skirt, bags and occluders) into a per-pixel body-part label image; colours, garment
patterns, background, shadow, illumination, blur and sensor noise are applied to that label
image. Joint visibility is decided geometrically from the same primitives (the last primitive
drawn over a joint is its own part, another part, or an occluder), so the label image is an
independent check of it.
"""
import math
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

from reid_export.synth import skeleton as sk
from reid_export.synth.camera import (BACKGROUND_HEIGHT, BACKGROUND_WIDTH, CANONICAL_PERSON_PX,
                                      GROUND_ROWS)

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
LIMB_LABELS = {  # (upper arm, forearm, hand, thigh, shin, foot) of the person's left and right
    "left": (L_UPPER_ARM, L_FOREARM, L_HAND, L_THIGH, L_SHIN, L_FOOT),
    "right": (R_UPPER_ARM, R_FOREARM, R_HAND, R_THIGH, R_SHIN, R_FOOT),
}
LIMB_POINTS = {  # shoulder, elbow, wrist, hand, hip, knee, ankle, heel, toe
    "left": (sk.L_SHOULDER, sk.L_ELBOW, sk.L_WRIST, sk.L_HAND, sk.L_HIP, sk.L_KNEE, sk.L_ANKLE,
             sk.L_HEEL, sk.L_TOE),
    "right": (sk.R_SHOULDER, sk.R_ELBOW, sk.R_WRIST, sk.R_HAND, sk.R_HIP, sk.R_KNEE, sk.R_ANKLE,
              sk.R_HEEL, sk.R_TOE),
}

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
#: Blur radii below this (pixels) are not worth filtering for.
MIN_BLUR_PX = 0.3
DRAWN_LAST = 1e6  # depth of occluders: in front of everything


@dataclass
class RenderedTracklet:
    """frames: list of T PIL RGB images (sizes vary, like detector crops); keypoints: [T, 17, 3]
    float64 (x, y in crop pixels, confidence), rounded exactly as written to keypoints.json
    (x, y to 0.01 px, confidence to 0.001); meta: the tracklet's generator parameters
    (JSON-ready); debug (only when asked): `labels` list of T [h, w] uint8 part-label images,
    `joints` [T, 17, 2] float64 noise-free joint positions, `visibility` [T, 17] int8 classes
    (VISIBLE, SELF_OCCLUDED, OCCLUDED, OUTSIDE)."""
    frames: list
    keypoints: np.ndarray
    meta: dict
    debug: dict | None = None


class _Primitives:
    """Capsules and convex polygons over T frames, collected one by one. Polygons have up to
    POLYGON_VERTICES corners; shorter ones repeat their last corner."""

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

    def shapes(self, to_pixels=None, radius_scale=1.0):
        """The primitives as `_Shapes`, points mapped by `to_pixels` (default: already pixels)
        and radii multiplied by `radius_scale` ([T] or scalar)."""
        to_pixels = to_pixels or (lambda points: np.array(points, np.float64))
        frames = self.capsules[0][1].shape[0] if self.capsules else self.polygons[0][1].shape[0]
        stack = lambda items: np.stack(items, axis=1) if items else None  # noqa: E731
        a = stack([c[1] for c in self.capsules])
        b = stack([c[2] for c in self.capsules])
        corners = stack([p[1] for p in self.polygons])
        radius = np.array([np.broadcast_to(c[3], (frames,)) for c in self.capsules]).T
        return _Shapes(
            a=to_pixels(a) if a is not None else np.zeros((frames, 0, 2)),
            b=to_pixels(b) if b is not None else np.zeros((frames, 0, 2)),
            radius=(radius * np.reshape(radius_scale, (-1, 1)) if self.capsules
                    else np.zeros((frames, 0))),
            polygons=(to_pixels(corners) if corners is not None
                      else np.zeros((frames, 0, POLYGON_VERTICES, 2))),
            labels=np.array([c[0] for c in self.capsules], np.intp),
            polygon_labels=np.array([p[0] for p in self.polygons], np.intp),
            depths=np.array([np.broadcast_to(c[4], (frames,)) for c in self.capsules]
                            + [np.broadcast_to(p[2], (frames,)) for p in self.polygons]).T)


@dataclass
class _Shapes:
    """Primitives as arrays in pixels: capsules a, b [T,C,2] and radius [T,C]; polygons
    [T,Q,V,2]; their labels [C] and [Q]; depths [T, C+Q] (capsules first, larger = nearer)."""
    a: np.ndarray
    b: np.ndarray
    radius: np.ndarray
    polygons: np.ndarray
    labels: np.ndarray
    polygon_labels: np.ndarray
    depths: np.ndarray

    @property
    def all_labels(self):
        """Labels of all primitives [C+Q], in the order of `depths`."""
        return np.concatenate([self.labels, self.polygon_labels])

    def move(self, offset):
        """Translate every point by `offset` ([T, 2] or [2])."""
        offset = np.asarray(offset, np.float64).reshape(-1, 1, 2)
        self.a += offset
        self.b += offset
        self.polygons += offset[:, :, None]

    def add(self, other):
        """Append `other`'s primitives (painted in its own depth order)."""
        count = self.a.shape[1]
        self.a = np.concatenate([self.a, other.a], axis=1)
        self.b = np.concatenate([self.b, other.b], axis=1)
        self.radius = np.concatenate([self.radius, other.radius], axis=1)
        self.polygons = np.concatenate([self.polygons, other.polygons], axis=1)
        self.depths = np.concatenate([self.depths[:, :count], other.depths[:, :other.a.shape[1]],
                                      self.depths[:, count:], other.depths[:, other.a.shape[1]:]],
                                     axis=1)
        self.labels = np.concatenate([self.labels, other.labels])
        self.polygon_labels = np.concatenate([self.polygon_labels, other.polygon_labels])

    def extent(self):
        """Per-frame bounding box of all primitives: (x0, y0, x1, y1), each [T]."""
        xs = np.concatenate([self.a[..., 0] - self.radius, self.a[..., 0] + self.radius,
                             self.b[..., 0] - self.radius, self.b[..., 0] + self.radius,
                             self.polygons[..., 0].reshape(self.a.shape[0], -1)], axis=1)
        ys = np.concatenate([self.a[..., 1] - self.radius, self.a[..., 1] + self.radius,
                             self.b[..., 1] - self.radius, self.b[..., 1] + self.radius,
                             self.polygons[..., 1].reshape(self.a.shape[0], -1)], axis=1)
        return xs.min(1), ys.min(1), xs.max(1), ys.max(1)

    def outlines(self):
        """Every primitive as a polygon [T, C+Q, V, 2]: capsules inscribed with
        CAPSULE_VERTICES corners, polygons padded to as many."""
        capsules = _capsule_polygons(self.a, self.b, self.radius)
        padding = CAPSULE_VERTICES - POLYGON_VERTICES
        last = np.repeat(self.polygons[:, :, -1:], padding, axis=2)
        polygons = np.concatenate([self.polygons, last], axis=2)
        return np.concatenate([capsules, polygons], axis=1)

    def clearance(self, points):
        """How far inside each primitive each point [T, N, 2] lies, in pixels (negative:
        outside): [T, N, C+Q]."""
        p = points[:, :, None, :]
        ab = (self.b - self.a)[:, None]
        ap = p - self.a[:, None]
        t = np.clip(np.sum(ap * ab, -1) / np.maximum(np.sum(ab * ab, -1), 1e-12), 0.0, 1.0)
        capsule = self.radius[:, None] - np.linalg.norm(ap - t[..., None] * ab, axis=-1)
        corners = self.polygons
        following = np.roll(corners, -1, axis=2)
        edges = following - corners                                      # [T, Q, V, 2]
        area = np.sum(corners[..., 0] * following[..., 1] - following[..., 0] * corners[..., 1], -1)
        orient = np.where(area >= 0, 1.0, -1.0)[:, None, :, None]        # [T, 1, Q, 1]
        rel = points[:, :, None, None, :] - corners[:, None]             # [T, N, Q, V, 2]
        cross = edges[:, None, ..., 0] * rel[..., 1] - edges[:, None, ..., 1] * rel[..., 0]
        length = np.linalg.norm(edges, axis=-1)[:, None]
        signed = np.where(length > 1e-9, orient * cross / np.maximum(length, 1e-9), np.inf)
        return np.concatenate([capsule, np.min(signed, axis=-1)], axis=-1)


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
    """All body, clothing and accessory primitives in view units (x, y up; H = 1), and the
    points' view positions [T, P, 2] and depths [T, P]."""
    prims = _Primitives()
    pts = pose.points @ view.T                         # [T, P, 3] (x, y up, depth)
    xy, depth = pts[..., :2], pts[..., 2]
    to_view = lambda v: v @ view.T                     # noqa: E731  body-local vectors -> view
    s_left, s_fwd = to_view(pose.shoulder_left)[:, :2], to_view(pose.shoulder_forward)[:, :2]
    h_left, h_fwd = to_view(pose.hip_left)[:, :2], to_view(pose.hip_forward)[:, :2]
    t_up = to_view(pose.torso_up)[:, :2]
    up_2d, forward = view[:2, 1], view[:, 0]           # body up and forward in view coordinates
    neck, pelvis = xy[:, sk.NECK], xy[:, sk.PELVIS]
    neck_3d, pelvis_3d = pose.points[:, sk.NECK], pose.points[:, sk.PELVIS]
    chest_3d = neck_3d + 0.35 * (pelvis_3d - neck_3d)
    axis = _unit(neck - pelvis)
    across = np.stack([-axis[:, 1], axis[:, 0]], axis=-1)
    torso_depth = 0.5 * (depth[:, sk.NECK] + depth[:, sk.PELVIS])
    front_depth = torso_depth + 0.5 * body.chest_depth * abs(forward[2]) + 0.002
    r_head = body.head_radius

    def cap(label, i, j, radius, bias=0.0):
        prims.capsule(label, xy[:, i], xy[:, j], radius, 0.5 * (depth[:, i] + depth[:, j]) + bias)

    # Hair first: on ties (profile views) the head is drawn over it.
    hair_depth = to_view(pose.points[:, sk.HEAD] - r_head * np.array([0.3, 0.0, 0.0]))[:, 2]
    up_shift, back_shift, radius = {"short": (0.12, 0.12, 1.0), "long": (0.12, 0.12, 1.02),
                                    "shaved": (0.1, 0.04, 0.92)}[body.hair_style]
    hair_centre = xy[:, sk.HEAD] + r_head * (up_shift * up_2d - back_shift * forward[:2])
    prims.capsule(HAIR, hair_centre, hair_centre, radius * r_head, hair_depth)
    if body.hair_style == "long":
        nape = to_view(neck_3d - np.array([0.5 * body.chest_depth + 0.01, 0.0, 0.0])
                       - 0.04 * pose.torso_up)
        prims.capsule(HAIR, hair_centre, nape[:, :2], 0.75 * r_head,
                      0.5 * (hair_depth + nape[:, 2]))
    cap(NECK, sk.NECK, sk.HEAD, 0.45 * r_head, bias=-0.01)
    cap(HEAD, sk.HEAD, sk.HEAD, r_head, bias=0.01)

    # Torso: a box from the shoulder line down to the hip line, with sloping shoulders.
    top_axes = [s_left, s_fwd, t_up]
    top_half = [body.shoulder_width / 2, body.chest_depth / 2, 0.02]
    bottom_axes = [h_left, h_fwd]
    bottom_half = [body.hip_width / 2 + 0.3 * body.leg_radius, 0.45 * body.chest_depth]
    top_across = _support(top_axes, top_half, across)[:, None]
    bottom_across = _support(bottom_axes, bottom_half, across)[:, None]
    top = neck + axis * (_support(top_axes[:2], top_half[:2], axis)[:, None] + 0.01)
    shoulders = top - 0.04 * axis
    bottom = pelvis - axis * (_support(bottom_axes, bottom_half, axis)[:, None] + 0.04)
    torso = np.stack([top + 0.55 * across * top_across, shoulders + across * top_across,
                      bottom + across * bottom_across, bottom - across * bottom_across,
                      shoulders - across * top_across, top - 0.55 * across * top_across], axis=1)
    prims.polygon(TORSO, torso, torso_depth)

    if outfit.upper_pattern == "logo":
        centre = to_view(chest_3d + 0.5 * body.chest_depth * pose.shoulder_forward)
        logo = _box_polygon(centre[:, :2], [s_left, t_up], [0.045, 0.04], axis, across)
        prims.polygon(LOGO, logo, centre[:, 2] + 0.001)

    for side in ("left", "right"):
        upper_arm, forearm, hand, thigh, shin, foot = LIMB_LABELS[side]
        shoulder, elbow, wrist, hand_i, hip, knee, ankle, heel, toe = LIMB_POINTS[side]
        cap(upper_arm, shoulder, elbow, body.arm_radius)
        cap(forearm, elbow, wrist, 0.85 * body.arm_radius)
        cap(hand, hand_i, hand_i, 1.15 * body.arm_radius, bias=0.001)
        cap(thigh, hip, knee, body.leg_radius)
        cap(shin, knee, ankle, 0.85 * body.leg_radius)
        cap(foot, heel, toe, sk.FOOT_RADIUS, bias=0.001)

    if outfit.lower_style == "skirt":
        knee_l, knee_r = xy[:, sk.L_KNEE], xy[:, sk.R_KNEE]
        hem = pelvis + 0.62 * (0.5 * (knee_l + knee_r) - pelvis)
        knee_spread = np.abs(np.sum((knee_l - knee_r) * across, axis=-1))[:, None]
        hem_half = np.maximum(1.25 * bottom_across, 0.31 * knee_spread + body.leg_radius)
        waist, waist_half = pelvis + 0.02 * axis, 1.05 * bottom_across
        skirt = np.stack([waist + across * waist_half, waist - across * waist_half,
                          hem - across * hem_half, hem + across * hem_half], axis=1)
        thighs = np.maximum(depth[:, sk.L_HIP] + depth[:, sk.L_KNEE],
                            depth[:, sk.R_HIP] + depth[:, sk.R_KNEE])
        prims.polygon(SKIRT, skirt, 0.5 * thighs + 0.002)

    if outfit.backpack is not None:
        centre = to_view(chest_3d - (0.5 * body.chest_depth + 0.04) * pose.shoulder_forward)
        pack = _box_polygon(centre[:, :2], [s_left, s_fwd, t_up], [0.1, 0.04, 0.11], axis, across)
        prims.polygon(BACKPACK, pack, centre[:, 2])
        front = 0.5 * body.chest_depth * pose.shoulder_forward
        for sign in (1.0, -1.0):
            offset = sign * (body.shoulder_width / 2 - 0.05) * pose.shoulder_left + front
            a = to_view(neck_3d + offset)
            b = to_view(neck_3d + 0.55 * (pelvis_3d - neck_3d) + offset)
            prims.capsule(STRAP, a[:, :2], b[:, :2], 0.012, 0.5 * (a[:, 2] + b[:, 2]))

    if outfit.bag is not None:
        side = outfit.bag_side
        centre = to_view(pelvis_3d - 0.06 * pose.torso_up
                         + side * (body.hip_width / 2 + body.leg_radius + 0.03) * pose.hip_left)
        shape = centre[:, :2].shape
        vertical = np.broadcast_to([0.0, 1.0], shape)
        horizontal = np.broadcast_to([1.0, 0.0], shape)
        bag_axes = [h_fwd, np.broadcast_to(up_2d, shape), h_left]
        bag = _box_polygon(centre[:, :2], bag_axes, [0.08, 0.065, 0.03], vertical, horizontal)
        prims.polygon(BAG, bag, centre[:, 2])
        strap_top = to_view(neck_3d - side * 0.3 * body.shoulder_width * pose.shoulder_left)
        prims.capsule(STRAP, strap_top[:, :2], centre[:, :2] + 0.065 * up_2d, 0.01, front_depth)

    if outfit.hat is not None:
        crown = xy[:, sk.HEAD] + 0.8 * r_head * up_2d
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
    theta = np.linspace(-np.pi / 2, np.pi / 2, CAPSULE_VERTICES // 2)
    along = np.cos(theta)[:, None] * direction[..., None, :]
    side = np.sin(theta)[:, None] * normal[..., None, :]
    r = radius[..., None, None]
    offsets = r * (along + side)
    return np.concatenate([b[..., None, :] + offsets, a[..., None, :] - offsets], axis=-2)


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
    nominal = min(max(nominal, config.min_crop_height / growth.min()),
                  config.max_crop_height / growth.max())
    return nominal, growth


def _palettes(body, outfit, camera_lut, far_side, occluder_colours):
    """Packed RGBX palettes [512] uint32: entries 0..255 the primary colour of each label,
    256..511 the pattern colour; and the pattern flag of each label [256] uint8
    (1: follows the top's pattern field, 2: the bottoms'). Limbs of `far_side` are darker."""
    primary = np.zeros((256, 3))
    skin, upper, lower = body.skin, outfit.upper_colour, outfit.lower_colour
    long_sleeves, trousers = outfit.sleeves == "long", outfit.lower_style == "trousers"
    forearm, shin = upper if long_sleeves else skin, lower if trousers else skin
    colours = {HEAD: skin, NECK: skin, HAIR: body.hair, TORSO: upper, LOGO: outfit.upper_colour2,
               L_UPPER_ARM: upper, R_UPPER_ARM: upper, L_FOREARM: forearm, R_FOREARM: forearm,
               L_HAND: skin, R_HAND: skin, L_THIGH: lower, R_THIGH: lower, L_SHIN: shin,
               R_SHIN: shin, L_FOOT: outfit.shoes, R_FOOT: outfit.shoes, SKIRT: lower,
               HAT: outfit.hat, BAG: outfit.bag, BACKPACK: outfit.backpack,
               OCCLUDER: occluder_colours[0], PASSER: occluder_colours[1],
               STRAP: tuple(0.6 * c for c in (outfit.bag or outfit.backpack or (60, 60, 60)))}
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
    if far_side is not None:
        shade[list(LIMB_LABELS[far_side[0]])] = far_side[1]
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
    # Clip the box to the scene, resample, then pad back to the full box with the edge pixels.
    cx0, cy0 = max(x0, 0), max(y0, 0)
    cx1 = min(x1, int(BACKGROUND_WIDTH * scale))
    cy1 = min(y1, int(BACKGROUND_HEIGHT * scale))
    source_box = (cx0 / scale, cy0 / scale, cx1 / scale, cy1 / scale)
    region = camera.background_image.resize((cx1 - cx0, cy1 - cy0), Image.BILINEAR, box=source_box)
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
    """An occluder in tracklet pixels (drawn over everything) as `_Shapes`, and its colours."""
    prims = _Primitives()
    t = np.arange(num_frames, dtype=np.float64)
    meet = rng.uniform(0.2, 0.8) * (num_frames - 1)
    x_meet = float(np.interp(meet, t, person_x))
    far = 1e4  # beyond any crop
    ones = np.ones(num_frames)
    last = np.full(num_frames, DRAWN_LAST)
    if kind == "pole":
        half = rng.uniform(0.03, 0.07) * scale
        x = x_meet + rng.uniform(-0.25, 0.25) * scale
        corners = np.array([[x - half, -far], [x + half, -far], [x + half, far], [x - half, far]])
        prims.polygon(OCCLUDER, np.broadcast_to(corners, (num_frames, 4, 2)), last)
    elif kind == "wall":
        top = ground - rng.uniform(0.2, 0.45) * scale
        half = rng.uniform(0.4, 1.25) * scale
        x = x_meet + rng.uniform(-0.5, 0.5) * scale
        corners = np.array([[x - half, top], [x + half, top], [x + half, far], [x - half, far]])
        prims.polygon(OCCLUDER, np.broadcast_to(corners, (num_frames, 4, 2)), last)
    else:  # another pedestrian passing close to the camera
        size = rng.uniform(1.1, 1.5) * scale
        feet = ground + rng.uniform(0.1, 0.3) * scale
        speed = rng.choice([-1.0, 1.0]) * rng.uniform(0.06, 0.15) * scale
        x = x_meet + speed * (t - meet)
        column = lambda height: np.stack([x, (feet - height * size) * ones], axis=-1)  # noqa: E731
        for top, bottom, radius, depth in ((0.8, 0.25, 0.15, last), (0.3, -0.2, 0.11, last),
                                           (0.97, 0.97, 0.075, last + 1)):
            prims.capsule(PASSER, column(top), column(bottom), radius * size * ones, depth)
    colours = [tuple(int(v) for v in rng.uniform(30, 200, 3)) for _ in range(2)]
    return prims.shapes(), colours


def _crop_boxes(rng, shapes, person_px, margin, config):
    """Detector boxes around the person's extent, jittered: left, top, widths, heights [T] int."""
    num_frames = person_px.shape[0]
    x0, y0, x1, y1 = shapes.extent()
    j = config.crop_jitter
    centre_x = 0.5 * (x0 + x1) + rng.normal(0.0, 0.5 * j, num_frames) * person_px
    centre_y = 0.5 * (y0 + y1) + rng.normal(0.0, 0.5 * j, num_frames) * person_px
    size = person_px * (1.0 + margin) * (1.0 + rng.normal(0.0, j, num_frames))
    heights = np.clip(np.round(size), config.min_crop_height, config.max_crop_height).astype(int)
    aspect = config.crop_aspect * (1.0 + rng.uniform(-0.08, 0.08))
    widths = np.round(heights * aspect * (1.0 + rng.normal(0.0, j, num_frames)))
    widths = np.maximum(8, widths).astype(int)
    left = np.round(centre_x - widths / 2).astype(int)
    top = np.round(centre_y - heights / 2).astype(int)
    return left, top, widths, heights


def _visibility(shapes, joints, widths, heights, face_behind):
    """Visibility class [T, 17] of each joint (crop pixels [T, 17, 2]): the last primitive drawn
    over it decides. Its own parts count where the joint lies inside them, other parts
    (conservatively) up to COVER_MARGIN_PX outside; decorations never hide a joint. Face joints
    flagged in `face_behind` [T, 5] are hidden by the back of the head."""
    num_frames = joints.shape[0]
    labels = shapes.all_labels
    order = np.argsort(shapes.depths, axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(order.shape[1])[None].repeat(num_frames, 0), axis=1)
    own = np.zeros((sk.NUM_JOINTS, NUM_LABELS), bool)
    for joint, parts in enumerate(JOINT_PARTS):
        own[joint, list(parts)] = True
    clearance = shapes.clearance(joints)
    covers = np.where(own[:, labels][None], clearance >= 0.0, clearance >= -COVER_MARGIN_PX)
    covers &= ~np.isin(labels, DECORATIONS)[None, None, :]
    ranked = np.where(covers, rank[:, None, :], -1)
    top_label = labels[np.argmax(ranked, axis=-1)]                       # [T, 17]
    is_own = own[np.arange(sk.NUM_JOINTS)[None, :], top_label] | (ranked.max(-1) < 0)
    visibility = np.full((num_frames, sk.NUM_JOINTS), VISIBLE, np.int8)
    visibility[~is_own] = SELF_OCCLUDED
    visibility[np.isin(top_label, OCCLUDERS) & ~is_own] = OCCLUDED
    face = list(FACE_JOINTS)
    visibility[:, face] = np.where(face_behind & (visibility[:, face] == VISIBLE), SELF_OCCLUDED,
                                   visibility[:, face])
    inside = ((joints[..., 0] >= 0) & (joints[..., 1] >= 0) & (joints[..., 0] < widths[:, None])
              & (joints[..., 1] < heights[:, None]))
    visibility[~inside] = OUTSIDE
    return visibility, order


def render_tracklet(identity, outfit_index: int, camera, num_frames: int, config, rng,
                    debug: bool = False) -> RenderedTracklet:
    """Render `num_frames` frames of `identity` wearing outfit `outfit_index` (0 or 1) walking
    past `camera`. All randomness comes from `rng` (numpy Generator), so the same stream gives
    the same bytes."""
    body, outfit, base_gait = identity.body, identity.outfits[outfit_index], identity.gait
    jitter = lambda: 1.0 + rng.uniform(-0.04, 0.04)  # noqa: E731  day-to-day gait variation
    gait = replace(base_gait, period_frames=base_gait.period_frames * jitter(),
                   hip_swing=base_gait.hip_swing * jitter(),
                   arm_swing=base_gait.arm_swing * jitter())
    direction = (camera.walk_direction_deg + (180.0 if rng.random() < 0.5 else 0.0)
                 + rng.normal(0.0, 12.0 * config.viewpoint_spread)) % 360.0
    elevation = float(np.clip(camera.elevation_deg + rng.normal(0.0, 2.0), 0.0, 35.0))
    view = sk.view_matrix(direction, elevation)
    pose = sk.walk(body, gait, rng.uniform(0.0, 1.0) + np.arange(num_frames) / gait.period_frames)

    # Speed without foot sliding: one stride (both feet) per cycle; H per frame.
    speed = 2.0 * body.leg_length * math.sin(gait.hip_swing) / gait.period_frames
    towards, sideways = math.sin(math.radians(direction)), math.cos(math.radians(direction))
    nominal_crop, growth = _sample_scale(rng, camera, config, body,
                                         speed * towards * PERSPECTIVE_PER_H, num_frames)
    margin = rng.uniform(0.06, 0.2)
    person_px0 = nominal_crop / (1.0 + margin)
    person_px = person_px0 * growth                                      # [T] pixels per H
    bg_scale = person_px0 / CANONICAL_PERSON_PX
    ground = rng.uniform(*GROUND_ROWS) * bg_scale
    walk_x = speed * sideways * person_px0 * np.arange(num_frames)

    def to_pixels(points):
        """View units [T, ..., 2] (y up) -> tracklet pixels (y down), walking along walk_x."""
        scale = person_px.reshape((-1,) + (1,) * (points.ndim - 2))
        origin = walk_x.reshape((-1,) + (1,) * (points.ndim - 2))
        return np.stack([origin + points[..., 0] * scale, ground - points[..., 1] * scale], -1)

    prims, xy_view, depth_view = _person_primitives(body, outfit, pose, view)
    shapes = prims.shapes(to_pixels, person_px)
    anchors = to_pixels(xy_view[:, [sk.NECK, sk.PELVIS] + list(range(sk.NUM_JOINTS))])
    left, top, widths, heights = _crop_boxes(rng, shapes, person_px, margin, config)
    # Place the walk inside the scene (the scene is wide enough for the longest tracklet).
    room = int(BACKGROUND_WIDTH * bg_scale) - (int((left + widths).max()) - int(left.min()))
    shift = -int(left.min()) + (int(rng.integers(0, room + 1)) if room > 0 else room // 2)
    walk_x, left = walk_x + shift, left + shift
    shapes.move([shift, 0.0])
    anchors[..., 0] += shift

    occluder_kind, occluder_colours = None, [(0, 0, 0), (0, 0, 0)]
    if rng.random() < min(1.0, config.occlusion_rate * camera.occlusion_factor):
        occluder_kind = ("pole", "wall", "passer")[int(rng.integers(3))]
        occluder, occluder_colours = _occluder_primitives(rng, occluder_kind, walk_x, ground,
                                                          person_px0, num_frames)
        shapes.add(occluder)

    origin = np.stack([left, top], axis=-1).astype(np.float64)          # crop corners [T, 2]
    shapes.move(-origin)
    anchors -= origin[:, None]
    neck_px, pelvis_px, joints = anchors[:, 0], anchors[:, 1], anchors[:, 2:]
    face_behind = (depth_view[:, list(FACE_JOINTS)]
                   < depth_view[:, [sk.HEAD]] - 0.25 * body.head_radius)
    visibility, order = _visibility(shapes, joints, widths, heights, face_behind)

    motion_blurred = rng.random() < camera.motion_blur_rate
    blur_x = min(3.0, 0.25 * abs(speed * sideways) * person_px0) if motion_blurred else 0.0
    defocus = camera.defocus * person_px0 / CANONICAL_PERSON_PX
    blur_radius = (max(blur_x, defocus), defocus)
    keypoints = _detect(rng, joints, visibility, person_px, widths, heights, config,
                        blurred=max(blur_radius) >= MIN_BLUR_PX)

    # Colours: the camera's response and a per-tracklet light level; far-side limbs darker.
    lut = camera.tone_lut(1.0 + config.illumination * rng.uniform(-0.12, 0.12))
    left_depth = view[2, 2]
    far_side = None if left_depth == 0 else ("left" if left_depth < 0 else "right",
                                             1.0 - 0.22 * abs(left_depth))
    palette, pattern_flags = _palettes(body, outfit, lut, far_side, occluder_colours)
    box = (int(left.min()), int(top.min()), int((left + widths).max()), int((top + heights).max()))
    background = _background_region(camera, bg_scale, box, lut)
    frames, label_images = _paint(
        rng, camera, shapes, order, palette, pattern_flags, outfit, body, person_px, person_px0,
        (left - box[0], top - box[1], widths, heights), background, (neck_px, pelvis_px), joints,
        ground - top, direction, blur_radius, keep_labels=debug)

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


def _paint(rng, camera, shapes, order, palette, pattern_flags, outfit, body, person_px, person_px0,
           boxes, background, pattern_anchors, joints, shadow_y, direction, blur_radius,
           keep_labels):
    """Paint every frame: part labels back to front, colours and patterns, the scene (with a
    shadow), blur and sensor noise. `boxes` = (x, y in `background`, widths, heights), each [T].
    Returns the PIL frames and (with `keep_labels`) the label images."""
    x_in_scene, y_in_scene, widths, heights = boxes
    max_h, max_w = int(heights.max()), int(widths.max())
    period, split = outfit.pattern_period * person_px0, 0.55 * body.torso_length * person_px0
    fields = (_pattern_field(outfit.upper_pattern, period, split, max_h, max_w, 1),
              _pattern_field(outfit.lower_pattern, period, 0.0, max_h, max_w, 2))
    patterned = bool(pattern_flags.any())
    labels = shapes.all_labels
    outlines = shapes.outlines()
    noise_room = (camera.noise_tile.shape[1] - max_w, camera.noise_tile.shape[0] - max_h)
    shadow_half_width = (0.22 + 0.1 * abs(math.cos(math.radians(direction)))) * person_px
    shadow_half_height = 0.035 * person_px
    foot_x = 0.5 * (joints[:, sk.L_ANKLE, 0] + joints[:, sk.R_ANKLE, 0])
    blur = ImageFilter.BoxBlur(blur_radius) if max(blur_radius) >= MIN_BLUR_PX else None
    frames, label_images = [], []
    for t in range(len(heights)):
        h, w = int(heights[t]), int(widths[t])
        label_image = Image.new("L", (w, h))
        draw = ImageDraw.Draw(label_image)
        sx, sy = shadow_half_width[t], shadow_half_height[t]
        draw.ellipse([foot_x[t] - sx, shadow_y[t] - sy, foot_x[t] + sx, shadow_y[t] + sy],
                     fill=SHADOW)
        corners = outlines[t].reshape(len(labels), -1).tolist()
        for index in order[t]:
            draw.polygon(corners[index], fill=int(labels[index]))
        label_map = np.asarray(label_image)
        if patterned:
            pattern = np.zeros((h, w), np.uint8)
            for field, anchor in zip(fields, pattern_anchors):
                fy, fx = _anchor(anchor[t], h, w, max_h, max_w)
                pattern |= field[fy:fy + h, fx:fx + w]
            use_pattern = (np.take(pattern_flags, label_map) & pattern) != 0
            pixels = np.take(palette, (use_pattern.astype(np.uint16) << 8) | label_map)
        else:
            pixels = np.take(palette, label_map)
        scene = background[y_in_scene[t]:y_in_scene[t] + h, x_in_scene[t]:x_in_scene[t] + w]
        np.copyto(pixels, scene, where=label_map == BACKGROUND)
        # The shadow darkens the scene to 5/8; it only spans a few rows.
        rows = slice(max(0, int(shadow_y[t] - sy)), max(0, int(shadow_y[t] + sy) + 2))
        under = scene[rows]
        darker = ((under >> 1) & np.uint32(0x7F7F7F)) + ((under >> 3) & np.uint32(0x1F1F1F))
        np.copyto(pixels[rows], darker, where=label_map[rows] == SHADOW)
        image = Image.frombytes("RGB", (w, h), pixels.tobytes(), "raw", "RGBX")
        if blur is not None:
            image = image.filter(blur)
        if camera.noise_sigma > 0:
            nx = int(rng.integers(0, noise_room[0] + 1))
            ny = int(rng.integers(0, noise_room[1] + 1))
            noise = camera.noise_image.crop((nx, ny, nx + w, ny + h))
            image = ImageChops.add(image, noise, 1.0, -128)
        frames.append(image)
        if keep_labels:
            label_images.append(label_map.copy())
    return frames, label_images


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
    size_penalty = 0.12 * (1.0 - np.minimum(1.0, person_px / 150.0))[:, None]
    quality = 0.9 - size_penalty - (0.08 if blurred else 0.0)
    confidence = np.clip(quality + rng.normal(0.0, 0.05, (t, n)), *VISIBLE_CONFIDENCE)
    for kind, limits in ((SELF_OCCLUDED, SELF_OCCLUDED_CONFIDENCE),
                         (OCCLUDED, OCCLUDED_CONFIDENCE)):
        confidence = np.where(visibility == kind, rng.uniform(*limits, (t, n)), confidence)
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
