"""Clip policies against literal re-implementations of the official loaders' loops, and the
per-tracklet aggregation against a float64 loop."""
import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import engine_fixtures as fx  # noqa: E402

from reid_sdk.clips import (aggregate_clips, consecutive_chunks, hamobe_recombination,  # noqa: E402
                            l2_normalize, plan_clips)
from reid_sdk.engine import Engine  # noqa: E402
from reid_sdk.errors import InputError, SpecError  # noqa: E402
from reid_sdk.spec import EngineSpec  # noqa: E402


@pytest.mark.parametrize("seq_len,stride", [(8, 4), (16, 2), (4, 2), (8, 1), (3, 5)])
def test_hamobe_recombination_equals_official_loop(seq_len, stride):
    for n in range(1, 3 * seq_len * stride + 2 * seq_len + 2):
        index, valid = hamobe_recombination(n, seq_len, stride)
        official = fx.official_hamobe_clips(n, seq_len, stride)
        assert index.tolist() == official, n
        assert index.dtype == np.int64 and valid.dtype == bool and valid.shape == index.shape


def test_hamobe_every_frame_once_and_clip_count():
    for n in range(1, 101):
        index, valid = hamobe_recombination(n, 8, 4)
        assert len(index) == math.ceil(n / 8)
        # the real slots use every frame exactly once; padding only repeats frames of its clip
        assert sorted(index[valid].tolist()) == list(range(n)), n
        assert valid[:-1].all()
        leftover = n % 8
        assert valid[-1].sum() == (leftover or 8)
        if leftover:
            assert set(index[-1].tolist()) == set(range(n - leftover, n))


def test_consecutive_chunks_equals_official_loop_with_cap():
    for n in range(1, 301):
        index, valid = consecutive_chunks(n, 4, 41)
        official = fx.official_keyreid_clips(n, seq_len=4, max_length=40)
        assert index.tolist() == official, n
        assert len(index) == min(math.ceil(n / 4), 41)
        slots = fx.official_keyreid_heatmap_slots(n, len(official), seq_len=4)
        assert valid.tolist() == slots, n


def test_consecutive_chunks_cap_drops_late_frames_and_none_keeps_all():
    index, valid = consecutive_chunks(200, 4, 41)
    assert index.shape == (41, 4) and index.max() == 163 and valid.all()
    index, valid = consecutive_chunks(201, 4, None)
    assert len(index) == 51 and index[-1].tolist() == [200, 200, 200, 200]
    assert valid[-1].tolist() == [True, False, False, False]
    # a tracklet shorter than one clip: one loop-padded clip
    index, valid = consecutive_chunks(3, 4, 41)
    assert index.tolist() == [[0, 1, 2, 0]] and valid.tolist() == [[True, True, True, False]]


def test_plan_clips_dispatches_on_policy():
    hamobe = {"policy": "hamobe_recombination", "seq_len": 8, "stride": 4}
    keyreid = {"policy": "consecutive_chunks", "seq_len": 4, "max_clips": 41}
    for n in (1, 9, 170):
        for spec, direct in ((hamobe, hamobe_recombination(n, 8, 4)),
                             (keyreid, consecutive_chunks(n, 4, 41))):
            index, valid = plan_clips(spec, n)
            np.testing.assert_array_equal(index, direct[0])
            np.testing.assert_array_equal(valid, direct[1])
    with pytest.raises(SpecError, match="unknown clip policy"):
        plan_clips({"policy": "random", "seq_len": 4}, 5)
    with pytest.raises(SpecError, match="clip padding 'zeros'"):
        plan_clips({**keyreid, "pad": "zeros"}, 5)


def test_unknown_clip_padding_is_refused_when_the_spec_is_parsed(tmp_path):
    spec = fx.keyreid_like_spec()
    assert spec["clips"]["pad"] == "loop"
    EngineSpec(spec)                                     # the fixture's own spec is fine
    bad = {**spec, "clips": {**spec["clips"], "pad": "zeros"}}
    with pytest.raises(SpecError, match=r"clips\.pad 'zeros' is not one of \('loop',\)"):
        EngineSpec(bad)
    # an engine file carrying that spec is refused on open, before anything is embedded
    path = fx.build_keyreid_like(tmp_path / "zeros_pad.onnx", bad)
    with pytest.raises(SpecError, match=r"clips\.pad 'zeros'"):
        Engine(path)
    hamobe = fx.hamobe_like_spec()
    with pytest.raises(SpecError, match=r"clips\.pad 'wrap'"):
        EngineSpec({**hamobe, "clips": {**hamobe["clips"], "pad": "wrap"}})
    EngineSpec({**hamobe, "clips": {**hamobe["clips"], "pad": "loop"}})


@pytest.mark.parametrize("bad", [0, -3])
def test_empty_tracklet_is_refused(bad):
    with pytest.raises(InputError, match="at least one frame"):
        hamobe_recombination(bad, 8, 4)
    with pytest.raises(InputError, match="at least one frame"):
        consecutive_chunks(bad, 4, 41)


def test_aggregate_mean_max_l2_against_loops(rng):
    lengths = rng.integers(1, 6, size=7)
    owner = np.repeat(np.arange(7), lengths)
    emb = rng.standard_normal((len(owner), 11)).astype(np.float32)
    mean = aggregate_clips(emb, owner, 7, how="mean")
    biggest = aggregate_clips(emb, owner, 7, how="max")
    normed = aggregate_clips(emb, owner, 7, how="mean", l2=True)
    for t in range(7):
        rows = emb[owner == t].astype(np.float64)
        expect = rows.sum(axis=0) / len(rows)
        np.testing.assert_allclose(mean[t], expect, rtol=1e-6, atol=1e-7)
        np.testing.assert_array_equal(biggest[t], rows.max(axis=0).astype(np.float32))
        np.testing.assert_allclose(normed[t], expect / np.sqrt((expect ** 2).sum()), rtol=1e-6,
                                   atol=1e-7)
    assert mean.dtype == biggest.dtype == normed.dtype == np.float32


def test_aggregate_refuses_tracklets_without_clips_and_unknown_how(rng):
    emb = rng.standard_normal((3, 4)).astype(np.float32)
    with pytest.raises(InputError, match="at least one clip"):
        aggregate_clips(emb, np.array([0, 0, 2]), 3)
    with pytest.raises(InputError, match="at least one clip"):
        aggregate_clips(emb, np.array([0, 1, 5]), 3)
    with pytest.raises(SpecError, match="unknown aggregate"):
        aggregate_clips(emb, np.array([0, 1, 1]), 2, how="median")


def test_l2_normalize_matches_float64_and_keeps_zero_rows(rng):
    x = rng.standard_normal((5, 9)).astype(np.float32) * 100
    x[2] = 0
    out = l2_normalize(x)
    wide = x.astype(np.float64)
    ref = wide / np.maximum(np.linalg.norm(wide, axis=1), 1e-12)[:, None]
    np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-7)
    assert not out[2].any()
