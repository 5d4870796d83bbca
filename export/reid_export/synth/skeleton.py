"""The walking skeleton: COCO-17 joints plus helper points, animated by an identity's gait, and
the view transform of a camera.

Body-local coordinates are (forward, up, left) in units of the standing height H, with the feet
on the ground (up = 0). View coordinates are (x right, y up, depth towards the camera), still in
units of H; the renderer scales them to pixels.
"""
import math
from dataclasses import dataclass

import numpy as np

from reid_export.synth.identity import ANKLE_HEIGHT

# COCO-17 joints, in COCO order; helper points follow.
(NOSE, L_EYE, R_EYE, L_EAR, R_EAR, L_SHOULDER, R_SHOULDER, L_ELBOW, R_ELBOW, L_WRIST, R_WRIST,
 L_HIP, R_HIP, L_KNEE, R_KNEE, L_ANKLE, R_ANKLE) = range(17)
NECK, PELVIS, HEAD, L_HAND, R_HAND, L_HEEL, R_HEEL, L_TOE, R_TOE, HEAD_TOP = range(17, 27)
NUM_JOINTS = 17
NUM_POINTS = 27

FOOT_RADIUS = 0.018
HAND_OFFSET = 0.045      # wrist to the centre of the hand
KNEE_REST_FLEX = 0.08


@dataclass
class Pose:
    """A walk over T frames. points: [T, NUM_POINTS, 3] body-local; the torso frames are unit
    vectors [T, 3]: shoulder line (`shoulder_left`, `shoulder_forward`, twisted with the gait),
    hip line (`hip_left`, `hip_forward`) and the torso axis `torso_up` (leaning forward)."""
    points: np.ndarray
    shoulder_left: np.ndarray
    shoulder_forward: np.ndarray
    hip_left: np.ndarray
    hip_forward: np.ndarray
    torso_up: np.ndarray


def _vec(forward, up, left):
    """Stack per-frame components (each [T] or scalar, at least one [T]) into [T, 3] body-local
    vectors."""
    length = max(np.size(forward), np.size(up), np.size(left))
    out = np.empty((length, 3))
    out[:, 0], out[:, 1], out[:, 2] = forward, up, left
    return out


def _leg(body, swing, knee, hip):
    """Knee, ankle, heel, toe [T, 3] of a leg hanging from `hip` [T, 3] with hip angle `swing`
    and knee flexion `knee` [T] (sagittal plane), and its lowest sole height [T]."""
    thigh = _vec(np.sin(swing), -np.cos(swing), 0.0)
    shin_angle = swing - knee
    shin = _vec(np.sin(shin_angle), -np.cos(shin_angle), 0.0)
    knee_point = hip + body.thigh_length * thigh
    ankle = knee_point + body.shin_length * shin
    pitch = -0.6 * (knee - KNEE_REST_FLEX)  # toes point down while the leg swings
    along = _vec(np.cos(pitch), np.sin(pitch), 0.0)
    normal = _vec(-np.sin(pitch), np.cos(pitch), 0.0)
    drop = (ANKLE_HEIGHT - FOOT_RADIUS) * normal
    heel = ankle - 0.22 * body.foot_length * along - drop
    toe = ankle + 0.78 * body.foot_length * along - drop
    sole = np.minimum(heel[:, 1], toe[:, 1]) - FOOT_RADIUS
    return knee_point, ankle, heel, toe, sole


def _legs(body, gait, phase, hip_left):
    """Both legs for cycle phases `phase` [T]; hips at pelvis level with the pelvis at 0."""
    hip_offset = body.hip_width / 2 - 0.5 * body.leg_radius
    legs = {}
    for side, sign, leg_phase, amplitude in (
            ("L", 1.0, phase, gait.hip_swing),
            ("R", -1.0, phase + 0.5, gait.hip_swing * (1 - gait.asymmetry))):
        hip = sign * hip_offset * hip_left
        swing = amplitude * np.sin(2 * np.pi * leg_phase)
        # The knee bends while the leg swings forward (cos > 0), most at mid-swing.
        swinging = np.maximum(0.0, np.cos(2 * np.pi * leg_phase))
        knee = KNEE_REST_FLEX + gait.knee_flex * swinging ** 1.5
        legs[side] = (hip,) + _leg(body, swing, knee, hip)
    return legs


