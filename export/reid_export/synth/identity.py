"""Identities: a body shape (long-term cue), two outfits (short-term cue) and a gait (temporal cue).

Lengths are fractions of the standing height H (top of the head to the sole), angles radians.
Body and gait stay the same across outfits, so the clothes-changing protocol can only be solved
by shape and gait; outfits draw from a small shared palette, so colour statistics alone do not
identify a person.
"""
from dataclasses import dataclass

import numpy as np

RGB = tuple  # (r, g, b) ints in 0..255

#: Garment colours, ordered so that the first k of them are spread over the colour space.
GARMENT_COLOURS = (
    (32, 32, 36), (222, 222, 216), (44, 58, 110), (170, 38, 42), (126, 126, 130),
    (52, 112, 64), (206, 180, 136), (212, 180, 52), (58, 104, 170), (110, 72, 44),
    (220, 140, 170), (106, 62, 128), (222, 122, 42), (40, 124, 132), (104, 104, 48), (98, 30, 46),
)
SKIN_TONES = ((236, 200, 172), (222, 176, 140), (196, 148, 110), (160, 112, 80), (118, 80, 56),
              (84, 58, 42))
HAIR_COLOURS = ((24, 20, 18), (62, 42, 28), (110, 74, 44), (196, 160, 98), (150, 148, 146),
                (140, 60, 30))
SHOE_COLOURS = ((24, 24, 24), (232, 232, 232), (96, 64, 40), (110, 110, 116), (40, 60, 120))

UPPER_PATTERNS = ("plain", "hstripes", "vstripes", "checks", "twotone", "logo")
UPPER_PATTERN_WEIGHTS = (0.35, 0.17, 0.1, 0.14, 0.12, 0.12)
LOWER_PATTERNS = ("plain", "vstripes", "checks")
LOWER_PATTERN_WEIGHTS = (0.8, 0.1, 0.1)
LOWER_STYLES = ("trousers", "shorts", "skirt")
LOWER_STYLE_WEIGHTS = (0.6, 0.2, 0.2)
HAIR_STYLES = ("short", "long", "shaved")
HAIR_STYLE_WEIGHTS = (0.5, 0.35, 0.15)

ANKLE_HEIGHT = 0.04  # sole to ankle joint


@dataclass(frozen=True)
class Body:
    """Long-term cue. `height_m` sets the size in the camera (people are boxed by a detector, so
    after resizing only the proportions remain visible); all other lengths are fractions of H."""
    height_m: float
    head_radius: float
    neck_length: float
    torso_length: float      # neck base to hip-joint level
    thigh_share: float       # thigh / (thigh + shin)
    upper_arm_length: float
    forearm_length: float
    shoulder_width: float
    hip_width: float
    chest_depth: float
    arm_radius: float
    leg_radius: float
    foot_length: float
    skin: RGB
    hair: RGB
    hair_style: str

    @property
    def leg_length(self) -> float:
        """Hip joint to ankle: what is left of H after head, neck, torso and ankle."""
        return 1.0 - 2 * self.head_radius - self.neck_length - self.torso_length - ANKLE_HEIGHT

    @property
    def thigh_length(self) -> float:
        return self.leg_length * self.thigh_share

    @property
    def shin_length(self) -> float:
        return self.leg_length * (1.0 - self.thigh_share)


@dataclass(frozen=True)
class Gait:
    """Temporal cue: how the person walks."""
    period_frames: float     # frames per gait cycle (two steps)
    hip_swing: float         # thigh swing amplitude (sets the stride length)
    knee_flex: float         # peak knee flexion in the swing phase
    arm_swing: float         # upper-arm swing amplitude
    elbow_flex: float        # mean elbow flexion
    arm_abduction: float     # how far the arms hang out from the body
    arm_lag: float           # arm phase relative to the opposite leg, in cycles
    bounce: float            # scale of the natural vertical bob
    lean: float              # forward lean of the torso
    twist: float             # shoulder counter-rotation amplitude
    sway: float              # lateral pelvis sway, fraction of H
    asymmetry: float         # right leg swings this share less (a slight limp)


