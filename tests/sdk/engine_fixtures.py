"""Hand-built ONNX engines that honour the reid_sdk I/O contract, random tracklets, and literal
re-implementations of the official loaders' test-time loops (the references the SDK is tested
against). Reusable by other tests and by benchmarks; no torch.

Engines (built with onnx.helper, opset 17, dynamic batch unless ``batch`` is given):

* HAMoBE-like: frames uint8 [B, T, H, W, 3] -> Cast -> (x - 255 mean) / (255 std) -> flatten
  -> MatMul with a fixed random matrix -> + bias -> embedding [B, D]. Every pixel of every frame
  reaches the output, so any preprocessing or clip-order difference shows.
* KeyRe-ID-like: the same on its frames, plus terms that make each extra input visible:
  keypoints and crop_hw (masked by frame_valid, as the real op ignores padded frames), the
  validity mask itself, and a camera embedding row (Gather).

Official references (``official_*``): written from the loops of HAMoBE
``data/datasets/ccvid.py:_recombination_for_testset`` and ``data/dataset_loader.py:pil_loader``,
and KeyRe-ID ``Dataloader.py:VideoDataset.__getitem__`` / ``heatmap_loader.py:Heatmap_Dataset``,
keeping their loop structure (list slicing, loop padding by appending while iterating) rather
than the closed forms the SDK uses.
"""
from __future__ import annotations

import copy
import json
import threading
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from reid_sdk.spec import METADATA_KEY

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
OPSET = 17


# -- specs ----------------------------------------------------------------------------------------
def _base_spec(arch, *, frames_per_clip, height, width, dim, resize, mean, std, clips, output_l2,
               metric, extra_inputs):
    return {
        "spec_version": 1, "arch": arch, "preset": "fixture", "frames_per_clip": frames_per_clip,
        "input": {"name": "frames", "layout": "NTHWC", "dtype": "uint8", "color": "RGB",
                  "height": height, "width": width, "resize": resize},
        "normalize": {"mean": mean, "std": std, "scale": 255.0, "in_graph": True},
        "extra_inputs": extra_inputs, "clips": clips, "aggregate": "mean",
        "output_l2": output_l2, "output": {"name": "embedding", "dtype": "float32"},
        "embedding_dim": dim, "metric": metric, "precision": "fp32", "opset": OPSET,
        "custom_ops": {}, "source": {"exporter": "tests/sdk/engine_fixtures.py",
                                     "checkpoint_sha256": None},
    }


def hamobe_like_spec(*, frames_per_clip=8, stride=4, height=32, width=32, dim=16) -> dict:
    """A HAMoBE-shaped spec: pad-to-square + bicubic, recombination clips, mean + L2, cosine."""
    return _base_spec(
        "hamobe", frames_per_clip=frames_per_clip, height=height, width=width, dim=dim,
        resize={"policy": "pad_to_square", "interpolation": "bicubic", "pad_value": 0,
                "reference": "PIL"},
        mean=CLIP_MEAN, std=CLIP_STD,
        clips={"policy": "hamobe_recombination", "seq_len": frames_per_clip, "stride": stride},
        output_l2=True, metric="cosine", extra_inputs={})


def keyreid_like_spec(*, frames_per_clip=4, max_clips=41, height=32, width=16, dim=24,
                      num_cameras=6, unseen_camera_index=None, num_joints=17) -> dict:
    """A KeyRe-ID-shaped spec: stretch + bilinear, consecutive chunks (41-clip cap), mean, no L2,
    keypoints / crop_hw / frame_valid / camera inputs."""
    camera = {"name": "camera", "num_cameras": num_cameras}
    if unseen_camera_index is not None:
        camera["unseen_camera_index"] = unseen_camera_index
    return _base_spec(
        "keyreid", frames_per_clip=frames_per_clip, height=height, width=width, dim=dim,
        resize={"policy": "stretch", "interpolation": "bilinear", "pad_value": 0,
                "reference": "PIL"},
        mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5],
        clips={"policy": "consecutive_chunks", "seq_len": frames_per_clip,
               "max_clips": max_clips, "pad": "loop"},
        output_l2=False, metric="squared_euclidean",
        extra_inputs={"keypoints": {"name": "keypoints", "format": "coco17",
                                    "num_joints": num_joints},
                      "crop_hw": {"name": "crop_hw"}, "frame_valid": {"name": "frame_valid"},
                      "camera": camera})


