"""The renderer: keypoints lie on the rendered limbs, occlusion lowers confidences, the gait
and the body shape show in the joints, crops and keypoints have the documented form."""
import dataclasses
import math

import numpy as np
import pytest

from reid_export.synth import SynthConfig, build_world
from reid_export.synth import skeleton as sk
from reid_export.synth.render import (DECORATIONS, DETECTOR_THRESHOLD, JOINT_PARTS, OCCLUDED,
                                      OCCLUDERS, OUTSIDE, SELF_OCCLUDED, VISIBLE, render_tracklet)

FACE = range(5)


def _world(seed, **changes):
    base = dict(num_test_ids=0, num_distractor_ids=0, num_train_ids=6, num_cameras=6,
                train_tracklets_per_id=6, min_frames=10, max_frames=10, keypoint_noise=0.0,
                keypoint_miss_rate=0.0)
    base.update(changes)
    return build_world(SynthConfig.preset("tiny", **base), seed)


def _frames(world):
    """(job, frame index, label image, written keypoints, debug joints, visibility) per frame."""
    for job in world.jobs:
        tracklet = world.render(job, debug=True)
        for t in range(job.num_frames):
            yield (job, t, tracklet.debug["labels"][t], tracklet.keypoints[t],
                   tracklet.debug["joints"][t], tracklet.debug["visibility"][t])


def _pixel_label(labels, x, y):
    h, w = labels.shape
    if 0 <= x < w and 0 <= y < h:
        return int(labels[int(y), int(x)])
    return None


@pytest.mark.parametrize("crop_range", [(160, 256), (48, 120)])
def test_visible_joints_lie_on_their_own_parts(crop_range):
    """Each joint the detector reports as visible (confidence >= 0.5) sits on a pixel of the
    part it belongs to in the rendered part-label image (checked against Pillow's raster, which
    the visibility logic never reads)."""
    world = _world(11, min_crop_height=crop_range[0], max_crop_height=crop_range[1],
                   occlusion_rate=0.4)
    checked = total = 0
    wrong = []
    for job, t, labels, keypoints, _, _ in _frames(world):
        for joint in range(17):
            total += 1
            x, y, confidence = keypoints[joint]
            if confidence < 0.5:
                continue
            checked += 1
            label = _pixel_label(labels, x, y)
            if label not in set(JOINT_PARTS[joint]) | set(DECORATIONS):
                wrong.append((job.pid, job.number, t, joint, label))
    assert not wrong, f"{len(wrong)} of {checked} visible joints are not on their part: {wrong[:5]}"
    assert checked > 0.4 * total, f"only {checked} of {total} joints visible: the check is too thin"


def test_self_occluded_limb_joints_are_mostly_hidden():
    """Limb joints marked self-occluded mostly show another part at their pixel (the rest lie
    within the conservative margin of a covering part's edge)."""
    world = _world(12, min_crop_height=160, max_crop_height=256, occlusion_rate=0.0)
    hidden = marked = 0
    for _, _, labels, _, joints, visibility in _frames(world):
        for joint in range(5, 17):
            label = _pixel_label(labels, *joints[joint])
            if visibility[joint] == SELF_OCCLUDED and label is not None:
                marked += 1
                hidden += label not in set(JOINT_PARTS[joint]) | set(DECORATIONS)
    assert marked > 100
    assert hidden / marked > 0.75, f"only {hidden} of {marked} self-occluded joints are covered"


def test_occluders_lower_confidences():
    """Every joint whose pixel shows an occluder has confidence < 0.1, and there are many."""
    world = _world(13, min_crop_height=96, max_crop_height=200, occlusion_rate=1.0)
    under_occluder = 0
    for job, t, labels, keypoints, joints, visibility in _frames(world):
        for joint in range(17):
            if _pixel_label(labels, *joints[joint]) in OCCLUDERS:
                under_occluder += 1
                assert keypoints[joint, 2] < 0.1, (job, t, joint, keypoints[joint])
                assert visibility[joint] == OCCLUDED
    assert under_occluder > 50


