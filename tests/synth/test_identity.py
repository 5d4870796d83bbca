"""Identity sampling: no near-duplicates, prefix-stable streams, visible clothes changes,
cues that vary between identities."""
import itertools

import numpy as np
import pytest

from reid_export.synth import SynthConfig
from reid_export.synth import identity as identity_module
from reid_export.synth.identity import BODY_RANGES, GAIT_RANGES, sample_identities


def _normalised(record, ranges):
    return np.array([(getattr(record, name) - lo) / (hi - lo) for name, (lo, hi) in ranges.items()])


def _rms(a, b):
    total = 0.0
    for x, y in zip(a, b):
        total += (float(x) - float(y)) ** 2
    return (total / len(a)) ** 0.5


def test_signatures_describe_the_identities():
    """The near-duplicate test compares what the identities really are: the signature holds the
    normalised body and gait attributes of the dataclasses."""
    config = SynthConfig()
    drawn = sample_identities(np.random.default_rng(1), config, 10)
    for identity, (body_signature, gait_signature) in drawn:
        np.testing.assert_allclose(body_signature[:len(BODY_RANGES)],
                                   _normalised(identity.body, BODY_RANGES))
        np.testing.assert_allclose(gait_signature, _normalised(identity.gait, GAIT_RANGES))
        assert np.all((body_signature >= 0) & (body_signature <= 1))


def test_no_near_duplicates_in_body_or_gait():
    """With a demanding limit every pair differs by it in body shape and, separately, in gait
    (checked with a plain loop); without the limit, random draws do produce such close pairs,
    so the constraint is doing work."""
    limit = 0.3
    config = SynthConfig(min_identity_distance=limit)
    drawn = sample_identities(np.random.default_rng(2), config, 40)
    for (a, sa), (b, sb) in itertools.combinations(drawn, 2):
        needed = 2 * limit if a.outfits[0].code == b.outfits[0].code else limit
        assert _rms(sa[0], sb[0]) >= needed
        assert _rms(sa[1], sb[1]) >= needed
    free = sample_identities(np.random.default_rng(2), SynthConfig(min_identity_distance=0.0), 40)
    close = sum(min(_rms(sa[0], sb[0]), _rms(sa[1], sb[1])) < limit
                for (_, sa), (_, sb) in itertools.combinations(free, 2))
    assert close > 0


def test_avoid_keeps_pools_apart_and_impossible_requests_fail(monkeypatch):
    config = SynthConfig(min_identity_distance=0.2)
    first = sample_identities(np.random.default_rng(3), config, 15)
    second = sample_identities(np.random.default_rng(4), config, 15, avoid=first)
    for (_, sa), (_, sb) in itertools.product(first, second):
        assert _rms(sa[0], sb[0]) >= 0.2 and _rms(sa[1], sb[1]) >= 0.2
    monkeypatch.setattr(identity_module, "MAX_CONSECUTIVE_REJECTIONS", 50)
    with pytest.raises(ValueError, match="min_identity_distance"):
        sample_identities(np.random.default_rng(5), SynthConfig(min_identity_distance=0.3), 3000)


def test_streams_are_prefix_stable():
    """Asking for more identities keeps the first ones, so pools stay put when counts change."""
    config = SynthConfig()
    few = sample_identities(np.random.default_rng(6), config, 5)
    many = sample_identities(np.random.default_rng(6), config, 12)
    assert [i for i, _ in few] == [i for i, _ in many[:5]]


def test_second_outfit_is_a_visible_change():
    config = SynthConfig()
    for identity, _ in sample_identities(np.random.default_rng(7), config, 60):
        first, second = identity.outfits
        assert second.code[0] != first.code[0], "the top's colour must change"
        assert second.code[3] != first.code[3] or second.code[4] != first.code[4]


def test_cues_vary_between_identities():
    """Shape, gait and clothes each spread over their ranges; colours come from the small
    palette."""
    config = SynthConfig(garment_palette_size=6)
    identities = [i for i, _ in sample_identities(np.random.default_rng(8), config, 80)]
    for name, (lo, hi) in BODY_RANGES.items():
        values = np.array([getattr(i.body, name) for i in identities])
        assert np.ptp(values) > 0.6 * (hi - lo), name
    for name, (lo, hi) in GAIT_RANGES.items():
        values = np.array([getattr(i.gait, name) for i in identities])
        assert np.ptp(values) > 0.6 * (hi - lo), name
    assert {i.outfits[0].code[0] for i in identities} == set(range(6))
    assert len({i.outfits[0].upper_pattern for i in identities}) >= 5
    leg = np.array([i.body.leg_length for i in identities])
    assert 0.4 < leg.min() and leg.max() < 0.56
