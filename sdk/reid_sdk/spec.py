"""The engine spec: everything a caller would otherwise have to get right by hand.

One JSON object, stored in the ONNX model's ``metadata_props`` under ``reid_sdk.spec`` and beside
a TensorRT engine as ``<engine>.json`` (with the engine file's sha256). Fields are only ever
added, never reused; ``spec_version`` changes when a field changes meaning.

Example (HAMoBE, official preset)::

    {
      "spec_version": 1, "arch": "hamobe", "preset": "official", "frames_per_clip": 8,
      "input": {"name": "frames", "layout": "NTHWC", "dtype": "uint8", "color": "RGB",
                "height": 224, "width": 224,
                "resize": {"policy": "pad_to_square", "interpolation": "bicubic",
                           "pad_value": 0, "reference": "PIL"}},
      "normalize": {"mean": [0.48145466, 0.4578275, 0.40821073],
                    "std": [0.26862954, 0.26130258, 0.27577711], "scale": 255.0, "in_graph": true},
      "extra_inputs": {},
      "clips": {"policy": "hamobe_recombination", "seq_len": 8, "stride": 4},
      "aggregate": "mean", "output_l2": true, "output": {"name": "embedding"},
      "embedding_dim": 2048, "metric": "cosine", "precision": "fp32", "opset": 20,
      "custom_ops": {"reid::MoECombine": 1},
      "source": {"checkpoint_sha256": "...", "exporter": "reid-export 0.1.0"}
    }

KeyRe-ID adds ``extra_inputs`` (keypoints, crop_hw, frame_valid, camera) and uses
``{"policy": "consecutive_chunks", "seq_len": 4, "max_clips": 41, "pad": "loop"}``,
``output_l2: false`` and ``metric: "squared_euclidean"``.
"""
from __future__ import annotations

import copy
import json
from typing import Any, Mapping

from reid_sdk.errors import SpecError

SPEC_VERSION = 1
METADATA_KEY = "reid_sdk.spec"

ARCHS = ("hamobe", "keyreid")
CLIP_POLICIES = ("hamobe_recombination", "consecutive_chunks")
CLIP_PADDINGS = ("loop",)  # how a clip short of seq_len frames is filled (clips.pad)
COLOR_ORDERS = ("RGB", "BGR")
RESIZE_POLICIES = ("pad_to_square", "stretch")
INTERPOLATIONS = ("bicubic", "bilinear")
AGGREGATES = ("mean", "max")
METRICS = ("cosine", "euclidean", "squared_euclidean")
PRECISIONS = ("fp32", "fp16", "bf16", "int8", "mixed")

_FIX = ("re-export the model with `reid-export onnx` (which writes a complete spec), or for a "
        "TensorRT engine rebuild it with `reid-export trt`, which writes <engine>.json")


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise SpecError(f"engine spec: {message}; {_FIX}")


def _get(d: Mapping, key: str, typ, where: str):
    _require(isinstance(d, Mapping), f"{where} must be an object")
    _require(key in d, f"missing field {where}.{key}" if where else f"missing field {key}")
    value = d[key]
    if typ is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif typ is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, typ)
    _require(ok, f"{where + '.' if where else ''}{key} must be {typ.__name__}, got {value!r}")
    return value