def test_keypoint_format_follows_the_official_extractor():
    """Confidences in [0, 1]; undetected and out-of-crop joints are exactly [0, 0, 0]; other
    joints lie inside their crop; self-occluded joints get low (but kept) confidences."""
    world = _world(14, min_crop_height=64, max_crop_height=200, keypoint_miss_rate=0.05,
                   keypoint_noise=0.01)
    seen = {VISIBLE: 0, SELF_OCCLUDED: 0, OUTSIDE: 0}
    for _, _, labels, keypoints, _, visibility in _frames(world):
        h, w = labels.shape
        confidence = keypoints[:, 2]
        assert np.all((confidence >= 0) & (confidence <= 1))
        zero = confidence <= DETECTOR_THRESHOLD
        assert np.all(keypoints[zero] == 0.0)
        assert np.all(zero[visibility == OUTSIDE])
        assert np.all((keypoints[~zero, 0] >= 0) & (keypoints[~zero, 0] < w))
        assert np.all((keypoints[~zero, 1] >= 0) & (keypoints[~zero, 1] < h))
        hidden = confidence[visibility == SELF_OCCLUDED]
        assert np.all((hidden >= 0.1) & (hidden <= 0.4))
        for kind in seen:
            seen[kind] += int(np.sum(visibility == kind))
    assert all(count > 0 for count in seen.values()), seen


def _render_view(world, identity, direction, frames, seed, elevation=0.0):
    camera = dataclasses.replace(world.cameras[0], walk_direction_deg=direction,
                                 elevation_deg=elevation)
    config = dataclasses.replace(world.config, viewpoint_spread=0.0)
    return render_tracklet(identity, 0, camera, frames, config, np.random.default_rng(seed),
                           debug=True)


def test_gait_period_shows_in_the_ankles():
    """Seen from the side, the horizontal ankle separation oscillates with the identity's gait
    period (dominant frequency of the debug joints, computed here by FFT)."""
    world = _world(15, min_crop_height=128, max_crop_height=128, min_frames=96, max_frames=96)
    periods = []
    for index, identity in enumerate(world.identities["train"][:4]):
        tracklet = _render_view(world, identity, direction=0.0, frames=96, seed=index)
        joints = tracklet.debug["joints"]
        separation = joints[:, sk.L_ANKLE, 0] - joints[:, sk.R_ANKLE, 0]
        spectrum = np.abs(np.fft.rfft(separation - separation.mean(), n=4096))
        frequency = np.fft.rfftfreq(4096)[np.argmax(spectrum)]
        measured = 1.0 / frequency
        used = tracklet.meta["gait_period_frames"]
        assert measured == pytest.approx(used, rel=0.06)
        assert measured == pytest.approx(identity.gait.period_frames, rel=0.1)
        periods.append(measured)
    assert np.ptp(periods) > 1.0, "identities should walk at different cadences"


def test_front_view_shows_the_shoulder_width():
    """Walking towards a level camera, the projected shoulder joints are (shoulder width -
    2 arm radii) apart, up to the gait's shoulder counter-rotation (cos of at most 0.3 rad)."""
    world = _world(16, min_crop_height=200, max_crop_height=200, min_frames=20, max_frames=20)
    for index, identity in enumerate(world.identities["train"][:4]):
        tracklet = _render_view(world, identity, direction=90.0, frames=20, seed=index)
        joints = tracklet.debug["joints"]
        person_px = tracklet.meta["person_height_px"]
        body = identity.body
        expected = (body.shoulder_width - 2 * body.arm_radius) * person_px
        measured = np.abs(joints[0, sk.L_SHOULDER, 0] - joints[0, sk.R_SHOULDER, 0])
        assert expected * math.cos(0.3) * 0.97 <= measured <= expected * 1.03, (measured, expected)
        # Facing the camera (90 degrees) the person's left shoulder is on the image's right;
        # walking away (the renderer flips half the tracklets) it is on the left.
        direction = tracklet.meta["walk_direction_deg"]
        facing = direction == pytest.approx(90.0, abs=1e-6)
        assert facing or direction == pytest.approx(270.0, abs=1e-6)
        assert (joints[0, sk.L_SHOULDER, 0] > joints[0, sk.R_SHOULDER, 0]) == facing


def test_crops_vary_within_the_configured_ranges():
    """Frame heights stay in [min_crop_height, max_crop_height], widths follow crop_aspect,
    and sizes vary between and within tracklets like detector crops."""
    world = _world(17, min_crop_height=60, max_crop_height=150, min_frames=5, max_frames=12)
    heights, lengths, within = [], [], []
    for job in world.jobs:
        tracklet = world.render(job)
        lengths.append(len(tracklet.frames))
        sizes = [frame.size for frame in tracklet.frames]
        heights += [h for _, h in sizes]
        within.append(len({s for s in sizes}))
        for w, h in sizes:
            assert 60 <= h <= 150
            assert 0.35 <= w / h <= 0.7
    assert min(lengths) >= 5 and max(lengths) <= 12 and len(set(lengths)) > 3
    assert len(set(heights)) > 30
    assert max(within) > 1, "crop sizes should jitter within a tracklet"
