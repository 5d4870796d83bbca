"""The engine contract of each architecture: graph inputs and the spec fields that follow from
the model's config and from the official test-time pipeline (MODELS.md 1.5, 2.4, 2.6).

This is the one place where "HAMoBE pads to square and resizes bicubic to 224, uses CLIP
mean/std, samples 8-frame clips with stride 4, averages and L2-normalises" and the KeyRe-ID
equivalents are written down; the exporter turns it into the graph and the spec, the runtime
reads the spec.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HALF = (0.5, 0.5, 0.5)
COCO17_JOINTS = 17  # joints per frame of the keypoints input (COCO-17 order)
# Official test clip stride of HAMoBE (configs/c2dres50_ce_cal_ccvid.yaml AUG.SAMPLING_STRIDE).
HAMOBE_TEST_STRIDE = 4
# KeyRe-ID test loader: at most 41 clips (164 frames) per tracklet (Dataloader.py).
KEYREID_MAX_CLIPS = 41


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """One graph input: ``name``, numpy ``dtype`` and per-sample ``shape`` (batch excluded)."""

    name: str
    dtype: str
    shape: tuple


@dataclasses.dataclass(frozen=True)
class ExportContract:
    """What an architecture's exported graph takes and what its engine spec says."""

    inputs: tuple  # InputSpec, frames first
    mean: tuple
    std: tuple
    spec_fields: dict  # every spec field that depends on the architecture
    custom_ops: tuple  # ONNX op types in domain reid the graph must contain
    example_inputs: Callable  # (batch, numpy Generator) -> tuple of numpy arrays, inputs order


def arch_of(model) -> str:
    """The architecture (``"hamobe"`` or ``"keyreid"``) of a model built by
    ``reid_export.models``: its ``reid_config["arch"]``, else the name of its module. Raises
    ValueError for any other model."""
    config = getattr(model, "reid_config", None) or {}
    arch = config.get("arch") or type(model).__module__.rsplit(".", 1)[-1]
    if arch not in CONTRACTS:
        raise ValueError(f"{type(model).__name__} (arch {arch!r}) is not a reid_export model: "
                         "build it with reid_export.models.create()/load_checkpoint()")
    return arch


def contract_for(model) -> ExportContract:
    """The :class:`ExportContract` of a model built by ``reid_export.models``."""
    return CONTRACTS[arch_of(model)](model)


def _preset_name(module, config: dict) -> str:
    for name, preset in module.PRESETS.items():
        if all(config.get(k) == v for k, v in preset.items() if k not in ("classes",)):
            return name
    return "custom"


def _random_frames(batch, frames, height, width, rng):
    return rng.integers(0, 256, size=(batch, frames, height, width, 3), dtype=np.uint8)


def hamobe_contract(model) -> ExportContract:
    from reid_export.models import hamobe

    cfg = model.reid_config
    t, size = cfg["frames"], cfg["image_size"]

    def example(batch, rng):
        return (_random_frames(batch, t, size, size, rng),)

    precision = "fp32" if cfg["backbone_dtype"] == "float32" else "mixed"
    return ExportContract(
        inputs=(InputSpec("frames", "uint8", (t, size, size, 3)),),
        mean=CLIP_MEAN, std=CLIP_STD,
        spec_fields={
            "arch": "hamobe", "preset": _preset_name(hamobe, cfg), "frames_per_clip": t,
            "input": {"color": "RGB", "height": size, "width": size,
                      "resize": {"policy": "pad_to_square", "interpolation": "bicubic",
                                 "pad_value": 0, "reference": "PIL"}},
            "extra_inputs": {},
            "clips": {"policy": "hamobe_recombination", "seq_len": t,
                      "stride": HAMOBE_TEST_STRIDE},
            "aggregate": "mean", "output_l2": True, "embedding_dim": cfg["embedding_dim"],
            "metric": "cosine", "precision": precision,
            "backbone_dtype": cfg["backbone_dtype"],
            "model_config": dict(cfg),
        },
        custom_ops=("MoECombine",),
        example_inputs=example,
    )


def keyreid_contract(model) -> ExportContract:
    from reid_export.models import keyreid

    cfg = model.reid_config
    t = cfg["frames"]
    height, width = cfg["img_size"]
    unseen = cfg.get("unseen_camera_index")
    trained = keyreid.trained_config(cfg)  # an added unseen-camera row is not the preset's
    trained_cameras = trained["cameras"]

    def example(batch, rng):
        crop_h = rng.integers(48, 300, size=(batch, t, 1))
        crop_w = np.maximum(8, crop_h // 2 + rng.integers(-8, 9, size=(batch, t, 1)))
        crop_hw = np.concatenate([crop_h, crop_w], axis=-1).astype(np.int32)
        xy = rng.random((batch, t, COCO17_JOINTS, 2)) * crop_hw[:, :, None, ::-1]
        conf = rng.random((batch, t, COCO17_JOINTS, 1))
        keypoints = np.concatenate([xy, conf], axis=-1).astype(np.float32)
        frame_valid = np.ones((batch, t), dtype=bool)
        frame_valid[-1, -1] = False
        camera = rng.integers(0, trained_cameras, size=(batch,), dtype=np.int64)
        return (_random_frames(batch, t, height, width, rng), keypoints, crop_hw, frame_valid,
                camera)

    camera = {"name": "camera", "dtype": "int64", "num_cameras": trained_cameras,
              "unseen_camera_index": unseen,
              "unseen_camera_note": None if unseen is None else (
                  "mean of the trained camera embeddings; not part of the official method")}
    return ExportContract(
        inputs=(InputSpec("frames", "uint8", (t, height, width, 3)),
                InputSpec("keypoints", "float32", (t, COCO17_JOINTS, 3)),
                InputSpec("crop_hw", "int32", (t, 2)),
                InputSpec("frame_valid", "bool", (t,)),
                InputSpec("camera", "int64", ())),
        mean=HALF, std=HALF,
        spec_fields={
            "arch": "keyreid", "preset": _preset_name(keyreid, trained), "frames_per_clip": t,
            "input": {"color": "RGB", "height": height, "width": width,
                      "resize": {"policy": "stretch", "interpolation": "bilinear",
                                 "pad_value": 0, "reference": "PIL"}},
            "extra_inputs": {
                "keypoints": {"name": "keypoints", "dtype": "float32", "format": "coco17",
                              "num_joints": COCO17_JOINTS, "units": "crop_pixels"},
                "crop_hw": {"name": "crop_hw", "dtype": "int32", "order": "height,width"},
                "frame_valid": {"name": "frame_valid", "dtype": "bool",
                                "padded_frames": False},
                "camera": camera,
            },
            "keypoint_heatmaps": {"mode": cfg["heatmap_mode"], "vis_thresh": cfg["vis_thresh"],
                                  "out_hw": [height, width], "patch": cfg["patch_size"],
                                  "patches": model.num_patches},
            "clips": {"policy": "consecutive_chunks", "seq_len": t,
                      "max_clips": KEYREID_MAX_CLIPS, "pad": "loop"},
            "aggregate": "mean", "output_l2": False, "embedding_dim": model.embedding_dim,
            "metric": "squared_euclidean", "precision": "fp32",
            "model_config": dict(cfg),
        },
        custom_ops=("KeypointPatchPool",),
        example_inputs=example,
    )


CONTRACTS = {"hamobe": hamobe_contract, "keyreid": keyreid_contract}