class EngineSpec:
    """A validated engine spec. ``EngineSpec(dict)`` or ``EngineSpec.from_json(text)``.

    The raw object is ``spec.data`` (a deep copy; mutate through :meth:`replace`). Accessors
    cover what the runtime reads on every call.
    """

    def __init__(self, data: Mapping[str, Any]):
        _require(isinstance(data, Mapping), "the spec must be a JSON object")
        self._data = copy.deepcopy(dict(data))
        self._validate()

    # -- construction / serialisation ----------------------------------------------------------
    @classmethod
    def from_json(cls, text: str | bytes) -> "EngineSpec":
        try:
            data = json.loads(text)
        except (TypeError, ValueError) as exc:
            raise SpecError(f"engine spec is not valid JSON ({exc}); {_FIX}") from None
        return cls(data)

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self._data, indent=indent, sort_keys=True)

    @property
    def data(self) -> dict:
        return copy.deepcopy(self._data)

    def replace(self, **fields) -> "EngineSpec":
        """A new spec with top-level ``fields`` replaced (validated again)."""
        data = self.data
        data.update(fields)
        return EngineSpec(data)

    def __eq__(self, other):
        return isinstance(other, EngineSpec) and self._data == other._data

    def __repr__(self):
        return (f"EngineSpec(arch={self.arch!r}, frames_per_clip={self.frames_per_clip}, "
                f"input={self.height}x{self.width}, dim={self.embedding_dim}, "
                f"metric={self.metric!r}, precision={self.precision!r})")

    # -- accessors ------------------------------------------------------------------------------
    arch = property(lambda self: self._data["arch"])
    frames_per_clip = property(lambda self: self._data["frames_per_clip"])
    input = property(lambda self: self._data["input"])
    height = property(lambda self: self._data["input"]["height"])
    width = property(lambda self: self._data["input"]["width"])
    resize = property(lambda self: self._data["input"]["resize"])
    normalize = property(lambda self: self._data["normalize"])
    extra_inputs = property(lambda self: self._data["extra_inputs"])
    clips = property(lambda self: self._data["clips"])
    aggregate = property(lambda self: self._data["aggregate"])
    output_l2 = property(lambda self: self._data["output_l2"])
    embedding_dim = property(lambda self: self._data["embedding_dim"])
    metric = property(lambda self: self._data["metric"])
    precision = property(lambda self: self._data["precision"])
    custom_ops = property(lambda self: self._data["custom_ops"])
    source = property(lambda self: self._data["source"])

    @property
    def input_name(self) -> str:
        return self._data["input"].get("name", "frames")

    @property
    def output_name(self) -> str:
        return self._data.get("output", {}).get("name", "embedding")

    @property
    def num_cameras(self) -> int | None:
        cam = self.extra_inputs.get("camera")
        return None if cam is None else cam["num_cameras"]

    @property
    def unseen_camera_index(self) -> int | None:
        cam = self.extra_inputs.get("camera")
        return None if cam is None else cam.get("unseen_camera_index")

    # -- validation -----------------------------------------------------------------------------
    def _validate(self) -> None:
        d = self._data
        version = _get(d, "spec_version", int, "")
        _require(version == SPEC_VERSION,
                 f"spec_version {version} is not supported by this reid-sdk (which reads "
                 f"{SPEC_VERSION}); upgrade reid-sdk or re-export with a matching reid-export")
        arch = _get(d, "arch", str, "")
        _require(arch in ARCHS, f"arch {arch!r} is not one of {ARCHS}")
        _require(_get(d, "frames_per_clip", int, "") >= 1, "frames_per_clip must be >= 1")

        inp = _get(d, "input", Mapping, "")
        _require(_get(inp, "layout", str, "input") == "NTHWC", "input.layout must be 'NTHWC'")
        _require(_get(inp, "dtype", str, "input") == "uint8", "input.dtype must be 'uint8'")
        _require(_get(inp, "color", str, "input") in COLOR_ORDERS,
                 f"input.color must be one of {COLOR_ORDERS}")
        for key in ("height", "width"):
            _require(_get(inp, key, int, "input") > 0, f"input.{key} must be positive")
        resize = _get(inp, "resize", Mapping, "input")
        _require(_get(resize, "policy", str, "input.resize") in RESIZE_POLICIES,
                 f"input.resize.policy must be one of {RESIZE_POLICIES}")
        _require(_get(resize, "interpolation", str, "input.resize") in INTERPOLATIONS,
                 f"input.resize.interpolation must be one of {INTERPOLATIONS}")
        _get(resize, "pad_value", int, "input.resize")

        norm = _get(d, "normalize", Mapping, "")
        for key in ("mean", "std"):
            values = _get(norm, key, list, "normalize")
            _require(len(values) == 3 and all(isinstance(v, (int, float)) for v in values),
                     f"normalize.{key} must be 3 numbers")
        _require(all(v > 0 for v in norm["std"]), "normalize.std must be positive")
        _require(_get(norm, "in_graph", bool, "normalize"),
                 "normalize.in_graph must be true: the SDK feeds uint8 frames")

        extra = _get(d, "extra_inputs", Mapping, "")
        if "camera" in extra:
            cam = _get(extra, "camera", Mapping, "extra_inputs")
            _require(_get(cam, "num_cameras", int, "extra_inputs.camera") >= 1,
                     "extra_inputs.camera.num_cameras must be >= 1")
            unseen = cam.get("unseen_camera_index")
            _require(unseen is None or (isinstance(unseen, int) and 0 <= unseen),
                     "extra_inputs.camera.unseen_camera_index must be null or an index")
        if "keypoints" in extra:
            kp = _get(extra, "keypoints", Mapping, "extra_inputs")
            _require(_get(kp, "num_joints", int, "extra_inputs.keypoints") >= 1,
                     "extra_inputs.keypoints.num_joints must be >= 1")

        clips = _get(d, "clips", Mapping, "")
        policy = _get(clips, "policy", str, "clips")
        _require(policy in CLIP_POLICIES, f"clips.policy {policy!r} is not one of {CLIP_POLICIES}")
        pad = clips.get("pad", "loop")
        _require(pad in CLIP_PADDINGS, f"clips.pad {pad!r} is not one of {CLIP_PADDINGS}, the "
                 "clip padding this reid-sdk knows (upgrade reid-sdk if the exporter is newer)")
        _require(_get(clips, "seq_len", int, "clips") == d["frames_per_clip"],
                 "clips.seq_len must equal frames_per_clip")
        if policy == "hamobe_recombination":
            _require(_get(clips, "stride", int, "clips") >= 1, "clips.stride must be >= 1")
        else:
            max_clips = clips.get("max_clips")
            _require(max_clips is None or (isinstance(max_clips, int) and max_clips >= 1),
                     "clips.max_clips must be null or >= 1")

        _require(_get(d, "aggregate", str, "") in AGGREGATES, f"aggregate must be one of {AGGREGATES}")
        _get(d, "output_l2", bool, "")
        _require(_get(d, "embedding_dim", int, "") >= 1, "embedding_dim must be >= 1")
        _require(_get(d, "metric", str, "") in METRICS, f"metric must be one of {METRICS}")
        _require(_get(d, "precision", str, "") in PRECISIONS, f"precision must be one of {PRECISIONS}")
        _get(d, "opset", int, "")
        _get(d, "custom_ops", Mapping, "")
        source = _get(d, "source", Mapping, "")
        _get(source, "exporter", str, "source")
