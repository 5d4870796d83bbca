"""Engine on hand-built ONNX models: embed equals a manual pipeline built from the official loaders'
loops through the raw onnxruntime session; batching, threads, providers; every bad input gets the
SDK's own exception naming the problem; the runtime never imports torch."""
import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
import engine_fixtures as fx  # noqa: E402

import reid_sdk  # noqa: E402
from reid_sdk.backends import onnxruntime as ort_backend  # noqa: E402
from reid_sdk.errors import (BackendError, BackendUnavailableError, EngineFileError,  # noqa: E402
                             InputError, SpecError)
from reid_sdk.progress import ProgressBar  # noqa: E402

HAMOBE_LENGTHS = [1, 3, 8, 9, 31, 32, 33, 70]
KEYREID_LENGTHS = [1, 3, 4, 5, 8, 13, 170]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("engines")
    return {"hamobe": fx.build_hamobe_like(root / "hamobe.onnx", seed=1),
            "keyreid": fx.build_keyreid_like(root / "keyreid.onnx", seed=2),
            "root": root}


def manual_embed(path, tracklets, keypoints=None, cameras=None, per_clip=False):
    """The official test protocol written out: official clip lists, official image chain per
    frame, all clips of a tracklet as one batch through the raw session, mean (float64), L2 when
    the spec says so."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    spec = json.loads(session.get_modelmeta().custom_metadata_map["reid_sdk.spec"])
    out_hw = (spec["input"]["height"], spec["input"]["width"])
    seq_len = spec["frames_per_clip"]
    results = []
    for i, tracklet in enumerate(tracklets):
        n = len(tracklet)
        if spec["arch"] == "hamobe":
            clips = fx.official_hamobe_clips(n, seq_len, spec["clips"]["stride"])
            image = lambda crop: fx.official_hamobe_image(crop, out_hw)  # noqa: E731
        else:
            clips = fx.official_keyreid_clips(n, seq_len, spec["clips"]["max_clips"] - 1)
            image = lambda crop: fx.official_keyreid_image(crop, out_hw)  # noqa: E731
        feeds = {"frames": np.stack([[image(tracklet[f]) for f in clip] for clip in clips])}
        if spec["arch"] == "keyreid":
            slots = fx.official_keyreid_heatmap_slots(n, len(clips), seq_len)
            feeds["keypoints"] = np.stack([
                [keypoints[i][f] if real else np.zeros((17, 3), np.float32)
                 for f, real in zip(clip, slot)] for clip, slot in zip(clips, slots)])
            feeds["crop_hw"] = np.array([[tracklet[f].shape[:2] for f in clip] for clip in clips],
                                        np.int32)
            feeds["frame_valid"] = np.array(slots, bool)
            feeds["camera"] = np.full(len(clips), cameras[i], np.int64)
        clip_emb = session.run(None, feeds)[0].astype(np.float64)
        if per_clip:
            results.append(clip_emb)
            continue
        vector = clip_emb.mean(axis=0)
        if spec["output_l2"]:
            vector /= np.linalg.norm(vector)
        results.append(vector)
    return np.concatenate(results) if per_clip else np.stack(results)


# -- equality with the official protocol ---------------------------------------------------------
def test_hamobe_embed_equals_manual_official_pipeline(models, rng):
    tracklets = fx.random_tracklets(rng, HAMOBE_LENGTHS)
    engine = reid_sdk.Engine(models["hamobe"])
    emb = engine.embed(tracklets)
    assert emb.shape == (len(tracklets), 16) and emb.dtype == np.float32
    np.testing.assert_allclose(emb, manual_embed(models["hamobe"], tracklets), atol=2e-6)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-6)


def test_keyreid_embed_equals_manual_official_pipeline(models, rng):
    tracklets, keypoints, cameras = fx.keyreid_inputs(rng, KEYREID_LENGTHS)
    engine = reid_sdk.Engine(models["keyreid"])
    emb = engine.embed(tracklets, keypoints=keypoints, camera=cameras)
    expect = manual_embed(models["keyreid"], tracklets, keypoints, cameras)
    np.testing.assert_allclose(emb, expect, rtol=1e-5, atol=1e-4)
    assert not np.allclose(np.linalg.norm(emb, axis=1), 1.0)  # no L2 for KeyRe-ID


def test_embed_clips_exposes_the_clip_level(models, rng):
    tracklets, keypoints, cameras = fx.keyreid_inputs(rng, [5, 170, 2])
    engine = reid_sdk.Engine(models["keyreid"])
    clips = engine.embed_clips(tracklets, keypoints=keypoints, camera=cameras)
    assert clips.num_tracklets == 3
    assert clips.tracklet_index.tolist() == [0, 0] + [1] * 41 + [2]
    assert clips.frame_index[:2].tolist() == fx.official_keyreid_clips(5)
    assert clips.frame_valid[1].tolist() == [True, False, False, False]
    np.testing.assert_allclose(clips.embeddings,
                               manual_embed(models["keyreid"], tracklets, keypoints, cameras,
                                            per_clip=True), rtol=1e-5, atol=1e-4)


def test_every_keyreid_input_reaches_the_output(models, rng):
    """The fixture graph reads every extra input, so a dropped or mis-fed input shows."""
    tracklets, keypoints, cameras = fx.keyreid_inputs(rng, [6, 9])
    engine = reid_sdk.Engine(models["keyreid"])
    base = engine.embed(tracklets, keypoints=keypoints, camera=cameras)
    moved = [k + 3.0 for k in keypoints]
    assert not np.allclose(engine.embed(tracklets, keypoints=moved, camera=cameras), base)
    assert not np.allclose(engine.embed(tracklets, keypoints=keypoints, camera=(cameras + 1) % 6),
                           base)
    bigger = [[np.pad(c, ((0, 2), (0, 0), (0, 0))) for c in t] for t in tracklets]
    assert not np.allclose(engine.embed(bigger, keypoints=keypoints, camera=cameras), base)


# -- batching ------------------------------------------------------------------------------------
def record_batches(monkeypatch, engine):
    sizes = []
    run = engine._backend.run

    def recording(feeds):
        sizes.append(next(iter(feeds.values())).shape[0])
        return run(feeds)
    monkeypatch.setattr(engine._backend, "run", recording)
    return sizes


def test_batching_across_tracklets_equals_one_by_one(models, rng, monkeypatch):
    tracklets = fx.random_tracklets(rng, [40, 3, 17, 64, 1, 9])
    engine = reid_sdk.Engine(models["hamobe"], max_batch=5)
    sizes = record_batches(monkeypatch, engine)
    together = engine.embed(tracklets)
    clips = sum(-(-len(t) // 8) for t in tracklets)
    assert sizes == [5] * (clips // 5) + ([clips % 5] if clips % 5 else [])
    alone = np.concatenate([engine.embed([t]) for t in tracklets])
    np.testing.assert_allclose(together, alone, atol=2e-6)
    sizes.clear()
    small = engine.embed(tracklets, batch_size=2)
    assert max(sizes) == 2
    np.testing.assert_allclose(small, together, atol=2e-6)
    for bad in (0, 6, 2.5, True):
        with pytest.raises(InputError, match="batch_size"):
            engine.embed(tracklets, batch_size=bad)


def test_fixed_batch_graph_pads_the_last_batch(models, rng, monkeypatch):
    spec = fx.hamobe_like_spec()
    path = fx.build_hamobe_like(models["root"] / "fixed4.onnx", spec, seed=1, batch=4)
    engine = reid_sdk.Engine(path)
    assert (engine.info()["min_batch"], engine.max_batch) == (4, 4)
    sizes = record_batches(monkeypatch, engine)
    tracklets = fx.random_tracklets(rng, [9, 33])  # 2 + 5 clips: batches of 4 and 3 (+1 pad)
    emb = engine.embed(tracklets)
    assert sizes == [4, 4]
    np.testing.assert_allclose(emb, reid_sdk.Engine(models["hamobe"]).embed(tracklets),
                               atol=2e-6)
    with pytest.raises(InputError, match="fixed batch of 4"):
        reid_sdk.Engine(path, max_batch=8)


def test_array_input_equals_list_input(models, rng):
    array = rng.integers(0, 256, size=(3, 11, 40, 24, 3), dtype=np.uint8)
    engine = reid_sdk.Engine(models["hamobe"])
    np.testing.assert_array_equal(engine.embed(array), engine.embed([list(t) for t in array]))
    assert engine.embed([]).shape == (0, 16)


def test_threads_share_one_engine(models, rng):
    engine = reid_sdk.Engine(models["keyreid"], max_batch=4)
    jobs = [fx.keyreid_inputs(rng, rng.integers(1, 30, size=3)) for _ in range(8)]
    fx.assert_threads_match_sequential(
        lambda job: engine.embed(job[0], keypoints=job[1], camera=job[2]), jobs, rounds=3)


# -- colour and crop formats ---------------------------------------------------------------------
def test_bgr_grayscale_and_rgba_inputs(models, rng):
    engine = reid_sdk.Engine(models["hamobe"])
    tracklets = fx.random_tracklets(rng, [10, 4])
    base = engine.embed(tracklets)
    bgr = [[c[:, :, ::-1] for c in t] for t in tracklets]
    np.testing.assert_array_equal(engine.embed(bgr, color="BGR"), base)
    assert not np.allclose(engine.embed(bgr), base)
    rgba = [[np.dstack([c, rng.integers(0, 256, c.shape[:2], dtype=np.uint8)]) for c in t]
            for t in tracklets]
    np.testing.assert_array_equal(engine.embed(rgba), base)
    gray = [[c[:, :, 0] for c in t] for t in tracklets]
    as_rgb = [[np.repeat(c[:, :, None], 3, axis=2) for c in t] for t in gray]
    np.testing.assert_array_equal(engine.embed(gray), engine.embed(as_rgb))
    np.testing.assert_array_equal(engine.embed([[c[:, :, None] for c in t] for t in gray]),
                                  engine.embed(as_rgb))
    with pytest.raises(InputError, match="color"):
        engine.embed(tracklets, color="HSV")


# -- bad input: the SDK's own errors, naming the problem ------------------------------------------
@pytest.mark.parametrize("make_input,match", [
    (lambda rng: [[np.zeros((20, 10, 3), np.float32)]], "uint8.*float32"),
    (lambda rng: [[np.zeros((20, 10, 5), np.uint8)]], "HxWx3"),
    (lambda rng: [[]], "tracklet 0 is empty"),
    (lambda rng: [[np.zeros((20, 10, 3), np.uint8)], []], "tracklet 1 is empty"),
    (lambda rng: [[np.zeros((0, 10, 3), np.uint8)]], "zero-size"),
    (lambda rng: [[np.zeros((20, 10, 3), np.uint8), np.zeros((20, 0, 3), np.uint8)]],
     "tracklet 0, frame 1: zero-size"),
    (lambda rng: [np.zeros((20, 10, 3), np.uint8)] * 3, "pass \\[crops\\]"),
    (lambda rng: np.zeros((4, 20, 10, 3), np.uint8), "\\[N, T, H, W, C\\]"),
    (lambda rng: 42, "list of tracklets"),
])
def test_bad_crops_and_tracklets(models, rng, make_input, match):
    engine = reid_sdk.Engine(models["hamobe"])
    with pytest.raises(InputError, match=match):
        engine.embed(make_input(rng))


def test_bad_keypoints(models, rng):
    engine = reid_sdk.Engine(models["keyreid"])
    tracklets, keypoints, cameras = fx.keyreid_inputs(rng, [5, 7])
    nan = [k.copy() for k in keypoints]
    nan[1][3, 4, 0] = np.nan
    inf = [k.copy() for k in keypoints]
    inf[1][0, 0, 1] = np.inf
    cases = [
        (None, "needs keypoints"),
        (nan, "tracklet 1 hold NaN.*frame\\(s\\) \\[3\\]"),
        (inf, "NaN or infinite values at frame\\(s\\) \\[0\\]"),
        ([keypoints[0]], "keypoints for 1 tracklets but 2"),
        ([keypoints[0], keypoints[1][:-1]], "tracklet 1 has 7 frames but 6 keypoint"),
        ([keypoints[0], keypoints[1][:, :16]], "shape \\(7, 16, 3\\)"),
        ([keypoints[0], keypoints[1][..., :2]], "expected \\[7, 17, 3\\]"),
        ([keypoints[0], list(keypoints[1][:6]) + [np.zeros((5, 3))]], "keypoints of tracklet 1"),
        ([keypoints[0], "abc"], "keypoints of tracklet 1"),
        (np.zeros((2, 7, 17)), "\\[N, T, 17, 3\\]"),
    ]
    for bad, match in cases:
        with pytest.raises(InputError, match=match):
            engine.embed(tracklets, keypoints=bad, camera=cameras)
    # one [17, 3] array per frame is accepted and equals the stacked form
    per_frame = [list(k) for k in keypoints]
    np.testing.assert_array_equal(
        engine.embed(tracklets, keypoints=per_frame, camera=cameras),
        engine.embed(tracklets, keypoints=keypoints, camera=cameras))
    hamobe = reid_sdk.Engine(models["hamobe"])
    with pytest.raises(InputError, match="takes no keypoints"):
        hamobe.embed(tracklets, keypoints=keypoints)
    with pytest.raises(InputError, match="takes no camera"):
        hamobe.embed(tracklets, camera=0)


def test_bad_cameras_and_the_unseen_camera_row(models, rng):
    engine = reid_sdk.Engine(models["keyreid"])
    tracklets, keypoints, _ = fx.keyreid_inputs(rng, [5, 7])
    for bad, match in [(6, "camera 6 of tracklet 0 is out of range.*0..5"),
                       (-1, "out of range"), ([0, 9], "camera 9 of tracklet 1"),
                       (True, "out of range"), ([0], "1 cameras for 2 tracklets"),
                       (None, "no unseen-camera row"), ([1, None], "tracklet 1 has no camera"),
                       (1.0, "out of range")]:
        with pytest.raises(InputError, match=match):
            engine.embed(tracklets, keypoints=keypoints, camera=bad)
    spec = fx.keyreid_like_spec(unseen_camera_index=6)
    unseen = reid_sdk.Engine(fx.build_keyreid_like(models["root"] / "unseen.onnx", spec))
    np.testing.assert_array_equal(unseen.embed(tracklets, keypoints=keypoints, camera=None),
                                  unseen.embed(tracklets, keypoints=keypoints, camera=[6, 6]))
    assert not np.allclose(unseen.embed(tracklets, keypoints=keypoints, camera=None),
                           unseen.embed(tracklets, keypoints=keypoints, camera=0))
    with pytest.raises(InputError, match="out of range"):
        unseen.embed(tracklets, keypoints=keypoints, camera=7)


# -- bad engine files ----------------------------------------------------------------------------
def test_missing_truncated_corrupt_onnx(models, tmp_path):
    with pytest.raises(EngineFileError, match="no engine file"):
        reid_sdk.Engine(tmp_path / "absent.onnx")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00not an onnx model at all" * 10)
    with pytest.raises(EngineFileError, match="truncated, corrupt or not an ONNX model"):
        reid_sdk.Engine(garbage)
    data = Path(models["hamobe"]).read_bytes()
    for cut in (len(data) // 3, len(data) // 2, len(data) - 7):
        truncated = tmp_path / f"cut{cut}.onnx"
        truncated.write_bytes(data[:cut])
        with pytest.raises((EngineFileError, SpecError), match="truncated"):
            reid_sdk.Engine(truncated)
    with pytest.raises(InputError, match="suffix"):
        reid_sdk.Engine(tmp_path / "model.pt")


def test_spec_missing_malformed_or_of_another_version(tmp_path):
    spec = fx.hamobe_like_spec()
    model = fx.hamobe_like_model(spec)
    cases = [(None, "carries no engine spec"), ("{not json", "not valid JSON"),
             ({**spec, "spec_version": 2}, "spec_version 2 is not supported"),
             ({k: v for k, v in spec.items() if k != "clips"}, "missing field clips"),
             ({**spec, "extra_inputs": {"depth": {}}}, "does not know")]
    for i, (bad, match) in enumerate(cases):
        path = fx.save_model(model, tmp_path / f"bad{i}.onnx", bad)
        with pytest.raises(SpecError, match=match):
            reid_sdk.Engine(path)


def test_graph_that_does_not_fit_its_spec(tmp_path):
    spec = fx.hamobe_like_spec()
    model = fx.hamobe_like_model(spec)
    path = fx.save_model(model, tmp_path / "taller.onnx", {**spec, "input": {
        **spec["input"], "height": 48}})
    with pytest.raises(SpecError, match="'frames' has size 32 on axis 2.*needs 48"):
        reid_sdk.Engine(path)
    float_frames = fx.hamobe_like_model(spec)
    float_frames.graph.input[0].type.tensor_type.elem_type = TensorProto.FLOAT
    with pytest.raises(SpecError, match="dtype float32, the spec needs uint8"):
        reid_sdk.Engine(fx.save_model(float_frames, tmp_path / "float.onnx", spec))
    keyreid_spec = fx.keyreid_like_spec(height=32, width=32, frames_per_clip=8, dim=16)
    with pytest.raises(SpecError, match="no input 'keypoints'"):
        reid_sdk.Engine(fx.save_model(model, tmp_path / "nokp.onnx", keyreid_spec))
    keyreid_model = fx.keyreid_like_model(fx.keyreid_like_spec())
    with pytest.raises(SpecError, match="not in its spec"):
        reid_sdk.Engine(fx.save_model(keyreid_model, tmp_path / "extra.onnx", {
            **fx.keyreid_like_spec(), "extra_inputs": {}}))


def test_engine_output_is_checked(tmp_path, rng):
    spec = fx.hamobe_like_spec()
    model = fx.hamobe_like_model(spec)
    bias = next(t for t in model.graph.initializer if t.name == "frames_bias")
    bias.CopyFrom(numpy_helper.from_array(np.full(16, np.nan, np.float32), "frames_bias"))
    engine = reid_sdk.Engine(fx.save_model(model, tmp_path / "nan.onnx", spec))
    with pytest.raises(BackendError, match="NaN or infinite embeddings"):
        engine.embed(fx.random_tracklets(rng, [3]))
    narrow = fx.hamobe_like_model(fx.hamobe_like_spec(dim=8))
    with pytest.raises(SpecError, match="'embedding' has size 8 on axis 1"):
        reid_sdk.Engine(fx.save_model(narrow, tmp_path / "narrow.onnx", spec))


def test_engine_output_shape_is_checked_at_run_time(models, rng, monkeypatch):
    """A backend whose output shape only shows at run time (dynamic D) is caught too."""
    engine = reid_sdk.Engine(models["hamobe"])
    monkeypatch.setattr(engine._backend, "run",
                        lambda feeds: np.zeros((len(feeds["frames"]), 8), np.float32))
    with pytest.raises(BackendError, match="shape \\(1, 8\\), expected \\(1, 16\\)"):
        engine.embed(fx.random_tracklets(rng, [3]))


def test_closed_engine_refuses_work(models, rng):
    with reid_sdk.Engine(models["hamobe"]) as engine:
        engine.embed(fx.random_tracklets(rng, [2]))
    with pytest.raises(BackendError, match="closed"):
        engine.embed(fx.random_tracklets(rng, [2]))


# -- providers -----------------------------------------------------------------------------------
def test_provider_that_is_listed_but_fails_to_start_falls_back(models, monkeypatch):
    """What the GPU machine's onnxruntime-gpu does with the TensorRT EP and no TensorRT library:
    the EP is listed, starting it raises; the engine warns and takes the next provider."""
    real_create = ort_backend.create_session
    attempts = []

    def create(ort_module, path, providers, device):
        attempts.append([name for name, _ in providers])
        if providers[0][0] == "TensorrtExecutionProvider":
            raise RuntimeError("libnvinfer.so.10: cannot open shared object file")
        return real_create(ort_module, path, providers, device)
    monkeypatch.setattr(ort_backend, "create_session", create)
    monkeypatch.setattr(ort, "get_available_providers",
                        lambda: ["TensorrtExecutionProvider", "CPUExecutionProvider"])
    with pytest.warns(RuntimeWarning, match="TensorrtExecutionProvider.*failed to start"):
        engine = reid_sdk.Engine(models["hamobe"])
    assert attempts == [["TensorrtExecutionProvider", "CPUExecutionProvider"],
                        ["CPUExecutionProvider"]]
    assert engine.info()["providers"] == ["CPUExecutionProvider"]


def test_provider_silently_skipped_by_onnxruntime_is_reported(models, monkeypatch):
    monkeypatch.setattr(ort, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # onnxruntime's own note
        with pytest.warns(RuntimeWarning, match="did not start \\['CUDAExecutionProvider'\\]"):
            engine = reid_sdk.Engine(models["hamobe"])
    assert engine.info()["providers"] == ["CPUExecutionProvider"]
    assert engine.info()["device"] is None


def test_explicit_providers(models, monkeypatch):
    engine = reid_sdk.Engine(models["hamobe"], providers=["CPUExecutionProvider"])
    assert engine.info()["providers"] == ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(BackendUnavailableError, match="none of the requested providers"):
            reid_sdk.Engine(models["hamobe"], providers=["CUDAExecutionProvider"])
    with pytest.raises(InputError, match="providers= only applies"):
        reid_sdk.Engine(models["root"] / "x.plan", providers=["CPUExecutionProvider"])
    with pytest.raises(InputError, match="names or \\(name, options\\) pairs"):
        reid_sdk.Engine(models["hamobe"], providers=[3])
    # ORT-style (name, options) pairs pass their options through
    seen = []
    real_create = ort_backend.create_session

    def create(ort_module, path, providers, device):
        seen.append(providers)
        return real_create(ort_module, path, providers, device)
    monkeypatch.setattr(ort_backend, "create_session", create)
    options = {"arena_extend_strategy": "kSameAsRequested"}
    engine = reid_sdk.Engine(models["hamobe"], providers=[("CPUExecutionProvider", options)])
    assert seen == [[("CPUExecutionProvider", options)]]
    assert engine.info()["providers"] == ["CPUExecutionProvider"]


def test_info_describes_the_engine(models):
    import hashlib
    info = reid_sdk.Engine(models["keyreid"], max_batch=3).info()
    assert info["backend"] == "onnxruntime" and info["max_batch"] == 3
    assert info["sha256"] == hashlib.sha256(Path(models["keyreid"]).read_bytes()).hexdigest()
    assert info["spec"]["arch"] == "keyreid" and info["spec"]["clips"]["max_clips"] == 41
    assert [i["name"] for i in info["inputs"]] == ["frames", "keypoints", "crop_hw",
                                                   "frame_valid", "camera"]
    assert info["inputs"][0]["shape"] == [None, 4, 32, 16, 3]
    assert info["outputs"] == [{"name": "embedding", "dtype": "float32", "shape": [None, 24]}]
    json.dumps(info)


# -- progress ------------------------------------------------------------------------------------
def test_progress_bar(models, rng, capsys):
    import io
    stream = io.StringIO()
    with ProgressBar(10, desc="embed", unit="clips", stream=stream) as bar:
        bar.update(10)
    assert stream.getvalue() == ""  # not a terminal: off
    with ProgressBar(10, desc="embed", unit="clips", stream=stream, enabled=True) as bar:
        for _ in range(10):
            bar.update(1)
    assert "10/10 clips" in stream.getvalue() and stream.getvalue().endswith("\n")
    engine = reid_sdk.Engine(models["hamobe"])
    engine.embed(fx.random_tracklets(rng, [30]), progress=True)
    assert "embed hamobe" in capsys.readouterr().err
    engine.embed(fx.random_tracklets(rng, [30]))
    assert capsys.readouterr().err == ""


# -- torch stays out -----------------------------------------------------------------------------
def test_runtime_never_imports_torch(models):
    code = f"""