# -- graphs ---------------------------------------------------------------------------------------
def _const(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def _frames_branch(spec, rng, batch):
    """Nodes, initializers and input of the frames -> [B, D] projection."""
    t, h, w, d = spec["frames_per_clip"], spec["input"]["height"], spec["input"]["width"], \
        spec["embedding_dim"]
    size = t * h * w * 3
    scale = 255.0 * np.asarray(spec["normalize"]["std"], np.float32)
    inits = [
        _const("pixel_shift", (255.0 * np.asarray(spec["normalize"]["mean"])).astype(np.float32)),
        _const("pixel_scale", scale.astype(np.float32)),
        _const("flat_shape", np.array([0, -1], np.int64)),
        _const("frames_weight",
               (rng.standard_normal((size, d)) / np.sqrt(size)).astype(np.float32)),
        _const("frames_bias", rng.standard_normal(d).astype(np.float32)),
    ]
    nodes = [
        helper.make_node("Cast", ["frames"], ["frames_f"], to=TensorProto.FLOAT),
        helper.make_node("Sub", ["frames_f", "pixel_shift"], ["frames_c"]),
        helper.make_node("Div", ["frames_c", "pixel_scale"], ["frames_n"]),
        helper.make_node("Reshape", ["frames_n", "flat_shape"], ["frames_flat"]),
        helper.make_node("MatMul", ["frames_flat", "frames_weight"], ["frames_proj"]),
        helper.make_node("Add", ["frames_proj", "frames_bias"], ["frames_emb"]),
    ]
    inp = helper.make_tensor_value_info(spec["input"]["name"], TensorProto.UINT8,
                                        [batch, t, h, w, 3])
    return nodes, inits, inp


def _model(spec, nodes, inits, inputs, output_term, batch):
    nodes = nodes + [helper.make_node("Identity", [output_term], [spec["output"]["name"]])]
    out = helper.make_tensor_value_info(spec["output"]["name"], TensorProto.FLOAT,
                                        [batch, spec["embedding_dim"]])
    graph = helper.make_graph(nodes, f"{spec['arch']}_like", inputs, [out], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="reid-sdk tests")
    model.ir_version = 9  # loadable by every onnxruntime >= 1.15
    onnx.checker.check_model(model)
    return model


def hamobe_like_model(spec: dict, *, seed: int = 0, batch: int | str = "B") -> onnx.ModelProto:
    """The HAMoBE-like graph for ``spec`` (weights from ``seed``; ``batch`` an int fixes B)."""
    rng = np.random.default_rng(seed)
    nodes, inits, inp = _frames_branch(spec, rng, batch)
    return _model(spec, nodes, inits, [inp], "frames_emb", batch)


def keyreid_like_model(spec: dict, *, seed: int = 0, batch: int | str = "B") -> onnx.ModelProto:
    """The KeyRe-ID-like graph for ``spec``: frames + masked keypoints, crop sizes, validity and
    a camera row."""
    rng = np.random.default_rng(seed)
    t, d = spec["frames_per_clip"], spec["embedding_dim"]
    extra = spec["extra_inputs"]
    joints = extra["keypoints"]["num_joints"]
    camera = extra["camera"]
    rows = camera["num_cameras"] + (1 if camera.get("unseen_camera_index") is not None else 0)
    nodes, inits, frames_input = _frames_branch(spec, rng, batch)
    inits += [
        _const("keypoint_weight",
               (0.01 * rng.standard_normal((t * joints * 3, d))).astype(np.float32)),
        _const("crop_weight", (0.01 * rng.standard_normal((t * 2, d))).astype(np.float32)),
        _const("valid_weight", rng.standard_normal((t, d)).astype(np.float32)),
        _const("camera_table", rng.standard_normal((rows, d)).astype(np.float32)),
        _const("mask_kp_shape", np.array([0, t, 1, 1], np.int64)),
        _const("mask_hw_shape", np.array([0, t, 1], np.int64)),
    ]
    names = {k: extra[k].get("name", k) for k in ("keypoints", "crop_hw", "frame_valid", "camera")}
    nodes += [
        helper.make_node("Cast", [names["frame_valid"]], ["valid_f"], to=TensorProto.FLOAT),
        helper.make_node("Reshape", ["valid_f", "mask_kp_shape"], ["valid_kp"]),
        helper.make_node("Mul", [names["keypoints"], "valid_kp"], ["kp_masked"]),
        helper.make_node("Reshape", ["kp_masked", "flat_shape"], ["kp_flat"]),
        helper.make_node("MatMul", ["kp_flat", "keypoint_weight"], ["kp_emb"]),
        helper.make_node("Cast", [names["crop_hw"]], ["hw_f"], to=TensorProto.FLOAT),
        helper.make_node("Reshape", ["valid_f", "mask_hw_shape"], ["valid_hw"]),
        helper.make_node("Mul", ["hw_f", "valid_hw"], ["hw_masked"]),
        helper.make_node("Reshape", ["hw_masked", "flat_shape"], ["hw_flat"]),
        helper.make_node("MatMul", ["hw_flat", "crop_weight"], ["hw_emb"]),
        helper.make_node("MatMul", ["valid_f", "valid_weight"], ["valid_emb"]),
        helper.make_node("Gather", ["camera_table", names["camera"]], ["cam_emb"], axis=0),
        helper.make_node("Sum", ["frames_emb", "kp_emb", "hw_emb", "valid_emb", "cam_emb"],
                         ["total_emb"]),
    ]
    inputs = [frames_input,
              helper.make_tensor_value_info(names["keypoints"], TensorProto.FLOAT,
                                            [batch, t, joints, 3]),
              helper.make_tensor_value_info(names["crop_hw"], TensorProto.INT32, [batch, t, 2]),
              helper.make_tensor_value_info(names["frame_valid"], TensorProto.BOOL, [batch, t]),
              helper.make_tensor_value_info(names["camera"], TensorProto.INT64, [batch])]
    return _model(spec, nodes, inits, inputs, "total_emb", batch)


def save_model(model: onnx.ModelProto, path, spec: dict | str | None) -> Path:
    """Write ``model`` with ``spec`` (a dict, raw JSON text, or None for no spec) in its
    metadata_props under reid_sdk.spec."""
    model = copy.deepcopy(model)
    del model.metadata_props[:]
    if spec is not None:
        entry = model.metadata_props.add()
        entry.key = METADATA_KEY
        entry.value = spec if isinstance(spec, str) else json.dumps(spec)
    onnx.save(model, str(path))
    return Path(path)


def build_hamobe_like(path, spec: dict | None = None, *, seed: int = 0, batch="B") -> Path:
    """A HAMoBE-like ``.onnx`` at ``path`` with ``spec`` (default :func:`hamobe_like_spec`)."""
    spec = spec or hamobe_like_spec()
    return save_model(hamobe_like_model(spec, seed=seed, batch=batch), path, spec)


def build_keyreid_like(path, spec: dict | None = None, *, seed: int = 0, batch="B") -> Path:
    """A KeyRe-ID-like ``.onnx`` at ``path`` with ``spec`` (default :func:`keyreid_like_spec`)."""
    spec = spec or keyreid_like_spec()
    return save_model(keyreid_like_model(spec, seed=seed, batch=batch), path, spec)


# -- random inputs --------------------------------------------------------------------------------
def assert_threads_match_sequential(call, jobs, rounds: int = 1) -> None:
    """Run ``call(job)`` for every job on its own thread (``rounds`` times each, all threads at
    once) and assert each thread's last result equals, bit for bit, a sequential call first."""
    sequential = [call(job) for job in jobs]
    results, errors = [None] * len(jobs), []

    def worker(slot):
        try:
            for _ in range(rounds):
                results[slot] = call(jobs[slot])
        except Exception as exc:  # reported below, on the test's thread
            errors.append(exc)
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    for got, want in zip(results, sequential):
        np.testing.assert_array_equal(got, want)


def random_crop(rng, height, width, channels=3):
    shape = (height, width) if channels is None else (height, width, channels)
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


def random_tracklets(rng, lengths, *, min_side=8, max_side=80):
    """One tracklet per entry of ``lengths``; each frame a random crop of a random size (odd and
    even, tall and wide), like detector crops."""
    return [[random_crop(rng, *rng.integers(min_side, max_side + 1, size=2)) for _ in range(n)]
            for n in lengths]


def random_keypoints(rng, tracklet, joints=17):
    """[T, J, 3] float32: joints inside (and some outside) each crop, confidences in [0, 1],
    some joints undetected ([0, 0, 0])."""
    out = np.zeros((len(tracklet), joints, 3), np.float32)
    for i, crop in enumerate(tracklet):
        h, w = crop.shape[:2]
        out[i, :, 0] = rng.uniform(-0.1 * w, 1.1 * w, joints)
        out[i, :, 1] = rng.uniform(-0.1 * h, 1.1 * h, joints)
        out[i, :, 2] = rng.uniform(0, 1, joints)
        out[i, rng.random(joints) < 0.2] = 0.0
    return out


def keyreid_inputs(rng, lengths, num_cameras=6):
    """Inputs of a KeyRe-ID-like engine (:func:`keyreid_like_spec` has 6 cameras): tracklets of
    :func:`random_tracklets`, their :func:`random_keypoints` and one camera per tracklet (int64
    [N], drawn from 0..num_cameras-1)."""
    tracklets = random_tracklets(rng, lengths)
    keypoints = [random_keypoints(rng, t) for t in tracklets]
    cameras = rng.integers(0, num_cameras, size=len(lengths))
    return tracklets, keypoints, cameras


# -- official references --------------------------------------------------------------------------
def official_hamobe_clips(n, seq_len, stride):
    """Frame indices of each test clip, following _recombination_for_testset's loops."""
    img_paths = list(range(n))
    clips = []
    window = seq_len * stride
    for i in range(len(img_paths) // window):
        for j in range(stride):
            clips.append(img_paths[i * window + j:(i + 1) * window:stride])
    if len(img_paths) % window != 0:
        new_stride = (len(img_paths) % window) // seq_len
        base = len(img_paths) // window * window
        for i in range(new_stride):
            clips.append(img_paths[base + i:base + seq_len * new_stride:new_stride])
        if len(img_paths) % seq_len != 0:
            clip = img_paths[len(img_paths) // seq_len * seq_len:]
            while len(clip) < seq_len:
                for index in clip:  # appends while iterating: cycles through the clip
                    if len(clip) >= seq_len:
                        break
                    clip.append(index)
            clips.append(clip)
    return clips


def official_keyreid_clips(n, seq_len=4, max_length=40):
    """Frame indices of each test clip, following VideoDataset.__getitem__ (the cap check
    ``len(imgs_list) > max_length`` runs before each clip is appended: 41 clips)."""
    frame_indices = list(range(n))
    cur_index = 0
    indices_list = []
    while n - cur_index > seq_len:
        indices_list.append(frame_indices[cur_index:cur_index + seq_len])
        cur_index += seq_len
    last_seq = frame_indices[cur_index:]
    for index in last_seq:  # appends while iterating: cycles through the chunk
        if len(last_seq) >= seq_len:
            break
        last_seq.append(index)
    indices_list.append(last_seq)
    kept = []
    for indices in indices_list:
        if len(kept) > max_length:
            break
        kept.append(indices)
    return kept


def official_keyreid_heatmap_slots(n, num_clips, seq_len=4):
    """Per clip, which slots get a real heatmap (Heatmap_Dataset loads frames
    img_paths[i*seq_len : min(i*seq_len + seq_len, n)] and zero-pads the rest)."""
    slots = []
    for i in range(num_clips):
        start = i * seq_len
        real = len(range(start, min(start + seq_len, n)))
        slots.append([True] * real + [False] * (seq_len - real))
    return slots


def official_hamobe_image(rgb, out_hw, pad_value=0):
    """pil_loader + Scale((h, w), BICUBIC), torch-free: ToTensor (float32 / 255) -> F.pad per
    the loader's (left, right, top, bottom) tuples -> ToPILImage (x * 255, truncated to uint8) ->
    PIL bicubic resize. ``rgb``: uint8 [H, W, 3]. Returns uint8 [out_h, out_w, 3]."""
    tensor = np.transpose(rgb, (2, 0, 1)).astype(np.float32) / np.float32(255)
    _, height, width = tensor.shape
    diff = abs(height - width)
    padding_left = padding_right = diff // 2
    padding_top = padding_bottom = diff - diff // 2
    # F.pad's tuple pads the last axis with its first pair and the one before with its second.
    if height < width:
        pad = (0, 0, padding_left, padding_right)
    else:
        pad = (padding_top, padding_bottom, 0, 0)
    fill = np.float32(pad_value) / np.float32(255)
    padded = np.pad(tensor, ((0, 0), (pad[2], pad[3]), (pad[0], pad[1])), constant_values=fill)
    image = Image.fromarray(np.transpose((padded * np.float32(255)).astype(np.uint8), (1, 2, 0)))
    return np.asarray(image.resize((out_hw[1], out_hw[0]), Image.BICUBIC))


def official_keyreid_image(rgb, out_hw):
    """T.Resize([h, w], BILINEAR) on the PIL image: uint8 [H, W, 3] -> [out_h, out_w, 3]."""
    return np.asarray(Image.fromarray(rgb).resize((out_hw[1], out_hw[0]), Image.BILINEAR))