@dataclass(frozen=True)
class Outfit:
    """Short-term cue: clothes and accessories."""
    upper_colour: RGB
    upper_colour2: RGB       # stripes, checks, lower half of a two-tone top, chest logo
    upper_pattern: str
    sleeves: str             # long | short
    lower_colour: RGB
    lower_colour2: RGB
    lower_pattern: str
    lower_style: str         # trousers | shorts | skirt
    pattern_period: float    # stripe / check period, fraction of H
    shoes: RGB
    hat: RGB | None
    bag: RGB | None
    bag_side: int            # +1: bag hangs on the left hip, -1: right
    backpack: RGB | None
    code: tuple              # categorical summary, used to tell outfits apart


@dataclass(frozen=True)
class Identity:
    body: Body
    gait: Gait
    outfits: tuple           # (first outfit, second outfit)


# Sampling ranges; the same table normalises attributes for the near-duplicate test.
BODY_RANGES = dict(
    head_radius=(0.056, 0.07), neck_length=(0.02, 0.04), torso_length=(0.26, 0.33),
    thigh_share=(0.47, 0.55), upper_arm_length=(0.15, 0.2), forearm_length=(0.13, 0.17),
    shoulder_width=(0.19, 0.29), hip_width=(0.15, 0.22), chest_depth=(0.1, 0.16),
    arm_radius=(0.018, 0.034), leg_radius=(0.028, 0.048), foot_length=(0.1, 0.135),
)
GAIT_RANGES = dict(
    period_frames=(13.0, 24.0), hip_swing=(0.26, 0.5), knee_flex=(0.55, 1.1),
    arm_swing=(0.08, 0.6), elbow_flex=(0.05, 0.5), arm_abduction=(0.04, 0.16),
    arm_lag=(-0.08, 0.08), bounce=(0.6, 1.4), lean=(-0.04, 0.14), twist=(0.0, 0.3),
    sway=(0.0, 0.025), asymmetry=(0.0, 0.25),
)


def _uniform(rng, ranges):
    return {name: float(rng.uniform(lo, hi)) for name, (lo, hi) in ranges.items()}


def _normalised(values, ranges):
    return [(values[name] - lo) / (hi - lo) for name, (lo, hi) in ranges.items()]


def _shade(rng, colour, jitter):
    """A per-identity shade of a named colour: brightness and per-channel jitter."""
    gain = 1.0 + rng.uniform(-jitter, jitter)
    rgb = np.asarray(colour, np.float64) * gain + rng.uniform(-jitter, jitter, 3) * 60.0
    return tuple(int(v) for v in np.clip(np.round(rgb), 0, 255))


def _choice(rng, options, weights=None):
    if weights is None:
        return options[int(rng.integers(len(options)))]
    p = np.asarray(weights, np.float64)
    return options[int(rng.choice(len(options), p=p / p.sum()))]


def sample_outfit(rng, config, avoid: "Outfit | None" = None) -> Outfit:
    """One outfit. With `avoid`, the new outfit differs from it in the top's colour and in the
    trousers' colour or style, so that a clothes change is visible."""
    palette = GARMENT_COLOURS[:config.garment_palette_size]
    n = len(palette)
    while True:
        upper = int(rng.integers(n))
        upper2 = (upper + 1 + int(rng.integers(n - 1))) % n
        lower = int(rng.integers(n))
        lower2 = (lower + 1 + int(rng.integers(n - 1))) % n
        upper_pattern = _choice(rng, UPPER_PATTERNS, UPPER_PATTERN_WEIGHTS)
        lower_pattern = _choice(rng, LOWER_PATTERNS, LOWER_PATTERN_WEIGHTS)
        lower_style = _choice(rng, LOWER_STYLES, LOWER_STYLE_WEIGHTS)
        sleeves = _choice(rng, ("long", "short"))
        accessories = rng.random(3)
        hat, bag, backpack = accessories[0] < 0.2, accessories[1] < 0.25, accessories[2] < 0.25
        code = (upper, upper_pattern, sleeves, lower, lower_style, lower_pattern, hat, bag,
                backpack)
        if avoid is None or (upper != avoid.code[0] and
                             (lower != avoid.code[3] or lower_style != avoid.code[4])):
            break
    jitter = config.colour_jitter
    accessory = lambda: _shade(rng, palette[int(rng.integers(n))], jitter)  # noqa: E731
    return Outfit(
        upper_colour=_shade(rng, palette[upper], jitter),
        upper_colour2=_shade(rng, palette[upper2], jitter),
        upper_pattern=upper_pattern, sleeves=sleeves,
        lower_colour=_shade(rng, palette[lower], jitter),
        lower_colour2=_shade(rng, palette[lower2], jitter),
        lower_pattern=lower_pattern, lower_style=lower_style,
        pattern_period=float(rng.uniform(0.035, 0.075)),
        shoes=_choice(rng, SHOE_COLOURS),
        hat=accessory() if hat else None,
        bag=accessory() if bag else None,
        bag_side=1 if rng.random() < 0.5 else -1,
        backpack=accessory() if backpack else None,
        code=code)