import sys
import numpy as np
import reid_sdk
reid_sdk.Engine
heavy = [m for m in ("torch", "onnxruntime", "tensorrt", "cuda") if m in sys.modules]
assert not heavy, heavy
engine = reid_sdk.Engine({str(models["keyreid"])!r})
rng = np.random.default_rng(0)
crops = [rng.integers(0, 256, (40, 20, 3), dtype=np.uint8) for _ in range(9)]
emb = engine.embed([crops], keypoints=[np.zeros((9, 17, 3), np.float32)], camera=0)
assert emb.shape == (1, 24)
print("TORCH", sorted(m for m in sys.modules if m == "torch" or m.startswith("torch.")))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "TORCH []" in done.stdout


# -- GPU (run on the GPU machine: pytest -m gpu tests/sdk/test_engine.py) -------------------------
def assert_close_rows(got, want, min_cosine=0.99999, atol=5e-3):
    """GPU vs CPU: the CUDA EP may run float32 MatMul in TF32, so rows agree in direction to
    1e-5 and elementwise only loosely."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    cosine = (got * want).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
    assert cosine.min() >= min_cosine, cosine.min()
    np.testing.assert_allclose(got, want, atol=atol, rtol=1e-3)


@pytest.mark.cuda_ep
def test_cuda_ep_matches_cpu(models, rng):
    tracklets, keypoints, cameras = fx.keyreid_inputs(rng, KEYREID_LENGTHS)
    gpu = reid_sdk.Engine(models["keyreid"], providers=["CUDAExecutionProvider",
                                                         "CPUExecutionProvider"])
    assert gpu.info()["providers"][0] == "CUDAExecutionProvider"
    cpu = reid_sdk.Engine(models["keyreid"], providers=["CPUExecutionProvider"])
    assert_close_rows(gpu.embed(tracklets, keypoints=keypoints, camera=cameras),
                      cpu.embed(tracklets, keypoints=keypoints, camera=cameras))


@pytest.mark.cuda_ep
def test_default_providers_on_the_gpu_machine_never_crash(models, rng):
    """onnxruntime-gpu lists the TensorRT EP; without the TensorRT libraries the engine must
    warn and run on the CUDA EP."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        engine = reid_sdk.Engine(models["hamobe"])
    providers = engine.info()["providers"]
    assert providers[0] in ("TensorrtExecutionProvider", "CUDAExecutionProvider")
    if providers[0] == "CUDAExecutionProvider" and \
            "TensorrtExecutionProvider" in ort.get_available_providers():
        assert any("TensorrtExecutionProvider" in str(w.message) for w in caught)
    tracklets = fx.random_tracklets(rng, HAMOBE_LENGTHS)
    assert_close_rows(engine.embed(tracklets), manual_embed(models["hamobe"], tracklets))