def walk(body, gait, phase: np.ndarray) -> Pose:
    """The pose at gait-cycle phases `phase` [T] (cycles, any real numbers)."""
    phase = np.asarray(phase, np.float64)
    t = phase.shape[0]
    angle = 2 * np.pi * phase
    # Shoulders counter-rotate against the pelvis (left shoulder forward with the right leg).
    shoulder_turn = -gait.twist * np.sin(angle)
    hip_turn = 0.5 * gait.twist * np.sin(angle)
    shoulder_left = _vec(np.sin(shoulder_turn), 0.0, np.cos(shoulder_turn))
    shoulder_forward = _vec(np.cos(shoulder_turn), 0.0, -np.sin(shoulder_turn))
    hip_left = _vec(np.sin(hip_turn), 0.0, np.cos(hip_turn))
    hip_forward = _vec(np.cos(hip_turn), 0.0, -np.sin(hip_turn))

    legs = _legs(body, gait, phase, hip_left)
    # Lift the pelvis so the lower foot touches the ground, then scale the bob around its mean
    # (the mean is taken over one whole cycle so it does not depend on the tracklet's length).
    lift = -np.minimum(legs["L"][-1], legs["R"][-1])
    cycle = np.linspace(0.0, 1.0, 48, endpoint=False)
    cycle_turn = 0.5 * gait.twist * np.sin(2 * np.pi * cycle)
    cycle_legs = _legs(body, gait, cycle, _vec(np.sin(cycle_turn), 0.0, np.cos(cycle_turn)))
    mean_lift = float(np.mean(-np.minimum(cycle_legs["L"][-1], cycle_legs["R"][-1])))
    lift = mean_lift + gait.bounce * (lift - mean_lift)
    pelvis = _vec(0.0, lift, gait.sway * np.sin(angle))

    torso_up = np.broadcast_to(np.array([math.sin(gait.lean), math.cos(gait.lean), 0.0]), (t, 3))
    neck = pelvis + body.torso_length * torso_up
    points = np.zeros((t, NUM_POINTS, 3))
    points[:, PELVIS] = pelvis
    points[:, NECK] = neck
    for side, indices in (("L", (L_HIP, L_KNEE, L_ANKLE, L_HEEL, L_TOE)),
                          ("R", (R_HIP, R_KNEE, R_ANKLE, R_HEEL, R_TOE))):
        for index, point in zip(indices, legs[side][:5]):
            points[:, index] = pelvis + point

    # Arms swing with the opposite leg; the elbow bends more when the arm is forward.
    shoulder_offset = body.shoulder_width / 2 - body.arm_radius
    ab = gait.arm_abduction
    for sign, shoulder_i, elbow_i, wrist_i, hand_i, leg_phase in (
            (1.0, L_SHOULDER, L_ELBOW, L_WRIST, L_HAND, phase + 0.5),
            (-1.0, R_SHOULDER, R_ELBOW, R_WRIST, R_HAND, phase)):
        swing_wave = np.sin(2 * np.pi * (leg_phase + gait.arm_lag))
        swing = gait.arm_swing * swing_wave
        elbow_angle = swing + np.maximum(0.02, gait.elbow_flex * (1.0 + 0.6 * swing_wave))
        outward = sign * math.sin(ab)
        hanging = math.cos(ab)
        upper = _vec(np.sin(swing) * hanging, -np.cos(swing) * hanging, outward)
        lower = _vec(np.sin(elbow_angle) * hanging, -np.cos(elbow_angle) * hanging, outward)
        shoulder = neck + sign * shoulder_offset * shoulder_left - 0.02 * torso_up
        elbow = shoulder + body.upper_arm_length * upper
        wrist = elbow + body.forearm_length * lower
        points[:, shoulder_i], points[:, elbow_i], points[:, wrist_i] = shoulder, elbow, wrist
        points[:, hand_i] = wrist + HAND_OFFSET * lower

    r = body.head_radius
    head = neck + (body.neck_length + r) * torso_up
    face = {NOSE: (0.8, -0.15, 0.0), L_EYE: (0.62, 0.12, 0.32), R_EYE: (0.62, 0.12, -0.32),
            L_EAR: (-0.05, 0.05, 0.8), R_EAR: (-0.05, 0.05, -0.8), HEAD: (0.0, 0.0, 0.0),
            HEAD_TOP: (0.0, 1.0, 0.0)}
    for index, (forward, up, left) in face.items():
        points[:, index] = head + r * np.array([forward, up, left])
    return Pose(points=points, shoulder_left=shoulder_left, shoulder_forward=shoulder_forward,
                hip_left=hip_left, hip_forward=hip_forward, torso_up=np.array(torso_up))


def view_matrix(walk_direction_deg: float, elevation_deg: float) -> np.ndarray:
    """[3, 3] map from body-local (forward, up, left) to view (x right, y up, depth towards the
    camera). Direction 0: walking to the right (the right side faces the camera), 90: walking
    towards the camera, 180: to the left, 270: away. The camera looks down by `elevation_deg`."""
    phi, e = math.radians(walk_direction_deg), math.radians(elevation_deg)
    # World: X right, Y up, Z towards the camera.
    forward = np.array([math.cos(phi), 0.0, math.sin(phi)])
    up = np.array([0.0, 1.0, 0.0])
    left = np.array([math.sin(phi), 0.0, -math.cos(phi)])  # up x forward
    to_world = np.stack([forward, up, left], axis=1)
    tilt = np.array([[1.0, 0.0, 0.0],
                     [0.0, math.cos(e), -math.sin(e)],
                     [0.0, math.sin(e), math.cos(e)]])
    return tilt @ to_world