def _sample_one(rng, config):
    body_values = _uniform(rng, BODY_RANGES)
    gait_values = _uniform(rng, GAIT_RANGES)
    skin = int(rng.integers(len(SKIN_TONES)))
    hair = int(rng.integers(len(HAIR_COLOURS)))
    body = Body(height_m=float(rng.uniform(1.5, 1.95)),
                skin=_shade(rng, SKIN_TONES[skin], 0.04),
                hair=_shade(rng, HAIR_COLOURS[hair], 0.05),
                hair_style=_choice(rng, HAIR_STYLES, HAIR_STYLE_WEIGHTS), **body_values)
    gait = Gait(**gait_values)
    first = sample_outfit(rng, config)
    second = sample_outfit(rng, config, avoid=first)
    # Signatures for the near-duplicate test: shape with skin and hair, and gait.
    signature = (np.array(_normalised(body_values, BODY_RANGES)
                          + [skin / (len(SKIN_TONES) - 1), hair / (len(HAIR_COLOURS) - 1)]),
                 np.array(_normalised(gait_values, GAIT_RANGES)))
    return Identity(body=body, gait=gait, outfits=(first, second)), signature


def cue_distance(signatures_a: np.ndarray, signature_b: np.ndarray) -> np.ndarray:
    """RMS difference of normalised attributes of one cue; broadcasts over leading axes."""
    return np.sqrt(np.mean((signatures_a - signature_b) ** 2, axis=-1))


#: Consecutive rejected draws after which the request is taken to be impossible.
MAX_CONSECUTIVE_REJECTIONS = 2000


def sample_identities(rng, config, count: int, avoid: list | None = None) -> list:
    """`count` identities, none a near-duplicate of another or of `avoid` (a list of
    (identity, signature) pairs): every pair is at least `min_identity_distance` apart in body
    shape and, separately, in gait (each cue alone tells them apart), and twice that when their
    first outfits are the same. Identity k depends only on the draws before it, so a larger
    count keeps the first identities unchanged.

    Returns a list of (Identity, signature) pairs; raises ValueError when the limit cannot be met.
    """
    limit = config.min_identity_distance
    pool = list(avoid or [])
    capacity = len(pool) + count
    body_signatures = np.zeros((capacity, len(BODY_RANGES) + 2))
    gait_signatures = np.zeros((capacity, len(GAIT_RANGES)))
    outfit_codes = [identity.outfits[0].code for identity, _ in pool]
    for row, (_, (body, gait)) in enumerate(pool):
        body_signatures[row], gait_signatures[row] = body, gait
    filled = len(pool)
    chosen = []
    rejected = 0
    while len(chosen) < count:
        identity, signature = _sample_one(rng, config)
        if filled:
            body = cue_distance(body_signatures[:filled], signature[0])
            gait = cue_distance(gait_signatures[:filled], signature[1])
            code = identity.outfits[0].code
            needed = np.where([other == code for other in outfit_codes], 2 * limit, limit)
            if np.any((body < needed) | (gait < needed)):
                rejected += 1
                if rejected > MAX_CONSECUTIVE_REJECTIONS:
                    raise ValueError(
                        f"could not draw {count} identities at least {limit} apart (stuck after "
                        f"{len(chosen)}); lower min_identity_distance or ask for fewer identities")
                continue
        rejected = 0
        body_signatures[filled], gait_signatures[filled] = signature
        outfit_codes.append(identity.outfits[0].code)
        filled += 1
        chosen.append((identity, signature))
    return chosen
